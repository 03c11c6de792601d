"""Ingest rebuilds the database from job files: idempotent, and a rerun cell replaces its rows."""

import json

import duckdb

from gdn import db


def _write_run(root, variant, width, log2_lr, val_loss, status="completed"):
    run_dir = root / "results" / "runs" / "t" / variant / f"w{width}" / f"lr{log2_lr}" / "s0"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"t/{variant}/w{width}/lr{log2_lr}/s0"
    metrics = {"run_id": run_id, "cell": {"tier": "t", "variant": variant, "width": width, "log2_lr": log2_lr,
                                          "seed": 0},
               "status": status, "steps_done": 10, "params": {"total": 100, "non_embedding": 60}, "tokens": 640,
               "initial_loss": 5.0, "final_train_loss": val_loss + 0.1, "final_val_loss": val_loss,
               "wall_s": 1.0, "tok_s": 640.0, "device": "cpu", "precision": "fp32", "commit": "abc"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "log.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5 - s * 0.1, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64 * (s + 1),
                    "tok_s": 100.0}) + "\n" for s in range(10)))
    return str(run_dir / "metrics.json")


def test_ingest_is_idempotent_and_replaces_rerun_rows(tmp_path):
    files = [_write_run(tmp_path, "gdn_mup", w, lr, 3.0 + abs(lr + 7) * 0.1) for w in (16, 32) for lr in (-8, -7, -6)]
    database = tmp_path / "t.duckdb"
    first = db.build(database, files, [], [], [], {"tier": "t"})
    second = db.build(database, files, [], [], [], {"tier": "t"})
    assert first == second
    assert first["runs"] == 6 and first["curves"] == 60

    _write_run(tmp_path, "gdn_mup", 32, -7, 2.5)  # the cell is rerun with a new result
    db.build(database, files, [], [], [], {"tier": "t"})
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute("SELECT final_val_loss FROM runs WHERE run_id = 't/gdn_mup/w32/lr-7/s0'").fetchall()
    assert rows == [(2.5,)]
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 6
    assert con.execute("SELECT value FROM meta WHERE key = 'tier'").fetchone()[0] == "t"
    con.close()


def test_bad_job_file_names_itself(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    try:
        db.build(tmp_path / "x.duckdb", [str(bad)], [], [], [], {})
    except ValueError as e:
        assert str(bad) in str(e)
    else:
        raise AssertionError("a corrupt job file must stop the ingest")
