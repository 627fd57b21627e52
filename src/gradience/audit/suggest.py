"""Rank suggestions: global, per module, and budgeted allocation (pure functions).

Every suggestion keeps each module's scale s = α/r (α/√r with rsLoRA): the suggested α is
s·k (s·√k), so the retained directions of ΔW keep their magnitude.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import AdapterFormatError
from .naming import exact_patterns

__all__ = [
    "ALLOWED_RANKS",
    "RANK_TOLERANCE",
    "allocate",
    "alpha_for",
    "peft_pattern",
    "per_module_suggestion",
    "round_up_rank",
]

# The ranks a suggestion may use (the one definition: report, policy and bench import it).
ALLOWED_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# An energy rank this close above an allowed rank is that rank (percentiles of integer ranks
# carry float noise: 4.000000000000001 must not round up to 8).
RANK_TOLERANCE = 1e-9


def round_up_rank(k: float | None, current_r: int | None = None,
                  allowed: Sequence[int] = ALLOWED_RANKS) -> int | None:
    """The rank rule: the smallest allowed rank ≥ k, never above ``current_r``.

    k ≤ 0 gives the smallest allowed rank; ``None`` gives ``None``. When no allowed rank
    reaches k, the suggestion is ``current_r`` (keeping the rank never drops below the energy
    rank), or the largest allowed rank when ``current_r`` is not known. ``allowed`` may be in
    any order.
    """
    if k is None:
        return None
    ranks = sorted(int(a) for a in allowed)
    pick = next((a for a in ranks if a >= k - RANK_TOLERANCE), None)
    if pick is None:
        return int(current_r) if current_r is not None else ranks[-1]
    if current_r is not None:
        pick = min(pick, int(current_r))
    return pick


def alpha_for(scale: float, k: int, use_rslora: bool) -> float:
    """α that gives scale ``scale`` at rank k (α = s·k, or s·√k with rsLoRA)."""
    a = scale * (math.sqrt(k) if use_rslora else k)
    return float(round(a, 10))


def peft_pattern(rows: Sequence[dict[str, Any]], ranks: Sequence[int], use_rslora: bool,
                 default_r: int | None = None) -> dict[str, Any]:
    """A PEFT-ready config fragment ``{r, lora_alpha, rank_pattern, alpha_pattern}`` for giving
    each of ``rows`` (``name``, ``scale``) the rank in ``ranks``: the global r is ``default_r`` or
    the most common rank (ties: the smaller), the global α the one most modules need at it, and
    pattern keys that PEFT resolves to exactly these values for the rest (every module keeps
    its scale)."""
    if not rows:
        return {"r": None, "lora_alpha": None, "rank_pattern": {}, "alpha_pattern": {}}
    counts = Counter(ranks)
    mode_r = default_r if default_r is not None else max(counts, key=lambda k: (counts[k], -k))
    # The global alpha is the one most modules at the mode rank need.
    alphas_at_mode = Counter(alpha_for(r["scale"], mode_r, use_rslora) for r in rows)
    mode_alpha = max(alphas_at_mode, key=lambda a: (alphas_at_mode[a], -a))
    names = [row["name"] for row in rows]
    alphas = [alpha_for(row["scale"], k, use_rslora) for row, k in zip(rows, ranks, strict=True)]
    try:
        # Keys PEFT resolves to exactly these values (a key also matches every module whose
        # name ends with it, so shadowed modules get their own entries, longest first).
        rank_pattern = exact_patterns(names, [int(k) for k in ranks], int(mode_r))
        alpha_pattern = exact_patterns(names, alphas, mode_alpha)
    except AdapterFormatError:  # regex characters in module names: list the differing ones
        rank_pattern = {n: int(k) for n, k in zip(names, ranks, strict=True) if k != mode_r}
        alpha_pattern = {n: a for n, a in zip(names, alphas, strict=True) if a != mode_alpha}
    return {"r": int(mode_r), "lora_alpha": mode_alpha, "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern}


def per_module_suggestion(rows: Sequence[dict[str, Any]], use_rslora: bool,
                          level_key: str = "energy_rank_90",
                          allowed: Sequence[int] = ALLOWED_RANKS) -> dict[str, Any]:
    """Per module the smallest allowed rank ≥ k@90% (capped at its r); the mode as default.

    Returns ``{r, lora_alpha, rank_pattern, alpha_pattern, ranks: {name: k}, params_before,
    params_after, params_saved_fraction}``.
    """
    ranks = [max(1, round_up_rank(max(row[level_key], 1), row["r"], allowed) or 1) for row in rows]
    out = peft_pattern(rows, ranks, use_rslora)
    before = sum(int(r["params"]) for r in rows)
    after = sum(k * (r["in_features"] + r["out_features"]) for r, k in zip(rows, ranks, strict=True))
    out.update({
        "ranks": {r["name"]: int(k) for r, k in zip(rows, ranks, strict=True)},
        "params_before": before,
        "params_after": int(after),
        "params_saved_fraction": (1.0 - after / before) if before else 0.0,
    })
    return out


def allocate(rows: Sequence[dict[str, Any]], sigmas: Sequence[np.ndarray], use_rslora: bool, *,
             budget_params: int | None = None, energy: float | None = None) -> dict[str, Any]:
    """Choose per-module ranks that keep the most update energy per parameter.

    Each singular direction i of module j costs (in_j + out_j) parameters and keeps
    (s_j σ_ji)² of the total update energy Σ‖ΔW_j‖_F². Directions are taken greedily by
    energy per parameter; because σ is descending, the taken directions of each module
    are always its leading ones (a valid rank-k truncation). Every module keeps at least
    rank 1 (PEFT needs r ≥ 1). Exactly one of ``budget_params`` (stop before exceeding the
    budget) or ``energy`` (stop once that fraction of the total energy is kept) is given.
    """
    if (budget_params is None) == (energy is None):
        raise ValueError("give exactly one of budget_params or energy")
    n = len(rows)
    cost = [int(r["in_features"] + r["out_features"]) for r in rows]
    gains = [(abs(float(r["scale"])) * np.asarray(s, dtype=np.float64)) ** 2 for r, s in zip(rows, sigmas, strict=True)]
    total = float(sum(float(g.sum()) for g in gains))
    ranks = [1] * n
    used = sum(cost)
    kept = float(sum(float(g[0]) if g.size else 0.0 for g in gains))
    if budget_params is not None and used > budget_params:
        raise ValueError(f"budget of {budget_params:,} parameters is below the minimum of rank 1 everywhere ({used:,})")
    heap: list[tuple[float, int, int]] = []
    for j, g in enumerate(gains):
        if g.size > 1:
            heap.append((-g[1] / cost[j], j, 1))
    heapq.heapify(heap)
    target = None if energy is None else energy * total * (1.0 - 1e-12)
    while heap:
        if target is not None and kept >= target:
            break
        neg, j, i = heapq.heappop(heap)
        if budget_params is not None and used + cost[j] > budget_params:
            continue  # a cheaper module's direction may still fit
        if -neg <= 0.0 and target is None:
            break  # no energy left to buy
        ranks[j] = i + 1
        used += cost[j]
        kept += float(gains[j][i])
        if i + 1 < gains[j].size:
            heapq.heappush(heap, (-gains[j][i + 1] / cost[j], j, i + 1))
    out = peft_pattern(rows, ranks, use_rslora)
    before = sum(int(r["params"]) for r in rows)
    out.update({
        "ranks": {r["name"]: int(k) for r, k in zip(rows, ranks, strict=True)},
        "params_before": before,
        "params_after": int(used),
        "params_saved_fraction": (1.0 - used / before) if before else 0.0,
        "energy_kept": (kept / total) if total > 0 else 1.0,
        "budget_params": budget_params,
        "energy_target": energy,
    })
    return out
