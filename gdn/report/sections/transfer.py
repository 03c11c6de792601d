"""μTransfer, in pictures: the optimal log2 learning rate against width per variant (with its
confidence interval), then validation loss against learning rate, one panel per variant, every
seed's run and the seed means, one colour per width, the fitted optimum marked. The tables
behind them (`lr_optima`, `transfer`) follow, folded.

Works with the analysis' current tables and with an older database's (no CIs: no bars).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from gdn.claims import VARIANT_LABELS
from gdn.report import plots
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render

OPTIMA_COLUMNS = ["variant", "width", "n_seeds", "n_points", "n_fit_points", "n_diverged", "grid_min", "grid_max",
                  "argmin_log2_lr", "best_grid_loss", "opt_log2_lr", "opt_ci_low", "opt_ci_high", "fit_loss",
                  "curvature", "convex", "inside_grid", "seed_sd"]
TRANSFER_COLUMNS = ["variant", "base_width", "target_width", "base_opt_log2_lr", "target_opt_log2_lr", "shift",
                    "shift_ci_low", "shift_ci_high", "ci_level", "regret", "regret_ci_low", "regret_ci_high",
                    "diverged_at_base_lr", "raw_verdict", "verdict", "reason"]


def _num(value) -> float:
    """A float, NaN for anything missing (NULL, None, pandas' NA)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _has_ci(r: dict) -> bool:
    return np.isfinite(_num(r.get("opt_ci_low"))) and np.isfinite(_num(r.get("opt_ci_high")))


def _title(variant: str, verdicts: dict) -> str:
    """The variant's label (wrapped to the panel) and, where judged, its verdict."""
    label = "\n".join(textwrap.wrap(VARIANT_LABELS.get(variant, variant), 26))
    return f"{label}\n— {verdicts[variant]} —" if variant in verdicts else label


def _trusted(row) -> bool:
    """An optimum the fit can vouch for: inside the grid on a convex curve (older tables: fit_ok)."""
    if "inside_grid" in row and "convex" in row:
        return bool(row["inside_grid"]) and bool(row["convex"])
    return bool(row.get("fit_ok", True)) and not bool(row.get("at_grid_edge", False))


def _width_axis(ax, widths) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths)
    ax.set_xticklabels([str(w) for w in widths])
    ax.minorticks_off()


def optima_figure(optima: pd.DataFrame, variants: list[str], colors: dict, verdicts: dict):
    """Optimal log2 LR against width, one panel per variant, CI bars; hollow markers: at the grid
    edge or on a non-convex curve; dashed line: the base width's optimum (perfect transfer)."""
    fig, axes = plots.subplots(len(variants), panel_size=(3.1, 2.9), max_cols=3, sharey=True, layout="constrained")
    widths = sorted(int(w) for w in optima["width"].unique())
    for ax, variant in zip(axes, variants, strict=True):
        rows = optima[optima["variant"] == variant].sort_values("width")
        finite = rows[np.isfinite(rows["opt_log2_lr"].map(_num))]
        if {"grid_min", "grid_max"} <= set(rows.columns) and len(rows):
            ax.axhspan(rows["grid_min"].min(), rows["grid_max"].max(), color="#eef1f6", zorder=0, lw=0)
        if len(finite):
            ax.plot(finite["width"], finite["opt_log2_lr"], "-", color="#8a93a3", lw=1, zorder=1)
            ax.axhline(float(finite["opt_log2_lr"].iloc[0]), color="#8a93a3", lw=0.9, ls="--", zorder=1)
        for r in finite.to_dict("records"):
            color = colors[int(r["width"])]
            if _has_ci(r):
                ax.errorbar([r["width"]], [r["opt_log2_lr"]],
                            yerr=[[r["opt_log2_lr"] - r["opt_ci_low"]], [r["opt_ci_high"] - r["opt_log2_lr"]]],
                            color=color, lw=1.6, capsize=3, zorder=2)
            trusted = _trusted(r)
            ax.plot([r["width"]], [r["opt_log2_lr"]], "o", ms=7, color=color, mec=color,
                    mfc=color if trusted else "white", mew=1.6, zorder=3)
        _width_axis(ax, widths)
        ax.set_title(_title(variant, verdicts))
        ax.set_xlabel("width")
    axes[0].set_ylabel("optimal log2 LR")
    if len(axes) > 3:
        axes[3].set_ylabel("optimal log2 LR")
    handles = [Line2D([], [], marker="o", ls="", color="#555", label="fitted optimum (bar: CI)"),
               Line2D([], [], marker="o", ls="", color="#555", mfc="white", label="at grid edge / not convex"),
               Line2D([], [], ls="--", color="#8a93a3", label="base width's optimum")]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, frameon=False)
    return plots.svg(fig, "optima")


