"""Coordinate check: mean |x| of each module family against width, per step, log-log, one
figure per variant; and the fitted slopes with the modules the rules flag."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import NullFormatter

from gdn.claims import VARIANT_LABELS
from gdn.coordcheck import MODULES
from gdn.report import plots
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render

# Panels in this order where a variant has them; the rest of MODULES is in the slope table only.
PANEL_MODULES = ["embedding", "mixer", "mlp", "state", "gate_a", "gate_b", "decay_g", "beta", "logits",
                 "delta_gate_a", "delta_gate_b", "delta_logits"]


def _variant_figure(rows: pd.DataFrame, variant: str):
    present = [m for m in PANEL_MODULES if m in set(rows["module"])]
    fig, axes = plots.subplots(len(present), panel_size=(2.7, 2.2), max_cols=6)
    steps = sorted(rows["step"].unique())
    colors = dict(zip(steps, colormaps["viridis"](np.linspace(0.0, 0.9, len(steps))), strict=True))
    for ax, module in zip(axes, present, strict=True):
        g = rows[(rows["module"] == module) & (rows["mean_abs"] > 0)]
        means = g.groupby(["step", "width"])["mean_abs"].mean().reset_index()
        for step, s in means.groupby("step"):
            ax.plot(s["width"], s["mean_abs"], "o-", ms=2.5, lw=1.1, color=colors[step], label=f"step {step}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _square_decades(ax, means)
        rule = MODULES.get(module, ("", "info"))[1]
        ax.set_title(f"{module} ({rule})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("width", fontsize=7)
    if axes:
        axes[0].set_ylabel("mean |x|", fontsize=8)
        axes[0].legend(fontsize=6)
    fig.suptitle(VARIANT_LABELS.get(variant, variant), fontsize=9)
    fig.tight_layout()
    return plots.svg(fig)


def _square_decades(ax, means: pd.DataFrame) -> None:
    """Give the y axis at least the x axis's span in log units, so a flat line looks flat and
    slope 1 looks like a diagonal: the eye then reads exponents, not autoscaled wiggles."""
    if means.empty:
        return
    x_span = np.log2(means["width"].max() / means["width"].min())
    lo, hi = np.log2(means["mean_abs"].min()), np.log2(means["mean_abs"].max())
    pad = max(0.0, x_span - (hi - lo)) / 2 + 0.1 * max(hi - lo, 1.0)
    ax.set_ylim(2 ** (lo - pad), 2 ** (hi + pad))
    ax.yaxis.set_minor_formatter(NullFormatter())


def slope_matrix(slopes: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, module): rule, and per step the slope, tolerance and flag (judged rows flag)."""
    rows = []
    for (variant, module), g in slopes.groupby(["variant", "module"], sort=False):
        cells = {int(r.step): {"slope": r.slope, "tolerance": r.tolerance, "flagged": bool(r.flagged)}
                 for r in g.itertuples()}
        rows.append({"variant": variant, "module": module, "rule": g["rule"].iloc[0],
                     "judged": bool(g["judged"].iloc[0]), "cells": cells})
    return pd.DataFrame(rows)


def build(con, ctx):
    if not (table_exists(con, "coord") and table_exists(con, "coord_slopes")):
        return None
    coord = frame(con, "SELECT variant, width, seed, step, module, mean_abs FROM coord")
    slopes = frame(con, "SELECT * FROM coord_slopes")
    if coord.empty or slopes.empty:
        return None
    order = {m: i for i, m in enumerate(MODULES)}
    slopes = slopes.assign(order=slopes["module"].map(order).fillna(len(order))).sort_values(
        ["variant", "judged", "order", "step"], ascending=[True, False, True, True])
    verdicts = None
    if table_exists(con, "coord_verdict"):
        verdicts = frame(con, "SELECT * FROM coord_verdict ORDER BY variant")
    variants = sorted(coord["variant"].unique())
    figures = [{"variant": v, "svg": _variant_figure(coord[coord["variant"] == v], v)} for v in variants]
    steps = sorted(int(s) for s in slopes["step"].unique())
    html = render(
        "sections/coord.html.j2",
        figures=figures,
        matrix=slope_matrix(slopes[slopes["module"] != "loss"]),
        steps=steps,
        verdicts=verdicts,
        widths=sorted(int(w) for w in coord["width"].unique()),
        labels=VARIANT_LABELS,
    )
    return {"id": "coord", "title": "Coordinate check", "html": html}
