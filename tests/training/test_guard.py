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

from gradience.training.faults import FAULT_CASES as CASES  # noqa: E402


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


def _guarded_run(tmp_path, tok, kind, step, *, persistent=False, steps=10, factor=1e6, **guard_kw):
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector
    from gradience.training.guard import GuardConfig

    # Spike detection needs a baseline; a short warm-up keeps the test runs short.
    guard_kw = {"snapshot_interval": 2, "spike_warmup": 2, "cooldown": 2, **guard_kw}
    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, guard_config=GuardConfig(**guard_kw),
                           telemetry_interval=1, spectral_enabled=False, audit=False, recommend=False)
    inj = FaultInjector(kind, step, persistent=persistent, factor=factor)
    watch = WeightsWatch()
    trainer = make_trainer(tmp_path, tok, [cb, inj.callback(), watch.callback], steps=steps, eval_steps=None,
                           lr=1e-3)
    trainer.train()
    return cb, inj, watch, read_events(cb.path)


def _assert_final_weights_finite(cb, trainer_model=None):
    """Live trainable weights and the saved adapter are finite."""
    from safetensors.torch import load_file

    assert cb.guard.weights_finite()
    saved = load_file(str(cb.run_dir / "peft" / "adapter_model.safetensors"))
    assert saved and all(torch.isfinite(t).all() for t in saved.values())


