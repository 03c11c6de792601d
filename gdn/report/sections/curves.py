"""Training and validation loss curves: one panel per variant, one line per width (its best
learning rate), in the page's colour for that width."""

from gdn.claims import VARIANT_LABELS
from gdn.report import plots
from gdn.report.queries import best_runs, frame
from gdn.report.templating import render


def build(con, ctx):
    best = best_runs(con)
    if best.empty:
        return None
    curves = frame(con, "SELECT * FROM curves ORDER BY run_id, step")
    order = list(VARIANT_LABELS)
    variants = sorted(dict.fromkeys(best["variant"]), key=lambda v: (order.index(v) if v in order else 99, v))
    colors = plots.width_colors(frame(con, "SELECT DISTINCT width FROM runs")["width"])
    fig, axes = plots.subplots(len(variants), panel_size=(3.1, 2.6), max_cols=3, sharey=True,
                                 layout="constrained")
    for i, (ax, variant) in enumerate(zip(axes, variants, strict=True)):
        for row in best[best["variant"] == variant].itertuples():
            c = curves[curves["run_id"] == row.run_id]
            color = colors[int(row.width)]
            ax.plot(c["tokens"], c["loss"], label=f"w{row.width}, lr 2^{row.log2_lr:g}", lw=1.2, color=color)
            v = c.dropna(subset=["val_loss"])
            ax.plot(v["tokens"], v["val_loss"], "o", color=color, ms=3.5)
        ax.set_title(VARIANT_LABELS.get(variant, variant))
        ax.set_xlabel("tokens")
        ax.legend(frameon=False)
        if i % 3 == 0:
            ax.set_ylabel("loss (line: train, dots: val)")
    return {"id": "curves", "title": "Loss curves (best learning rate per width)", "nav": "Curves",
            "html": render("sections/curves.html.j2", figure=plots.svg(fig, "curves"))}
