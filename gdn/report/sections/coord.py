"""Coordinate check: the judged slopes with their confidence intervals, the GDN gate logits split
into init part / update part / W0 dx term against width, the Transformer's attention logits, and
per variant the mean |x| of each module family against width at every recorded step."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import NullFormatter

from gdn.claims import VARIANT_LABELS
from gdn.coordcheck import CI_LEVEL, GATE_PARTS, MODULES
from gdn.report import plots
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render

# Panels of the per-variant figures, in this order where a variant has them (the judged modules);
# the gate parts have a figure of their own and the rest of MODULES is in the slope tables.
PANEL_MODULES = ["embedding", "mixer", "mlp", "state", "attn_logits", "delta_logits",
                 "gate_a_update", "gate_b_update", "gate_a_w0dx", "gate_b_w0dx"]
GATE_VARIANTS = ["gdn_sp", "gdn_mup", "gdn_mup_nogn"]
PART_TITLES = {"init": "init part c·W⁰·x_t", "update": "update part c·(W_t−W⁰)·x_t", "w0dx": "c·W⁰·(x_t−x_0)"}
VARIANT_STYLE = {"transformer_sp": ("#D55E00", "s"), "transformer_mup": ("#0072B2", "o"),
                 "gdn_sp": ("#D55E00", "s"), "gdn_mup": ("#0072B2", "o"), "gdn_mup_nogn": ("#009E73", "^")}


def _log_axes(ax, means: pd.DataFrame) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _square_decades(ax, means)
    ax.set_xlabel("width")


def _variant_figure(rows: pd.DataFrame, variant: str):
    present = [m for m in PANEL_MODULES if m in set(rows["module"])]
    if not present:
        return None
    fig, axes = plots.subplots(len(present), panel_size=(3.1, 2.5), max_cols=3)
    steps = sorted(rows["step"].unique())
    colors = dict(zip(steps, colormaps["viridis"](np.linspace(0.0, 0.9, len(steps))), strict=True))
    for ax, module in zip(axes, present, strict=True):
        g = rows[(rows["module"] == module) & (rows["mean_abs"] > 0)]
        means = g.groupby(["step", "width"])["mean_abs"].mean().reset_index()
        for step, s in means.groupby("step"):
            ax.plot(s["width"], s["mean_abs"], "o-", ms=3, lw=1.2, color=colors[step], label=f"step {step}")
        _log_axes(ax, means)
        ax.set_title(f"{module} ({MODULES.get(module, ('', 'info'))[1]})")
    axes[0].set_ylabel("mean |x|")
    axes[0].legend(fontsize=9, ncol=2)
    fig.suptitle(VARIANT_LABELS.get(variant, variant))
    fig.tight_layout()
    return plots.svg(fig)


def _last_step_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, module, width) at each variant's last recorded step: seed mean, min and max."""
    last = rows.groupby("variant")["step"].transform("max")
    g = rows[(rows["step"] == last) & (rows["mean_abs"] > 0)]
    return g.groupby(["variant", "module", "width"])["mean_abs"].agg(["mean", "min", "max"]).reset_index()


def _lines(ax, stats: pd.DataFrame, variants: list[str]) -> None:
    for variant in variants:
        s = stats[stats["variant"] == variant].sort_values("width")
        if s.empty:
            continue
        color, marker = VARIANT_STYLE.get(variant, ("#000000", "o"))
        ax.errorbar(s["width"], s["mean"], yerr=[s["mean"] - s["min"], s["max"] - s["mean"]], color=color,
                    marker=marker, ms=4, lw=1.3, capsize=2, label=VARIANT_LABELS.get(variant, variant))


