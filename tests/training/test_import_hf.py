"""A run trained without Gradience, read back: the real Trainer's trainer_state.json (its newest
checkpoint) and the TensorBoard log its own TensorBoardCallback wrote give the monitor view
with the Trainer's values."""

from __future__ import annotations

import json

import pytest

from gradience.cli.main import main

from .conftest import make_trainer

pytest.importorskip("tensorboard")
pytestmark = pytest.mark.integration


def test_a_run_without_gradience_is_read_from_its_state_and_its_tensorboard_log(tmp_path, tiny_tokenizer, capsys):
    trainer = make_trainer(tmp_path, tiny_tokenizer, [], steps=6, eval_steps=3, report_to=["tensorboard"],
                           logging_strategy="steps", logging_steps=1, save_strategy="steps", save_steps=3)
    trainer.train()
    capsys.readouterr()  # the Trainer's own printed logs
    history = trainer.state.log_history
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    test_acc = {e["step"]: e["eval_test_accuracy"] for e in history if "eval_test_accuracy" in e}
    train_acc = {e["step"]: e["eval_train_accuracy"] for e in history if "eval_train_accuracy" in e}
    out = tmp_path / "out"
    assert not (out / "trainer_state.json").exists()  # save_strategy steps: only the checkpoints have it

    def monitor(path) -> dict:
        assert main(["monitor", str(path), "--json"]) is None
        return json.loads(capsys.readouterr().out)["signals"]

    tb_dirs = {p.parent for p in out.rglob("events.out.tfevents.*")}
    assert len(tb_dirs) == 1
    for source, rel in ((out, 1e-12), (tb_dirs.pop(), 1e-6)):  # TensorBoard stores float32
        sig = monitor(source)
        assert sig["last_step"] == 6
        assert sig["loss"]["first"] == pytest.approx(losses[1], rel=rel)
        assert sig["loss"]["last"] == pytest.approx(losses[6], rel=rel)
        assert sig["loss"]["n"] == 6
        assert sig["evals"]["test"]["step"] == 6
        assert sig["evals"]["test"]["metrics"]["accuracy"] == pytest.approx(test_acc[6], rel=rel)
        assert sig["evals"]["train"]["metrics"]["accuracy"] == pytest.approx(train_acc[6], rel=rel)
        assert sig["eval_history"]["test"]["steps"] == [3, 6]
        assert sig["lr"]["first"] == pytest.approx(history[0]["learning_rate"], rel=rel)
