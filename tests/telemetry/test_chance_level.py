"""The chance level of a classifier: n_labels in the config, the eval set's majority-class rate,
and the per-split eval history the policy reads."""

from __future__ import annotations

from pathlib import Path

from gradience.telemetry import TelemetryWriter
from gradience.telemetry.reader import TelemetryReader
from gradience.telemetry.schema import ConfigSnapshot
from gradience.training.label_stats import dataset_labels, majority_rate


def test_n_labels_round_trips_and_files_of_earlier_releases_read_as_none() -> None:
    assert ConfigSnapshot.from_dict({"n_labels": 3}).typed().n_labels == 3
    assert ConfigSnapshot.from_dict({"model_name": "m"}).typed().n_labels is None  # written before n_labels
    bad = ConfigSnapshot.from_dict({"n_labels": "two"}).typed()
    assert bad.n_labels is None and bad.extras["_invalid"] == {"n_labels": "two"}
    assert ConfigSnapshot.from_dict({"n_labels": 0}).typed().n_labels is None
    assert ConfigSnapshot(n_labels=2).to_dict()["n_labels"] == 2


def test_majority_rate_of_labels_and_datasets() -> None:
    assert majority_rate([1, 0, 1, 1]) == 0.75
    assert majority_rate([0, -100, 0, 1]) == 2 / 3  # ignored positions are not a class
    assert majority_rate([[1, 2], [3]]) is None and majority_rate([]) is None  # token sequences: no classes
    rows = [{"input_ids": [1], "labels": y} for y in (0, 1, 1)]
    assert dataset_labels(rows) == [0, 1, 1]

    class Columns:  # a datasets.Dataset: column access
        def __init__(self) -> None:
            self.column_names = ["text", "label"]

        def __getitem__(self, key: str) -> list[int]:
            assert key == "label"
            return [2, 2, 0]

    assert dataset_labels(Columns()) == [2, 2, 0]
    assert dataset_labels([{"input_ids": [1]}]) is None and dataset_labels(None) is None


def test_eval_history_keeps_each_split_in_order_and_a_resume_replaces_steps(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path, run_id="r") as w:
        w.run_start({"n_labels": 2}, {})
        for step, acc in ((10, 0.6), (20, 0.7), (30, 0.65)):
            w.eval(step, split="validation", metrics={"accuracy": acc, "loss": 0.5, "majority_rate": 0.51})
        w.run_start({"n_labels": 2}, {"resumed_from_step": 20}, step=20)  # evaluates step 30 again
        w.eval(30, split="test", metrics={"accuracy": 0.75})
    snap = TelemetryReader(path).summarize()
    hist = snap.eval_history["test"]
    assert hist["steps"] == [10, 20, 30] and hist["accuracy"] == [0.6, 0.7, 0.75] and hist["n"] == 3
    assert hist["majority_rate"] == [0.51, 0.51, None]
    assert snap.config["n_labels"] == 2
