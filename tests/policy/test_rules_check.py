"""Pre-flight rules: each fires on its trigger and stays silent on the nearest case that should not."""

from __future__ import annotations

from typing import Any

import pytest

from gradience.policy import check_config
from gradience.telemetry.schema import ConfigSnapshot, LoRAConfig, OptimizerConfig, TrainingConfig

ATTN = ["q_proj", "v_proj"]


def cfg(profile: str = "unknown", *, lr: float | None = 5e-5, r: int | None = 8, alpha: float | None = 8,
        targets: list[str] | None = ATTN, wd: float | None = 0.0, dropout: float | None = 0.05,
        mgn: float | None = 1.0, rslora: bool | None = None) -> ConfigSnapshot:
    return ConfigSnapshot(
        task_profile=profile,
        optimizer=OptimizerConfig(lr=lr, weight_decay=wd),
        lora=LoRAConfig(r=r, alpha=alpha, target_modules=targets, dropout=dropout, use_rslora=rslora),
        training=TrainingConfig(max_grad_norm=mgn),
    )


def by_action(c: ConfigSnapshot) -> dict[str, Any]:
    recs = check_config(c)
    actions = [r.action for r in recs]
    assert len(actions) == len(set(actions)), f"duplicate actions: {actions}"
    return {r.action: r for r in recs}


H, E = "hard_reasoning", "easy_classification"

# (action, config that fires it, expected (severity, confidence), nearest config that must not fire it)
CASES: list[tuple[str, ConfigSnapshot, tuple[str, float], ConfigSnapshot]] = [
    ("set_lr", cfg(H, lr=None), ("warning", 0.8), cfg(H, lr=5e-5)),
    ("lower_lr", cfg(H, lr=1.01e-4), ("warning", 0.8), cfg(H, lr=1e-4)),
    ("consider_lower_lr", cfg(H, lr=1e-4), ("info", 0.6), cfg(H, lr=5e-5)),
    ("set_target_modules", cfg(H, targets=None), ("warning", 0.7), cfg(H, targets=["q_proj"])),
    ("include_attention_targets", cfg(H, targets=["up_proj", "down_proj"]), ("warning", 0.7),
     cfg(H, targets=["q_proj", "up_proj"])),
    ("prefer_attention_only", cfg(H, targets=["q_proj", "up_proj"]), ("info", 0.7), cfg(H, targets=ATTN)),
    ("review_target_modules", cfg(H, targets=["q_proj", "my_adapter_layer"]), ("info", 0.4), cfg(H)),
    ("set_rank", cfg(H, r=None, alpha=None), ("info", 0.6), cfg(H, r=8)),
    ("consider_reduce_rank", cfg(H, r=32, alpha=32), ("info", 0.6), cfg(H, r=16, alpha=16)),
    ("consider_reduce_rank", cfg(H, r=17, alpha=17), ("info", 0.5), cfg(H, r=16, alpha=16)),
    ("consider_lower_alpha_over_r", cfg(H, lr=2e-4, r=8, alpha=8), ("info", 0.5), cfg(H, lr=2e-4, r=8, alpha=4)),
    ("consider_lower_alpha_over_r", cfg(H, lr=2e-4, r=8, alpha=8), ("info", 0.5), cfg(H, lr=1e-4, r=8, alpha=8)),
    ("reduce_rank_for_efficiency", cfg(E, r=17, alpha=17), ("info", 0.6), cfg(E, r=16, alpha=16)),
    ("prefer_attention_only_for_efficiency", cfg(E, targets=["query", "intermediate.dense"]), ("info", 0.5),
     cfg(E, targets=["query", "value"])),
    ("lower_lr", cfg(E, lr=6e-4), ("warning", 0.7), cfg(E, lr=5e-4)),
    ("calibration_probe", cfg("unknown"), ("info", 0.5), cfg(E)),
    ("calibration_probe", cfg("generation"), ("info", 0.5), cfg(H)),
    ("fix_weight_decay", cfg(E, wd=-0.01), ("error", 0.9), cfg(E, wd=0.0)),
    # beyond the core rules (docs/policy.md#further-rules)
    ("fix_lr", cfg(E, lr=0.0), ("error", 0.9), cfg(E, lr=1e-5)),
    ("fix_rank", cfg(E, r=0, alpha=8), ("error", 0.9), cfg(E, r=1, alpha=1)),
    ("fix_alpha", cfg(E, alpha=0), ("error", 0.9), cfg(E, alpha=1)),
    ("lower_lr", cfg("unknown", lr=2e-3), ("warning", 0.6), cfg("unknown", lr=1e-3)),
    ("review_alpha_over_r", cfg(E, r=8, alpha=40), ("info", 0.5), cfg(E, r=8, alpha=32)),
    ("review_alpha_over_r", cfg(E, r=8, alpha=1.9), ("info", 0.5), cfg(E, r=8, alpha=2)),
    # with rsLoRA the scale is α/√r: α=15, r=256 → 0.94 (fine), although α/r ≈ 0.059
    ("review_alpha_over_r", cfg(E, r=256, alpha=15), ("warning", 0.6), cfg(E, r=256, alpha=15, rslora=True)),
    ("consider_rslora", cfg(E, r=64, alpha=64), ("info", 0.4), cfg(E, r=64, alpha=8, rslora=True)),
    ("consider_rslora", cfg(E, r=64, alpha=64), ("info", 0.4), cfg(E, r=32, alpha=32)),
    ("lower_lora_dropout", cfg(E, dropout=0.31), ("info", 0.5), cfg(E, dropout=0.3)),
    ("enable_grad_clipping", cfg(E, mgn=0.0), ("info", 0.5), cfg(E, mgn=1.0)),
    ("enable_grad_clipping", cfg(E, mgn=0.0), ("info", 0.5), cfg(E, mgn=None)),
]


