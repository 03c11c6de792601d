"""The μP rules as the runs applied them: each variant's optimizer groups (role, tensors,
learning-rate and weight-decay factors, and init factor and forward multiplier where the run
recorded them), one table per variant, rows by width and role. Read from `param_groups`,
which ingest takes from each run's metrics.json."""

from __future__ import annotations

import pandas as pd

from gdn.claims import VARIANT_LABELS
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render

ROLE_ORDER = ["embedding", "hidden", "gate", "readout", "vector"]
FACTORS = ["n_tensors", "lr_factor", "wd_factor", "init_factor", "multiplier"]


def variant_tables(groups: pd.DataFrame) -> list[dict]:
    """Per variant: one row per (width, role), the factors of one run (they do not depend on the
    learning rate or the seed; a variant whose runs disagree shows every distinct row)."""
    out = []
    for variant in sorted(groups["variant"].unique(), key=lambda v: (list(VARIANT_LABELS).index(v)
                                                                      if v in VARIANT_LABELS else 99, v)):
        g = groups[groups["variant"] == variant]
        present = [c for c in FACTORS if c in g.columns and g[c].notna().any()]
        rows = g[["width", "role", *present]].drop_duplicates()
        rows = rows.assign(order=rows["role"].map({r: i for i, r in enumerate(ROLE_ORDER)}).fillna(len(ROLE_ORDER)))
        rows = rows.sort_values(["width", "order", "role"]).drop(columns="order")
        base = g["base_width"].dropna()
        out.append({"variant": variant, "label": VARIANT_LABELS.get(variant, variant), "table": rows,
                    "base_width": int(base.iloc[0]) if len(base) else None})
    return out


def build(con, ctx):
    if not table_exists(con, "param_groups"):
        return None
    groups = frame(con, "SELECT * FROM param_groups")
    if groups.empty:
        return None
    tables = variant_tables(groups)
    missing = [c for c in ("init_factor", "multiplier") if c not in groups or groups[c].isna().all()]
    html = render("sections/groups.html.j2", tables=tables, missing=missing, ctx=ctx)
    return {"id": "param-groups", "title": "μP parameter groups as trained", "nav": "μP groups", "html": html}
