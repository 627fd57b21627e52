"""The plateau rule: stop after `patience` scores without a gain above `min_delta`, keep the best weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gradience.bench.train import Plateau  # noqa: E402


def test_stops_after_patience_scores_without_a_real_gain_and_restores_the_best_weights():
    model = torch.nn.Linear(2, 1)
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    rule = Plateau(every=50, patience=2, min_delta=0.01)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not rule.update(50, 0.80, 0.5, model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert not rule.update(100, 0.85, 0.4, model)  # new best: its weights are kept
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not rule.update(150, 0.86, 0.4, model)  # +0.01 is not more than min_delta
    assert rule.update(200, 0.70, 0.6, model)  # second score without a gain: stop
    rule.restore_best(model)
    assert torch.all(model.weight == 2.0)
    s = rule.summary(200, 800)
    assert (s["stop_reason"], s["best_step"], s["stopped_at"]) == ("plateau", 100, 200)
    assert [c["step"] for c in s["curve"]] == [50, 100, 150, 200]
    assert "frozen" not in (rule.best_state or {})  # only trainable tensors are copied


def test_a_run_that_keeps_improving_reports_the_cap():
    model = torch.nn.Linear(2, 1)
    rule = Plateau(every=10, patience=3, min_delta=0.0)
    for i, v in enumerate((0.5, 0.6, 0.7), start=1):
        assert not rule.update(10 * i, v, None, model)
    assert rule.summary(30, 30)["stop_reason"] == "max_steps"
