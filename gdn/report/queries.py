"""Small read-only queries the sections share."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from gdn.report import export


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    sql = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    return bool(con.execute(sql, [name]).fetchone()[0])


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).df()


def best_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per (variant, width): the completed run with the lowest final validation loss (mean over seeds per LR)."""
    return frame(con, """
        WITH per_lr AS (
            SELECT variant, width, log2_lr, avg(final_val_loss) AS loss, min(run_id) AS run_id,
                   max(params_total) AS params_total, max(params_non_embedding) AS params_non_embedding,
                   max(tokens) AS tokens
            FROM runs WHERE status = 'completed' GROUP BY variant, width, log2_lr)
        SELECT * FROM per_lr
        QUALIFY row_number() OVER (PARTITION BY variant, width ORDER BY loss) = 1
        ORDER BY variant, width""")


def add_table(ctx: dict, name: str, table: pd.DataFrame) -> None:
    """A table a section computed (not in the database), written beside the database's tables and
    linked like them; without a data directory (a section rendered on its own) nothing is written."""
    if ctx.get("data_dir") is not None:
        ctx.setdefault("data", {})[name] = {**export.write_frame(table, name, Path(ctx["data_dir"])), "computed": True}
