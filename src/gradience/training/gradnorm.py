"""Gradient-norm health (TELE-311): overflow-safe total norm, rolling history, levels, alerts.

Two parts:

* :func:`total_grad_norm` — the total L2 norm of a set of gradients as a 0-dim float64
  tensor, computed without a host sync: fused per-tensor norms (``torch._foreach_norm``
  with a float64 accumulator, grouped by device) then one vector norm. float16/bfloat16
  gradients whose naive norm overflows (> 65504 in fp16) still give the exact value.
* :class:`GradNormMonitor` — a torch-free component fed one float per optimizer step
  (pre-clip norm, optionally the post-clip norm): a 10-value history, the level
  (vanishing / healthy / warning / critical, thresholds from :mod:`gradience.telemetry.health`),
  trend arrow, sparkline, rate-limited level-change alerts and a summary for
  ``metrics(kind="grad_norm")``. The HF callback and the plain-PyTorch controller both use it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..telemetry.health import (
    DEFAULT_THRESHOLDS,
    GradThresholds,
    grad_level,
    sparkline,
    sustained_level,
    trend,
)

if TYPE_CHECKING:
    import torch

__all__ = ["GradNormMonitor", "LevelChange", "alert_fields", "collect_grads", "total_grad_norm",
           "total_grad_norm_value"]

HISTORY = 10
# Severity of entering each level; returning to healthy is informational, and so is vanishing: a
# converged run's norms fall below 0.1 (the calibration corpus: resumed, fp16 and memorising healthy
# runs), and monitor's check_vanishing_gradients is information too.
_LEVEL_SEVERITY = {"vanishing": "info", "healthy": "info", "warning": "warning", "critical": "error",
                   "nonfinite": "critical"}
_LEVEL_CODE = {"vanishing": "GRAD_NORM_VANISHING", "healthy": "GRAD_NORM_HEALTHY", "warning": "GRAD_NORM_WARNING",
               "critical": "GRAD_NORM_CRITICAL", "nonfinite": "GRAD_NORM_NONFINITE"}


def collect_grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` tensors of ``params`` that have one (sparse grads are densified values)."""
    out = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        out.append(g.coalesce().values() if g.is_sparse else g)
    return out


def total_grad_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """Total L2 norm of ``grads`` as a 0-dim float64 tensor (no host sync).

    Per-tensor norms are computed with a float64 accumulator (fused per device), so
    half-precision values never square in half precision; the final norm of the
    per-tensor norms is float64 as well. Returns ``tensor(0.)`` for no gradients.
    NaN/Inf anywhere propagate (the result is non-finite), which is what a guard needs.
    """
    import torch

    grads = [g.detach() for g in grads]
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    per_device = []
    for dev_grads in by_device.values():
        norms = torch._foreach_norm(dev_grads, 2, dtype=torch.float64)
        per_device.append(torch.linalg.vector_norm(torch.stack(norms), 2))
    if len(per_device) == 1:
        return per_device[0]
    first = per_device[0].device
    return torch.linalg.vector_norm(torch.stack([t.to(first) for t in per_device]), 2)


def total_grad_norm_value(params: Iterable[torch.Tensor]) -> float:
    """Convenience: the total grad norm of ``params`` as a Python float (one host sync)."""
    return float(total_grad_norm(collect_grads(params)).item())


@dataclass(frozen=True)
class LevelChange:
    """A level transition worth an ``alert`` event."""

    step: int
    previous: str | None
    level: str
    value: float
    severity: str
    code: str

    @property
    def message(self) -> str:
        prev = self.previous or "unknown"
        return f"gradient norm {_fmt(self.value)} moved from {prev} to {self.level}"

    def context(self) -> dict[str, Any]:
        return {"previous": self.previous, "level": self.level, "grad_norm": self.value}


def alert_fields(change: LevelChange, *, amp_overflow: bool = False) -> tuple[str, str, str]:
    """``(severity, code, message)`` of the alert for ``change``.

    ``amp_overflow``: the step's non-finite norm is an fp16 overflow an enabled AMP grad scaler
    handles (finite loss; the scaler skips the step and lowers its scale): ``AMP_OVERFLOW`` at
    severity info instead of the critical ``GRAD_NORM_NONFINITE``. Torch-free, so offline tools
    replaying the monitor give the same alerts."""
    if amp_overflow and change.level == "nonfinite":
        return ("info", "AMP_OVERFLOW",
                change.message + " (an fp16 overflow: the AMP grad scaler skips this step and lowers its scale)")
    return change.severity, change.code, change.message


