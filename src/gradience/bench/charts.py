"""Bench pictures as static SVG (the report package's chart primitives; no torch).

* :func:`tradeoff_chart`: the metric against LoRA parameters, one point per variant and seed
  (the trade-off a reader wants to see next to the table);
* :func:`curve_chart`: each seed's probe learning curve on the validation slice (the plateau rule's
  evidence).

Both take a ``bench.json`` object and return one ``<svg>`` element, or ``""`` without data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..report.svg import PALETTE, Series, line_chart

__all__ = ["curve_chart", "tradeoff_chart"]


def _scatter(name: str, pts: list[tuple[float, float]], color: str) -> Series:
    """Points without lines: a NaN after every point lifts the pen."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in pts:
        xs += [x, x]
        ys += [y, math.nan]
    return Series(name, xs, ys, color=color, points=True)


def tradeoff_chart(bench: Mapping[str, Any]) -> str:
    """Metric (percent) against LoRA parameters (thousands), one point per variant and seed."""
    metric = (bench.get("task") or {}).get("metric", "metric")
    groups: list[tuple[str, list[tuple[float, float]]]] = []
    probe = [(row["lora_params"] / 1000, 100 * row["value"]) for row in (bench.get("probe") or {}).values()
             if row.get("lora_params") is not None and row.get("value") is not None]
    if probe:
        groups.append(("probe", probe))
    for name, by_seed in (bench.get("variants") or {}).items():
        pts = [(row["lora_params"] / 1000, 100 * row["value"]) for row in by_seed.values()
               if row.get("lora_params") is not None and row.get("value") is not None and not row.get("same_as")]
        if pts:
            groups.append((name, pts))
    if not groups:
        return ""
    series = [_scatter(name, pts, PALETTE[i % len(PALETTE)]) for i, (name, pts) in enumerate(groups)]
    xmax = max(x for _, pts in groups for x, _ in pts)
    return line_chart("bench-tradeoff", series, title=f"{metric} against LoRA parameters, per variant and seed",
                      x_label="LoRA parameters (thousands)", y_label=f"{metric} (%)",
                      x_range=(0.0, xmax * 1.05))


def curve_chart(bench: Mapping[str, Any]) -> str:
    """Each seed's probe score on the validation slice against the optimizer step."""
    metric = (bench.get("task") or {}).get("metric", "metric")
    series = []
    for i, (seed, row) in enumerate(sorted((bench.get("probe") or {}).items(), key=lambda kv: int(kv[0]))):
        curve = (row.get("plateau") or {}).get("curve") or []
        if curve:
            series.append(Series(f"seed {seed}", [float(p["step"]) for p in curve],
                                 [100 * float(p["value"]) for p in curve], color=PALETTE[i % len(PALETTE)],
                                 points=True))
    if not series:
        return ""
    return line_chart("bench-probe-curve", series, title=f"probe {metric} on the validation slice (from the train file)",
                      x_label="step", y_label=f"{metric} (%)")
