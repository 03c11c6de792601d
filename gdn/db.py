"""The DuckDB database: rebuilt from the per-job files, by one writer.

Jobs never write the database (DuckDB allows one writer process); `python -m gdn ingest`
reads every per-job file the DAG lists and builds a fresh database in a temporary directory
of its own beside the old one (unique per host and process, so concurrent ingests never
share it), then renames the finished file into place. The old database is replaced only by a
complete new one: an ingest that fails or is killed leaves it as it was.

The Snakemake rule declares a small manifest (`--manifest`, written after the rename) as its
output instead of the database: Snakemake deletes a failed job's outputs, and that must never
be the database. A missing manifest makes the next `snakemake` ingest again.

Rerunning is idempotent, and a rerun cell's rows replace the old ones because nothing is
carried over between builds.

Tables: runs, curves, param_groups, evaluations, coord, bench, kernel_bench, bench_suites (rows
from the job files); claims (the circulating claim, for recomputing the report's verdict table);
the analysis modules' tables (lr_optima, transfer, gates, controls, study_verdict, noise,
coord_slopes, coord_verdict, ...); meta (tier, commit, build time, config).

Nothing here imports torch: the database can be rebuilt on a machine that only has the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

from gdn import provenance
from gdn.claims import CLAIMED_TABLE
from gdn.variants import VARIANTS

RUN_COLUMNS = [
    "run_id", "tier", "variant", "family", "parametrization", "width", "log2_lr", "lr", "seed", "status",
    "steps_done", "params_total", "params_non_embedding", "tokens", "initial_loss", "final_train_loss",
    "final_val_loss", "val_ppl", "wall_s", "tok_s", "device", "precision", "commit", "run_dir",
]
CURVE_COLUMNS = ["run_id", "step", "loss", "lr", "grad_norm", "tokens", "tok_s", "val_loss"]
# One row per optimizer group of a run. lr and weight_decay are the group's actual values; the
# factors are relative to the run's base learning rate and weight decay. init_factor,
# multiplier and width_ratio are read when metrics.json records them (NULL otherwise).
PARAM_GROUP_COLUMNS = [
    "run_id", "variant", "width", "base_width", "seed", "role", "n_tensors", "lr", "lr_factor", "weight_decay",
    "wd_factor", "init_factor", "multiplier", "width_ratio", "names",
]
EVALUATION_COLUMNS = ["run_id", "task", "metric", "value", "stderr", "wall_s", "source_file"]


class IngestError(ValueError):
    """A job file that cannot be ingested; the message names the file and what is wrong with it."""


def _read_json(path: str | Path) -> dict:
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise IngestError(f"{path}: missing; rerun the job that writes it") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IngestError(f"{path} is not valid JSON ({e}); rerun the job that writes it") from e
    if not isinstance(payload, dict):
        raise IngestError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    return payload


def _per_file(path: str | Path, rows_of, *args):
    """rows_of(*args) with any missing key or wrong type reported against the file it came from."""
    try:
        return rows_of(*args)
    except IngestError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise IngestError(f"{path}: {what}; rerun the job that writes it") from e


def run_row(metrics: dict, metrics_file: str) -> dict:
    cell = metrics["cell"]
    if cell["variant"] not in VARIANTS:
        raise ValueError(f"unknown variant {cell['variant']!r}; known: {sorted(VARIANTS)}")
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


def param_group_rows(metrics: dict) -> list[dict]:
    """The run's optimizer groups as train.py recorded them (role, lr, weight decay, tensors)."""
    cell = metrics["cell"]
    config = metrics.get("config") or {}
    base_lr = 2.0 ** cell["log2_lr"]
    base_wd = (config.get("train") or {}).get("weight_decay")
    rows = []
    for group in metrics.get("param_groups") or []:
        lr, wd = group.get("lr"), group.get("weight_decay")
        names = group.get("names")
        rows.append({
            "run_id": metrics["run_id"], "variant": cell["variant"], "width": cell["width"],
            "base_width": (config.get("model") or {}).get("base_width"), "seed": cell["seed"],
            "role": group["role"], "n_tensors": group.get("n_tensors"), "lr": lr,
            "lr_factor": group.get("lr_factor", lr / base_lr if lr is not None else None),
            "weight_decay": wd,
            "wd_factor": group.get("wd_factor", wd / base_wd if wd is not None and base_wd else None),
            "init_factor": group.get("init_factor"), "multiplier": group.get("multiplier"),
            "width_ratio": group.get("width_ratio"),
            "names": ", ".join(names) if isinstance(names, list) else names,
        })
    return rows


