"""The callback's signals reach every tracker the Trainer reports to, live: read back from the
TensorBoard log the Trainer's own TensorBoardCallback wrote."""

from __future__ import annotations

import math

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import make_trainer

pytest.importorskip("tensorboard")
pytestmark = pytest.mark.integration


def test_the_callback_shows_its_signals_in_the_trainers_tensorboard_log(tmp_path, tiny_tokenizer):
    """report_to=["tensorboard"] and the callback passed as users pass it: TensorBoard shows the
    recorded loss (NaN at the fault, where the Trainer's own log filters it) and marks the rollback."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradience import GradienceCallback
    from gradience.training.faults import FaultInjector

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1, guard_enabled=True, guard_snapshot_interval=1,
                           spectral_enabled=False, audit=False, recommend=False)
    fault = FaultInjector(kind="nan_loss", step=3).callback(monitor=cb)
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb, fault], steps=5, eval_steps=None, report_to=["tensorboard"],
                           logging_strategy="steps", logging_steps=1)
    trainer.train()
    event_files = list((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert event_files, "the Trainer's TensorBoardCallback wrote nothing"
    acc = EventAccumulator(str(event_files[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # TensorBoardCallback prefixes train-side keys with "train/".
    assert {"train/loss", "train/gradience/loss", "train/gradience/grad_norm_level",
            "train/gradience/guard/action", "train/gradience/guard/lr_scale"} <= tags, tags
    loss = {e.step: e.value for e in acc.Scalars("train/gradience/loss")}
    assert sorted(loss) == [1, 2, 3, 4, 5] and math.isnan(loss[3]) and all(math.isfinite(loss[s]) for s in (1, 2, 4))
    assert {e.step: e.value for e in acc.Scalars("train/gradience/guard/action")} == {3: 2.0}
    assert {e.step: e.value for e in acc.Scalars("train/gradience/guard/lr_scale")}[3] < 1.0
    recorded = {e["step"]: e["loss"] for e in TelemetryReader(cb.path).iter_events() if e["event"] == "train_step"}
    for step in (1, 2, 4, 5):
        assert loss[step] == pytest.approx(recorded[step], rel=1e-6)
    assert "log" not in trainer.__dict__  # the log hook is removed at the end
