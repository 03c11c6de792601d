"""The DuckDB database: rebuilt from the per-job files, by one writer.

Jobs never write the database (DuckDB allows one writer process); `python -m gdn ingest`
reads every per-job file the DAG lists and builds a fresh database next to the old one,
then renames it into place. Rerunning is idempotent, and a rerun cell's rows replace the
old ones because nothing is carried over between builds.

Tables: runs, curves, evaluations, coord, bench (rows from the job files); lr_optima,
transfer, coord_slopes (derived by the analysis modules); meta (tier, commit, build time).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import duckdb
import pandas as pd

from gdn import provenance
from gdn.parametrization import VARIANTS

RUN_COLUMNS = [
    "run_id", "tier", "variant", "family", "parametrization", "width", "log2_lr", "lr", "seed", "status",
    "steps_done", "params_total", "params_non_embedding", "tokens", "initial_loss", "final_train_loss",
    "final_val_loss", "val_ppl", "wall_s", "tok_s", "device", "precision", "commit", "run_dir",
]


def _read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun the job that writes it") from e


def run_row(metrics: dict, metrics_file: str) -> dict:
    cell = metrics["cell"]
    variant = VARIANTS[cell["variant"]]
    val = metrics.get("final_val_loss")
    return {
        "run_id": metrics["run_id"],
        "tier": cell["tier"],
        "variant": cell["variant"],
        "family": variant.family,
        "parametrization": variant.parametrization,
        "width": cell["width"],
        "log2_lr": cell["log2_lr"],
        "lr": 2.0 ** cell["log2_lr"],
        "seed": cell["seed"],
        "status": metrics["status"],
        "steps_done": metrics["steps_done"],
        "params_total": metrics["params"]["total"],
        "params_non_embedding": metrics["params"]["non_embedding"],
        "tokens": metrics["tokens"],
        "initial_loss": metrics.get("initial_loss"),
        "final_train_loss": metrics.get("final_train_loss"),
        "final_val_loss": val,
        "val_ppl": math.exp(val) if val is not None and val < 50 else None,
        "wall_s": metrics["wall_s"],
        "tok_s": metrics["tok_s"],
        "device": metrics["device"],
        "precision": metrics.get("precision"),
        "commit": metrics.get("commit"),
        "run_dir": str(Path(metrics_file).parent),
    }


def curve_rows(run_id: str, log_file: Path) -> list[dict]:
    if not log_file.exists():
        return []
    rows = []
    for line in log_file.read_text().splitlines():
        if line:
            entry = json.loads(line)
            rows.append({"run_id": run_id, "step": entry["step"], "loss": entry["loss"], "lr": entry["lr"],
                         "grad_norm": entry["grad_norm"], "tokens": entry["tokens"], "tok_s": entry["tok_s"],
                         "val_loss": entry.get("val_loss")})
    return rows


def evaluation_rows(eval_file: str) -> list[dict]:
    """Rows of one eval/*.json; the run is the directory above eval/."""
    payload = _read_json(eval_file)
    run_dir = Path(eval_file).parent.parent
    metrics = _read_json(run_dir / "metrics.json")
    return [
        {"run_id": metrics["run_id"], "task": r["task"], "metric": r["metric"], "value": r["value"],
         "stderr": r.get("stderr"), "wall_s": payload.get("wall_s"), "source_file": str(eval_file)}
        for r in payload.get("results", [])
    ]


def rows_file(path: str) -> list[dict]:
    """Generic {"rows": [...]} job file (coordinate checks, benchmarks); each row gets its source."""
    payload = _read_json(path)
    extra = {k: payload[k] for k in ("device", "commit") if k in payload and isinstance(payload[k], str)}
    return [{**extra, **row, "source_file": str(path)} for row in payload.get("rows", [])]


def bench_tables(bench_files: list[str]) -> dict[str, pd.DataFrame]:
    """Benchmark files: model-level suites go to `bench`, kernel micro-benchmarks to `kernel_bench`,
    and one `bench_suites` row per file records its status (a skipped suite says why)."""
    rows: dict[str, list[dict]] = {"bench": [], "kernel_bench": []}
    suites = []
    for f in bench_files:
        payload = _read_json(f)
        table = "kernel_bench" if payload.get("kind") == "kernel_bench" else "bench"
        rows[table] += rows_file(f)
        suites.append({"suite": payload.get("suite", table), "kind": payload.get("kind"),
                       "status": payload.get("status", "completed"),
                       # why a suite was skipped, or how a file was assembled (its "note")
                       "reason": payload.get("reason") or payload.get("note"),
                       "device": payload.get("device"), "commit": payload.get("commit"), "source_file": str(f)})
    out = {name: _frame(r) for name, r in rows.items()}
    out["bench_suites"] = _frame(suites, ["suite", "kind", "status", "reason", "device", "commit", "source_file"])
    return out


def _frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)
    return frame


def build(db_path: Path, metrics_files: list[str], eval_files: list[str], coord_files: list[str],
          bench_files: list[str], settings: dict) -> dict[str, int]:
    runs = _frame([run_row(_read_json(f), f) for f in metrics_files], RUN_COLUMNS)
    curve_lists = (curve_rows(_read_json(f)["run_id"], Path(f).parent / "log.jsonl") for f in metrics_files)
    curves = _frame([r for rows in curve_lists for r in rows],
                    ["run_id", "step", "loss", "lr", "grad_norm", "tokens", "tok_s", "val_loss"])
    evaluations = _frame([r for f in eval_files for r in evaluation_rows(f)],
                         ["run_id", "task", "metric", "value", "stderr", "wall_s", "source_file"])
    tables: dict[str, pd.DataFrame] = {"runs": runs, "curves": curves, "evaluations": evaluations}
    tables["coord"] = _frame([r for f in coord_files for r in rows_file(f)])
    tables.update(bench_tables(bench_files))
    tables.update(derived_tables(runs, tables["coord"], settings))
    tables["meta"] = pd.DataFrame(
        [{"key": k, "value": str(v)} for k, v in {
            "tier": settings.get("tier"), "commit": provenance.git_commit(), "built_at": time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "config": json.dumps(settings, sort_keys=True)}.items()])

    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, frame in tables.items():
            if frame.empty and len(frame.columns) == 0:
                con.execute(f'CREATE TABLE "{name}" (source_file VARCHAR)')
                continue
            con.register("frame_view", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame_view')
            con.unregister("frame_view")
    finally:
        con.close()
    os.replace(tmp, db_path)
    return {name: len(frame) for name, frame in tables.items()}


def derived_tables(runs: pd.DataFrame, coord: pd.DataFrame, settings: dict) -> dict[str, pd.DataFrame]:
    """Transfer and coordinate-check verdicts, computed by the pure analysis functions."""
    from gdn import coordcheck, transfer

    out = {}
    if not runs.empty:
        out.update(transfer.analyze(runs, settings.get("transfer") or {}))
    if not coord.empty:
        out.update(coordcheck.analyze(coord, settings.get("coordcheck") or {}))
    return out


def connect(db_path: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    if not Path(db_path).exists():
        raise FileNotFoundError(f"{db_path} does not exist: run the ingest step first (snakemake {db_path})")
    return duckdb.connect(str(db_path), read_only=read_only)


def add_arguments(parser) -> None:
    parser.add_argument("--db", required=True, type=Path, help="results/<tier>.duckdb")
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json of every cell")
    parser.add_argument("--evals", nargs="*", default=[], help="eval/*.json files")
    parser.add_argument("--coord", nargs="*", default=[], help="coordinate-check JSON files")
    parser.add_argument("--bench", nargs="*", default=[], help="benchmark JSON files")
    parser.add_argument("--config-json", default="{}", help="tier config (tier, transfer, coordcheck sections)")


def run(args) -> int:
    counts = build(args.db, args.metrics, args.evals, args.coord, args.bench, json.loads(args.config_json))
    print(f"{args.db}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