def curve_rows(run_id: str, log_file: Path) -> list[dict]:
    if not log_file.exists():
        return []
    rows = []
    for number, line in enumerate(log_file.read_text().splitlines(), start=1):
        if not line:
            continue
        try:
            entry = json.loads(line)
            rows.append({"run_id": run_id, "step": entry["step"], "loss": entry["loss"], "lr": entry["lr"],
                         "grad_norm": entry["grad_norm"], "tokens": entry["tokens"], "tok_s": entry["tok_s"],
                         "val_loss": entry.get("val_loss")})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise IngestError(f"{log_file}, line {number}: {e}; rerun the job that writes it") from e
    return rows


def evaluation_rows(eval_file: str) -> list[dict]:
    """Rows of one eval/*.json; the run is the directory above eval/."""
    payload = _read_json(eval_file)
    run_dir = Path(eval_file).parent.parent
    metrics = _read_json(run_dir / "metrics.json")
    return _per_file(eval_file, lambda: [
        {"run_id": metrics["run_id"], "task": r["task"], "metric": r["metric"], "value": r["value"],
         "stderr": r.get("stderr"), "wall_s": payload.get("wall_s"), "source_file": str(eval_file)}
        for r in payload.get("results", [])
    ])


def rows_file(path: str) -> list[dict]:
    """Generic {"rows": [...]} job file (coordinate checks, benchmarks); each row gets its source."""
    payload = _read_json(path)
    extra = {k: payload[k] for k in ("device", "commit") if k in payload and isinstance(payload[k], str)}
    return _per_file(path, lambda: [{**extra, **row, "source_file": str(path)} for row in payload.get("rows", [])])


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
    return pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)


def claims_table() -> pd.DataFrame:
    """The circulating claim's table (claimed values, never measurements), beside the data it is judged by."""
    return _frame([{**c, "row": i} for i, c in enumerate(CLAIMED_TABLE)],
                  ["row", "variant", "label", "params", "tokens", "wikitext_ppl", "transfer"])


def tables_from_files(metrics_files: list[str], eval_files: list[str], coord_files: list[str],
                      bench_files: list[str], settings: dict) -> dict[str, pd.DataFrame]:
    """Every table of the database, from the job files; raises IngestError naming a bad file."""
    metrics = {f: _read_json(f) for f in metrics_files}
    runs = _frame([_per_file(f, run_row, m, f) for f, m in metrics.items()], RUN_COLUMNS)
    curves = _frame([r for f, m in metrics.items()
                     for r in _per_file(f, curve_rows, m["run_id"], Path(f).parent / "log.jsonl")], CURVE_COLUMNS)
    groups = _frame([r for f, m in metrics.items() for r in _per_file(f, param_group_rows, m)], PARAM_GROUP_COLUMNS)
    evaluations = _frame([r for f in eval_files for r in evaluation_rows(f)], EVALUATION_COLUMNS)
    tables: dict[str, pd.DataFrame] = {"runs": runs, "curves": curves, "param_groups": groups,
                                       "evaluations": evaluations}
    tables["coord"] = _frame([r for f in coord_files for r in rows_file(f)])
    tables.update(bench_tables(bench_files))
    tables.update(derived_tables(runs, tables["coord"], settings))
    tables["claims"] = claims_table()
    tables["meta"] = pd.DataFrame(
        [{"key": k, "value": str(v)} for k, v in {
            "tier": settings.get("tier"), "commit": provenance.git_commit(), "built_at": time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "config": json.dumps(settings, sort_keys=True)}.items()])
    return tables


