"""Jinja2 environment for the report (autoescape on: run names and config strings end up in HTML)."""

from __future__ import annotations

from functools import lru_cache

import jinja2
import numpy as np
import pandas as pd


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gdn.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.filters["exp_or_none"] = exp_or_none
    env.filters["present"] = present
    env.filters["count"] = format_count
    env.filters["cell"] = format_cell
    env.filters["signed"] = format_signed
    env.filters["si"] = format_si
    env.filters["short_commit"] = short_commit
    return env


def format_number(value, digits: int = 3) -> str:
    """Significant-digit formatting for tables; missing values show as an en dash."""
    if value is None:
        return "–"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if f != f:  # NaN
        return "–"
    if f == 0:
        return "0"
    if abs(f) >= 10 ** digits or abs(f) < 10 ** -(digits - 1):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def _missing(value) -> bool:
    """None, NaN, pandas' NA and NaT (what DuckDB's NULLs become in a data frame)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and value != value


def format_signed(value, decimals: int = 2) -> str:
    """Shifts and other signed quantities at fixed decimals: +0.35, −1.65 (a real minus sign)."""
    if _missing(value):
        return "–"
    text = f"{float(value):+.{decimals}f}"
    return text.replace("-", "−")


def short_commit(commit) -> str:
    """A git hash cut to 10 characters, keeping a '+dirty' suffix (the full hash is in the title)."""
    if _missing(commit):
        return "unknown"
    text = str(commit)
    head, _, suffix = text.partition("+")
    if len(head) == 40 and all(c in "0123456789abcdef" for c in head):
        return head[:10] + (f"+{suffix}" if suffix else "")
    return text


def format_si(value) -> str:
    """Counts the way the claim writes them: 125M, 10B, 6.62M (three significant digits)."""
    if _missing(value):
        return "–"
    f = float(value)
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= factor:
            return f"{f / factor:.3g}{suffix}"
    return f"{f:.3g}"


def format_cell(value) -> str:
    """Any database value in a generic table: booleans as yes/no, integers with separators,
    floats with 4 significant digits, missing as an en dash."""
    if _missing(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}" if abs(int(value)) >= 10000 else str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        return str(int(f)) if f.is_integer() and abs(f) < 1e6 else format_number(f, 4)
    return str(value)


def exp_or_none(value):
    """exp() of a loss for perplexity columns; None (shown as a dash) when the loss is missing."""
    import math

    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return math.exp(f) if f == f and f < 50 else None


def render(template_name: str, **variables) -> str:
    return environment().get_template(template_name).render(**variables)


def present(value) -> str:
    """Optional text cells: missing (None or NaN, as pandas fills gaps) shows as nothing."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def format_count(value) -> str:
    """Integers that pandas may have widened to float (a column with gaps): 2048.0 -> 2,048."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{int(value):,}"
