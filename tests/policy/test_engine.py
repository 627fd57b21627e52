"""Engine: de-duplication by action, config_ok only when nothing actionable fired, ordering."""

from __future__ import annotations

from gradience.policy import check_config, finalize
from gradience.telemetry.schema import (
    ConfigSnapshot,
    LoRAConfig,
    OptimizerConfig,
    Recommendation,
    TrainingConfig,
)


def rec(sev: str, action: str, conf: float = 0.5) -> Recommendation:
    return Recommendation(severity=sev, action=action, message=f"{action} {sev}", confidence=conf)


def test_duplicates_keep_higher_severity_then_confidence() -> None:
    out = finalize([rec("info", "lower_lr", 0.9), rec("warning", "lower_lr", 0.6), rec("warning", "lower_lr", 0.5)],
                   ok_message="ok")
    assert [(r.action, r.severity, r.confidence) for r in out] == [("lower_lr", "warning", 0.6)]


def test_sorted_by_severity_then_confidence_then_rule_order() -> None:
    out = finalize([rec("info", "a", 0.4), rec("critical", "b"), rec("warning", "c", 0.6), rec("info", "d", 0.9),
                    rec("error", "e"), rec("warning", "f", 0.6)], ok_message="ok")
    assert [r.action for r in out] == ["b", "e", "c", "f", "d", "a"]


def test_config_ok_only_when_nothing_actionable() -> None:
    assert [r.action for r in finalize([], ok_message="fine")] == ["config_ok"]
    assert [r.action for r in finalize([rec("info", "calibration_probe")], ok_message="fine")] == [
        "calibration_probe", "config_ok"]
    assert "config_ok" not in [r.action for r in finalize([rec("info", "set_rank")], ok_message="fine")]


def test_clean_classification_config_is_ok_and_bad_one_is_not() -> None:
    good = ConfigSnapshot(dataset_name="sst2", optimizer=OptimizerConfig(lr=1e-4, weight_decay=0.01),
                          lora=LoRAConfig(r=8, alpha=16, target_modules=["query", "value"], dropout=0.1),
                          training=TrainingConfig(max_grad_norm=1.0))
    assert [r.action for r in check_config(good)] == ["config_ok"]
    bad = ConfigSnapshot(dataset_name="sst2", optimizer=OptimizerConfig(lr=1e-3, weight_decay=-0.1),
                         lora=LoRAConfig(r=64, alpha=16, target_modules=["query", "value"]))
    actions = [r.action for r in check_config(bad)]
    assert actions[0] == "fix_weight_decay" and "config_ok" not in actions
    assert actions.index("lower_lr") < actions.index("reduce_rank_for_efficiency")


def test_profile_is_inferred_from_dataset_when_not_given() -> None:
    c = ConfigSnapshot(dataset_name="openai/gsm8k", optimizer=OptimizerConfig(lr=None),
                       lora=LoRAConfig(r=8, alpha=8, target_modules=["q_proj"]))
    assert "set_lr" in [r.action for r in check_config(c)]


def test_ill_typed_recorded_config_does_not_crash_rules() -> None:
    odd = ConfigSnapshot.from_dict({"dataset_name": 7, "optimizer": {"lr": "fast", "weight_decay": [1]},
                                    "lora": {"r": "8", "alpha": None, "dropout": "x", "target_modules": 5,
                                             "use_rslora": "yes"},
                                    "training": {"max_grad_norm": [1.0]}})
    actions = [r.action for r in check_config(odd)]
    assert actions == ["calibration_probe", "config_ok"]  # nothing usable, so nothing to flag
    assert odd.lora.r == "8"  # the caller's object is left untouched