def _fmt(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else str(v)


class GradNormMonitor:
    """Rolling gradient-norm health for one run. Pure Python; feed it floats.

    Args:
        thresholds: level boundaries (default 0.1 / 5.0 / 10.0).
        alert_cooldown: minimum number of steps between two level-change alerts; a change
            that falls inside the cooldown is remembered and reported at the next allowed
            step if the level still differs from the last one reported. Entering
            ``nonfinite`` is never rate-limited.
        history: values kept for the sparkline and trend (default 10).
    """

    def __init__(self, thresholds: GradThresholds = DEFAULT_THRESHOLDS, *, alert_cooldown: int = 50,
                 history: int = HISTORY) -> None:
        self.thresholds = thresholds
        self.alert_cooldown = int(alert_cooldown)
        self.history: deque[float] = deque(maxlen=history)
        self.last: float | None = None
        self.last_clipped: float | None = None
        self.max: float | None = None
        self.min: float | None = None
        self.n = 0
        self.nonfinite = 0
        self.clipped_steps = 0
        self.level_counts: dict[str, int] = {}
        self._sum = 0.0
        self._n_finite = 0
        self._reported_level: str | None = None
        self._last_alert_step: int | None = None
        self.alerts_suppressed = 0

    @property
    def level(self) -> str | None:
        """The sustained level (:func:`~gradience.telemetry.health.sustained_level`)."""
        return sustained_level(list(self.history), self.thresholds)

    @property
    def trend(self) -> str | None:
        return trend(list(self.history)) if self.history else None

    @property
    def sparkline(self) -> str:
        return sparkline(list(self.history)) if self.history else ""

    def update(self, step: int, pre_clip: float, post_clip: float | None = None) -> LevelChange | None:
        """Record one step's norms; returns a :class:`LevelChange` when an alert is due."""
        value = float(pre_clip)
        self.n += 1
        self.last = value
        self.history.append(value)
        if post_clip is not None:
            self.last_clipped = float(post_clip)
            if math.isfinite(value) and post_clip < value * (1 - 1e-6):
                self.clipped_steps += 1
        if math.isfinite(value):
            self._n_finite += 1
            self._sum += value
            self.max = value if self.max is None else max(self.max, value)
            self.min = value if self.min is None else min(self.min, value)
        else:
            self.nonfinite += 1
        step_level = grad_level(value, self.thresholds)
        assert step_level is not None
        self.level_counts[step_level] = self.level_counts.get(step_level, 0) + 1
        # Alerts follow the sustained level: one clipped hard batch is not a level change.
        level = sustained_level(list(self.history), self.thresholds)
        assert level is not None
        return self._maybe_alert(step, level, value)

    def _maybe_alert(self, step: int, level: str, value: float) -> LevelChange | None:
        if level == self._reported_level:
            return None
        if self._reported_level is None and level == "healthy":
            # The normal starting state is not news.
            self._reported_level = level
            return None
        cooled = self._last_alert_step is None or step - self._last_alert_step >= self.alert_cooldown
        if not cooled and level != "nonfinite":
            self.alerts_suppressed += 1
            return None
        change = LevelChange(step=step, previous=self._reported_level, level=level, value=value,
                             severity=_LEVEL_SEVERITY[level], code=_LEVEL_CODE[level])
        self._reported_level = level
        self._last_alert_step = step
        return change

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for ``metrics(kind="grad_norm")``."""
        return {
            "n": self.n,
            "last": self.last,
            "last_clipped": self.last_clipped,
            "max": self.max,
            "min": self.min,
            "mean": self._sum / self._n_finite if self._n_finite else None,
            "nonfinite_count": self.nonfinite,
            "clipped_steps": self.clipped_steps,
            "level": self.level,
            "trend": self.trend,
            "sparkline": self.sparkline,
            "history": list(self.history),
            "level_counts": dict(self.level_counts),
            "alerts_suppressed": self.alerts_suppressed,
            "thresholds": {"vanishing": self.thresholds.vanishing, "warning": self.thresholds.warning,
                           "critical": self.thresholds.critical},
        }

    def render(self) -> str:
        """One line for a terminal: ``1.234 healthy ▁▂▃▄ →``."""
        if self.last is None:
            return "—"
        return f"{_fmt(self.last)} {self.level} {self.sparkline} {self.trend}"


class BackwardNormProbe:
    """Measures the total grad norm at the end of every backward pass, before any clipping.

    Frameworks such as ``transformers.Trainer`` clip gradients between ``backward`` and the
    first callback hook, so the pre-clip norm must be taken inside backward. A
    post-accumulate-grad hook on each trainable parameter queues an autograd-engine
    callback at the first gradient of a pass; that callback queues a second one, which
    therefore runs after every callback queued during the pass (DDP's gradient
    reduction included) and computes :func:`total_grad_norm` as a tensor (no host sync).
    Under gradient accumulation the last micro-batch's value is the accumulated norm.

    Args:
        params: the trainable parameters.
        scale_fn: returns the current loss scale (AMP grad scaler) so the value is
            reported unscaled; ``None`` when no scaler is in use.
    """

    def __init__(self, params: Iterable[torch.Tensor], scale_fn: Any = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.scale_fn = scale_fn
        self.value: torch.Tensor | None = None
        self._queued = False
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _on_grad(self, _param: torch.Tensor) -> None:
        if self._queued:
            return
        from torch.autograd import Variable

        self._queued = True
        Variable._execution_engine.queue_callback(self._end_of_pass)

    def _end_of_pass(self) -> None:
        from torch.autograd import Variable

        self._queued = False
        Variable._execution_engine.queue_callback(self._measure)

    def _measure(self) -> None:
        norm = total_grad_norm(collect_grads(self.params))
        if self.scale_fn is not None:
            scale = self.scale_fn()
            if scale:
                norm = norm / float(scale)
        self.value = norm

    def take(self) -> torch.Tensor | None:
        """The norm measured by the latest backward pass (then cleared)."""
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