@pytest.mark.parametrize(("action", "fires", "want", "quiet"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_and_nearest_case_does_not(action: str, fires: ConfigSnapshot, want: tuple[str, float],
                                               quiet: ConfigSnapshot) -> None:
    hit = by_action(fires)
    assert action in hit, f"{action} should fire; got {sorted(hit)}"
    assert (hit[action].severity, hit[action].confidence) == want
    assert hit[action].rationale and hit[action].message
    assert action not in by_action(quiet)


def test_every_spec_check_action_is_covered() -> None:
    spec = {"set_lr", "lower_lr", "consider_lower_lr", "set_target_modules", "prefer_attention_only",
            "include_attention_targets", "review_target_modules", "set_rank", "consider_reduce_rank",
            "consider_lower_alpha_over_r", "reduce_rank_for_efficiency", "prefer_attention_only_for_efficiency",
            "calibration_probe", "fix_weight_decay"}
    assert spec <= {c[0] for c in CASES}


def test_mlp_only_asks_for_attention_not_for_dropping_mlp() -> None:
    hit = by_action(cfg(H, targets=["up_proj"]))
    assert "include_attention_targets" in hit and "prefer_attention_only" not in hit


def test_hard_rank_32_suggests_8_to_16_and_evidence_names_values() -> None:
    rec = by_action(cfg(H, r=64, alpha=64))["consider_reduce_rank"]
    assert rec.evidence["r"] == 64 and rec.evidence["suggested_r"] == [8, 16]


def test_alpha_ratio_far_outside_range_is_a_warning() -> None:
    assert by_action(cfg(E, r=8, alpha=136))["review_alpha_over_r"].severity == "warning"  # 17
    assert by_action(cfg(E, r=8, alpha=128))["review_alpha_over_r"].severity == "info"  # 16
    assert by_action(cfg(E, r=64, alpha=3.9))["review_alpha_over_r"].severity == "warning"  # < 1/16