def loss_figure(points: pd.DataFrame, optima: pd.DataFrame, variants: list[str], colors: dict, verdicts: dict):
    """Final validation loss against log2 LR: small dots every seed's run, lines the seed means,
    crosses at the top diverged runs, diamonds the fitted optimum with its CI as a bar."""
    fig, axes = plots.subplots(len(variants), panel_size=(3.1, 3.0), max_cols=3, layout="constrained")
    markers = plots.width_markers(colors)
    for ax, variant in zip(axes, variants, strict=True):
        p = points[points["variant"] == variant]
        ok = p[~p["failed"]]
        if ok.empty:
            ax.set_title(_title(variant, verdicts))
            continue
        low, high = float(ok["loss"].min()), float(ok["loss"].max())
        top = min(high, low + 1.5) + 0.04 * max(min(high - low, 1.5), 0.1)
        for width in sorted(p["width"].unique()):
            color = colors[int(width)]
            g = ok[ok["width"] == width]
            ax.plot(g["log2_lr"], g["loss"].clip(upper=top), ".", color=color, ms=4, alpha=0.55, zorder=2)
            means = g.groupby("log2_lr")["loss"].mean()
            ax.plot(means.index, means.clip(upper=top).values, "-", marker=markers[int(width)], ms=3.5, lw=1.3,
                    color=color, zorder=3)
            bad = p[(p["width"] == width) & p["failed"]]
            ax.plot(bad["log2_lr"], [top] * len(bad), "x", color=color, ms=6, mew=1.5, zorder=3)
            opt = optima[(optima["variant"] == variant) & (optima["width"] == width)]
            if len(opt) and np.isfinite(_num(opt["opt_log2_lr"].iloc[0])):
                r = opt.iloc[0].to_dict()
                y = _num(r.get("fit_loss"))
                y = float(means.min()) if not np.isfinite(y) else y
                if _has_ci(r):
                    ax.plot([r["opt_ci_low"], r["opt_ci_high"]], [y, y], "-", color=color, lw=3, alpha=0.45,
                            solid_capstyle="butt", zorder=4)
                ax.plot([r["opt_log2_lr"]], [y], "D", ms=7, color=color, mec="black", mew=0.8,
                        mfc=color if _trusted(r) else "white", zorder=5)
        ax.set_ylim(low - 0.04 * max(top - low, 0.1), top + 0.02 * max(top - low, 0.1))
        ax.set_title(_title(variant, verdicts))
        ax.set_xlabel("log2 learning rate")
    for i, ax in enumerate(axes):
        if i % 3 == 0:
            ax.set_ylabel("final val loss (nats)")
    handles = [Line2D([], [], color=c, marker=markers[w], lw=1.3, label=f"width {w}") for w, c in colors.items()
               if w in set(points["width"].astype(int))]
    handles += [Line2D([], [], marker=".", ls="", color="#555", label="one seed"),
                Line2D([], [], marker="D", ls="", color="#999", mec="black", label="optimum (bar: CI)"),
                Line2D([], [], marker="x", ls="", color="#555", label="diverged")]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), frameon=False)
    return plots.svg(fig, "loss-vs-lr")


def seed_points(con) -> pd.DataFrame:
    """Every finished run: its loss, or failed (diverged, or a non-finite loss)."""
    runs = frame(con, "SELECT variant, width, log2_lr, seed, status, final_val_loss FROM runs "
                      "WHERE status IN ('completed', 'diverged')")
    loss = pd.to_numeric(runs["final_val_loss"], errors="coerce").astype(float)
    failed = (runs["status"] == "diverged") | ~np.isfinite(loss)
    return runs.assign(loss=loss.where(~failed), failed=failed, width=runs["width"].astype(int))


def _columns(table: pd.DataFrame, preferred: list[str]) -> pd.DataFrame:
    present = [c for c in preferred if c in table.columns]
    return table[present + [c for c in table.columns if c not in present]]


def build(con, ctx):
    if not (table_exists(con, "runs") and table_exists(con, "lr_optima")):
        return None
    points = seed_points(con)
    optima = frame(con, "SELECT * FROM lr_optima ORDER BY variant, width")
    if points.empty or optima.empty:
        return None
    transfer = frame(con, "SELECT * FROM transfer ORDER BY variant, target_width") \
        if table_exists(con, "transfer") else None
    verdicts = {}
    if table_exists(con, "study_verdict"):
        verdicts = dict(frame(con, "SELECT variant, verdict FROM study_verdict").itertuples(index=False))
    variants = list(dict.fromkeys(sorted(points["variant"].unique(), key=_variant_order)))
    colors = plots.width_colors(frame(con, "SELECT DISTINCT width FROM runs")["width"])
    optima_variants = [v for v in variants if v in set(optima["variant"])]
    html = render(
        "sections/transfer.html.j2",
        optima_figure=optima_figure(optima, optima_variants, colors, verdicts) if optima_variants else None,
        loss_figure=loss_figure(points, optima, variants, colors, verdicts),
        optima=_columns(optima, OPTIMA_COLUMNS),
        transfer=None if transfer is None or transfer.empty else _columns(transfer, TRANSFER_COLUMNS),
        has_ci="opt_ci_low" in optima.columns,
        ctx=ctx,
    )
    return {"id": "transfer", "title": "Learning-rate transfer across width", "nav": "Transfer", "html": html}


def _variant_order(variant: str) -> tuple:
    order = list(VARIANT_LABELS)
    return (order.index(variant) if variant in order else math.inf, variant)
