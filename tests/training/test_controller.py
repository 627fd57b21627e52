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


@pytest.mark.parametrize(("persistent", "expect"), [(False, "ok"), (True, "aborted")])
def test_plain_loop_guard_rolls_back_and_locks_out(tmp_path, tiny_tokenizer, persistent, expect):
    from gradience import GradienceController
    from gradience.training.faults import FaultInjector
    from gradience.training.guard import GuardConfig

    model = tiny_model(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ctl = GradienceController(tmp_path, guard_enabled=True, telemetry_interval=1, spectral_interval=2,
                              guard_config=GuardConfig(snapshot_interval=2, cooldown=1, max_rollbacks=2))
    ctl.initialize(model, optimizer=opt)
    inj = FaultInjector("nan_param", 3, persistent=persistent)
    inj.attach(model)
    stopped_at = None
    for step, batch in enumerate(_batches(tiny_tokenizer, n=8), start=1):
        inj.begin_step(step)
        loss = model(**batch).loss
        loss.backward()
        if not ctl.step(step, loss, model):
            stopped_at = step
            break
        opt.step()
        opt.zero_grad()
        assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)
    summary = ctl.finalize()
    assert summary["status"] == expect
    codes = [e["code"] for e in read_events(tmp_path / "run.jsonl") if e["event"] == "alert"
             and e["code"].startswith("GUARD")]
    if persistent:
        assert codes == ["GUARD_ROLLBACK", "GUARD_ROLLBACK", "GUARD_LOCKOUT"] and stopped_at == 5
        assert summary["guard"]["integrity_status"] == "LOCKED_OUT"
    else:
        assert codes == ["GUARD_ROLLBACK"] and stopped_at is None
        assert summary["guard"]["total_rollbacks"] == 1 and summary["guard"]["final_lr_scale"] == 0.5
        assert summary["spectral"]["final_kappa"] is not None
