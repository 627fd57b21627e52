"""Crafted telemetry for the watch tests: every event kind, fixed timestamps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradience.telemetry.encoding import encode_line, sanitize
from gradience.telemetry.schema import SCHEMA_ID

T0 = 1_700_000_000.0


def line(event: str, step: int | None, ts: float, run_id: str = "run-A", **payload: Any) -> bytes:
    rec = {"schema": SCHEMA_ID, "ts": ts, "run_id": run_id, "event": event, "step": step, **payload}
    return encode_line(sanitize(rec))


def run_start(run_id: str = "run-A", ts: float = T0, max_steps: int = 200, r: int = 16) -> bytes:
    config = {
        "model_name": "tiny-bert", "dataset_name": "sst2", "task_profile": "easy_classification",
        "optimizer": {"name": "adamw", "lr": 2e-4}, "lora": {"r": r, "alpha": 32},
        "training": {"max_steps": max_steps, "batch_size": 8},
    }
    return line("run_start", None, ts, run_id, config=config, meta={"framework": "pytorch"})


def train_step(step: int, ts: float, run_id: str = "run-A", loss: float | None = None,
               grad_norm: float | None = None, lr: float | None = None) -> bytes:
    loss = 2.0 * math.exp(-step / 60) + 0.2 if loss is None else loss
    lr = 2e-4 * (1 - step / 250) if lr is None else lr
    grad_norm = 0.5 + 0.02 * (step % 10) if grad_norm is None else grad_norm
    return line("train_step", step, ts, run_id, loss=loss, lr=lr, grad_norm=grad_norm,
                grad_norm_clipped=min(grad_norm, 1.0), epoch=step / 100)


def full_run(path: Path, *, steps: int = 120, run_id: str = "run-A", finished: bool = True) -> Path:
    """A finished run with every panel populated (ts = T0 + step seconds)."""
    out = [run_start(run_id)]
    for s in range(1, steps + 1):
        gn = 7.5 if s == 90 else None
        out.append(train_step(s, T0 + s, run_id, grad_norm=gn))
        if s == 50:
            out.append(line("metrics", s, T0 + s + 0.1, run_id, kind="spectral",
                            metrics={"kappa_tilde": 12.5, "risk_level": "STABLE"}))
            out.append(line("metrics", s, T0 + s + 0.2, run_id, kind="guard", action="snapshot",
                            metrics={"action": "snapshot", "ring": 1}))
        if s == 90:
            out.append(line("alert", s, T0 + s + 0.1, run_id, severity="warning", code="GRAD_NORM_WARNING",
                            message="grad norm 7.500 above 5.0", context={}))
        if s == 100:
            out.append(line("metrics", s, T0 + s + 0.1, run_id, kind="spectral",
                            metrics={"kappa_tilde": 14.25, "risk_level": "WARNING"}))
            out.append(line("alert", s, T0 + s + 0.2, run_id, severity="error", code="GUARD_ROLLBACK",
                            message="non-finite loss; restored snapshot of step 50", context={"to_step": 50}))
            out.append(line("metrics", s, T0 + s + 0.3, run_id, kind="guard", action="rollback",
                            metrics={"action": "rollback", "to_step": 50}))
            out.append(line("metrics", s, T0 + s + 0.4, run_id, kind="guard", action="backoff",
                            metrics={"action": "backoff", "lr_scale": 0.5}))
    out.append(line("eval", steps, T0 + steps + 1, run_id, split="train",
                    metrics={"loss": 0.21, "accuracy": 0.95, "n": 512}))
    out.append(line("eval", steps, T0 + steps + 2, run_id, split="validation",
                    metrics={"loss": 0.35, "accuracy": 0.88, "n": 872}))
    out.append(line("metrics", None, T0 + steps + 3, run_id, kind="lora_audit", metrics={
        "utilization_mean": 0.21, "suggested_r_global_median": 4, "suggested_r_global_90": 8,
        "energy_rank_90_p50": 3, "total_lora_params": 147456,
        "by_type": {"attn": {"utilization_mean": 0.25, "n_layers": 12},
                    "mlp": {"utilization_mean": 0.09, "n_layers": 6}}}))
    out.append(line("recommendation", steps, T0 + steps + 4, run_id, recommendations=[
        {"severity": "info", "action": "compress_rank", "message": "audited rank 4 keeps 90% energy; try r=4",
         "confidence": 0.65},
    ]))
    if finished:
        out.append(line("run_end", steps, T0 + steps + 5, run_id, status="ok"))
    path.write_bytes(b"".join(out))
    return path