def _guides(ax, stats: pd.DataFrame) -> None:
    """Faint slope-0 and slope-+½ lines from the smallest width's mean over the plotted variants."""
    if stats.empty:
        return
    w0 = stats["width"].min()
    y0 = float(np.exp(np.log(stats[stats["width"] == w0]["mean"]).mean()))
    w = np.array([w0, stats["width"].max()], dtype=float)
    ax.plot(w, [y0, y0], ls=":", color="#999999", lw=1, label="slope 0")
    ax.plot(w, y0 * (w / w0) ** 0.5, ls="--", color="#999999", lw=1, label="slope +½")


def gate_figure(rows: pd.DataFrame):
    """Rows a, b; columns init part, update part, W0 dx term; one line per GDN variant, last step."""
    variants = [v for v in GATE_VARIANTS if v in set(rows["variant"])]
    if not variants or "gate_a_w0dx" not in set(rows["module"]):
        return None
    stats = _last_step_means(rows[rows["variant"].isin(variants)])
    fig, axes = plots.subplots(6, panel_size=(3.1, 2.5), max_cols=3, layout="constrained")
    for i, (gate, (_total, init, update, w0dx)) in enumerate(GATE_PARTS.items()):
        for j, (part, module) in enumerate((("init", init), ("update", update), ("w0dx", w0dx))):
            ax = axes[3 * i + j]
            s = stats[stats["module"] == module]
            _lines(ax, s, variants)
            _guides(ax, s)
            _log_axes(ax, s)
            ax.set_title(f"{gate[-1]}: {PART_TITLES[part]}", fontsize=10)
    axes[0].set_ylabel("mean |x|, last step")
    axes[3].set_ylabel("mean |x|, last step")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=9)
    return plots.svg(fig)


def attention_figure(rows: pd.DataFrame):
    """Mean |q·k·scale| against width, at init and at the last step, per Transformer variant."""
    att = rows[(rows["module"] == "attn_logits") & (rows["mean_abs"] > 0)]
    if att.empty:
        return None
    variants = sorted(att["variant"].unique())
    fig, axes = plots.subplots(2, panel_size=(3.6, 2.7), max_cols=2, layout="constrained")
    first = att[att["step"] == 0].groupby(["variant", "width"])["mean_abs"].agg(["mean", "min", "max"]).reset_index()
    for ax, (title, stats) in zip(axes, (("init (step 0)", first), ("last step", _last_step_means(att))),
                                  strict=True):
        _lines(ax, stats, variants)
        _guides(ax, stats)
        _log_axes(ax, stats)
        ax.set_title(f"attention logits, {title}", fontsize=10)
    axes[0].set_ylabel("mean |q·k·scale|")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9)
    return plots.svg(fig)


def _square_decades(ax, means: pd.DataFrame) -> None:
    """Give the y axis at least the x axis's span in log units, so a flat line looks flat and
    slope 1 looks like a diagonal: the eye then reads exponents, not autoscaled wiggles."""
    col = "mean" if "mean" in means else "mean_abs"
    if means.empty:
        return
    lo_col = "min" if "min" in means else col
    hi_col = "max" if "max" in means else col
    x_span = np.log2(means["width"].max() / means["width"].min())
    lo, hi = np.log2(means[lo_col].min()), np.log2(means[hi_col].max())
    pad = max(0.0, x_span - (hi - lo)) / 2 + 0.1 * max(hi - lo, 1.0)
    ax.set_ylim(2 ** (lo - pad), 2 ** (hi + pad))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _cell(r) -> dict:
    return {"slope": r.slope, "low": r.slope_ci_low, "high": r.slope_ci_high, "status": r.status,
            "judged": bool(r.judged)}


