"""LR_JUMP: a learning rate that rises ≥ 10× in one optimizer step is a warning; no schedule does it."""

from __future__ import annotations

import math

from gradience.training.recorder import LR_JUMP_FACTOR, RunRecorder

from .conftest import read_events


def _alerts(tmp_path, lrs):
    rec = RunRecorder(tmp_path / "run.jsonl")
    for step, lr in enumerate(lrs, start=1):
        rec.record_lr(step, lr)
    rec.writer.close()
    return [e for e in read_events(tmp_path / "run.jsonl") if e["event"] == "alert"]


def test_a_raised_learning_rate_is_a_warning(tmp_path):
    alerts = _alerts(tmp_path, [3e-2] * 5 + [3.0] * 5)  # the calibration corpus's divergence runs: ×100 at step 6
    assert [(a["code"], a["severity"], a["step"]) for a in alerts] == [("LR_JUMP", "warning", 6)]
    assert math.isclose(alerts[0]["context"]["factor"], 100.0) and "×100" in alerts[0]["message"]


def test_schedules_are_not_jumps(tmp_path):
    warmup = [0.0] + [1e-3 * s / 100 for s in range(1, 101)]  # linear warm-up from 0: ×2 at most
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 200)) for s in range(200)]
    restart = [1e-5, 9e-5]  # a warm restart to 9× the LR in use stays below the factor
    groups = [[1e-4, 1e-3], [1e-4, 2e-3]]  # several param groups: the largest counts
    for i, lrs in enumerate((warmup, cosine, restart, groups)):
        (tmp_path / str(i)).mkdir()
        assert _alerts(tmp_path / str(i), lrs) == [], i
    assert LR_JUMP_FACTOR == 10.0


def test_non_finite_or_missing_learning_rates_are_ignored(tmp_path):
    assert _alerts(tmp_path, [None, float("nan"), 1e-3, [], 1e-3]) == []
