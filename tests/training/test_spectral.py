"""κ̃: exact LoRA condition number from the factors, dense estimate, and the risk levels."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from gradience.training.spectral import SpectralMonitor, _dense_kappa, _lora_kappa, risk_level  # noqa: E402


def test_lora_kappa_matches_full_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 30, generator=g), torch.randn(20, 4, generator=g)
    s = torch.linalg.svdvals(b.double() @ a.double())
    assert _lora_kappa(a, b) == pytest.approx(float(s[0] / s[3]), rel=1e-9)
    assert _lora_kappa(a, torch.zeros(20, 4)) is None  # B = 0 at init: no update yet
    assert _lora_kappa(a, torch.full((20, 4), float("nan"))) == math.inf


def test_dense_estimate_is_sigma1_over_rms_singular_value():
    w = torch.diag(torch.tensor([4.0, 1.0, 1.0, 1.0]))
    rms = math.sqrt((16 + 3) / 4)
    assert _dense_kappa(w, iters=30) == pytest.approx(4.0 / rms, rel=1e-6)


@pytest.mark.parametrize(("rates", "level"), [
    ([0.0, 0.0, 0.0, 0.0], "STABLE"),
    ([0.001, 0.001, 0.001, 0.001], "LEARNING"),
    ([0.003, 0.003, 0.003, 0.003], "WARNING"),
    ([-0.005, -0.005, -0.005, -0.005], "DANGER"),
    ([0.01, -0.01, 0.01, -0.01], "INSTABILITY"),
])
def test_risk_levels_on_relative_change_per_step(rates, level):
    obs = [(0, 100.0)]
    for r in rates:  # steps of 10: per-step relative rate r
        s, k = obs[-1]
        obs.append((s + 10, k * (1 + 10 * r)))
    assert risk_level(obs)[0] == level


def test_risk_is_scale_free():
    obs = [(0, 1.0), (50, 1.3), (100, 1.69)]
    assert risk_level(obs)[:2] == risk_level([(s, 1e6 * k) for s, k in obs])[:2]


def test_monitor_samples_on_interval_only():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(r=2, target_modules=["0"],
                                                                                    init_lora_weights=False))
    mon = SpectralMonitor(interval=5)
    assert [s for s in range(1, 16) if mon.due(s)] == [5, 10, 15]
    payload = mon.observe(5, model)
    assert payload["method"] == "lora_exact" and payload["n_modules"] == 1 and payload["kappa_tilde"] >= 1


def test_no_level_before_a_full_window():
    from gradience.training.spectral import WARMUP

    obs = [(0, 100.0), (5, 110.0)]  # +2 % per step: DANGER by the rates, but only 2 of 5 samples
    level, slope, vol = risk_level(obs, window=5)
    assert level == WARMUP and slope == pytest.approx(0.02) and vol == 0.0
    assert risk_level(obs)[0] == "DANGER"  # without a window: any two samples give a level
    model = torch.nn.Linear(4, 3)
    mon = SpectralMonitor(interval=1, window=3)
    assert [mon.observe(s, model)["risk_level"] for s in (1, 2, 3)] == [WARMUP, WARMUP, "STABLE"]
