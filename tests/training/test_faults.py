"""Injected faults are recorded as injected (metrics kind fault_injection) through the monitor the
injector is handed, and `monitor`'s rules attribute what they caused to them."""

from __future__ import annotations

import pytest

from gradience.policy.engine import run_recommendations
from gradience.telemetry.reader import TelemetryReader

from .conftest import make_trainer, read_events

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.integration


def _actions(path):
    snap = TelemetryReader(path).summarize()
    return snap, {r.action: r for r in run_recommendations(snap)}


def test_callback_records_each_firing_and_monitor_blames_the_injection(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector
    from gradience.training.guard import GuardConfig

    cb = GradienceCallback(tmp_path / "run", guard_config=GuardConfig(snapshot_interval=2, cooldown=2),
                           telemetry_interval=1, spectral_enabled=False, audit=False, recommend=False)
    inj = FaultInjector("nan_loss", 3)
    make_trainer(tmp_path, tiny_tokenizer, [cb, inj.callback(cb)], steps=6, eval_steps=None, lr=1e-3).train()
    events = read_events(cb.path)
    fired = [e for e in events if e["event"] == "metrics" and e["kind"] == "fault_injection"]
    assert [(e["step"], e["metrics"]) for e in fired] == [
        (3, {"kind": "nan_loss", "target": "loss", "factor": None, "persistent": False})]
    # Written before the step it corrupts is recorded.
    assert events.index(fired[0]) < next(i for i, e in enumerate(events) if e.get("step") == 3
                                         and e["event"] == "train_step")
    snap, recs = _actions(cb.path)
    assert snap.injected_faults == [{"kind": "nan_loss", "target": "loss", "factor": None, "persistent": False,
                                     "step": 3}]
    assert "investigate_nonfinite" not in recs and "review_guard_rollbacks" not in recs
    rec = recs["review_injected_faults"]
    assert rec.severity == "warning" and "nan_loss" in rec.message and "step 3" in rec.message
    assert "fp16" in rec.rationale and "bf16" not in rec.message  # says fp16 is not to blame, suggests nothing


def test_controller_records_through_the_injector_monitor(tmp_path, tiny_tokenizer):
    from gradience import GradienceController
    from gradience.training.demo_data import generate_sentiment
    from gradience.training.faults import FaultInjector

    from .conftest import tiny_model

    model = tiny_model(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ctl = GradienceController(tmp_path, guard_enabled=True, telemetry_interval=1, spectral_enabled=False)
    ctl.initialize(model, optimizer=opt)
    inj = FaultInjector("grad_explosion", 2, factor=1e6, persistent=True, monitor=ctl)
    inj.attach(model)
    train, _ = generate_sentiment(n_train=64, n_test=8, seed=0)
    for s in range(1, 9):
        chunk = train[8 * (s - 1): 8 * s]
        batch = tiny_tokenizer([e.text for e in chunk], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([e.label for e in chunk])
        inj.begin_step(s)
        model(**batch).loss.backward()
        if not ctl.step(s, None, model):
            break
        opt.step()
        opt.zero_grad()
    ctl.finalize(recommend=False)
    snap, recs = _actions(ctl.path)
    steps = [f["step"] for f in snap.injected_faults]
    assert steps == inj.injected_steps and steps[0] == 2 and len(steps) >= 4
    assert snap.injected_faults[0]["factor"] == 1e6 and snap.injected_faults[0]["persistent"] is True
    # The lockout is the injection's: no "lower the LR", no gradient-health warning.
    assert "guard_aborted_run" not in recs and "stabilize_gradients" not in recs
    assert recs["review_injected_faults"].severity == "error" and "locked out" in recs["review_injected_faults"].message


def test_an_injector_without_a_monitor_records_nothing(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector

    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, telemetry_interval=1, spectral_enabled=False,
                           audit=False, recommend=False)
    inj = FaultInjector("nan_loss", 2)
    make_trainer(tmp_path, tiny_tokenizer, [cb, inj.callback()], steps=3, eval_steps=None).train()
    assert inj.injected_steps == [2]
    assert not [e for e in read_events(cb.path) if e.get("kind") == "fault_injection"]
    _, recs = _actions(cb.path)
    assert "investigate_nonfinite" in recs  # unknown cause: the ordinary advice
