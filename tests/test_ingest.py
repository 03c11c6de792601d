"""Ingest rebuilds the database from job files: idempotent, a rerun cell replaces its rows, and a
failed, killed or concurrent ingest never loses the previous database."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from gdn import db
from tests.synthetic import REPO


def _write_run(root, variant, width, log2_lr, val_loss, status="completed", seed=0, log_lines=10):
    run_dir = root / "results" / "runs" / "t" / variant / f"w{width}" / f"lr{log2_lr}" / f"s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"t/{variant}/w{width}/lr{log2_lr}/s{seed}"
    lr = 2.0 ** log2_lr
    m = width / 16
    metrics = {"run_id": run_id, "cell": {"tier": "t", "variant": variant, "width": width, "log2_lr": log2_lr,
                                          "seed": seed},
               "status": status, "steps_done": 10, "params": {"total": 100, "non_embedding": 60}, "tokens": 640,
               "initial_loss": 5.0, "final_train_loss": val_loss + 0.1, "final_val_loss": val_loss,
               "wall_s": 1.0, "tok_s": 640.0, "device": "cpu", "precision": "fp32", "commit": "abc",
               "param_groups": [{"role": "hidden", "lr": lr / m, "weight_decay": 0.1 * m, "n_tensors": 6},
                                {"role": "vector", "lr": lr, "weight_decay": 0.0, "n_tensors": 4}],
               "config": {"model": {"base_width": 16}, "train": {"weight_decay": 0.1}}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "log.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5 - s * 0.1, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64 * (s + 1),
                    "tok_s": 100.0}) + "\n" for s in range(log_lines)))
    return str(run_dir / "metrics.json")


def _sweep(root, log_lines=10):
    return [_write_run(root, "gdn_mup", w, lr, 3.0 + abs(lr + 7) * 0.1, log_lines=log_lines)
            for w in (16, 32) for lr in (-8, -7, -6)]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _runs(database):
    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_ingest_is_idempotent_and_replaces_rerun_rows(tmp_path):
    files = _sweep(tmp_path)
    database = tmp_path / "t.duckdb"
    first = db.build(database, files, [], [], [], {"tier": "t"})
    second = db.build(database, files, [], [], [], {"tier": "t"})
    assert first == second
    assert first["runs"] == 6 and first["curves"] == 60 and first["param_groups"] == 12

    _write_run(tmp_path, "gdn_mup", 32, -7, 2.5)  # the cell is rerun with a new result
    db.build(database, files, [], [], [], {"tier": "t"})
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute("SELECT final_val_loss FROM runs WHERE run_id = 't/gdn_mup/w32/lr-7/s0'").fetchall()
    assert rows == [(2.5,)]
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 6
    assert con.execute("SELECT value FROM meta WHERE key = 'tier'").fetchone()[0] == "t"
    assert con.execute("SELECT count(*) FROM claims").fetchone()[0] == 6
    con.close()
    assert _leftovers(tmp_path) == []


def test_param_groups_are_ingested_with_factors(tmp_path):
    files = _sweep(tmp_path)
    database = tmp_path / "t.duckdb"
    db.build(database, files, [], [], [], {"tier": "t"})
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute("SELECT DISTINCT width, role, lr_factor, wd_factor, n_tensors FROM param_groups "
                       "ORDER BY width, role").fetchall()
    con.close()
    assert rows == [(16, "hidden", 1.0, 1.0, 6), (16, "vector", 1.0, 0.0, 4),
                    (32, "hidden", 0.5, 2.0, 6), (32, "vector", 1.0, 0.0, 4)]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"run_id": "x"}', "missing key 'cell'"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_job_file_names_itself_and_keeps_the_old_database(tmp_path, content, problem):
    files = _sweep(tmp_path)
    database = tmp_path / "t.duckdb"
    manifest = tmp_path / "t.ingest.json"
    db.build(database, files, [], [], [], {"tier": "t"}, manifest=manifest)
    before = _sha(database)
    bad = tmp_path / "results" / "runs" / "t" / "gdn_mup" / "w32" / "lr-7" / "s0" / "metrics.json"
    bad.write_text(content)
    with pytest.raises(db.IngestError) as error:
        db.build(database, files, [], [], [], {"tier": "t"}, manifest=manifest)
    assert str(bad) in str(error.value) and problem in str(error.value)
    assert _sha(database) == before and _runs(database) == 6
    assert not manifest.exists()  # the manifest says "a complete ingest": this one was not
    assert _leftovers(tmp_path) == []


def test_bad_log_line_names_file_and_line(tmp_path):
    files = _sweep(tmp_path)
    log = tmp_path / "results" / "runs" / "t" / "gdn_mup" / "w16" / "lr-8" / "s0" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 10, "loss": \n')
    with pytest.raises(db.IngestError, match=r"log\.jsonl, line 11"):
        db.build(tmp_path / "t.duckdb", files, [], [], [], {"tier": "t"})


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    files = _sweep(tmp_path)
    database = tmp_path / "t.duckdb"
    db.build(database, files, [], [], [], {"tier": "t"})
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{")
    done = subprocess.run([sys.executable, "-m", "gdn", "ingest", "--db", str(database), "--metrics", *files,
                           str(bad)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and str(bad) in done.stderr and "left as it was" in done.stderr
    assert _runs(database) == 6


# A child that ingests and stops at a chosen point, so the test can kill it there with SIGKILL.
# 'reading': before any database file exists; 'writing': half of the tables are in the temporary
# database; 'written': the temporary database is complete but not yet renamed into place.
_PAUSED_INGEST = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from gdn import db
    stage, database, manifest, files = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    def pause():
        print("paused", flush=True)
        time.sleep(120)
    real_read, real_write = db.tables_from_files, db.write_tables
    def read(*args):
        if stage == "reading":
            pause()
        return real_read(*args)
    def write(path, tables):
        if stage == "writing":
            real_write(path, dict(list(tables.items())[: len(tables) // 2]))
            pause()
        real_write(path, tables)
        if stage == "written":
            pause()
    db.tables_from_files, db.write_tables = read, write
    db.build(database, files, [], [], [], {"tier": "t"}, manifest=manifest)
""")


