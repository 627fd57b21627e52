"""A run with every kind of series an export carries, written with the real TelemetryWriter."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradience.telemetry import TelemetryWriter

CONFIG = {"model_name": "tiny-bert", "dataset_name": "sst2", "lora": {"r": 8, "alpha": 16},
          "optimizer": {"name": "AdamW", "lr": 2e-4}, "training": {"batch_size": 8, "max_steps": 12}}


def write_full_run(path: Path) -> Path:
    with TelemetryWriter(path, run_id="export-run") as w:
        w.run_start(CONFIG, {"framework": "transformers.Trainer", "parallelism": "single"})
        for s in range(1, 13):
            loss = float("nan") if s == 6 else 1.0 / s
            w.train_step(s, loss=loss, lr=2e-4 * (0.5 if s > 6 else 1.0), grad_norm=0.5 + s / 10,
                         grad_norm_clipped=0.5 + s / 10, epoch=s / 12, mean_token_accuracy=0.5 + s / 100,
                         num_tokens=100 * s)
        w.alert("error", "GUARD_ROLLBACK", "nonfinite_loss at step 6: restored the step-4 snapshot", step=6)
        w.metrics("guard", {"action": "rollback", "restored_step": 4, "lr_scale": 0.5}, step=6, action="rollback")
        w.metrics("spectral", {"kappa_tilde": 3.5, "risk_level": "STABLE"}, step=8)
        w.eval(6, split="test", metrics={"loss": 0.9, "accuracy": 0.71, "n": 32})
        w.eval(12, split="test", metrics={"loss": 0.7, "accuracy": 0.80, "n": 32})
        w.eval(12, split="train", metrics={"loss": 0.5, "accuracy": 0.90, "n": 32})
        w.metrics("lora_audit", {"n_layers": 4, "energy_rank_90_p50": 3.0, "stable_rank_mean": 2.5}, step=12)
        w.run_end("ok")
    return path


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    return write_full_run(tmp_path / "run.jsonl")
