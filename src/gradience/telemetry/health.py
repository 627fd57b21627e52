"""Pure helpers for gradient-norm health (TELE-311) and loss-spike detection.

No torch here: the training components, ``monitor``, ``watch`` and ``report`` all share
these definitions so a level or a spike means the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SPARK_CHARS = "▁▂▃▄▅▆▇█"
NONFINITE_CHAR = "×"


@dataclass(frozen=True)
class GradThresholds:
    """Levels: < vanishing → vanishing; ≤ warning → healthy; ≤ critical → warning; else critical.

    ``explosion``: one norm above it is critical at once, without waiting for the sustained level
    (:func:`sustained_level`); the guard's default ``grad_explosion_threshold`` is the same bound.
    """

    vanishing: float = 0.1
    warning: float = 5.0
    critical: float = 10.0
    explosion: float = 1e4


DEFAULT_THRESHOLDS = GradThresholds()
LEVELS = ("vanishing", "healthy", "warning", "critical", "nonfinite")


def grad_level(value: float | None, thresholds: GradThresholds = DEFAULT_THRESHOLDS) -> str | None:
    """Classify one gradient norm; ``None`` in, ``None`` out; NaN/Inf → ``"nonfinite"``."""
    if value is None:
        return None
    if not math.isfinite(value):
        return "nonfinite"
    if value < thresholds.vanishing:
        return "vanishing"
    if value <= thresholds.warning:
        return "healthy"
    if value <= thresholds.critical:
        return "warning"
    return "critical"


# A level holds when the median of this many recent norms is in it (see sustained_level).
SUSTAIN_WINDOW = 5


def sustained_level(values: Sequence[float | None], thresholds: GradThresholds = DEFAULT_THRESHOLDS,
                    window: int = SUSTAIN_WINDOW) -> str | None:
    """The gradient-health level a run is in, from its recent norms (oldest first).

    A non-finite newest value is ``"nonfinite"`` at once, one above ``thresholds.explosion``
    ``"critical"`` at once. Otherwise the level is that of the
    median of the last ``window`` finite values: a level holds when most recent steps are in
    it. One hard batch (a pre-clip norm of 5.4 on a run that sits at 1.2, which clipping
    exists for) is not a warning; norms that stay above 5 are. Measured on the calibration
    corpus (``docs/calibration.md``): per-step levels raised a warning on a healthy
    gradient-accumulation run. ``None`` when there is no value.
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if not math.isfinite(vals[-1]):
        return "nonfinite"
    if vals[-1] > thresholds.explosion:
        return "critical"
    finite = [v for v in vals if math.isfinite(v)][-max(1, window):]
    ordered = sorted(finite)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return grad_level(median, thresholds)


def trend(values: Sequence[float], rel_tol: float = 0.1) -> str:
    """Trend arrow of a short history: least-squares slope over the window, relative to its mean.

    ``↑`` when the fitted change across the window exceeds ``rel_tol`` of the mean level,
    ``↓`` for the opposite, ``→`` otherwise (also for fewer than 3 finite values).
    """
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(pts) < 3:
        return "→"
    n = len(pts)
    mx = sum(i for i, _ in pts) / n
    my = sum(v for _, v in pts) / n
    sxx = sum((i - mx) ** 2 for i, _ in pts)
    slope = sum((i - mx) * (v - my) for i, v in pts) / sxx if sxx else 0.0
    span = pts[-1][0] - pts[0][0]
    scale = abs(my) if my != 0 else 1.0
    change = slope * span / scale
    if change > rel_tol:
        return "↑"
    if change < -rel_tol:
        return "↓"
    return "→"


def sparkline(values: Sequence[float | None], width: int | None = None) -> str:
    """One character per value (the last ``width`` values), scaled min..max; × marks NaN/Inf."""
    vals = list(values)[-width:] if width else list(values)
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return NONFINITE_CHAR * len(vals)
    lo, hi = min(finite), max(finite)
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(NONFINITE_CHAR)
        elif hi == lo:
            out.append(SPARK_CHARS[3])
        else:
            idx = int((v - lo) / (hi - lo) * (len(SPARK_CHARS) - 1) + 0.5)
            out.append(SPARK_CHARS[idx])
    return "".join(out)


