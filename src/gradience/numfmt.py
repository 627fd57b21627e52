"""How Gradience shows a number to a person: one rule for the terminal commands, the live
dashboard and the HTML/Markdown report, so the same value reads the same everywhere.

``None`` → ``—``; ints with thousands separators; floats with ``digits`` significant
digits, thousands separators from 1,000, scientific below 1e-3 and from 1e6; NaN and
±Infinity spelled out (the dashboard passes ``inf="Inf"`` to save columns).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DASH", "num", "pct"]

DASH = "—"


def num(x: Any, digits: int = 4, *, inf: str = "Infinity") -> str:
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if not isinstance(x, float):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return inf if x > 0 else "-" + inf
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
        return f"{x:.{max(1, digits - 2)}e}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def pct(x: float | None, digits: int = 1) -> str:
    """``0.917`` → ``91.7%``; ``—`` when missing or not finite."""
    return DASH if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"
