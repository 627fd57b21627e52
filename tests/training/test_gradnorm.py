"""Gradient-norm health: overflow-safe float64 total norm, pre-clip probe, history/levels/alerts."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from gradience.telemetry.health import GradThresholds  # noqa: E402
from gradience.training.gradnorm import (  # noqa: E402
    BackwardNormProbe,
    GradNormMonitor,
    collect_grads,
    total_grad_norm,
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_grads_that_overflow_a_naive_norm(dtype):
    # 100k values of 300: true norm 300·√1e5 ≈ 94868 > fp16 max (65504).
    g = torch.full((100_000,), 300.0, dtype=dtype)
    exact = float(g[0].double()) * math.sqrt(100_000)
    if dtype is torch.float16:
        assert not math.isfinite(float(torch.linalg.vector_norm(g)))  # the naive norm overflows
    out = total_grad_norm([g, torch.zeros(3, dtype=dtype)])
    assert out.dtype == torch.float64 and out.ndim == 0
    assert float(out) == pytest.approx(exact, rel=1e-12)


def test_float32_squares_that_overflow_float32():
    # Each square (1e20²) overflows float32; float64 accumulation keeps it exact.
    g = torch.full((4,), 1e20, dtype=torch.float32)
    assert float(total_grad_norm([g])) == pytest.approx(2e20, rel=1e-7)


def test_total_norm_matches_float64_reference_over_many_tensors():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen) for s in [(3, 4), (7,), (2, 2, 2), (1,)]]
    ref = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert float(total_grad_norm(grads)) == pytest.approx(ref, rel=1e-12)
    assert float(total_grad_norm([])) == 0.0


def test_nonfinite_gradients_propagate():
    assert math.isnan(float(total_grad_norm([torch.tensor([1.0, float("nan")])])))
    assert math.isinf(float(total_grad_norm([torch.tensor([1.0, float("inf")])])))


def test_probe_measures_pre_clip_norm_and_accumulated_grads():
    lin = torch.nn.Linear(4, 3)
    probe = BackwardNormProbe(lin.parameters())
    x = torch.ones(2, 4)
    lin(x).sum().backward()
    first = float(probe.take())
    ref1 = float(total_grad_norm(collect_grads(lin.parameters())))
    assert first == pytest.approx(ref1, rel=1e-12)
    lin(x).sum().backward()  # accumulation: the probe sees the accumulated gradient
    second = float(probe.take())
    assert second == pytest.approx(2 * first, rel=1e-12)
    torch.nn.utils.clip_grad_norm_(lin.parameters(), 1e-3)
    assert float(total_grad_norm(collect_grads(lin.parameters()))) == pytest.approx(1e-3, rel=1e-4)
    assert probe.take() is None  # consumed; clipping does not re-measure
    probe.remove()
    lin(x).sum().backward()
    assert probe.take() is None


def test_monitor_history_levels_trend_sparkline():
    mon = GradNormMonitor()
    for i, v in enumerate([0.5 + 0.1 * k for k in range(15)], start=1):
        mon.update(i, v)
    assert len(mon.history) == 10 and mon.history[0] == pytest.approx(1.0)
    assert mon.level == "healthy" and mon.trend == "↑"
    assert len(mon.sparkline) == 10 and mon.sparkline[0] == "▁" and mon.sparkline[-1] == "█"
    s = mon.summary()
    assert s["n"] == 15 and s["max"] == pytest.approx(1.9) and s["min"] == pytest.approx(0.5)
    assert s["level_counts"] == {"healthy": 15}
    assert mon.render().startswith("1.900 healthy")


@pytest.mark.parametrize(("value", "level"), [(0.05, "vanishing"), (0.1, "healthy"), (5.0, "healthy"),
                                              (5.01, "warning"), (10.0, "warning"), (10.5, "critical"),
                                              (float("nan"), "nonfinite")])
def test_levels_at_the_documented_thresholds(value, level):
    mon = GradNormMonitor()
    mon.update(1, value)
    assert mon.level == level


def test_custom_thresholds():
    mon = GradNormMonitor(GradThresholds(vanishing=1.0, warning=2.0, critical=3.0))
    mon.update(1, 2.5)
    assert mon.level == "warning"


def test_level_change_alerts_are_rate_limited():
    mon = GradNormMonitor(alert_cooldown=10)
    assert mon.update(1, 1.0) is None  # starting healthy is not news
    assert mon.update(2, 1.0) is None
    assert mon.update(3, 20.0) is None  # one hard batch: the median of the recent norms is still 1
    first = mon.update(4, 20.0)  # most recent norms are now high
    assert first is not None and first.code == "GRAD_NORM_CRITICAL" and first.previous == "healthy"
    assert mon.update(5, 20.0) is None  # same level
    for step in (6, 7, 8):
        assert mon.update(step, 1.0) is None  # back to healthy (at step 8) inside the cooldown: suppressed
    assert mon.alerts_suppressed == 1
    nonfinite = mon.update(9, float("inf"))  # never rate-limited, never smoothed
    assert nonfinite is not None and nonfinite.severity == "critical"
    back = mon.update(20, 1.0)
    assert back is not None and back.level == "healthy" and back.severity == "info"
    assert "1.000" in back.message


def test_one_hard_batch_is_not_a_level_but_norms_that_stay_high_are():
    """The calibration corpus's healthy gradient-accumulation run: norms near 1.2 with single clipped
    batches at 5.0–5.4. Per-step levels called that a warning; the sustained level does not."""
    mon = GradNormMonitor()
    alerts = [mon.update(s, v) for s, v in enumerate([1.2, 1.1, 1.3, 5.4, 1.2, 1.0, 5.2, 1.1], start=1)]
    assert [a for a in alerts if a is not None] == [] and mon.level == "healthy"
    assert mon.level_counts == {"healthy": 6, "warning": 2}  # every step still counted at its own level
    rising = [mon.update(s, 7.0) for s in range(9, 12)]
    # at step 10 most of the last 5 norms (1.0, 5.2, 1.1, 7, 7) are above 5
    assert rising[0] is None and rising[1] is not None and rising[1].code == "GRAD_NORM_WARNING"
    assert rising[1].step == 10 and mon.level == "warning"


def test_one_norm_past_the_explosion_bound_is_critical_at_once():
    mon = GradNormMonitor()
    for s in range(1, 6):
        mon.update(s, 1.0)
    explosion = mon.update(6, 2e5)  # the guard's grad_explosion bound (1e4) is the same
    assert explosion is not None and explosion.code == "GRAD_NORM_CRITICAL" and explosion.step == 6
    assert mon.update(7, 9e3) is None and mon.level == "healthy"  # below the bound one high value is not a level


def test_vanishing_and_scaler_handled_overflows_are_information():
    from gradience.training.gradnorm import alert_fields

    mon = GradNormMonitor()
    mon.update(1, 1.0)
    changes = [mon.update(s, 0.01) for s in (2, 3)]  # a converged run's norms fall below 0.1
    vanishing = changes[-1]
    assert vanishing is not None and vanishing.code == "GRAD_NORM_VANISHING" and vanishing.severity == "info"
    overflow = mon.update(4, float("inf"))
    assert alert_fields(overflow)[:2] == ("critical", "GRAD_NORM_NONFINITE")
    severity, code, message = alert_fields(overflow, amp_overflow=True)
    assert (severity, code) == ("info", "AMP_OVERFLOW") and "grad scaler skips this step" in message
