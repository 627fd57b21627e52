"""Strategies: variant plans from an audit keep the probe's alpha/r and give true per-module ranks."""

from __future__ import annotations

import pytest

from gradience.bench.strategies import VariantPlan, peft_module_key, plan_variants, retrain_alpha
from gradience.errors import GradienceError

SUMMARY = {"suggested_r_global_median": 2, "suggested_r_global_90": 8}
PER_MODULE = {"base_model.model.bert.encoder.layer.0.attention.self.query": 2,
              "base_model.model.bert.encoder.layer.0.attention.self.value": 4,
              "base_model.model.bert.encoder.layer.1.attention.self.query": 2}


def test_uniform_plans_keep_alpha_over_r():
    plans = plan_variants(SUMMARY, ["uniform_median", "uniform_p90"], probe_r=32, probe_alpha=64)
    med, p90 = plans
    assert (med.r, med.alpha, med.control) == (2, 4.0, False)
    assert (p90.r, p90.alpha) == (8, 16.0)


def test_p90_equal_to_probe_is_a_control():
    (p90,) = plan_variants({"suggested_r_global_median": 4, "suggested_r_global_90": 32}, ["uniform_p90"],
                           probe_r=32, probe_alpha=32)
    assert p90.control and p90.r == 32


def test_per_layer_plan_is_peft_ready():
    (plan,) = plan_variants(SUMMARY, ["per_layer"], probe_r=32, probe_alpha=64,
                            per_module_ranks=PER_MODULE)
    assert plan.r == 2 and plan.alpha == 4.0
    assert plan.rank_pattern == {"bert.encoder.layer.0.attention.self.value": 4}
    assert plan.alpha_pattern == {"bert.encoder.layer.0.attention.self.value": 8.0}
    assert not plan.control


def test_truncate_plan_defaults_to_median_rank_without_retraining():
    (t,) = plan_variants(SUMMARY, ["truncate"], probe_r=32, probe_alpha=64)
    assert (t.retrain, t.truncate_rank, t.alpha) == (False, 2, 4.0)
    (e,) = plan_variants(SUMMARY, ["truncate"], probe_r=32, probe_alpha=64, truncate_energy=0.95)
    assert e.truncate_energy == 0.95 and e.truncate_rank is None


def test_fingerprint_changes_with_the_plan_only():
    a = VariantPlan("uniform_median", r=2, alpha=4.0, note="x")
    assert a.fingerprint() == VariantPlan("uniform_median", r=2, alpha=4.0, note="other words").fingerprint()
    assert a.fingerprint() != VariantPlan("uniform_median", r=4, alpha=8.0).fingerprint()


def test_peft_module_key():
    assert peft_module_key("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight") == \
        "bert.encoder.layer.0.attention.self.query"


def test_per_layer_without_ranks_is_an_error():
    from gradience.errors import GradienceError

    with pytest.raises(GradienceError, match="no per-module ranks"):
        plan_variants(SUMMARY, ["per_layer"], probe_r=32, probe_alpha=64, per_module_ranks={})


@pytest.mark.parametrize(("allowed", "want"), [(None, 16), ([1, 2, 4, 8, 16], 16), ([16, 4], 16),
                                               ([1, 2, 4, 8], 32)])
def test_config_allowed_ranks_govern_the_uniform_and_per_layer_plans(tmp_path, allowed, want):
    """Every module keeps 90 % of its energy at rank 11 of 32: the plans round that up to the
    config's allowed ranks, and keep the probe's rank when none of them reaches 11."""
    import numpy as np

    from gradience.bench.config import config_from_dict
    from gradience.bench.protocol import audit_probe

    from ..audit._helpers import make_adapter

    rng = np.random.default_rng(0)
    names = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    mods = {}
    for n in names:
        a = np.linalg.qr(rng.standard_normal((64, 32)))[0].T  # orthonormal rows
        b = np.linalg.qr(rng.standard_normal((64, 32)))[0]
        b[:, 12:] = 0.0  # 12 equal singular values: k@90% = 11
        mods[n] = (a, b)
    make_adapter(tmp_path / "probe", mods, r=32, alpha=64)
    compression = {"strategies": ["uniform_median", "uniform_p90", "per_layer"]}
    if allowed is not None:
        compression["allowed_ranks"] = allowed
    cfg = config_from_dict({"task": {"data_dir": "x"}, "lora": {"probe_r": 32, "alpha": 64},
                            "compression": compression})
    audit = audit_probe(tmp_path / "probe", cfg)
    assert audit["summary"]["energy_rank_90_p50"] == 11
    med, p90, per_layer = plan_variants(audit["summary"], cfg.compression.strategies, probe_r=32, probe_alpha=64,
                                        per_module_ranks=audit["per_module"]["ranks"])
    assert (med.r, p90.r, per_layer.r, per_layer.rank_pattern) == (want, want, want, {})
    assert med.alpha == 2.0 * want


