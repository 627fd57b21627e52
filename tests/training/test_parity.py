"""One scripted run through the HF Trainer + GradienceCallback and through a plain loop +
GradienceController: the same events, alerts, guard decisions and final summaries.

Both integrations are adapters over one RunSupervisor; this is the test that they translate
their framework's moments the same way. The plain loop replays the exact batches the Trainer
used, with the Trainer's own optimizer and schedule, so every value can be compared.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import make_trainer, read_events, tiny_model

torch = pytest.importorskip("torch")

STEPS = 12
FAULT_STEP = 7  # a transient NaN loss: one rollback to the step-6 snapshot


def _config(out: Any) -> Any:
    from gradience import GradienceConfig, GuardConfig, SpectralConfig
    from gradience.training.config import RiskThresholds

    # Any κ̃ change is DANGER: a non-STABLE level and its SPECTRAL_DANGER alert really occur.
    eager = RiskThresholds(instability_volatility=1e9, danger_slope=0.0, warning_slope=0.0, learning_slope=0.0)
    return GradienceConfig(out_dir=out, dataset_name="sst2", telemetry_interval=3,
                           guard=GuardConfig(snapshot_interval=2, cooldown=2, spike_warmup=2, weight_check_interval=1),
                           spectral=SpectralConfig(interval=2, window=3, thresholds=eager))


def _no_dropout(model: Any) -> Any:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _signature(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must match: each event's kind, step, metrics kind / guard action, alert code."""
    out = []
    for e in events:
        name = e["event"]
        if name == "metrics":
            out.append((name, e.get("step"), e.get("kind"), e.get("action")))
        elif name == "alert":
            out.append((name, e.get("step"), e.get("code"), e.get("severity")))
        elif name == "run_end":
            out.append((name, e.get("step"), e.get("status")))
        else:
            out.append((name, e.get("step")))
    return out


def _hf_run(tmp_path: Any, tok: Any) -> tuple[Any, list[dict[str, Any]]]:
    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector

    batches: list[dict[str, Any]] = []
    model = _no_dropout(tiny_model(tok))

    def keep(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if module.training:
            batches.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    model.register_forward_pre_hook(keep, with_kwargs=True)
    cb = GradienceCallback(config=_config(tmp_path / "hf"))
    inj = FaultInjector("nan_loss", FAULT_STEP)
    trainer = make_trainer(tmp_path / "hf", tok, [inj.callback(), cb], steps=STEPS, eval_steps=None, model=model)
    trainer.train()
    assert len(batches) == STEPS
    return cb, batches


def _plain_run(tmp_path: Any, tok: Any, batches: list[dict[str, Any]]) -> Any:
    from gradience import GradienceController
    from gradience.training.faults import FaultInjector

    model = _no_dropout(tiny_model(tok))
    helper = make_trainer(tmp_path / "plain-args", tok, [], steps=STEPS, eval_steps=None, model=model)
    helper.create_optimizer_and_scheduler(num_training_steps=STEPS)
    opt, sched = helper.optimizer, helper.lr_scheduler
    ctl = GradienceController(config=_config(tmp_path / "plain"))
    ctl.initialize(model, optimizer=opt, scheduler=sched, max_steps=STEPS)
    inj = FaultInjector("nan_loss", FAULT_STEP)
    inj.attach(model)
    model.train()
    for step, batch in enumerate(batches, start=1):
        inj.begin_step(step)
        loss = model(**batch).loss
        loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not ctl.step(step, loss, model, grad_norm=pre, epoch=step / 16):
            break
        opt.step()
        sched.step()
        opt.zero_grad()
    ctl.finalize()
    return ctl


@pytest.mark.integration
def test_callback_and_controller_record_the_same_run(tmp_path, tiny_tokenizer):
    cb, batches = _hf_run(tmp_path, tiny_tokenizer)
    ctl = _plain_run(tmp_path, tiny_tokenizer, batches)
    hf = read_events(tmp_path / "hf" / "run.jsonl")
    plain = read_events(ctl.path)

    # The scenario really happened: one rollback at the fault, a non-STABLE κ̃ level and its alert.
    codes = [e["code"] for e in hf if e["event"] == "alert"]
    assert "GUARD_ROLLBACK" in codes and "SPECTRAL_DANGER" in codes, codes
    assert [d.action for d in cb.guard.decisions] == ["rollback"]

    assert _signature(plain) == _signature(hf)
    assert [d.to_dict() for d in ctl.guard.decisions] == [d.to_dict() for d in cb.guard.decisions]

    # Same values where the frameworks do the same arithmetic: losses, norms, κ̃.
    def steps(events: list[dict[str, Any]]) -> list[tuple[int, Any, Any]]:
        return [(e["step"], e.get("loss"), e.get("grad_norm")) for e in events if e["event"] == "train_step"]

    for (s1, l1, g1), (s2, l2, g2) in zip(steps(hf), steps(plain), strict=True):
        assert s1 == s2
        assert (l1 is None) == (l2 is None) and (g1 is None) == (g2 is None)
        if isinstance(l1, float) and l1 == l1:
            assert l2 == pytest.approx(l1, rel=1e-5), s1
            assert g2 == pytest.approx(g1, rel=1e-4), s1

    end_hf, end_plain = hf[-1]["summary"], plain[-1]["summary"]
    assert end_plain["guard"] == end_hf["guard"]
    assert end_plain["spectral"]["final_risk_level"] == end_hf["spectral"]["final_risk_level"] == "DANGER"
    assert end_plain["spectral"]["final_kappa"] == pytest.approx(end_hf["spectral"]["final_kappa"], rel=1e-4)
    guard_summary = [e for e in hf if e["event"] == "metrics" and e.get("action") == "summary"]
    plain_summary = [e for e in plain if e["event"] == "metrics" and e.get("action") == "summary"]
    strip = {"snapshot_bytes"}  # identical tensors, but keep the comparison to decisions and counts
    assert {k: v for k, v in plain_summary[0].items() if k not in strip | {"ts", "mono", "run_id", "seq"}} == \
        {k: v for k, v in guard_summary[0].items() if k not in strip | {"ts", "mono", "run_id", "seq"}}


def test_the_integrations_hold_no_policy():
    """The adapters translate; the rules (alerts, guard responses, spectral actions) live in the supervisor."""
    from pathlib import Path

    import gradience.training.callback as callback
    import gradience.training.controller as controller

    for mod in (callback, controller):
        text = Path(mod.__file__).read_text()
        for rule in ("writer.alert(", ".respond(", ".backoff(", "maybe_snapshot(", "dense_until", "SPECTRAL_"):
            assert rule not in text, (mod.__name__, rule)

