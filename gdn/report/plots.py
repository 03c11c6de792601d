"""Matplotlib figures rendered to inline SVG (the report must work offline from file://).

Every figure of the page shares one look: fonts of at least 10 pt, and one colour per width
(`width_colors`), the same in every figure. Figures are at most `MAX_WIDTH_IN` wide so that a
1024-pixel window shows them unscaled (a scaled-down SVG shrinks its text with it).
"""

from __future__ import annotations

import hashlib
import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from markupsafe import Markup  # noqa: E402

MAX_WIDTH_IN = 9.4
FONT_PT = 10

# Deterministic SVG output: no random ids, text kept as text.
plt.rcParams.update({
    "svg.hashsalt": "gdn-report", "svg.fonttype": "none", "figure.dpi": 100,
    "font.size": FONT_PT, "axes.titlesize": FONT_PT + 1, "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT, "figure.titlesize": FONT_PT + 1,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
})

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), yellow left out
# for contrast on white; widths beyond eight reuse them with another marker shape.
WIDTH_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999"]
WIDTH_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]


def width_colors(widths) -> dict[int, str]:
    """One colour per width, by the width's rank among all widths of the tier (pass them all)."""
    ordered = sorted({int(w) for w in widths})
    return {w: WIDTH_PALETTE[i % len(WIDTH_PALETTE)] for i, w in enumerate(ordered)}


def width_markers(widths) -> dict[int, str]:
    ordered = sorted({int(w) for w in widths})
    return {w: WIDTH_MARKERS[(i // len(WIDTH_PALETTE) + i) % len(WIDTH_MARKERS)] for i, w in enumerate(ordered)}


_ID = re.compile(r'\bid="([^"]+)"')


def svg(fig, name: str | None = None) -> Markup:
    """The figure as an <svg> element (safe to embed unescaped); the figure is closed.

    Matplotlib names clip paths and glyphs with the same hashes in every figure, so the ids of
    each figure get a prefix of their own (`name`, or a hash of the figure's SVG): ids stay
    unique when several figures are inlined in one page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.find("<svg"):]
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name) if name else "f" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return Markup(prefix_ids(text, prefix))


def prefix_ids(text: str, prefix: str) -> str:
    """Every id="x" of an SVG document becomes id="<prefix>-x", with its references (#x)."""
    ids = set(_ID.findall(text))
    if not ids:
        return text

    def reference(match: re.Match) -> str:
        target = match.group(2)
        return f"{match.group(1)}#{prefix}-{target}" if target in ids else match.group(0)

    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    return re.sub(r'((?:href="|url\())#([^")]+)', reference, text)


def subplots(n_panels: int, panel_size=(3.0, 2.5), max_cols: int = 3, **kwargs):
    """A grid of panels, `max_cols` to a row; unused cells of the grid are hidden. Keep
    panel_size[0] * max_cols within MAX_WIDTH_IN for text that is shown at its size."""
    cols = max(1, min(n_panels, max_cols))
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False,
                             **kwargs)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]