@pytest.mark.parametrize("stage", ["reading", "writing", "written"])
def test_killed_ingest_keeps_the_old_database_and_the_next_one_cleans_up(tmp_path, stage):
    files = _sweep(tmp_path)
    database, manifest = tmp_path / "t.duckdb", tmp_path / "t.ingest.json"
    db.build(database, files, [], [], [], {"tier": "t"}, manifest=manifest)
    before = _sha(database)
    _write_run(tmp_path, "gdn_mup", 32, -7, 2.5)  # new data the killed ingest would have brought in
    child = subprocess.Popen([sys.executable, "-c", _PAUSED_INGEST, stage, str(database), str(manifest), *files],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "paused"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert _sha(database) == before and _runs(database) == 6
    assert not manifest.exists()
    if stage != "reading":
        assert len(_leftovers(tmp_path)) == 1  # the killed build's own directory, nothing else touched

    db.build(database, files, [], [], [], {"tier": "t"}, manifest=manifest)  # the next ingest
    assert _leftovers(tmp_path) == []  # removes what the dead process left
    con = duckdb.connect(str(database), read_only=True)
    assert con.execute("SELECT final_val_loss FROM runs WHERE run_id = 't/gdn_mup/w32/lr-7/s0'").fetchone() == (2.5,)
    con.close()
    assert json.loads(manifest.read_text())["sha256"] == _sha(database)


def test_concurrent_ingests_use_their_own_temporary_files(tmp_path):
    files = _sweep(tmp_path, log_lines=2000)
    database = tmp_path / "t.duckdb"
    script = "import sys; from gdn import db; db.build(sys.argv[1], sys.argv[2:], [], [], [], {'tier': 't'})"
    children = [subprocess.Popen([sys.executable, "-c", script, str(database), *files], cwd=REPO,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert _runs(database) == 6 and _leftovers(tmp_path) == []


# The DAG's half: report.smk's rules in a Snakefile of their own over pre-written job files.
_SNAKEFILE = """
import json, shlex, sys
TIER = "t"
DATABASE = "results/t.duckdb"
REPORT = "reports/t/index.html"
PYTHON = shlex.quote(sys.executable)
CONDA_ENV = {conda!r}
ALL_METRICS = {metrics!r}
ALL_EVALS, ALL_COORD, ALL_BENCH = [], [], []
def json_arg(*sections, **extra):
    return shlex.quote(json.dumps({{"tier": "t"}}))
include: {rules!r}
rule all:
    input: REPORT
"""


def _snakemake(work):
    env = dict(os.environ, GDN_COMMIT="test-commit")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(work),
                           "--snakefile", str(work / "Snakefile")], capture_output=True, text=True, env=env,
                          timeout=300)


def test_snakemake_keeps_the_database_through_a_failed_ingest_and_rebuilds_what_is_missing(tmp_path):
    files = _sweep(tmp_path)
    (tmp_path / "Snakefile").write_text(_SNAKEFILE.format(
        conda=str(REPO / "environment.yml"), metrics=[os.path.relpath(f, tmp_path) for f in files],
        rules=str(REPO / "workflow" / "rules" / "report.smk")))
    database, manifest = tmp_path / "results" / "t.duckdb", tmp_path / "results" / "t.ingest.json"
    done = _snakemake(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "reports" / "t" / "index.html").exists() and (tmp_path / "reports" / "index.html").exists()
    assert (tmp_path / "reports" / "t" / "data" / "runs.parquet").exists()
    before = _sha(database)

    bad = tmp_path / "results" / "runs" / "t" / "gdn_mup" / "w32" / "lr-7" / "s0" / "metrics.json"
    good = bad.read_text()
    time.sleep(1.1)  # a newer input: the ingest reruns
    bad.write_text("{broken")
    failed = _snakemake(tmp_path)
    assert failed.returncode != 0
    log = (tmp_path / "results" / "logs" / "t" / "ingest.log").read_text()
    assert str(bad.relative_to(tmp_path)) in log and "left as it was" in log
    assert _sha(database) == before and not manifest.exists()

    bad.write_text(good)  # fixed: plain `snakemake` ingests again (the manifest is missing)
    done = _snakemake(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest.exists() and _runs(database) == 6

    # What a killed ingest leaves: Snakemake removed the manifest, the log holds a first line only.
    log_file = tmp_path / "results" / "logs" / "t" / "ingest.log"
    time.sleep(1.1)
    log_file.write_text("ingest into results/t.duckdb started (pid 1)\n")
    manifest.unlink()
    done = _snakemake(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest.exists() and "runs 6" in log_file.read_text()

    database.unlink()  # lost by hand: plain `snakemake` brings it back
    done = _snakemake(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert database.exists() and json.loads(manifest.read_text())["sha256"] == _sha(database)