def test_plans_take_the_typed_audit_summary_too():
    from gradience.errors import GradienceError
    from gradience.telemetry.sections import AuditSummary

    typed = AuditSummary(suggested_r_global_median=2, suggested_r_global_90=8)
    assert plan_variants(typed, ["uniform_median"], probe_r=32, probe_alpha=64) == \
        plan_variants(SUMMARY, ["uniform_median"], probe_r=32, probe_alpha=64)
    with pytest.raises(GradienceError, match="no suggested global ranks"):
        plan_variants({"suggested_r_global_median": None, "suggested_r_global_90": None}, ["uniform_median"],
                      probe_r=32, probe_alpha=64)


@pytest.mark.parametrize(("scaling", "alpha_at_2"), [("keep_scale", 4.0), ("keep_alpha", 64.0), ("rslora", 16.0)])
def test_retrain_scaling_sets_alpha_from_rank(scaling, alpha_at_2):
    (med,) = plan_variants(SUMMARY, ["uniform_median"], probe_r=32, probe_alpha=64, retrain_scaling=scaling)
    assert med.r == 2 and med.alpha == pytest.approx(alpha_at_2)
    # Every rule agrees at the probe's own rank, so a control still reproduces the probe.
    assert retrain_alpha(scaling, 32, 32, 64) == pytest.approx(64.0)
    (pl,) = plan_variants(SUMMARY, ["per_layer"], probe_r=32, probe_alpha=64, per_module_ranks=PER_MODULE,
                          retrain_scaling=scaling)
    assert pl.alpha_pattern["bert.encoder.layer.0.attention.self.value"] == pytest.approx(
        retrain_alpha(scaling, 4, 32, 64))


def test_truncate_heal_truncates_like_truncate_then_trains():
    t, h = plan_variants(SUMMARY, ["truncate", "truncate_heal"], probe_r=32, probe_alpha=64, heal_steps=50,
                         retrain_scaling="keep_alpha")
    assert (h.truncate_rank, h.alpha, h.retrain) == (t.truncate_rank, t.alpha, t.retrain) == (2, 4.0, False)
    assert t.heal_steps == 0 and h.heal_steps == 50 and not h.control
    assert h.fingerprint() != t.fingerprint()


def test_plans_made_before_healing_and_scaling_keep_their_fingerprint():
    # Resume must keep reusing variants finished before these fields existed.
    plan = VariantPlan("uniform_median", r=2, alpha=4.0)
    d = plan.to_dict()
    for k in ("truncate_budget", "heal_steps", "heal_lr", "scaling", "note"):
        d.pop(k)
    import hashlib
    import json

    assert plan.fingerprint() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_truncate_budget_plans_take_the_budget_ranks_and_pass_the_budget_to_compress():
    budget_ranks = {"bert.encoder.layer.0.attention.self.query": 1, "bert.encoder.layer.0.attention.self.value": 3,
                    "bert.encoder.layer.1.attention.self.query": 1}
    cut, healed = plan_variants(SUMMARY, ["truncate_budget", "truncate_budget_heal"], probe_r=32, probe_alpha=64,
                                budget_ranks=budget_ranks, budget_params=5000, heal_steps=40)
    for p in (cut, healed):
        assert (p.r, p.truncate_budget, p.retrain) == (1, 5000, False)
        assert p.rank_pattern == {"bert.encoder.layer.0.attention.self.value": 3}
    assert (cut.heal_steps, healed.heal_steps) == (0, 40)
    with pytest.raises(GradienceError, match="no budgeted allocation"):
        plan_variants(SUMMARY, ["truncate_budget"], probe_r=32, probe_alpha=64)
