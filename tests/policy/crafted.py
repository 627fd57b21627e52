"""Crafted runs for the monitor golden tests, written with the real TelemetryWriter.

Timestamps come from a fake clock (``FakeClock``) so the goldens are byte-stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from gradience.telemetry import TelemetryWriter


class FakeClock:
    """Stands in for the writer's ``time`` module: 0.5 s per event from a fixed epoch."""

    def __init__(self, start: float = 1_700_000_000.0, step: float = 0.5) -> None:
        self.now = start
        self.step = step

    def time(self) -> float:
        self.now += self.step
        return self.now

    def monotonic(self) -> float:
        """The same clock read without advancing it (the writer reads it right after ``time``)."""
        return self.now - 1_600_000_000.0


def _cfg(profile: str, dataset: str, *, lr: float, r: int, alpha: float, targets: list[str],
         max_steps: int) -> dict[str, object]:
    return {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "dataset_name": dataset, "task_profile": profile,
            "optimizer": {"name": "adamw_torch", "lr": lr, "weight_decay": 0.01},
            "lora": {"r": r, "alpha": alpha, "target_modules": targets, "dropout": 0.1},
            "training": {"seed": 0, "batch_size": 32, "max_steps": max_steps, "max_grad_norm": 1.0}}


def healthy(path: Path) -> None:
    with TelemetryWriter(path, run_id="healthy") as w:
        w.run_start(_cfg("easy_classification", "sst2", lr=1e-4, r=8, alpha=16, targets=["query", "value"],
                         max_steps=100), {"framework": "huggingface", "world_size": 1})
        for i in range(1, 101):
            w.train_step(i, loss=0.6 * math.exp(-i / 40) + 0.1, lr=1e-4 * (1 - i / 100),
                         grad_norm=1.0 + 0.2 * math.sin(i), grad_norm_clipped=min(1.0, 1.0 + 0.2 * math.sin(i)))
            if i % 25 == 0:
                w.metrics("spectral", {"kappa_tilde": 10.0 + i / 100, "risk_level": "STABLE"}, step=i)
            if i % 50 == 0:
                w.eval(i, split="train", metrics={"loss": 0.25, "accuracy": 0.93, "n": 512})
                w.eval(i, split="test", metrics={"loss": 0.30, "accuracy": 0.905, "n": 872})
        w.metrics("lora_audit", {"utilization_mean": 0.55, "suggested_r_global_median": 8,
                                 "suggested_r_global_90": 8, "energy_rank_90_p50": 6, "total_lora_params": 73_728,
                                 "n_layers": 12, "by_type": {"attn": {"utilization_mean": 0.55}}}, step=100)


