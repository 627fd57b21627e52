"""Strategies: variant plans from an audit keep the probe's alpha/r and give true per-module ranks."""

from __future__ import annotations

import pytest

from gradience.bench.strategies import VariantPlan, peft_module_key, plan_variants

SUMMARY = {"suggested_r_global_median": 2, "suggested_r_global_90": 8}
PER_MODULE = {"base_model.model.bert.encoder.layer.0.attention.self.query": 2,
              "base_model.model.bert.encoder.layer.0.attention.self.value": 4,
              "base_model.model.bert.encoder.layer.1.attention.self.query": 2}


def test_uniform_plans_keep_alpha_over_r():
    plans = plan_variants(SUMMARY, ["uniform_median", "uniform_p90"], probe_r=32, probe_alpha=64,
                          allowed_ranks=[1, 2, 4, 8, 16, 32])
    med, p90 = plans
    assert (med.r, med.alpha, med.control) == (2, 4.0, False)
    assert (p90.r, p90.alpha) == (8, 16.0)


def test_p90_equal_to_probe_is_a_control():
    (p90,) = plan_variants({"suggested_r_global_median": 4, "suggested_r_global_90": 32}, ["uniform_p90"],
                           probe_r=32, probe_alpha=32, allowed_ranks=[4, 32])
    assert p90.control and p90.r == 32


def test_per_layer_plan_is_peft_ready():
    (plan,) = plan_variants(SUMMARY, ["per_layer"], probe_r=32, probe_alpha=64, allowed_ranks=[1, 2, 4],
                            per_module_ranks=PER_MODULE)
    assert plan.r == 2 and plan.alpha == 4.0
    assert plan.rank_pattern == {"bert.encoder.layer.0.attention.self.value": 4}
    assert plan.alpha_pattern == {"bert.encoder.layer.0.attention.self.value": 8.0}
    assert not plan.control


def test_truncate_plan_defaults_to_median_rank_without_retraining():
    (t,) = plan_variants(SUMMARY, ["truncate"], probe_r=32, probe_alpha=64, allowed_ranks=[2])
    assert (t.retrain, t.truncate_rank, t.alpha) == (False, 2, 4.0)
    (e,) = plan_variants(SUMMARY, ["truncate"], probe_r=32, probe_alpha=64, allowed_ranks=[2], truncate_energy=0.95)
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
        plan_variants(SUMMARY, ["per_layer"], probe_r=32, probe_alpha=64, allowed_ranks=[2], per_module_ranks={})