def slope_matrix(slopes: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, module): rule, and per step the slope, its CI and status."""
    rows = []
    for (variant, module), g in slopes.groupby(["variant", "module"], sort=False):
        cells = {int(r.step): _cell(r) for r in g.itertuples()}
        rows.append({"variant": variant, "module": module, "rule": g["rule"].iloc[0],
                     "judged": bool(g["judged"].any()), "cells": cells})
    return pd.DataFrame(rows, columns=["variant", "module", "rule", "judged", "cells"])


def last_step_judged(slopes: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """The judged slopes at each variant's last step (what the verdict is made of): one row per
    module, one column per variant."""
    last = slopes[(slopes["step"] == slopes.groupby("variant")["step"].transform("max"))
                  & slopes["judged"].astype(bool)]
    variants = sorted(last["variant"].unique())
    modules = [m for m in MODULES if m in set(last["module"])]
    modules += sorted(set(last["module"]) - set(modules))
    rows = []
    for module in modules:
        hit = last[last["module"] == module]
        rows.append({"module": module, "rule": hit["rule"].iloc[0],
                     "cells": {r.variant: _cell(r) for r in hit.itertuples()}})
    return variants, rows


def gate_table(slopes: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """Rows: the gate parts (and the total change); columns: GDN variants; last step's slope and CI."""
    variants = [v for v in GATE_VARIANTS if v in set(slopes["variant"])]
    last = slopes[slopes["step"] == slopes.groupby("variant")["step"].transform("max")]
    out = []
    for gate, (_total, init, update, w0dx) in GATE_PARTS.items():
        for module in (init, update, w0dx, f"delta_{gate}"):
            cells = {}
            for variant in variants:
                hit = last[(last["variant"] == variant) & (last["module"] == module)]
                if not hit.empty:
                    cells[variant] = _cell(next(hit.itertuples()))
            if cells:
                out.append({"module": module, "rule": MODULES.get(module, ("", "info"))[1], "cells": cells})
    return variants, out


def build(con, ctx):
    if not (table_exists(con, "coord") and table_exists(con, "coord_slopes")):
        return None
    coord = frame(con, "SELECT * FROM coord")
    slopes = frame(con, "SELECT * FROM coord_slopes")
    if coord.empty or slopes.empty:
        return None
    if "status" not in slopes:  # a database ingested before slopes had confidence intervals
        slopes["status"] = np.where(slopes["flagged"], "flagged", "ok")
        slopes["slope_ci_low"] = slopes["slope_ci_high"] = np.nan
    order = {m: i for i, m in enumerate(MODULES)}
    slopes = slopes.assign(order=slopes["module"].map(order).fillna(len(order))).sort_values(
        ["variant", "order", "step"])
    verdicts = None
    if table_exists(con, "coord_verdict"):
        verdicts = frame(con, "SELECT * FROM coord_verdict ORDER BY variant")
    variants = sorted(coord["variant"].unique())
    figures = [{"variant": v, "svg": svg} for v in variants
               if (svg := _variant_figure(coord[coord["variant"] == v], v)) is not None]
    steps = sorted(int(s) for s in slopes["step"].unique())
    learning_rates = {}
    if "log2_lr" in coord:
        learning_rates = {v: float(g["log2_lr"].dropna().iloc[0]) for v, g in coord.groupby("variant")
                          if g["log2_lr"].notna().any()}
    gate_variants, gate_rows = gate_table(slopes)
    judged_variants, judged_rows = last_step_judged(slopes)
    tolerance = float(slopes["tolerance"].iloc[0]) if "tolerance" in slopes else float("nan")
    html = render(
        "sections/coord.html.j2",
        figures=figures,
        gate_svg=gate_figure(coord),
        attention_svg=attention_figure(coord),
        gate_variants=gate_variants,
        gate_rows=gate_rows,
        judged_variants=judged_variants,
        judged_rows=judged_rows,
        matrix=slope_matrix(slopes[slopes["module"] != "loss"]),
        steps=steps,
        verdicts=verdicts,
        widths=sorted(int(w) for w in coord["width"].unique()),
        n_seeds=int(coord["seed"].nunique()),
        learning_rates=learning_rates,
        ci_level=CI_LEVEL,
        tolerance=tolerance,
        labels=VARIANT_LABELS,
    )
    return {"id": "coord", "title": "Coordinate check", "html": html}