def memorising(path: Path) -> None:
    with TelemetryWriter(path, run_id="memorising") as w:
        w.run_start(_cfg("hard_reasoning", "openai/gsm8k", lr=2e-4, r=16, alpha=32,
                         targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"], max_steps=120))
        for i in range(1, 121):
            w.train_step(i, loss=2.0 * math.exp(-i / 25) + 0.05, lr=2e-4, grad_norm=2.0 - i / 100)
            if i % 60 == 0:
                w.eval(i, split="train", metrics={"loss": 0.30 if i == 120 else 0.9, "n": 256})
                w.eval(i, split="validation", metrics={"loss": 1.20 if i == 120 else 1.0, "n": 256})


def diverging(path: Path) -> None:
    with TelemetryWriter(path, run_id="diverging") as w:
        w.run_start(_cfg("unknown", "toy-lm", lr=3e-3, r=8, alpha=16, targets=["q_proj", "v_proj"], max_steps=60))
        for i in range(1, 51):
            if i < 30:
                loss, g = 3.0 - i * 0.03, 1.5
            elif i < 45:
                loss, g = 2.1 * math.exp((i - 30) / 4), 1.5 * math.exp((i - 30) / 3)
            else:
                loss, g = float("nan"), float("inf")
            w.train_step(i, loss=loss, lr=3e-3, grad_norm=g)
            if i == 34:
                w.alert("warning", "GRAD_NORM_WARNING", "gradient norm 5.7 entered the warning level", step=i,
                        context={"grad_norm": 5.7})
            if i == 37:
                w.alert("critical", "GRAD_NORM_CRITICAL", "gradient norm 15.4 entered the critical level", step=i,
                        context={"grad_norm": 15.4})
        w.run_end(status="error", reason="loss is NaN since step 45", step=50)


def guard_rollbacks(path: Path) -> None:
    with TelemetryWriter(path, run_id="guarded") as w:
        w.run_start(_cfg("easy_classification", "sst2", lr=4e-4, r=8, alpha=16, targets=["query", "value"],
                         max_steps=80))
        w.metrics("guard", {"action": "snapshot", "ring_size": 1}, step=0)
        for i in range(1, 81):
            loss = 0.7 - i * 0.004
            if i == 33:
                loss = 40.0
            g = 80.0 if i == 57 else 1.2
            w.train_step(i, loss=loss, lr=4e-4 * (0.5 if i > 33 else 1) * (0.5 if i > 57 else 1), grad_norm=g)
            if i % 20 == 0:
                w.metrics("guard", {"action": "snapshot", "ring_size": min(5, i // 20 + 1)}, step=i)
            if i in (33, 57):
                trigger = "loss_spike" if i == 33 else "grad_explosion"
                w.alert("warning", "GUARD_ROLLBACK", f"{trigger} at step {i}: restored snapshot, LR ×0.5", step=i,
                        context={"trigger": trigger, "restored_step": 20 if i == 33 else 40})
                w.metrics("guard", {"action": "rollback", "trigger": trigger, "lr_scale": 0.5}, step=i)
            if i % 40 == 0:
                w.metrics("spectral", {"kappa_tilde": 30.0 + i, "risk_level": "DANGER" if i == 80 else "WARNING"},
                          step=i)
        w.eval(80, split="train", metrics={"loss": 0.38, "accuracy": 0.86, "n": 512})
        w.eval(80, split="test", metrics={"loss": 0.41, "accuracy": 0.85, "n": 872})
        w.metrics("guard", {"action": "summary", "snapshots": 5, "rollbacks": 2, "lr_backoffs": 2,
                            "final_lr_scale": 0.25, "integrity_status": "ok"}, step=80)


def oversized_rank(path: Path) -> None:
    with TelemetryWriter(path, run_id="oversized") as w:
        w.run_start(_cfg("easy_classification", "sst2", lr=1e-4, r=64, alpha=64,
                         targets=["query", "key", "value", "intermediate.dense", "output.dense"], max_steps=100))
        for i in range(1, 101):
            w.train_step(i, loss=0.6 * math.exp(-i / 30) + 0.12, lr=1e-4, grad_norm=0.9)
        w.eval(100, split="train", metrics={"loss": 0.22, "accuracy": 0.94, "n": 512})
        w.eval(100, split="test", metrics={"loss": 0.29, "accuracy": 0.91, "n": 872})
        w.metrics("lora_audit", {
            "utilization_mean": 0.09, "suggested_r_global_median": 4, "suggested_r_global_90": 8,
            "energy_rank_90_p50": 3, "total_lora_params": 2_359_296, "n_layers": 30,
            "by_type": {"attn": {"utilization_mean": 0.14}, "mlp": {"utilization_mean": 0.05}},
            "udr_median": 0.05, "udr_p90": 0.12, "udr_max": 0.31, "fraction_udr_gt_0_3": 0.03}, step=100)


RUNS: dict[str, Callable[[Path], None]] = {
    "healthy": healthy,
    "memorising": memorising,
    "diverging_nan": diverging,
    "guard_rollbacks": guard_rollbacks,
    "oversized_rank": oversized_rank,
}
