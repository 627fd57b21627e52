"""Run (monitor) rules: each fires on its trigger and stays silent on the nearest case that should not."""

from __future__ import annotations

from typing import Any

import pytest

from gradience.policy import run_recommendations
from gradience.telemetry.schema import ConfigSnapshot, LoRAConfig, OptimizerConfig
from gradience.telemetry.snapshot import SignalSnapshot


def snap(profile: str = "easy_classification", *, lr: float | None = 5e-5, r: int | None = 16,
         gaps: dict[str, Any] | None = None, loss: dict[str, Any] | None = None,
         grad: dict[str, Any] | None = None, guard: dict[str, Any] | None = None,
         spectral: dict[str, Any] | None = None, audit: dict[str, Any] | None = None,
         alert_counts: dict[str, int] | None = None, status: str = "ok", reason: str | None = None) -> SignalSnapshot:
    cfg = {"task_profile": profile, "optimizer": {"lr": lr}, "lora": {"r": r, "alpha": r}}
    return SignalSnapshot(
        run_id="t", task_profile=profile, r=r, config=cfg, status=status, reason=reason,
        evals={"train": {"step": 1, "metrics": {}}, "test": {"step": 1, "metrics": {}}},
        gaps=gaps if gaps is not None else {"ppl_gap": None, "loss_gap": 1.1, "acc_gap": 0.01,
                                            "held_out_split": "test"},
        gap_missing=[] if gaps is None else ["no train-split eval"],
        loss={"first": 1.0, "last": 0.5, "min": 0.5, "n": 50, "nonfinite_count": 0, "nonfinite_steps": [],
              "spikes": 0, "spike_steps": [], **(loss or {})},
        grad_norm={"last": 1.0, "max": 2.0, "level": "healthy", "nonfinite_count": 0, **(grad or {})},
        guard={"enabled": False, "rollbacks": 0, "aborts": 0, "lockout": False, **(guard or {})},
        spectral={"kappa": None, "risk_level": None, "step": None, "n": 0, **(spectral or {})},
        lora_audit=audit, alert_counts=alert_counts or {},
    )


def by_action(s: SignalSnapshot, **kw: Any) -> dict[str, Any]:
    recs = run_recommendations(s, **kw)
    actions = [r.action for r in recs]
    assert len(actions) == len(set(actions))
    return {r.action: r for r in recs}


NOGAP = {"ppl_gap": None, "loss_gap": None, "acc_gap": None}
AUDIT = {"utilization_mean": 0.2, "suggested_r_global_median": 4, "suggested_r_global_90": 8,
         "total_lora_params": 100_000, "by_type": {"attn": {"utilization_mean": 0.3}, "mlp": {"utilization_mean": 0.08}}}

