"""Per-module spectral metrics and the audit summary (pure functions of σ and geometry)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ENERGY_LEVELS",
    "composition",
    "energy_rank",
    "energy_shares",
    "module_metrics",
    "percentile",
    "summarize_modules",
]

ENERGY_LEVELS = (0.90, 0.95, 0.99)
# Relative slack when comparing cumulative energy to a target, so that a spectrum whose
# first k values hold exactly 90% (up to rounding) counts k, not k + 1.
_ENERGY_SLACK = 1e-12


def energy_rank(sigma: np.ndarray, level: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ level · Σ σ² (σ descending); 0 for an all-zero spectrum."""
    e = np.asarray(sigma, dtype=np.float64) ** 2
    total = float(e.sum())
    if total <= 0.0:
        return 0
    cum = np.cumsum(e)
    k = int(np.searchsorted(cum, level * total * (1.0 - _ENERGY_SLACK), side="left")) + 1
    return min(k, int(e.size))


def module_metrics(sigma: np.ndarray, r: int, scale: float, top_k: int = 0) -> dict[str, Any]:
    """Metrics of one module from the unscaled σ of B·A (length r, descending).

    ``stable_rank = Σσ²/σ₁²``, ``utilization = stable_rank / r``, ``effective_rank =
    exp(H(p))`` with p = σ/Σσ, ``energy_rank_XX``, ``delta_sigma_max = |s|·σ₁``,
    ``delta_fro_norm = |s|·‖σ‖₂`` (the norms of ΔW = s·B·A). An all-zero update (e.g. an
    untrained adapter with B = 0) gets zeros, not NaN.
    """
    s = np.asarray(sigma, dtype=np.float64)
    frob_sq = float(np.dot(s, s))
    s1 = float(s[0]) if s.size else 0.0
    if frob_sq > 0.0 and s1 > 0.0:
        stable = frob_sq / (s1 * s1)
        p = s / s.sum()
        nz = p[p > 0]
        eff = float(math.exp(-float(np.dot(nz, np.log(nz)))))
    else:
        stable = 0.0
        eff = 0.0
    out: dict[str, Any] = {
        "sigma_max": s1,
        "frob_sq": frob_sq,
        "stable_rank": stable,
        "utilization": stable / r if r > 0 else 0.0,
        "effective_rank": eff,
        "delta_sigma_max": abs(scale) * s1,
        "delta_fro_norm": abs(scale) * math.sqrt(frob_sq),
    }
    for lv in ENERGY_LEVELS:
        out[f"energy_rank_{round(lv * 100)}"] = energy_rank(s, lv)
    if top_k > 0:
        out["top_singular_values"] = [float(v) for v in s[:top_k]]
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default); ``None`` for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def energy_shares(rows: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Each module's share of the update energy: delta_fro_norm² / Σ delta_fro_norm²
    (sums to 1); ``None`` when the total is zero (no rows, or every update is zero)."""
    energy = np.array([float(r["delta_fro_norm"]) * float(r["delta_fro_norm"]) for r in rows], dtype=np.float64)
    total = float(energy.sum())
    if total <= 0.0 or not rows:
        return None
    return energy / total


def composition(rows: Sequence[dict[str, Any]], top_layers: int = 5) -> dict[str, Any]:
    """Where the update energy (delta_fro_norm²) sits: per layer shares, the top layers,
    the share of the top 10% of modules, and the concentration index HHI = Σ share²
    (1/n for a perfectly even spread, 1 when one module holds everything). The per-module
    shares are :func:`energy_shares`."""
    total = float(np.array([float(r["delta_fro_norm"]) * float(r["delta_fro_norm"]) for r in rows], dtype=np.float64).sum())
    share = energy_shares(rows)
    if share is None:
        return {"energy_total": total, "energy_hhi": None, "energy_hhi_layers": None,
                "top10pct_energy_share": None, "top_layers": [], "energy_by_layer": {}}
    by_layer: dict[str, float] = {}
    for row, sh in zip(rows, share, strict=True):
        by_layer[row["layer_key"]] = by_layer.get(row["layer_key"], 0.0) + float(sh)
    n_top = max(1, math.ceil(0.10 * len(rows)))
    top_share = float(np.sort(share)[::-1][:n_top].sum())
    layers_sorted = sorted(by_layer.items(), key=lambda kv: -kv[1])
    return {
        "energy_total": total,
        "energy_hhi": float(np.dot(share, share)),
        "energy_hhi_layers": float(sum(v * v for v in by_layer.values())),
        "top10pct_energy_share": top_share,
        "top_layers": [{"layer": k, "energy_share": v} for k, v in layers_sorted[:top_layers]],
        "energy_by_layer": dict(sorted(by_layer.items(), key=lambda kv: _natural(kv[0]))),
    }


def _natural(s: str) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def summarize_modules(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary statistics over audited module rows (rows with metrics only)."""
    sr = [r["stable_rank"] for r in rows]
    params = np.array([r["params"] for r in rows], dtype=np.float64)
    k90 = [r["energy_rank_90"] for r in rows]
    dsm = [r["delta_sigma_max"] for r in rows]
    dfn = [r["delta_fro_norm"] for r in rows]
    return {
        "n_layers": len(rows),
        "total_lora_params": int(params.sum()),
        "stable_rank_mean": _mean(sr),
        "stable_rank_median": percentile(sr, 50),
        "stable_rank_weighted_mean": float(np.dot(params, sr) / params.sum()) if rows and params.sum() > 0 else None,
        "effective_rank_mean": _mean([r["effective_rank"] for r in rows]),
        "utilization_mean": _mean([r["utilization"] for r in rows]),
        "energy_rank_90_p50": percentile(k90, 50),
        "energy_rank_90_p90": percentile(k90, 90),
        "delta_sigma_max_scaled_mean": _mean(dsm),
        "delta_sigma_max_scaled_p50": percentile(dsm, 50),
        "delta_sigma_max_scaled_p90": percentile(dsm, 90),
        "delta_frob_norm_scaled_mean": _mean(dfn),
        "delta_frob_norm_scaled_p50": percentile(dfn, 50),
        "delta_frob_norm_scaled_p90": percentile(dfn, 90),
    }
