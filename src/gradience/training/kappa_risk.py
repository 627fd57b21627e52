"""κ̃ risk levels: a pure, torch-free function of (step, κ̃) observations.

Kept apart from :mod:`gradience.training.spectral` (which measures κ̃ with torch) so that
offline tools (the calibration scorer, views) can replay the levels from recorded κ̃ samples
with exactly the rule the monitor used.

Rule (``docs/guard.md#risk-levels``): over the last ``window`` observations,
rᵢ = (κ̃ᵢ − κ̃ᵢ₋₁) / κ̃ᵢ₋₁ / Δstepᵢ is the relative change of κ̃ per optimizer step (scale-free:
multiplying every κ̃ by a constant changes nothing); slope = mean(rᵢ), volatility = std(rᵢ).
INSTABILITY when volatility > 0.003; else DANGER when |slope| > 0.004; WARNING > 0.002;
LEARNING > 0.0005; else STABLE. Warm-up aware: until ``window`` observations exist the level
is ``WARMUP`` (the demo once showed DANGER "from 2 samples"); slope and volatility are still
reported once two usable observations exist.

κ̃ levels are a **neutral diagnostic**, not an alarm: measured, they fire during healthy early
training (LoRA's update grows from B = 0) and did not lead a loss blow-up (docs/guard.md).
:data:`ALARM_LEVELS` lists the levels the product still presents as alarms (warnings, red health,
report status): none. The opt-in spectral actions (``SpectralConfig.actions``) still act on the
raw levels once a full window exists.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

from .config import RiskThresholds

__all__ = ["ALARM_LEVELS", "LEVEL_WORDS", "RISK_LEVELS", "WARMUP", "RiskThresholds", "neutral_word", "risk_level"]

RISK_LEVELS = ("STABLE", "LEARNING", "WARNING", "DANGER", "INSTABILITY")
# Fewer observations than a full window: no level yet.
WARMUP = "WARMUP"
# The levels monitor/watch/report present as an alarm (warning-or-worse, red/BAD health, run status).
# Empty: on the evidence in docs/guard.md κ̃ levels do not discriminate a failing run from a healthy one.
ALARM_LEVELS: tuple[str, ...] = ()
# What each level says about κ̃, in words that do not sound like an alarm (for the views).
LEVEL_WORDS = {
    WARMUP: "warming up",
    "STABLE": "steady",
    "LEARNING": "drifting",
    "WARNING": "changing",
    "DANGER": "changing fast",
    "INSTABILITY": "volatile",
}


def neutral_word(level: str | None) -> str:
    """The neutral description of a recorded level (``"—"`` when missing, the level itself when unknown)."""
    if not level:
        return "—"
    return LEVEL_WORDS.get(str(level).upper(), str(level))


def risk_level(observations: Sequence[tuple[int, float]], thresholds: RiskThresholds = RiskThresholds(),
               window: int | None = None) -> tuple[str, float | None, float | None]:
    """(level, slope, volatility) from (step, κ̃) observations, oldest first.

    Args:
        observations: (optimizer step, κ̃) pairs, oldest first (the monitor passes its last
            ``window``); pairs with a non-finite κ̃ or no step advance are left out of the rates.
        thresholds: the level boundaries, in 1/step.
        window: the full window size; with fewer observations the level is ``WARMUP``. ``None``:
            any two usable observations give a level.

    Returns:
        The level (one of :data:`RISK_LEVELS`, or :data:`WARMUP`), the slope and the volatility
        (None before two usable observations).
    """
    rel = []
    for (s0, k0), (s1, k1) in itertools.pairwise(observations):
        if s1 > s0 and k0 > 0 and math.isfinite(k0) and math.isfinite(k1):
            rel.append((k1 - k0) / k0 / (s1 - s0))
    slope = statistics.fmean(rel) if rel else None
    vol = (statistics.pstdev(rel) if len(rel) > 1 else 0.0) if rel else None
    if window is not None and len(observations) < window:
        return WARMUP, slope, vol
    if slope is None or vol is None:
        return "STABLE", None, None
    t = thresholds
    if vol > t.instability_volatility:
        return "INSTABILITY", slope, vol
    a = abs(slope)
    if a > t.danger_slope:
        return "DANGER", slope, vol
    if a > t.warning_slope:
        return "WARNING", slope, vol
    if a > t.learning_slope:
        return "LEARNING", slope, vol
    return "STABLE", slope, vol
