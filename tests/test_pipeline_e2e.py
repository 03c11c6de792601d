"""The real DAG on a tiny generated corpus, in a temporary directory: prepare -> tokenizer ->
tokenize -> train -> evaluate (ours + lm-eval) -> coordinate check -> benchmarks -> ingest -> report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.synthetic import REPO, tiny_config, write_config


def _piqa_rows(path: Path, n: int = 6):
    rows = [{"goal": f"How do you open a {w}?", "sol1": f"Push the {w} gently.", "sol2": f"Sing to the {w}.",
             "label": i % 2} for i, w in enumerate(["door", "box", "jar", "window", "gate", "book"][:n])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    config = tiny_config(work)
    tasks = work / "tasks"
    tasks.mkdir()
    _piqa_rows(tasks / "piqa_validation.jsonl")
    config["lmeval_data"] = {"local_dir": str(tasks)}
    config["evaluate"] = {"context": 32, "batch_size": 8, "widths": [32],
                          "lm_eval": {"tasks": ["piqa"], "limit": 4, "bootstrap_iters": 0}}
    config["coordcheck"] = {"widths": [16, 32, 64], "steps": 1, "seeds": [0], "batch_size": 2, "seq_len": 16}
    config["bench"] = {"vocab_size": 300,
                       "shapes": {"tiny": {"width": 32, "base_width": 16, "n_layers": 1, "width_mode": "head_dim",
                                           "n_heads": 2, "mlp_ratio": {"transformer": 2.0, "gdn": 1.5},
                                           "batch": 2, "seq_len": 16}},
                       "overhead": {"shapes": ["tiny"], "iters": 3},
                       "inference": {"shapes": ["tiny"]}}
    (work / "config").mkdir()
    write_config(config, work / "config" / "config.yaml")
    env = dict(os.environ, GDN_COMMIT="e2e-test", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return work, config, cmd, env


def test_database_holds_every_cell_and_evaluation(pipeline):
    work, config, _, _ = pipeline
    con = duckdb.connect(str(work / "results" / "tiny.duckdb"), read_only=True)
    n_cells = len(config["variants"]) * len(config["grid"]["widths"]) * len(config["grid"]["log2_lrs"])
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == n_cells
    assert con.execute("SELECT count(DISTINCT run_id) FROM curves").fetchone()[0] == n_cells
    evaluated = con.execute("SELECT count(*) FROM runs WHERE width = 32 AND status = 'completed'").fetchone()[0]
    wiki = con.execute("SELECT count(*) FROM evaluations WHERE task = 'wikitext103' AND metric = 'word_perplexity'"
                       " AND value > 1").fetchone()[0]
    assert wiki == evaluated > 0
    piqa = con.execute("SELECT count(*) FROM evaluations WHERE task = 'piqa' AND metric = 'acc'").fetchone()[0]
    assert piqa == evaluated
    assert con.execute("SELECT count(*) FROM lr_optima").fetchone()[0] == len(config["variants"]) * 2
    assert con.execute("SELECT count(*) FROM transfer").fetchone()[0] >= len(config["variants"])
    assert con.execute("SELECT count(DISTINCT variant) FROM coord").fetchone()[0] == len(config["variants"])
    suites = dict(con.execute("SELECT suite, status FROM bench_suites").fetchall())
    assert suites["overhead"] == "completed"
    assert suites["inference"] == ("completed" if _has_cuda() else "skipped")
    assert con.execute("SELECT value FROM meta WHERE key = 'commit'").fetchone()[0]
    con.close()


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def test_report_renders_offline_with_all_sections(pipeline):
    work, _, _, _ = pipeline
    html = (work / "reports" / "tiny" / "index.html").read_text()
    for section in ("overview", "claims", "transfer", "coord", "evaluation", "curves", "performance", "runs"):
        assert f'id="{section}"' in html, section
    assert "<svg" in html
    # Offline from file://: nothing is fetched (namespace URIs inside SVG are names, not loads).
    import re

    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "<script" not in html and "<link" not in html and "url(http" not in html
    assert "claim" in html and "18.2" in html  # the claimed values appear, labelled
    assert "skipped" in html or _has_cuda()  # a skipped GPU suite is said, not hidden
    assert (work / "reports" / "index.html").exists()


def test_one_cell_reruns_by_path_and_dry_run_is_clean(pipeline):
    work, _, cmd, env = pipeline
    cell = "results/runs/tiny/gdn_mup/w16/lr-8/s0/metrics.json"
    before = json.loads((work / cell).read_text())
    done = subprocess.run(cmd + ["--forcerun", cell, cell], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((work / cell).read_text())
    assert after["final_val_loss"] == pytest.approx(before["final_val_loss"], rel=1e-6)  # deterministic on CPU
    dry = subprocess.run(cmd + ["-n", "database"], env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0


def test_bad_config_stops_before_any_job(tmp_path):
    config = tiny_config(tmp_path)
    config["grid"]["widths"] = [16, 33]  # model.n_heads = 2 does not divide 33
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--cores", "1", "-n"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "grid.widths" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()
