"""Number and text formatting shared by the HTML and Markdown renderers (same numbers in both)."""

from __future__ import annotations

import math
from typing import Any

# The number rule is shared with the terminal commands and the dashboard.
from ..numfmt import DASH, num, pct  # noqa: F401


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