def downsample(values: Sequence[float], width: int) -> list[float]:
    """Bucket-mean ``values`` down to at most ``width`` points (for long-run sparklines)."""
    n = len(values)
    if n <= width:
        return list(values)
    out = []
    for b in range(width):
        lo = b * n // width
        hi = max(lo + 1, (b + 1) * n // width)
        chunk = [v for v in values[lo:hi] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


class SpikeDetector:
    """Loss-spike detector against a robust running baseline (O(1) per value).

    Baseline: an exponential moving average of accepted losses, with an EMA of absolute
    deviations as the robust scale. A value is a spike once ``warmup`` values were seen,
    when it exceeds ``ratio`` × baseline *and* baseline + ``k`` × deviation. Spikes and
    non-finite values do not move the baseline, so one spike cannot hide the next.
    """

    def __init__(self, *, alpha: float = 0.1, ratio: float = 2.0, k: float = 6.0, warmup: int = 10) -> None:
        self.alpha = alpha
        self.ratio = ratio
        self.k = k
        self.warmup = warmup
        self.baseline: float | None = None
        self.deviation = 0.0
        self.seen = 0

    def is_spike(self, value: float) -> bool:
        """Would ``value`` be a spike now? (Does not update state.)"""
        if self.baseline is None or self.seen < self.warmup or not math.isfinite(value):
            return False
        b = self.baseline
        return value > self.ratio * abs(b) and value > b + self.k * self.deviation

    def update(self, value: float) -> bool:
        """Feed one loss; returns True when it is a spike."""
        if not math.isfinite(value):
            return False
        b = self.baseline
        if b is None:
            self.baseline = value
            self.seen = 1
            return False
        # Inlined is_spike(): this runs once per logged step in summarize().
        if self.seen >= self.warmup and value > self.ratio * abs(b) and value > b + self.k * self.deviation:
            return True
        self.deviation += self.alpha * (abs(value - b) - self.deviation)
        self.baseline = b + self.alpha * (value - b)
        self.seen += 1
        return False


# The loss-spike rule's bounds against the reference loss R (the task's untrained loss, see
# LossSpikeRule). Defaults of GuardConfig.spike_floor / spike_limit; docs/guard.md#the-loss-spike-rule.
SPIKE_FLOOR = 4.0
SPIKE_LIMIT = 10.0
# Without a loss prior, the mean of this many first healthy losses is the reference loss.
REFERENCE_STEPS = 5


class LossSpikeRule:
    """The loss-spike rule, one definition for the guard and for the run summary.

    With R the reference loss (``prior``, the task's untrained loss: ln(num_labels) for a
    classifier, ln(vocab_size) for a language model; without one, the mean of the first
    :data:`REFERENCE_STEPS` healthy losses), a finite loss L is a spike when

    * L > ``limit`` × R — at any step when R is the prior; when R stands in from the first healthy
      losses, only until the baseline exists (a run that started already good has a small first
      loss, and ten times it later on is no divergence); or
    * after ``warmup`` healthy losses: L > ``ratio`` × baseline and L > baseline + ``k`` ×
      deviation (:class:`SpikeDetector`) **and** L > ``floor`` × R. The floor tells a hard batch
      from a divergence: on a binary classifier at loss 0.02, a batch of rare examples at 0.9–1.8
      (1.3–2.6 × ln 2) is not a spike; a blow-up to ≥ 2.77 is.

    Healthy losses feed the baseline (:meth:`accept`); a spike never does.
    """

    __slots__ = ("detector", "first", "floor", "limit", "prior")

    def __init__(self, *, ratio: float, k: float, warmup: int, floor: float = SPIKE_FLOOR,
                 limit: float = SPIKE_LIMIT, prior: float | None = None) -> None:
        self.detector = SpikeDetector(ratio=ratio, k=k, warmup=warmup)
        self.floor = floor
        self.limit = limit
        self.prior = prior if prior is not None and math.isfinite(prior) and prior > 0 else None
        self.first: list[float] = []

    @property
    def reference(self) -> float | None:
        """R: the prior, else the mean of the first healthy losses so far (None while unknown or ≤ 0)."""
        if self.prior is not None:
            return self.prior
        if not self.first:
            return None
        ref = sum(self.first) / len(self.first)
        return ref if ref > 0 else None

    def is_spike(self, loss: float) -> bool:
        """Is this finite loss a spike now? (No state change.)"""
        ref = self.reference
        d = self.detector
        if ref is not None and self.limit and (self.prior is not None or d.seen < d.warmup) \
                and loss > self.limit * ref:
            return True
        if not d.is_spike(loss):
            return False
        return not self.floor or ref is None or loss > self.floor * ref

    def accept(self, loss: float) -> None:
        """A healthy loss: it feeds the baseline (and, without a prior, the reference)."""
        if math.isfinite(loss):
            self.detector.update(loss)
            if len(self.first) < REFERENCE_STEPS:
                self.first.append(loss)

    def update(self, loss: float) -> bool:
        """Is ``loss`` a spike? A loss that is not feeds the baseline (what a replay does per step)."""
        if self.is_spike(loss):
            return True
        self.accept(loss)
        return False
