"""`monitor` attributes non-finite values, spikes and guard actions to recorded injected faults."""

from __future__ import annotations

from gradience.policy.engine import run_recommendations
from gradience.telemetry.snapshot import SignalSnapshot

NAN_PARAM = {"kind": "nan_param", "target": "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight",
             "factor": None, "persistent": False, "step": 6}


def _snap(injected, *, nonfinite_steps=(6,), guard=None, alerts=(), spikes=()):
    return SignalSnapshot(
        run_id="r", status="ok", last_step=12, config={"training": {"dtype": "fp32"}},
        loss={"first": 0.7, "last": 0.3, "n": 11, "nonfinite_count": len(nonfinite_steps),
              "nonfinite_steps": list(nonfinite_steps), "spikes": len(spikes), "spike_steps": list(spikes)},
        grad_norm={"last": 0.5, "max": 0.9, "level": "healthy", "nonfinite_count": len(nonfinite_steps)},
        guard=guard or {"enabled": True, "rollbacks": 1, "lr_backoffs": 1, "final_lr_scale": 0.5,
                        "integrity_status": "OK"},
        alerts=list(alerts), injected_faults=list(injected))


def _actions(snap):
    return {r.action: r for r in run_recommendations(snap)}


ROLLBACK = {"step": 6, "severity": "error", "code": "GUARD_ROLLBACK", "message": "", "context": {}}


def test_an_injected_nan_is_blamed_not_fp16_or_the_weights():
    recs = _actions(_snap([NAN_PARAM], alerts=[ROLLBACK]))
    assert "investigate_nonfinite" not in recs and "review_guard_rollbacks" not in recs
    rec = recs["review_injected_faults"]
    assert rec.severity == "warning"
    assert "nan_param into base_model" in rec.message and "step 6" in rec.message and "recovered" in rec.message
    assert "bf16" not in rec.message and "lower the LR" not in rec.message


def test_without_the_guard_the_injection_is_still_named_but_an_error():
    recs = _actions(_snap([NAN_PARAM], nonfinite_steps=range(6, 13), guard={"enabled": False}))
    rec = recs["review_injected_faults"]
    assert rec.severity == "error" and "non-finite from there on" in rec.message
    assert "investigate_nonfinite" not in recs


def test_a_nan_before_any_injection_keeps_the_ordinary_advice():
    late = {**NAN_PARAM, "step": 9}
    recs = _actions(_snap([late], nonfinite_steps=(4, 9)))
    assert "investigate_nonfinite" in recs and "review_injected_faults" not in recs
    recs = _actions(_snap([], alerts=[ROLLBACK]))
    assert "investigate_nonfinite" in recs and "review_guard_rollbacks" in recs


def test_spikes_at_injected_steps_do_not_count():
    spike = {"kind": "loss_spike", "target": "loss", "factor": 100.0, "persistent": False, "step": 30}
    recs = _actions(_snap([spike], nonfinite_steps=(), spikes=(30,)))
    assert "investigate_loss_spikes" not in recs
    recs = _actions(_snap([spike], nonfinite_steps=(), spikes=(30, 41, 52, 63)))
    assert "steps 41, 52, 63" in recs["investigate_loss_spikes"].message
