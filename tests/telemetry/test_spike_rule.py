"""One loss-spike rule for the guard and the run summary: a hard batch on a low-loss run is not a
spike; a blow-up past the floor is (docs/guard.md#the-loss-spike-rule)."""

from __future__ import annotations

import math
from pathlib import Path

from gradience.policy import run_recommendations
from gradience.telemetry import TelemetryReader
from gradience.telemetry.health import SPIKE_FLOOR, LossSpikeRule

from .test_run_facts import T0, ev, write

LN2 = math.log(2)


def _low_loss_with_hard_batches(n: int = 300) -> list[float]:
    """The issue's healthy run: loss ≈ 0.02 late in training, every 25th batch holds rare examples."""
    hard = [0.9, 1.8, 1.2, 1.5]
    return [hard[(s // 25) % 4] if s % 25 == 0 else 0.02 + 0.002 * math.sin(s) for s in range(1, n + 1)]


def _run(tmp_path: Path, losses: list[float], prior: float | None) -> Path:
    meta = {} if prior is None else {"loss_prior": prior}
    lines = [ev("run_start", None, T0, config={}, meta=meta)]
    lines += [ev("train_step", s, T0 + s, loss=v) for s, v in enumerate(losses, start=1)]
    return write(tmp_path / "run.jsonl", lines)


def test_hard_batches_on_a_low_loss_run_are_not_spikes(tmp_path):
    rule = LossSpikeRule(ratio=3.0, k=8.0, warmup=20, prior=LN2)
    assert [s for s, v in enumerate(_low_loss_with_hard_batches(), 1) if rule.update(v)] == []
    snap = TelemetryReader(_run(tmp_path, _low_loss_with_hard_batches(), LN2)).summarize()
    assert snap.loss.spikes == 0
    assert "investigate_loss_spikes" not in [r.action for r in run_recommendations(snap)]


def test_a_blow_up_past_the_floor_is_a_spike_in_the_summary_too(tmp_path):
    losses = _low_loss_with_hard_batches(100) + [SPIKE_FLOOR * LN2 * 1.5] * 5
    snap = TelemetryReader(_run(tmp_path, losses, LN2)).summarize()
    assert snap.loss.spikes == 5 and snap.loss.spike_steps[0] == 101


def test_far_above_the_untrained_loss_is_a_spike_at_the_first_steps():
    rule = LossSpikeRule(ratio=3.0, k=8.0, warmup=20, prior=LN2)
    assert rule.update(100 * LN2) is True  # the fault matrix's ×100 spike at step 1: no baseline needed
    assert rule.update(LN2) is False


def test_without_a_prior_the_first_losses_stand_in_until_the_baseline_exists():
    rule = LossSpikeRule(ratio=3.0, k=8.0, warmup=5)
    for v in (0.7, 0.69, 0.71, 0.7, 0.68):
        assert rule.update(v) is False
    assert rule.reference is not None and abs(rule.reference - 0.696) < 1e-9
    for _ in range(50):
        rule.update(0.01)  # the run learned; ten times its first loss later on is no divergence by itself
    assert rule.update(0.5) is False and rule.update(7.5) is True
