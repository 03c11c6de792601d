"""μTransfer: validation loss vs learning rate, one line per width, one panel per variant;
the fitted optimum per width and the transfer verdict from the base width to each larger one."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from gdn.claims import VARIANT_LABELS
from gdn.report import plots
from gdn.report.queries import frame, table_exists
from gdn.report.templating import render
from gdn.transfer import grid_points


def _figure(points, optima):
    variants = list(dict.fromkeys(points["variant"]))
    fig, axes = plots.subplots(len(variants), sharey=True)
    finite = points["loss"].dropna()
    # Diverged cells are drawn as crosses just above the highest finite loss of the figure.
    top = float(finite.max()) + 0.05 * float(finite.max() - finite.min() or 1.0) if not finite.empty else 1.0
    widths = sorted(points["width"].unique())
    colors = dict(zip(widths, colormaps["viridis"](np.linspace(0.0, 0.9, len(widths))), strict=True))
    for ax, variant in zip(axes, variants, strict=True):
        for width in widths:
            g = points[(points["variant"] == variant) & (points["width"] == width)].sort_values("log2_lr")
            if g.empty:
                continue
            ok = g[~g["diverged"]]
            ax.plot(ok["log2_lr"], ok["loss"], "o-", color=colors[width], ms=3, lw=1.2, label=f"width {width}")
            bad = g[g["diverged"]]
            ax.plot(bad["log2_lr"], [top] * len(bad), "x", color=colors[width], ms=6, mew=1.5)
            opt = optima[(optima["variant"] == variant) & (optima["width"] == width)]
            if len(opt) and np.isfinite(opt["opt_log2_lr"].iloc[0]):
                ax.plot(opt["opt_log2_lr"], opt["fit_loss"], "*", color=colors[width], ms=9, mec="black", mew=0.5)
        ax.set_title(VARIANT_LABELS.get(variant, variant), fontsize=9)
        ax.set_xlabel("log2 learning rate")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("final validation loss (nats)")
    return plots.svg(fig)


def build(con, ctx):
    if not table_exists(con, "runs"):
        return None
    runs = frame(con, "SELECT variant, width, log2_lr, seed, status, final_val_loss FROM runs")
    points = grid_points(runs)
    if points.empty:
        return None
    if not table_exists(con, "lr_optima"):
        return None
    optima = frame(con, "SELECT * FROM lr_optima ORDER BY variant, width")
    transfer = None
    if table_exists(con, "transfer"):
        transfer = frame(con, "SELECT * FROM transfer ORDER BY variant, target_width")
    if optima.empty:
        return None
    thresholds = None
    if transfer is not None and not transfer.empty:
        thresholds = {"max_shift_octaves": transfer["max_shift_octaves"].iloc[0],
                      "max_regret_nats": transfer["max_regret_nats"].iloc[0]}
    html = render(
        "sections/transfer.html.j2",
        figure=_figure(points, optima),
        optima=optima,
        transfer=transfer if transfer is not None else optima.iloc[0:0],
        thresholds=thresholds,
        labels=VARIANT_LABELS,
        ctx=ctx,
    )
    return {"id": "transfer", "title": "Learning-rate transfer across width", "html": html}
