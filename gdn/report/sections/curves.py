"""Training and validation loss curves: one panel per variant, one line per width (best LR)."""

from gdn.claims import VARIANT_LABELS
from gdn.report import plots
from gdn.report.queries import best_runs, frame
from gdn.report.templating import render


def build(con, ctx):
    best = best_runs(con)
    if best.empty:
        return None
    curves = frame(con, "SELECT * FROM curves ORDER BY run_id, step")
    variants = list(dict.fromkeys(best["variant"]))
    fig, axes = plots.subplots(len(variants), sharey=True)
    for ax, variant in zip(axes, variants):
        for row in best[best["variant"] == variant].itertuples():
            c = curves[curves["run_id"] == row.run_id]
            line = ax.plot(c["tokens"], c["loss"], label=f"w{row.width} (lr 2^{row.log2_lr:g})", lw=1.2)[0]
            v = c.dropna(subset=["val_loss"])
            ax.plot(v["tokens"], v["val_loss"], "o", color=line.get_color(), ms=3)
        ax.set_title(VARIANT_LABELS.get(variant, variant), fontsize=9)
        ax.set_xlabel("tokens")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("train loss (lines), val loss (dots)")
    return {"id": "curves", "title": "Loss curves (best learning rate per width)",
            "html": render("sections/curves.html.j2", figure=plots.svg(fig))}