def build(db_path: Path, metrics_files: list[str], eval_files: list[str], coord_files: list[str],
          bench_files: list[str], settings: dict, manifest: Path | None = None) -> dict[str, int]:
    """Builds the database at `db_path` from the job files; the previous file is replaced only
    when the new one is complete. `manifest`, when given, is written last (see the module doc)."""
    db_path = Path(db_path)
    if manifest is not None:  # the old manifest no longer describes what is on disk once we start
        Path(manifest).unlink(missing_ok=True)
    tables = tables_from_files(metrics_files, eval_files, coord_files, bench_files, settings)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(db_path)
    work = Path(tempfile.mkdtemp(prefix=_build_prefix(db_path) + f"{os.getpid()}.", suffix=".tmp",
                                 dir=db_path.parent))
    try:
        tmp = work / db_path.name
        write_tables(tmp, tables)
        _fsync(tmp)
        os.replace(tmp, db_path)
        _fsync(db_path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {name: len(frame) for name, frame in tables.items()}
    if manifest is not None:
        write_manifest(Path(manifest), db_path, counts)
    return counts


def write_tables(path: Path, tables: dict[str, pd.DataFrame]) -> None:
    con = duckdb.connect(str(path))
    try:
        for name, frame in tables.items():
            if frame.empty and len(frame.columns) == 0:
                con.execute(f'CREATE TABLE "{name}" (source_file VARCHAR)')
                continue
            con.register("frame_view", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame_view')
            con.unregister("frame_view")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _build_prefix(db_path: Path) -> str:
    """Temporary build directories: hidden, named after the database, this host and (appended) the pid."""
    return f".{db_path.name}.{socket.gethostname()}."


def _remove_stale_builds(db_path: Path) -> None:
    """Temporary directories left by killed ingests on this host (their process is gone)."""
    prefix = _build_prefix(db_path)
    for stale in db_path.parent.glob(prefix + "*.tmp"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(manifest: Path, db_path: Path, counts: dict[str, int]) -> None:
    """What the last complete ingest wrote: the database's path, size, sha256 and row counts."""
    payload = {"database": str(db_path), "bytes": db_path.stat().st_size, "sha256": _sha256(db_path),
               "tables": counts, "commit": provenance.git_commit(),
               "built_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(f".{manifest.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, manifest)


def derived_tables(runs: pd.DataFrame, coord: pd.DataFrame, settings: dict) -> dict[str, pd.DataFrame]:
    """Transfer and coordinate-check verdicts, computed by the pure analysis functions.

    Imported here, not at the top: `python -m gdn ingest --help` stays fast, and the coordinate
    check's analysis is only needed when there are coordinate-check rows."""
    out = {}
    if not runs.empty:
        from gdn import transfer

        out.update(transfer.analyze(runs, settings.get("transfer") or {}))
    if not coord.empty:
        from gdn.coordcheck import analyze as analyze_coord

        out.update(analyze_coord(coord, settings.get("coordcheck") or {}))
    return out


def connect(db_path: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    if not Path(db_path).exists():
        manifest = Path(db_path).with_name(Path(db_path).stem + ".ingest.json")
        raise FileNotFoundError(f"{db_path} does not exist: run the ingest step first (snakemake {manifest})")
    return duckdb.connect(str(db_path), read_only=read_only)


def add_arguments(parser) -> None:
    parser.add_argument("--db", required=True, type=Path, help="results/<tier>.duckdb")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="written after the database is in place (the Snakemake rule's declared output)")
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json of every cell")
    parser.add_argument("--evals", nargs="*", default=[], help="eval/*.json files")
    parser.add_argument("--coord", nargs="*", default=[], help="coordinate-check JSON files")
    parser.add_argument("--bench", nargs="*", default=[], help="benchmark JSON files")
    parser.add_argument("--config-json", default="{}", help="tier config (tier, transfer, coordcheck sections)")


def run(args) -> int:
    # A line of its own for every attempt: the log then differs from the last successful one even
    # when an attempt is killed before it prints anything else (workflow/rules/report.smk uses that).
    print(f"ingest into {args.db} started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})", flush=True)
    try:
        counts = build(args.db, args.metrics, args.evals, args.coord, args.bench, json.loads(args.config_json),
                       manifest=args.manifest)
    except IngestError as e:
        print(f"ingest: {e} ({args.db} left as it was)", file=sys.stderr)
        return 1
    print(f"{args.db}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