CASES: list[tuple[str, SignalSnapshot, tuple[str, float], SignalSnapshot]] = [
    ("log_train_test_ppl", snap(gaps=NOGAP), ("info", 0.6), snap()),
    ("memorization_detected", snap("hard_reasoning", gaps={"ppl_gap": 1.5}), ("warning", 0.8),
     snap("hard_reasoning", gaps={"ppl_gap": 1.49})),
    # The loss ratio alone is information only (it explodes as the train loss → 0).
    ("note_loss_gap", snap(gaps={"loss_gap": 1.6}), ("info", 0.4), snap(gaps={"loss_gap": 1.45})),
    ("note_loss_gap", snap(gaps={"loss_gap": 97.8, "acc_gap": 0.02}), ("info", 0.4),
     snap(gaps={"loss_gap": 97.8, "acc_gap": 0.2})),
    ("memorization_detected", snap(gaps={"loss_gap": 1.2, "acc_gap": 0.12}), ("warning", 0.7),
     snap(gaps={"loss_gap": 1.2, "acc_gap": 0.09})),
    ("lower_lr", snap(lr=1e-4, gaps={"acc_gap": 0.2}), ("warning", 0.8), snap(lr=5e-5, gaps={"acc_gap": 0.2})),
    ("lower_lr", snap(lr=None, gaps={"acc_gap": 0.2}), ("warning", 0.7), snap(lr=1e-4, gaps={"loss_gap": 2.0})),
    ("possible_underfitting", snap(loss={"first": 1.0, "min": 0.96, "n": 20}), ("info", 0.4),
     snap(loss={"first": 1.0, "min": 0.94, "n": 20})),
    ("possible_underfitting", snap(loss={"first": 1.0, "min": 0.96, "n": 10}), ("info", 0.4),
     snap(loss={"first": 1.0, "min": 0.96, "n": 9})),
    ("investigate_nonfinite", snap(loss={"nonfinite_count": 2, "nonfinite_steps": [7, 9]}), ("error", 0.9), snap()),
    ("investigate_nonfinite", snap(grad={"nonfinite_count": 1, "level": "nonfinite"}), ("error", 0.9), snap()),
    ("investigate_loss_spikes", snap(loss={"spikes": 3, "spike_steps": [4, 8, 9]}), ("warning", 0.6),
     snap(loss={"spikes": 0})),
    ("investigate_loss_spikes", snap(loss={"spikes": 2, "spike_steps": [4, 8]}), ("info", 0.4), snap()),
    ("stabilize_gradients", snap(grad={"level": "critical", "last": 12.0}), ("warning", 0.7),
     snap(grad={"level": "healthy", "last": 4.9})),
    ("stabilize_gradients", snap(grad={"level": "warning", "last": 6.0}), ("info", 0.5), snap()),
    ("stabilize_gradients", snap(alert_counts={"GRAD_NORM_CRITICAL": 2}), ("warning", 0.7),
     snap(alert_counts={"GRAD_NORM_VANISHING": 2})),
    ("check_vanishing_gradients", snap(grad={"level": "vanishing", "last": 0.05}), ("info", 0.5),
     snap(grad={"level": "healthy", "last": 0.1})),
    ("review_guard_rollbacks", snap(guard={"enabled": True, "rollbacks": 2, "final_lr_scale": 0.25}),
     ("warning", 0.7), snap(guard={"enabled": True, "rollbacks": 0})),
    ("guard_aborted_run", snap(guard={"enabled": True, "rollbacks": 3, "aborts": 1, "lockout": True}),
     ("error", 0.9), snap(guard={"enabled": True, "rollbacks": 3})),
    # κ̃ is a neutral diagnostic (docs/guard.md#why-the-levels-are-a-neutral-diagnostic): info only.
    ("review_spectral_risk", snap(spectral={"risk_level": "DANGER", "n": 3}), ("info", 0.3),
     snap(spectral={"risk_level": "WARNING", "n": 3})),
    ("review_spectral_risk", snap(spectral={"risk_level": "INSTABILITY", "n": 3}), ("info", 0.3),
     snap(spectral={"risk_level": "LEARNING", "n": 3})),
    ("investigate_run_error", snap(status="error", reason="RuntimeError: boom"), ("error", 0.8),
     snap(status="aborted")),
    ("low_utilization", snap(r=16, audit={"utilization_mean": 0.2}), ("info", 0.5),
     snap(r=16, audit={"utilization_mean": 0.25})),
    ("low_utilization", snap(r=16, audit={"utilization_mean": 0.2}), ("info", 0.5),
     snap(r=8, audit={"utilization_mean": 0.2})),
    ("compress_rank", snap(r=32, audit=AUDIT), ("info", 0.7), snap(r=4, audit=AUDIT)),
    ("compress_rank", snap(r=8, audit={"suggested_r_global_median": 4, "suggested_r_global_90": 8}), ("info", 0.6),
     snap(r=8, audit={"suggested_r_global_median": 8, "suggested_r_global_90": 8})),
    ("compress_rank", snap(r=32, audit=AUDIT), ("info", 0.7), snap(r=32, audit=dict(AUDIT, r=4))),
    ("compress_rank", snap(r=8, audit={"suggested_r_global_median": 4, "suggested_r_global_90": 8}), ("info", 0.6),
     snap(r=8, audit={"suggested_r_global_median": 4, "suggested_r_global_90": 8,
                      "suggested_params_global_median": 1000, "total_lora_params": 1000})),
    ("compress_mlp_targets", snap(audit=AUDIT), ("info", 0.5),
     snap(audit={"by_type": {"attn": {"utilization_mean": 0.3}, "mlp": {"utilization_mean": 0.10}}})),
    ("compress_mlp_targets", snap(audit=AUDIT), ("info", 0.5),
     snap(audit={"by_type": {"attn": {"utilization_mean": 0.15}, "mlp": {"utilization_mean": 0.08}}})),
    ("note_high_udr", snap(audit={"udr_p90": 1.2, "udr_max": 4.0}), ("info", 0.4), snap(audit={"udr_p90": 0.9})),
]


