"""``run_end`` says why training stopped and which step's weights the saved adapter holds."""

from __future__ import annotations

import json

import pytest

from .conftest import make_trainer, read_events, tiny_model

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")


def _end(path):
    events = read_events(path)
    assert events[-1]["event"] == "run_end"
    return events, events[-1]


def test_early_stopping_and_the_best_checkpoint_are_recorded(tmp_path, tiny_tokenizer, capsys):
    from transformers import EarlyStoppingCallback

    from gradience import GradienceCallback

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1, spectral_enabled=False, recommend=False)
    # No later evaluation can beat the first by 10: patience 2 runs out at the third evaluation.
    stopper = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=10.0)
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb, stopper], steps=20, eval_steps=2, save_strategy="steps",
                           save_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_test_loss",
                           greater_is_better=False)
    trainer.train()
    assert trainer.state.global_step == 6
    events, end = _end(cb.path)
    assert end["status"] == "ok"
    assert end["summary"]["stop_reason"] == "early_stopping"
    adapter = end["summary"]["adapter"]
    assert adapter["source"] == "best_checkpoint" and adapter["step"] == 2 and adapter["saved"] is True
    assert adapter["checkpoint"].endswith("checkpoint-2")
    audits = [e for e in events if e["event"] == "metrics" and e["kind"] == "lora_audit"]
    assert [e["step"] for e in audits] == [2]  # the audit describes the step-2 weights that were saved

    from gradience.cli.main import main

    capsys.readouterr()
    assert main(["monitor", str(cb.path)]) is None
    assert "status ok (early stopping; adapter from step 2)" in capsys.readouterr().out
    assert main(["monitor", str(cb.path), "--json"]) is None
    signals = json.loads(capsys.readouterr().out)["signals"]
    assert signals["stop_reason"] == "early_stopping" and signals["adapter"]["step"] == 2


def test_a_callback_stopping_training_is_recorded(tmp_path, tiny_tokenizer):
    from transformers import TrainerCallback

    from gradience import GradienceCallback

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    cb = GradienceCallback(tmp_path / "run", spectral_enabled=False, audit=False, recommend=False)
    make_trainer(tmp_path, tiny_tokenizer, [cb, StopAt3()], steps=8, eval_steps=None).train()
    _, end = _end(cb.path)
    assert end["summary"]["stop_reason"] == "callback"
    assert end["summary"]["adapter"] == {"step": 3, "checkpoint": None, "source": "final", "saved": True}


def test_max_steps_and_a_plain_loop_and_an_interrupt(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback, GradienceController

    cb = GradienceCallback(tmp_path / "hf", spectral_enabled=False, audit=False, recommend=False)
    make_trainer(tmp_path, tiny_tokenizer, [cb], steps=2, eval_steps=None).train()
    assert _end(cb.path)[1]["summary"]["stop_reason"] == "max_steps"

    model = tiny_model(tiny_tokenizer)
    for name, max_steps, expected in (("planned", 2, "max_steps"), ("open", None, "loop_ended")):
        ctl = GradienceController(tmp_path / name, audit=False, recommend=False)
        ctl.initialize(model, max_steps=max_steps)
        for step in (1, 2):
            ctl.step(step, 0.5)
        ctl.finalize()
        assert _end(ctl.path)[1]["summary"]["stop_reason"] == expected

    ctl = GradienceController(tmp_path / "ctrl-c", audit=False, recommend=False)
    with pytest.raises(KeyboardInterrupt), ctl:
        ctl.initialize(model, max_steps=5)
        ctl.step(1, 0.5)
        raise KeyboardInterrupt
    _, end = _end(ctl.path)
    assert end["status"] == "aborted" and end["summary"]["stop_reason"] == "interrupt"
