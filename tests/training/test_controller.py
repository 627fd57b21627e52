"""GradienceController in a plain PyTorch loop on the tiny LoRA BERT."""

from __future__ import annotations

import json
import math

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import read_events, tiny_model

torch = pytest.importorskip("torch")


def _batches(tok, n=6, seed=0):
    from gradience.training.demo_data import generate_sentiment

    train, _ = generate_sentiment(n_train=8 * n, n_test=8, seed=seed)
    for i in range(n):
        chunk = train[8 * i: 8 * i + 8]
        enc = tok([e.text for e in chunk], padding=True, return_tensors="pt")
        enc["labels"] = torch.tensor([e.label for e in chunk])
        yield enc


def test_plain_loop_writes_run_and_summary(tmp_path, tiny_tokenizer):
    from gradience import GradienceController

    model = tiny_model(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ctl = GradienceController(tmp_path, dataset_name="sst2", telemetry_interval=2)
    ctl.initialize(model, optimizer=opt, max_steps=6)
    for step, batch in enumerate(_batches(tiny_tokenizer), start=1):
        loss = model(**batch).loss
        loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        assert ctl.step(step, loss, model, grad_norm=pre) is True
        opt.step()
        opt.zero_grad()
    ctl.log_eval(6, "train", {"loss": 0.5, "accuracy": 0.9, "n": 8})
    ctl.log_eval(6, "test", {"loss": 0.6, "accuracy": 0.8, "n": 8})
    summary = ctl.finalize()
    assert ctl.finalize() is summary

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["total_steps"] == 6 and math.isfinite(on_disk["final_loss"])
    assert on_disk["guard"]["total_rollbacks"] == 0 and on_disk["guard"]["integrity_status"] == "OK"
    assert set(on_disk["spectral"]) >= {"final_kappa", "final_risk_level"}

    events = read_events(tmp_path / "run.jsonl")
    names = [e["event"] for e in events]
    assert names[0] == "run_start" and names[-1] == "run_end" and "recommendation" in names
    cfg = events[0]["config"]
    assert cfg["lora"]["r"] == 4 and cfg["optimizer"]["name"] == "AdamW" and cfg["optimizer"]["lr"] == 1e-2
    assert cfg["training"]["max_steps"] == 6 and events[0]["meta"]["framework"] == "pytorch"
    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 4, 6]
    assert all(e["grad_norm_clipped"] <= min(e["grad_norm"], 1.0) + 1e-6 for e in steps)
    snap = TelemetryReader(tmp_path / "run.jsonl").summarize()
    assert snap.status == "ok" and snap.gaps["acc_gap"] == pytest.approx(0.1)


def test_step_before_initialize_is_a_clear_error(tmp_path):
    from gradience import GradienceController
    from gradience.errors import GradienceError

    with pytest.raises(GradienceError, match="initialize"):
        GradienceController(tmp_path).step(1, 0.5)


def _guarded_loop(tmp_path, tok, inj=None, *, steps=8, scheduler_fn=None, lr=1e-3, **guard_kw):
    """A guarded plain loop; returns (controller, optimizer, step it stopped at, LRs the optimizer used)."""
    from gradience import GradienceController
    from gradience.training.guard import GuardConfig

    model = tiny_model(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = scheduler_fn(opt) if scheduler_fn is not None else None
    guard_kw = {"snapshot_interval": 2, "cooldown": 1, "max_rollbacks": 2, "spike_warmup": 2,
                "weight_check_interval": 1, **guard_kw}
    ctl = GradienceController(tmp_path, guard_enabled=True, telemetry_interval=1, spectral_interval=2,
                              guard_config=GuardConfig(**guard_kw))
    ctl.initialize(model, optimizer=opt, **({"scheduler": sched} if sched is not None else {}))
    if inj is not None:
        inj.attach(model)
    stopped_at, lrs = None, []
    for step, batch in enumerate(_batches(tok, n=steps), start=1):
        if inj is not None:
            inj.begin_step(step)
        loss = model(**batch).loss
        loss.backward()
        if not ctl.step(step, loss, model):
            stopped_at = step
            break
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad), step
    # After the loop too: a lockout leaves the last good weights, never the poisoned ones.
    assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)
    return ctl, opt, stopped_at, lrs


_LOOP_CASES = ["nan_param", "inf_param", "nan_grad", "inf_grad", "nan_loss", "inf_loss", "loss_spike",
               "loss_violation", "grad_explosion"]


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize(("case", "step"), [(c, s) for c in _LOOP_CASES for s in (1, 3)
                                            # a loss spike needs a baseline of healthy steps first
                                            if not (c == "loss_spike" and s == 1)])
def test_plain_loop_guard_rolls_back_and_locks_out(tmp_path, tiny_tokenizer, case, step, persistent):
    from gradience.training.faults import FaultInjector

    from .test_guard import CASES

    kind, factor, expected = CASES[case]
    inj = FaultInjector(kind, step, persistent=persistent, factor=factor)
    ctl, _, stopped_at, _ = _guarded_loop(tmp_path, tiny_tokenizer, inj)
    summary = ctl.finalize()
    assert summary["status"] == ("aborted" if persistent else "ok")
    alerts = [e for e in read_events(tmp_path / "run.jsonl") if e["event"] == "alert"
              and e["code"].startswith("GUARD")]
    assert all(set(e["context"]["triggers"]) == expected for e in alerts), case
    codes = [e["code"] for e in alerts]
    if persistent:
        assert codes == ["GUARD_ROLLBACK", "GUARD_ROLLBACK", "GUARD_LOCKOUT"] and stopped_at == step + 2
        assert summary["guard"]["integrity_status"] == "LOCKED_OUT"
        restored = alerts[-1]["context"]["restored_step"]
        assert restored is not None and f"restored the step-{restored} snapshot" in summary["reason"]
    else:
        assert codes == ["GUARD_ROLLBACK"] and stopped_at is None
        # Even a fault at the first step has a good state to return to: the one given to initialize().
        # (step() snapshots the state of step - 1 when it is called; a *_param fault has corrupted
        # that state before, so the snapshot is refused and the newest good one is step 0.)
        assert alerts[0]["context"]["restored_step"] == (0 if step == 1 or kind.endswith("_param") else 2)
        assert summary["guard"]["total_rollbacks"] == 1 and summary["guard"]["final_lr_scale"] == 0.5
        assert summary["spectral"]["final_kappa"] is not None