@pytest.mark.parametrize(("action", "fires", "want", "quiet"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_and_nearest_case_does_not(action: str, fires: SignalSnapshot, want: tuple[str, float],
                                               quiet: SignalSnapshot) -> None:
    hit = by_action(fires)
    assert action in hit, f"{action} should fire; got {sorted(hit)}"
    assert (hit[action].severity, hit[action].confidence) == want
    assert hit[action].scope == "run" and hit[action].rationale
    assert action not in by_action(quiet)


def test_gap_threshold_is_configurable() -> None:
    s = snap("hard_reasoning", gaps={"ppl_gap": 1.7})
    assert "memorization_detected" in by_action(s)
    assert "memorization_detected" not in by_action(s, gap_threshold=2.0)
    with pytest.raises(ValueError):
        run_recommendations(s, gap_threshold=0)


def test_measured_ppl_gap_below_threshold_overrides_loss_gap() -> None:
    assert "memorization_detected" not in by_action(snap("generation", gaps={"ppl_gap": 1.2, "loss_gap": 2.0}))


def test_missing_gap_message_names_what_is_missing() -> None:
    rec = by_action(snap(gaps=NOGAP))["log_train_test_ppl"]
    assert "no train-split eval" in rec.message and rec.evidence["missing"] == ["no train-split eval"]


def test_compress_rank_suggests_audited_rank_and_parameter_saving() -> None:
    rec = by_action(snap(r=32, audit=AUDIT))["compress_rank"]
    assert rec.evidence["suggested_r"] == 8 and rec.evidence["lora_params_saved"] == 75_000
    assert "r=8" in rec.message and "75,000" in rec.message
    exact = dict(AUDIT, suggested_params_global_90=30_000)  # the audit's own count wins over r-scaling
    assert by_action(snap(r=32, audit=exact))["compress_rank"].evidence["lora_params_saved"] == 70_000


def test_guard_rollback_suggests_backed_off_lr() -> None:
    rec = by_action(snap(lr=1e-4, guard={"enabled": True, "rollbacks": 2, "final_lr_scale": 0.25}))[
        "review_guard_rollbacks"]
    assert rec.evidence["suggested_lr"] == pytest.approx(2.5e-5) and "2.5e-05" in rec.message


def test_healthy_run_is_ok_and_info_only_udr_does_not_suppress_it() -> None:
    assert [r.action for r in run_recommendations(snap())] == ["config_ok"]
    assert [r.action for r in run_recommendations(snap(audit={"udr_p90": 2.0}))] == ["note_high_udr", "config_ok"]


def test_explicit_config_overrides_recorded_one_without_mutating_it() -> None:
    s = snap(lr=5e-5, gaps={"acc_gap": 0.2})
    given = ConfigSnapshot(task_profile="easy_classification", optimizer=OptimizerConfig(lr=3e-4),
                           lora=LoRAConfig(r=16))
    recs = {r.action: r for r in run_recommendations(s, config=given)}
    assert recs["lower_lr"].evidence["lr"] == 3e-4
    assert given.dataset_name is None and given.optimizer.lr == 3e-4