@pytest.mark.parametrize("step", [3, 5])
@pytest.mark.parametrize("case", list(CASES))
def test_transient_fault_is_detected_at_its_step_and_recovered(tmp_path, tiny_tokenizer, case, step):
    kind, factor, expected = CASES[case]
    cb, inj, watch, events = _guarded_run(tmp_path, tiny_tokenizer, kind, step, steps=step + 3, factor=factor,
                                          weight_check_interval=1)
    assert inj.injected_steps == [step]
    rollbacks = [e for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"]
    assert [e["step"] for e in rollbacks] == [step], case
    assert set(rollbacks[0]["context"]["triggers"]) == expected, case
    assert rollbacks[0]["context"]["restored_step"] == step - 1 - (step - 1) % 2
    # The corrupted step never reached the weights (checked after every optimizer step).
    assert watch.nonfinite_after == []
    _assert_final_weights_finite(cb)
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "ok"
    last_loss = [e for e in events if e["event"] == "train_step"][-1]["loss"]
    assert math.isfinite(last_loss)
    report = cb.guard_report
    assert report["rollbacks"] == 1 and report["recoveries"] == 1 and report["integrity_status"] == "OK"
    assert report["final_lr_scale"] == pytest.approx(0.5)
    assert report["trigger_counts"] == dict.fromkeys(expected, 1)


@pytest.mark.parametrize("step", [1, 6])
def test_injection_step_matrix_nan_loss(tmp_path, tiny_tokenizer, step):
    _, _, watch, events = _guarded_run(tmp_path, tiny_tokenizer, "nan_loss", step, steps=8)
    codes = [(e["step"], e["code"]) for e in events if e["event"] == "alert" and e["code"].startswith("GUARD")]
    assert codes == [(step, "GUARD_ROLLBACK")]
    assert watch.nonfinite_after == []


@pytest.mark.parametrize("case", list(CASES))
def test_persistent_fault_ends_in_lockout_with_the_last_good_weights(tmp_path, tiny_tokenizer, case):
    kind, factor, expected = CASES[case]
    cb, _inj, watch, events = _guarded_run(tmp_path, tiny_tokenizer, kind, 3, persistent=True, steps=12,
                                          factor=factor, max_rollbacks=3, weight_check_interval=1)
    alerts = [e for e in events if e["event"] == "alert" and e["code"].startswith("GUARD")]
    assert [e["code"] for e in alerts] == ["GUARD_ROLLBACK"] * 3 + ["GUARD_LOCKOUT"]
    assert all(set(e["context"]["triggers"]) == expected for e in alerts), case
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "aborted" and "lockout" in end["reason"]
    assert end["step"] == 6  # stopped right at the lockout, not at max_steps
    # The lockout restored the last good snapshot (step 2) before stopping, and said so.
    lockout = alerts[-1]["context"]
    assert lockout["restored_step"] == 2 and "restored the step-2 snapshot" in end["reason"]
    # No non-finite value reached the weights after any guard decision, lockout included.
    assert watch.nonfinite_after == []
    _assert_final_weights_finite(cb)
    assert cb.guard_report["final_lr_scale"] == pytest.approx(0.5 ** 3)
    assert cb.guard_report["lockout_restored_step"] == 2 and cb.guard_report["weights_finite"] is True
    snap = TelemetryReader(cb.path).summarize()
    assert snap.guard["rollbacks"] == 3 and snap.guard["lockout"] and snap.status == "aborted"


def test_lockout_without_a_good_snapshot_does_not_save_a_nonfinite_adapter(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback
    from gradience.training.guard import GuardConfig

    from .conftest import tiny_model

    model = tiny_model(tiny_tokenizer)
    with torch.no_grad():  # corrupt before training: no good state ever exists
        next(p for n, p in model.named_parameters() if "lora_B" in n).view(-1)[0] = float("nan")
    (tmp_path / "run" / "peft").mkdir(parents=True)
    (tmp_path / "run" / "peft" / "adapter_model.safetensors").write_bytes(b"earlier adapter")
    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, guard_config=GuardConfig(snapshot_interval=2),
                           telemetry_interval=1, spectral_enabled=False, audit=False, recommend=False)
    make_trainer(tmp_path, tiny_tokenizer, [cb], steps=4, eval_steps=None, model=model).train()
    events = read_events(cb.path)
    codes = [e["code"] for e in events if e["event"] == "alert" and e["code"] != "GRAD_NORM_NONFINITE"]
    assert codes == ["GUARD_LOCKOUT", "ADAPTER_NOT_SAVED"]
    assert "no good snapshot" in events[-1]["reason"] and "NOT finite" in events[-1]["reason"]
    assert events[-1]["status"] == "aborted" and events[-1]["step"] == 1
    # The earlier file in peft/ is untouched.
    assert (tmp_path / "run" / "peft" / "adapter_model.safetensors").read_bytes() == b"earlier adapter"


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


# κ̃ per observation (every 2 steps): relative change per step .003 ×4 (WARNING once the window of 5
# is full, step 10), then .009 (DANGER, step 12), then −.02 (INSTABILITY, step 14), then flat.
_RATES = [0.003, 0.003, 0.003, 0.003, 0.009, -0.02, 0.0, 0.0, 0.0]


def _spectral_run(tmp_path, tok, monkeypatch, actions):
    from gradience import GradienceCallback
    from gradience.training import spectral
    from gradience.training.guard import GuardConfig

    kappas = [100.0]
    for r in _RATES:
        kappas.append(kappas[-1] * (1 + 2 * r))
    calls = iter(kappas)
    monkeypatch.setattr(spectral, "kappa_tilde", lambda model: (next(calls), 1, "lora_exact"))
    cb = GradienceCallback(tmp_path / "run", guard_enabled=True, spectral_actions=actions, spectral_interval=2,
                           telemetry_interval=100, guard_config=GuardConfig(snapshot_interval=100, cooldown=2),
                           audit=False, recommend=False)
    make_trainer(tmp_path, tok, [cb], steps=20, eval_steps=None, lr=1e-3).train()
    events = read_events(cb.path)
    levels = [(e["step"], e["metrics"]["risk_level"]) for e in events if e.get("kind") == "spectral"]
    alerts = [(e["step"], e["code"]) for e in events if e["event"] == "alert"
              and e["code"].startswith(("SPECTRAL_", "GUARD_"))]
    guard = [(e["step"], e["action"]) for e in events if e.get("kind") == "guard" and e["action"] != "summary"]
    steps = [e["step"] for e in events if e["event"] == "train_step"]
    return cb, events, levels, alerts, guard, steps


def test_spectral_actions_snapshot_back_off_and_roll_back(tmp_path, tiny_tokenizer, monkeypatch):
    cb, events, levels, alerts, guard, steps = _spectral_run(tmp_path, tiny_tokenizer, monkeypatch, True)
    # No level before a full window (5 samples): WARMUP.
    assert levels == [(2, "WARMUP"), (4, "WARMUP"), (6, "WARMUP"), (8, "WARMUP"), (10, "WARNING"),
                      (12, "DANGER"), (14, "INSTABILITY"),
                      # the rollback reset the window: the restored trajectory starts a new one
                      (16, "WARMUP"), (18, "WARMUP"), (20, "WARMUP")]
    # WARNING (window full from step 10 only): snapshot + dense telemetry for one interval;
    # DANGER: snapshot + LR backoff; INSTABILITY: rollback to the newest snapshot (step 12).
    assert guard == [(0, "snapshot"), (10, "snapshot"), (12, "snapshot"), (12, "backoff"), (14, "rollback")]
    assert steps == [1, 11, 12, 15, 16, 20]  # dense after WARNING at 10 and in the rollback cooldown
    assert alerts == [(12, "SPECTRAL_DANGER"), (14, "SPECTRAL_INSTABILITY"), (14, "GUARD_ROLLBACK")]
    rollback = next(e for e in events if e.get("kind") == "guard" and e["action"] == "rollback")["metrics"]
    assert rollback["triggers"] == ["spectral_instability"] and rollback["restored_step"] == 12
    assert cb.guard.lr_scale == pytest.approx(0.25) and cb.guard.backoffs == 2 and cb.guard.rollbacks == 1
    assert events[-1]["status"] == "ok"


def test_spectral_risk_without_actions_is_telemetry_only(tmp_path, tiny_tokenizer, monkeypatch):
    cb, events, levels, alerts, guard, steps = _spectral_run(tmp_path, tiny_tokenizer, monkeypatch, False)
    assert [lv for _, lv in levels] == ["WARMUP"] * 4 + ["WARNING", "DANGER"] + ["INSTABILITY"] * 4
    assert alerts == [(12, "SPECTRAL_DANGER"), (14, "SPECTRAL_INSTABILITY")]
    # κ̃ levels are a neutral diagnostic: their alerts are information, not warnings.
    assert {e["severity"] for e in events if e["event"] == "alert" and e["code"].startswith("SPECTRAL_")} == {"info"}
    assert guard == [(0, "snapshot")] and steps == [1, 20]
    assert cb.guard.lr_scale == 1.0 and cb.guard.rollbacks == 0 and cb.guard.backoffs == 0
    assert events[-1]["summary"]["spectral"]["final_risk_level"] == "INSTABILITY"
