"""Matplotlib figures rendered to inline SVG (the report must work offline from file://)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from markupsafe import Markup  # noqa: E402

# Deterministic SVG output: no random ids, text kept as text.
plt.rcParams.update({"svg.hashsalt": "gdn-report", "svg.fonttype": "none", "figure.dpi": 100})


def svg(fig) -> Markup:
    """The figure as an <svg> element (safe to embed unescaped); the figure is closed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    start = text.find("<svg")
    return Markup(text[start:])


def subplots(n_panels: int, panel_size=(3.6, 2.8), max_cols: int = 5, **kwargs):
    cols = min(n_panels, max_cols)
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False, **kwargs)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]