def test_backoff_survives_the_users_scheduler(tmp_path, tiny_tokenizer):
    from gradience.training.faults import FaultInjector

    # A warm-up schedule recomputes the LR from its base LRs at every step.
    def warmup(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))

    inj = FaultInjector("nan_loss", 3)
    ctl, _opt, stopped_at, lrs = _guarded_loop(tmp_path, tiny_tokenizer, inj, steps=8, scheduler_fn=warmup,
                                               lr=1e-2)
    assert stopped_at is None and ctl.guard.lr_scale == 0.5
    # LR used at steps 1..8 (step 3 was refused): the schedule's shape, halved from the rollback on.
    expected = [1e-2 * min(1.0, s / 4) * (0.5 if s >= 3 else 1.0) for s in range(1, 9)]
    assert lrs == pytest.approx(expected)
    assert ctl.finalize()["guard"]["final_lr_scale"] == 0.5


def test_rollback_restores_the_users_grad_scaler(tmp_path, tiny_tokenizer):
    from gradience import GradienceController
    from gradience.training.guard import GuardConfig

    model = tiny_model(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctl = GradienceController(tmp_path, guard_enabled=True, spectral_enabled=False,
                              guard_config=GuardConfig(snapshot_interval=2, cooldown=1))
    ctl.initialize(model, optimizer=opt, scaler=scaler)
    for step, batch in enumerate(_batches(tiny_tokenizer, n=3), start=1):
        loss = model(**batch).loss
        if step == 2:
            loss = loss * float("nan")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert ctl.step(step, loss, model)
        if step == 2:  # rolled back to the step-0 snapshot: the scaler state with it
            assert scaler.get_scale() == 1024.0
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if step == 1:
            scaler.update(99.0)  # a scale the step-0 snapshot does not hold
    assert scaler.get_scale() == 512.0  # the skipped (non-finite) step halved the restored scale
    assert ctl.finalize()["guard"]["total_rollbacks"] == 1


@pytest.mark.parametrize("streak", [3, 4])
def test_amp_overflows_are_left_to_the_scaler_until_the_streak_is_too_long(tmp_path, tiny_tokenizer, streak):
    """fp16 training overflows for a few steps while the scale settles: with an enabled scaler a
    non-finite gradient and a finite loss is the scaler's business (it skips the step and halves
    its scale), not a rollback; only a longer streak than the tolerance is a fault."""
    from gradience import GradienceController
    from gradience.training.guard import GuardConfig

    model = tiny_model(tiny_tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctl = GradienceController(tmp_path, guard_enabled=True, spectral_enabled=False,
                              guard_config=GuardConfig(snapshot_interval=1, cooldown=1, amp_overflow_tolerance=3))
    ctl.initialize(model, optimizer=opt, scaler=scaler)
    before = [p.detach().clone() for p in params]
    for step, batch in enumerate(_batches(tiny_tokenizer, n=streak + 1), start=1):
        loss = model(**batch).loss
        scaler.scale(loss).backward()
        if step <= streak:
            params[0].grad[0, 0] = float("inf")  # what an fp16 overflow leaves in a gradient
        scaler.unscale_(opt)
        assert ctl.step(step, loss, model)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if step <= streak and step <= 3:  # skipped by the scaler: weights untouched, scale halved
            assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
            assert scaler.get_scale() == 1024.0 / 2**step
    guard = ctl.finalize()["guard"]
    summary = ctl.guard.summary()
    if streak == 3:  # within the tolerance: no fault at all, training went on
        assert guard["total_rollbacks"] == 0 and summary["amp_overflows"] == 3 and summary["detections"] == 0
        assert not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    else:  # the 4th overflow in a row is a fault
        assert guard["total_rollbacks"] == 1 and summary["amp_overflows"] == 3
        assert summary["trigger_counts"] == {"nonfinite_grad": 1}
    # What the user sees: overflows the scaler handled are information, a fault stays an error.
    from gradience.cli.monitor import build_monitor_json

    events = read_events(tmp_path / "run.jsonl")
    assert events[0]["meta"]["amp"] == {"grad_scaler": True}
    codes = {(e["code"], e["severity"]) for e in events if e["event"] == "alert"}
    recs = {r["action"]: r["severity"] for r in build_monitor_json(tmp_path / "run.jsonl")["recommendations"]}
    assert ("AMP_OVERFLOW", "info") in codes and not any(c == "GRAD_NORM_NONFINITE" for c, _ in codes)
    if streak == 3:
        assert recs.get("note_amp_overflows") == "info" and "investigate_nonfinite" not in recs
    else:
        assert recs.get("investigate_nonfinite") == "error" and "note_amp_overflows" not in recs
