"""Spectral κ̃ (kappa-tilde): a condition-number proxy of the trainable update, and its risk level.

Definitions (see ``docs/guard.md``):

* Per LoRA module the update is ΔW = s·B·A. Its non-zero singular values are those of the
  r×r matrix R_B R_Aᵀ (thin QR of B and Aᵀ), computed exactly in float64; the module's
  κ = σ₁/σ_r (σ_r floored at 1e-12·σ₁). Modules whose update is still zero (B = 0 at
  init) are skipped.
* For a dense trainable 2-D weight W (no LoRA), a cheap estimate: σ₁ by 8 power
  iterations divided by the RMS singular value ‖W‖_F/√min(m, n).
* κ̃ of the model = the geometric mean of the module κ values.

Risk from the last ``window`` observations (default 5): per-step relative changes
rᵢ = (κ̃ᵢ − κ̃ᵢ₋₁) / κ̃ᵢ₋₁ / Δstepᵢ (scale-free); slope = mean(rᵢ), volatility = std(rᵢ).
INSTABILITY when volatility > 0.003; else DANGER when |slope| > 0.004; WARNING > 0.002;
LEARNING > 0.0005; else STABLE; WARMUP until the window is full. The level rule is the torch-free
:mod:`gradience.training.kappa_risk` (replayable offline). κ̃ is a neutral diagnostic: measured,
its levels fire in healthy early training and did not lead a loss blow-up
(``benchmarks/kappa_lead_time.py``, docs/guard.md), so no view presents them as an alarm.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import torch

from .config import RiskThresholds
from .kappa_risk import ALARM_LEVELS, RISK_LEVELS, WARMUP, risk_level
from .sharding import full

__all__ = ["ALARM_LEVELS", "RISK_LEVELS", "WARMUP", "RiskThresholds", "SpectralMonitor", "kappa_tilde", "risk_level"]


def _lora_pairs(model: Any) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    pairs = []
    for name, module in model.named_modules():
        la, lb = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if la is None or lb is None or not hasattr(la, "keys"):
            continue
        for key in la.keys():
            if key in lb and hasattr(la[key], "weight") and hasattr(lb[key], "weight"):
                pairs.append((f"{name}.{key}", la[key].weight, lb[key].weight))
    return pairs


@torch.no_grad()
def _lora_kappa(a: torch.Tensor, b: torch.Tensor) -> float | None:
    # a: (r, in), b: (out, r). Conv LoRA weights are flattened to 2-D. Sharded (FSDP2) factors are
    # gathered: every rank samples κ̃ at the same step, so the collective is reached by all.
    a, b = full(a), full(b)
    a2 = a.detach().reshape(a.shape[0], -1).double()
    b2 = b.detach().reshape(b.shape[0], -1).double()
    if not (torch.isfinite(a2).all() and torch.isfinite(b2).all()):
        return math.inf  # corrupted weights: QR/SVD would not converge
    _, rb = torch.linalg.qr(b2)
    _, ra = torch.linalg.qr(a2.T)
    s = torch.linalg.svdvals(rb @ ra.T)
    top = float(s[0]) if s.numel() else 0.0
    if top <= 0:
        return None
    low = max(float(s[-1]), 1e-12 * top)
    return top / low


@torch.no_grad()
def _dense_kappa(w: torch.Tensor, iters: int = 8) -> float | None:
    w = full(w)
    w2 = w.detach().reshape(w.shape[0], -1).double()
    fro = float(torch.linalg.matrix_norm(w2))
    if fro == 0 or not math.isfinite(fro):
        return None if fro == 0 else math.inf
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(w2.shape[1], generator=g, dtype=torch.float64).to(w2.device)
    for _ in range(iters):
        v = w2.T @ (w2 @ v)
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-300)
    sigma1 = float(torch.linalg.vector_norm(w2 @ v))
    rms = fro / math.sqrt(min(w2.shape))
    return sigma1 / rms


def kappa_tilde(model: Any) -> tuple[float | None, int, str]:
    """(κ̃, modules used, method ``lora_exact`` | ``dense_estimate``) for ``model``."""
    pairs = _lora_pairs(model)
    kappas: list[float] = []
    if pairs:
        method = "lora_exact"
        for _, a, b in pairs:
            k = _lora_kappa(a, b)
            if k is not None:
                kappas.append(k)
    else:
        method = "dense_estimate"
        for p in model.parameters():
            if p.requires_grad and p.ndim >= 2:
                k = _dense_kappa(p)
                if k is not None:
                    kappas.append(k)
    if not kappas:
        return None, 0, method
    if any(not math.isfinite(k) for k in kappas):
        return math.inf, len(kappas), method
    return math.exp(statistics.fmean(math.log(k) for k in kappas)), len(kappas), method


class SpectralMonitor:
    """Samples κ̃ every ``interval`` steps and classifies the risk over a window."""

    def __init__(self, interval: int = 50, window: int = 5, thresholds: RiskThresholds = RiskThresholds()) -> None:
        if interval < 1:
            raise ValueError("spectral_interval must be >= 1")
        self.interval = interval
        self.thresholds = thresholds
        self.obs: deque[tuple[int, float]] = deque(maxlen=max(2, window))
        self.last_kappa: float | None = None
        self.last_level: str | None = None
        self.n = 0

    def reset(self) -> None:
        """Forget the risk window (after a rollback: the restored trajectory is not the one
        observed, and the jump back would read as volatility). ``last_*`` stay for reporting."""
        self.obs.clear()

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0

    def observe(self, step: int, model: Any) -> dict[str, Any] | None:
        """Measure now; returns the ``metrics(kind="spectral")`` payload (None: nothing to measure)."""
        kappa, n_modules, method = kappa_tilde(model)
        if kappa is None:
            return None
        self.obs.append((step, kappa))
        level, slope, vol = risk_level(list(self.obs), self.thresholds, window=self.obs.maxlen)
        self.last_kappa, self.last_level = kappa, level
        self.n += 1
        return {"kappa_tilde": kappa, "risk_level": level, "slope": slope, "volatility": vol,
                "n_modules": n_modules, "method": method, "window": len(self.obs)}
