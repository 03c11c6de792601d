"""Jinja2 environment for the report (autoescape on: run names and config strings end up in HTML)."""

from __future__ import annotations

from functools import lru_cache

import jinja2


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
