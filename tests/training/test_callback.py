"""GradienceCallback with the real Trainer + PEFT on a tiny BERT: the flight record it writes."""

from __future__ import annotations

import json
import math

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import make_trainer, read_events

pytestmark = pytest.mark.integration


def _train(tmp_path, tok, steps=6, **cb_kwargs):
    from gradience import GradienceCallback

    cb = GradienceCallback(tmp_path / "run", dataset_name="sst2", telemetry_interval=2, **cb_kwargs)
    trainer = make_trainer(tmp_path, tok, [cb], steps=steps)
    trainer.train()
    return cb, trainer


def test_event_sequence_config_and_spine(tmp_path, tiny_tokenizer):
    cb, _ = _train(tmp_path, tiny_tokenizer)
    events = read_events(cb.path)
    names = [e["event"] for e in events]
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert len({e["run_id"] for e in events}) == 1
    # run_end is preceded by the recommendation, which follows the grad-norm summary.
    assert names[-2] == "recommendation"
    kinds = [e.get("kind") for e in events if e["event"] == "metrics"]
    assert "grad_norm" in kinds

    cfg = events[0]["config"]
    assert cfg["dataset_name"] == "sst2" and cfg["task_profile"] == "easy_classification"
    assert cfg["optimizer"]["name"] == "AdamW" and cfg["optimizer"]["lr"] == pytest.approx(5e-3)
    assert cfg["optimizer"]["weight_decay"] == 0.0 and cfg["optimizer"]["betas"] == [0.9, 0.999]
    assert cfg["lora"]["r"] == 4 and cfg["lora"]["alpha"] == 8 and cfg["lora"]["alpha_over_r"] == 2
    assert sorted(cfg["lora"]["target_modules"]) == ["query", "value"]
    assert cfg["lora"]["use_rslora"] is False and cfg["lora"]["use_dora"] is False
    tr = cfg["training"]
    assert (tr["seed"], tr["batch_size"], tr["gradient_accumulation"], tr["max_steps"]) == (0, 8, 1, 6)
    assert tr["max_grad_norm"] == 1.0 and tr["dtype"] == "fp32"
    meta = events[0]["meta"]
    assert meta["world_size"] == 1 and meta["framework"] == "transformers.Trainer"
    assert meta["torch_version"] and meta["transformers_version"] and meta["peft_version"]
    assert meta["resumed_from_step"] is None

    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 4, 6]
    for e in steps:
        assert math.isfinite(e["loss"]) and e["lr"] is not None and e["grad_norm"] > 0
        assert e["grad_norm_clipped"] <= min(e["grad_norm"], 1.0) + 1e-6
        assert e["epoch"] > 0
    assert "steps_per_second" in steps[-1]

    evals = [e for e in events if e["event"] == "eval"]
    assert {(e["step"], e["split"]) for e in evals} == {(3, "test"), (3, "train"), (6, "test"), (6, "train")}
    for e in evals:
        m = e["metrics"]
        assert {"loss", "accuracy", "n"} <= set(m)
        assert "ppl" not in m  # a classifier's cross-entropy is not a perplexity
        assert m["n"] == 32

    run_dir = tmp_path / "run"
    assert (run_dir / "peft" / "adapter_config.json").exists()
    args = json.loads((run_dir / "training" / "training_args.json").read_text())
    assert args["learning_rate"] == 5e-3 and args["max_steps"] == 6

    snap = TelemetryReader(cb.path).summarize()
    assert snap.status == "ok"
    assert snap.gaps["loss_gap"] is not None and snap.gaps["acc_gap"] is not None
    assert snap.gap_missing == []
    assert snap.grad_norm["summary"]["n"] == 6


def test_pre_clip_norm_is_measured_before_clipping(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1, recommend=False, audit=False)
    # A tiny max_grad_norm forces clipping on every step.
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb], steps=3, eval_steps=None, max_grad_norm=1e-3)
    trainer.train()
    steps = [e for e in read_events(cb.path) if e["event"] == "train_step"]
    assert len(steps) == 3
    for e in steps:
        assert e["grad_norm_clipped"] == pytest.approx(1e-3, rel=1e-3)
        assert e["grad_norm"] > 10 * e["grad_norm_clipped"]


def test_appends_never_truncates(tmp_path, tiny_tokenizer):
    cb1, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    before = cb1.path.read_bytes()
    cb2, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    after = cb2.path.read_bytes()
    assert after.startswith(before)
    reader = TelemetryReader(cb2.path)
    assert len(reader.runs()) == 2


def test_audit_is_appended_when_available(tmp_path, tiny_tokenizer):
    audit = pytest.importorskip("gradience.audit")
    if not hasattr(audit, "audit_adapter"):
        pytest.fail("gradience.audit.audit_adapter is missing")
    cb, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    audits = [e for e in read_events(cb.path) if e["event"] == "metrics" and e["kind"] == "lora_audit"]
    assert len(audits) == 1
    assert TelemetryReader(cb.path).summarize().lora_audit is not None


def test_crash_is_recorded_as_error(tmp_path, tiny_tokenizer):
    from transformers import TrainerCallback

    from gradience import GradienceCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise RuntimeError("boom")

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1)
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb, Boom()], steps=4, eval_steps=None)
    with pytest.raises(RuntimeError):
        trainer.train()
    # What the process-level hook does when the exception propagates out of train().
    import sys

    sys.excepthook(RuntimeError, RuntimeError("boom"), None)
    snap = TelemetryReader(cb.path).summarize()
    assert snap.status == "error" and "boom" in snap.reason
