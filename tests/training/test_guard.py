"""The training guard with the real Trainer on the tiny LoRA BERT: fault matrix, rollback
exactness, LR backoff, lockout, and its components alone."""

from __future__ import annotations

import math

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import make_trainer, read_events

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.integration

KINDS = ["nan_param", "inf_param", "nan_grad", "inf_grad", "nan_loss", "inf_loss", "loss_spike", "grad_explosion"]


class WeightsWatch:
    """Records whether every trainable weight is finite after each optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        watch = self
        self.nonfinite_after: list[int] = []

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                    watch.nonfinite_after.append(int(state.global_step))

        self.callback = _CB()


def _guarded_run(tmp_path, tok, kind, step, *, persistent=False, steps=10, **guard_kw):
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector
    from gradience.training.guard import GuardConfig

    # Spike detection needs a baseline; a short warm-up keeps the test runs short.
    cfg = GuardConfig(snapshot_interval=2, spike_warmup=2, cooldown=2, **guard_kw)
    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, guard_config=cfg, telemetry_interval=1,
                           spectral_enabled=False, audit=False, recommend=False)
    inj = FaultInjector(kind, step, persistent=persistent, factor=1e6)
    watch = WeightsWatch()
    trainer = make_trainer(tmp_path, tok, [cb, inj.callback(), watch.callback], steps=steps, eval_steps=None,
                           lr=1e-3)
    trainer.train()
    return cb, inj, watch, read_events(cb.path)


@pytest.mark.parametrize("kind", KINDS)
def test_transient_fault_is_detected_at_its_step_and_recovered(tmp_path, tiny_tokenizer, kind):
    step = 5
    cb, inj, watch, events = _guarded_run(tmp_path, tiny_tokenizer, kind, step)
    assert inj.injected_steps == [step]
    rollbacks = [e for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"]
    assert [e["step"] for e in rollbacks] == [step], kind
    assert rollbacks[0]["context"]["restored_step"] == 4
    # The corrupted step never reached the weights (checked after every optimizer step).
    assert watch.nonfinite_after == []
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "ok"
    last_loss = [e for e in events if e["event"] == "train_step"][-1]["loss"]
    assert math.isfinite(last_loss)
    report = cb.guard_report
    assert report["rollbacks"] == 1 and report["recoveries"] == 1 and report["integrity_status"] == "OK"
    assert report["final_lr_scale"] == pytest.approx(0.5)


@pytest.mark.parametrize("step", [1, 3, 6])
def test_injection_step_matrix_nan_loss(tmp_path, tiny_tokenizer, step):
    _, _, watch, events = _guarded_run(tmp_path, tiny_tokenizer, "nan_loss", step, steps=8)
    codes = [(e["step"], e["code"]) for e in events if e["event"] == "alert" and e["code"].startswith("GUARD")]
    assert codes == [(step, "GUARD_ROLLBACK")]
    assert watch.nonfinite_after == []


@pytest.mark.parametrize("kind", ["nan_grad", "nan_param"])
def test_persistent_fault_ends_in_lockout(tmp_path, tiny_tokenizer, kind):
    cb, _inj, watch, events = _guarded_run(tmp_path, tiny_tokenizer, kind, 3, persistent=True, steps=20,
                                          max_rollbacks=3)
    codes = [e["code"] for e in events if e["event"] == "alert" and e["code"].startswith("GUARD")]
    assert codes == ["GUARD_ROLLBACK"] * 3 + ["GUARD_LOCKOUT"]
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "aborted" and "lockout" in end["reason"]
    assert end["step"] == 6  # stopped right at the lockout, not at max_steps
    assert cb.guard_report["final_lr_scale"] == pytest.approx(0.5 ** 3)
    snap = TelemetryReader(cb.path).summarize()
    assert snap.guard["rollbacks"] == 3 and snap.guard["lockout"] and snap.status == "aborted"
    if kind == "nan_grad":
        assert watch.nonfinite_after == []


def test_rollback_restores_optimizer_state_bitwise_and_backs_off_lr(tmp_path, tiny_tokenizer):
    from transformers import TrainerCallback

    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector
    from gradience.training.guard import GuardConfig

    cfg = GuardConfig(snapshot_interval=3, cooldown=1)
    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, guard_config=cfg, telemetry_interval=1,
                           spectral_enabled=False, audit=False, recommend=False)
    captured = {}

    class Capture(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, model=None, **kw):
            if state.global_step in (4, 7):
                captured[state.global_step] = {
                    "opt": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                            for k, s in optimizer.state_dict()["state"].items()},
                    "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                    "lr": optimizer.param_groups[0]["lr"],
                    "base": list(lr_scheduler.base_lrs),
                }

    injs = [FaultInjector("nan_grad", 4), FaultInjector("nan_loss", 7)]
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb, *(i.callback() for i in injs), Capture()], steps=9,
                           eval_steps=None, lr=1e-2, lr_scheduler_type="constant")
    base0 = None
    trainer.train()
    ring = cb.guard.ring
    snap3 = next(s for s in ring._ring if s.step == 3)
    after = captured[4]
    for k, state in snap3.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(after["opt"][k][name], value), (k, name)
    for name, value in snap3.params.items():
        assert torch.equal(after["params"][name], value), name
    base0 = cb.guard.base_lrs[0]
    assert after["lr"] == pytest.approx(1e-2 * 0.5)
    assert captured[7]["lr"] == pytest.approx(1e-2 * 0.25)
    # Scheduler-aware: the backoff lives in the schedule's base LRs too.
    assert captured[7]["base"][0] == pytest.approx(base0 * 0.25)
    assert cb.guard.lr_scale == pytest.approx(0.5 ** cb.guard.rollbacks) and cb.guard.rollbacks == 2


def test_healthy_run_has_no_triggers_and_snapshots_on_schedule(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback
    from gradience.training.guard import GuardConfig

    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, guard_config=GuardConfig(snapshot_interval=4),
                           telemetry_interval=2, spectral_interval=2, audit=False, recommend=False)
    make_trainer(tmp_path, tiny_tokenizer, [cb], steps=8, eval_steps=None, lr=1e-3).train()
    events = read_events(cb.path)
    guard = [e for e in events if e["event"] == "metrics" and e["kind"] == "guard"]
    assert [e["metrics"]["snapshot_step"] for e in guard if e["action"] == "snapshot"] == [0, 4, 8]
    summary = next(e for e in guard if e["action"] == "summary")["metrics"]
    assert summary["detections"] == 0 and summary["rollbacks"] == 0 and summary["integrity_status"] == "OK"
    assert summary["snapshot_bytes"] > 0
    spectral = [e for e in events if e["event"] == "metrics" and e["kind"] == "spectral"]
    assert [e["step"] for e in spectral] == [2, 4, 6, 8]
    assert all(e["metrics"]["kappa_tilde"] >= 1 and e["metrics"]["method"] == "lora_exact" for e in spectral)
    end = events[-1]
    assert end["summary"]["spectral"]["final_kappa"] == spectral[-1]["metrics"]["kappa_tilde"]
    assert end["summary"]["guard"]["integrity_status"] == "OK"
