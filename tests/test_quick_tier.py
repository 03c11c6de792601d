"""The quick tier's budget and the DAG's reruns: a cell's rerun reruns no benchmark, tiers keep
their own evaluation resources, the smoke evaluation's size."""

import subprocess
import sys

from gdn import config as C
from tests.synthetic import REPO, tiny_config, wikitext_raw, write_config


def _snakemake(work, *args):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _all_done(work):
    """A workflow whose every output exists and is up to date, without running a job."""
    summary = _snakemake(work, "--summary")
    assert summary.returncode == 0, summary.stderr[-2000:]
    for line in summary.stdout.splitlines()[1:]:
        path = work / line.split("\t")[0]
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # a directory output (the report's data folder)
            path.mkdir(parents=True, exist_ok=True)
    assert _snakemake(work, "--touch").returncode == 0


def _job_counts(dry_run_stdout: str) -> dict[str, int]:
    lines = dry_run_stdout.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_rerunning_a_cell_reruns_no_benchmark(tmp_path):
    config = tiny_config(tmp_path)
    config["evaluate"] = {"widths": [32], "log2_lrs": "all", "lm_eval": {"tasks": []}}
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    _all_done(tmp_path)
    cell = "results/runs/tiny/gdn_mup/w32/lr-8/s0/metrics.json"
    done = _snakemake(tmp_path, "-n", "--forcerun", cell)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = _job_counts(done.stdout)
    assert counts["train"] == 1 and counts["evaluate"] == 1, counts
    assert "bench" not in counts and "coordcheck" not in counts, counts


def test_tiers_keep_their_own_evaluation_resources(tmp_path):
    config = tiny_config(tmp_path)
    config["evaluate"] = {"widths": [32], "log2_lrs": "all", "lm_eval": {"tasks": []}}
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    other = tmp_path / "other.yaml"
    other.write_text("tier: other\n")
    paths = {}
    for tier, extra in (("tiny", ()), ("other", ("--configfile", str(other)))):
        done = _snakemake(tmp_path, "--summary", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        paths[tier] = {line.split("\t")[0] for line in done.stdout.splitlines()[1:] if "lmeval" in line}
    assert paths["tiny"] == {"resources/tiny/lmeval/manifest.json"}
    assert paths["other"] == {"resources/other/lmeval/manifest.json"}


def test_quick_tier_evaluates_a_smoke_test_sized_set():
    config = C.load(REPO / "config" / "config.yaml", base_dir=REPO)
    evaluated = C.evaluated_cells(config)
    assert len(evaluated) == len(config["variants"]) and {c.width for c in evaluated} == {128}
    assert config["evaluate"]["wikitext"]["max_pages"] == 8


def test_wikitext_max_pages_keeps_the_first_pages_in_their_layout(tmp_path):
    from gdn.evaluate.wikitext import first_pages, read_test_text, split_pages

    raw = read_test_text(wikitext_raw(tmp_path / "wiki.test.raw", 5))
    assert first_pages(raw, None) == raw
    cut = first_pages(raw, 2)
    assert split_pages(cut) == split_pages(raw)[:2] and "\n \n" in cut

