"""Number and text formatting shared by the HTML and Markdown renderers (same numbers in both)."""

from __future__ import annotations

import math
from typing import Any

DASH = "—"


def num(x: Any, digits: int = 4) -> str:
    """``None`` → —, NaN/Inf spelled out, ints with thousands separators, floats to ``digits``."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
            return f"{x:.{max(1, digits - 2)}e}"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config dict → ``[("lora.r", 8), ...]``; empty dicts/lists and None are skipped."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.extend(flatten(v, key))
            elif v is None or v == [] or v == {}:
                continue
            else:
                out.append((key, v))
    return out


def value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={value(x)}" for k, x in v.items())
    return num(v) if isinstance(v, (int, float)) else str(v)
