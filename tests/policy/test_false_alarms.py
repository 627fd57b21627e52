"""Alarm sources must not cry wolf: healthy runs get no warning-or-worse item, failures still do.

Each case is a crafted run written with the real TelemetryWriter and read back through
``monitor`` (the same snapshot ``watch`` and ``report`` read).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradience.cli.monitor import build_monitor_json
from gradience.telemetry import TelemetryWriter
from tests.conftest import run_cli

WARNING_OR_WORSE = ("warning", "error", "critical")


def _cfg(**training: Any) -> dict[str, Any]:
    return {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "dataset_name": "sst2",
            "task_profile": "easy_classification", "optimizer": {"name": "adamw_torch", "lr": 5e-4},
            "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
            "training": {"batch_size": 16, "max_steps": 100, "max_grad_norm": 1.0, **training}}


def _recs(path: Path) -> dict[str, dict[str, Any]]:
    return {r["action"]: r for r in build_monitor_json(path)["recommendations"]}


def _loud(recs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(a for a, r in recs.items() if r["severity"] in WARNING_OR_WORSE)


# -- AMP overflows the scaler handled -------------------------------------------------------------
def _amp_run(path: Path, *, guard: bool, nan_loss: bool = False, rollbacks: int = 0,
             overflow_at_end: bool = False) -> None:
    """fp16 with a grad scaler whose first 8 steps overflow (non-finite gradient norm, finite loss)."""
    with TelemetryWriter(path, run_id="amp") as w:
        w.run_start(_cfg(dtype="fp32"), {"framework": "pytorch", "amp": {"dtype": "float16", "grad_scaler": True}})
        for i in range(1, 101):
            g = math.inf if i <= 8 or (overflow_at_end and i == 100) else 1.0
            loss = math.nan if nan_loss and i == 60 else 0.7 * math.exp(-i / 60) + 0.2
            w.train_step(i, loss=loss, lr=5e-4, grad_norm=g)
        w.eval(100, split="train", metrics={"loss": 0.3, "accuracy": 0.86})
        w.eval(100, split="test", metrics={"loss": 0.33, "accuracy": 0.84})
        if guard:
            w.metrics("guard", {"action": "summary", "snapshots": 2, "rollbacks": rollbacks, "lr_backoffs": rollbacks,
                                "final_lr_scale": 0.5 ** rollbacks, "integrity_status": "OK", "amp_overflows": 8},
                      step=100, action="summary")


def test_amp_overflows_the_scaler_handled_are_information(tmp_path: Path) -> None:
    for guard in (True, False):
        path = tmp_path / f"amp_{guard}.jsonl"
        _amp_run(path, guard=guard)
        recs = _recs(path)
        assert "investigate_nonfinite" not in recs and _loud(recs) == [], recs
        note = recs["note_amp_overflows"]
        assert note["severity"] == "info" and "skipped 8 overflow steps" in note["message"]
        assert "config_ok" in recs  # informational: nothing to change
        res = run_cli("monitor", str(path), "--fail-on", "error")
        assert res.returncode == 0, res.stdout + res.stderr


def test_real_nonfinite_values_stay_errors(tmp_path: Path) -> None:
    cases = {"nan_loss": {"guard": True, "nan_loss": True}, "rolled_back": {"guard": True, "rollbacks": 1},
             "still_overflowing": {"guard": False, "overflow_at_end": True}, "no_scaler": None}
    for name, kw in cases.items():
        path = tmp_path / f"{name}.jsonl"
        if kw is None:  # the same non-finite gradients without any sign of a grad scaler
            with TelemetryWriter(path, run_id="plain") as w:
                w.run_start(_cfg(), {"framework": "pytorch"})
                for i in range(1, 41):
                    w.train_step(i, loss=0.5, lr=5e-4, grad_norm=math.inf if i <= 3 else 1.0)
        else:
            _amp_run(path, **kw)
        recs = _recs(path)
        assert recs["investigate_nonfinite"]["severity"] == "error" and "note_amp_overflows" not in recs, name
    res = run_cli("monitor", str(tmp_path / "nan_loss.jsonl"), "--fail-on", "error")
    assert res.returncode == 1
