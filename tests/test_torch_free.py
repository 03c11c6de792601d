"""Ingest, the transfer and coordinate-check analyses and the report run on a machine without
torch or transformers: a child process in which importing them fails builds a database from job
files (with the real analysis modules) and renders the report from it."""

import subprocess
import sys
import textwrap

from tests.synthetic import REPO

BLOCKED = ("torch", "transformers", "triton", "lm_eval", "accelerate", "safetensors", "tokenizers", "datasets")

_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now raises ImportError
    root = Path(sys.argv[1])
    from tests import report_data
    from gdn import db
    from gdn.report import render
    files = report_data.write_tier(root)
    coord = report_data.write_coord(root)
    database = root / "results" / "t.duckdb"
    counts = db.build(database, files["metrics"], files["evals"], coord, [], {{"tier": "t", "transfer": {{}}}},
                      manifest=root / "results" / "t.ingest.json")
    assert counts["runs"] > 0 and counts["lr_optima"] > 0, counts
    page = render.render_report(database, root / "reports" / "t" / "index.html")
    html = page.read_text()
    assert 'id="claims"' in html and 'id="transfer"' in html and "<svg" in html, "sections missing"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
    assert not loaded, loaded
    print("torch-free:", ", ".join(f"{{k}} {{v}}" for k, v in counts.items()))
""").format(blocked=BLOCKED)


def test_ingest_analysis_and_report_need_neither_torch_nor_transformers(tmp_path):
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "torch-free:" in done.stdout


def test_the_cli_commands_load_without_torch():
    """`python -m gdn ingest --help` and `report --help` (the rules' entry points) import no torch."""
    for command in ("ingest", "report"):
        script = (f"import sys\nfor n in {BLOCKED!r}: sys.modules[n] = None\n"
                  f"from gdn.cli import main\nsys.argv = ['gdn', {command!r}, '--help']\nmain()")
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]
