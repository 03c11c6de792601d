"""The data beside the page: every table of the tier's database as Parquet (and as CSV when it
is small enough to open in a spreadsheet), written into reports/<tier>/data/ and linked from
the report, so every number on the page can be recomputed without the database or torch:

    duckdb -c "SELECT * FROM 'reports/<tier>/data/study_verdict.parquet'"
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd

CSV_MAX_ROWS = 5000


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name").fetchall()]


def export_database(con: duckdb.DuckDBPyConnection, data_dir: Path) -> dict[str, dict]:
    """Writes every table; returns name -> {"rows", "columns", "parquet", "csv"} with paths relative
    to the report (data/<name>.parquet). The directory is emptied first: no stale files from older builds."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    return {name: _export(con, name, data_dir) for name in _tables(con)}


def write_frame(frame: pd.DataFrame, name: str, data_dir: Path) -> dict:
    """A table the report computes (not stored in the database), written the same way."""
    con = duckdb.connect()
    try:
        con.register(name, frame)
        return _export(con, name, data_dir)
    finally:
        con.close()


def _export(con: duckdb.DuckDBPyConnection, name: str, data_dir: Path) -> dict:
    rows = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    columns = len(con.execute(f'SELECT * FROM "{name}" LIMIT 0').description)
    entry = {"rows": rows, "columns": columns, "parquet": f"{data_dir.name}/{name}.parquet", "csv": None}
    _copy(con, name, data_dir / f"{name}.parquet", "FORMAT PARQUET")
    if rows <= CSV_MAX_ROWS:
        _copy(con, name, data_dir / f"{name}.csv", "HEADER")
        entry["csv"] = f"{data_dir.name}/{name}.csv"
    return entry


def _copy(con: duckdb.DuckDBPyConnection, name: str, path: Path, options: str) -> None:
    target = str(path).replace("'", "''")
    con.execute(f'COPY (SELECT * FROM "{name}") TO \'{target}\' ({options})')
