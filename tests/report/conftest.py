"""Crafted runs for the report tests, written with the real TelemetryWriter."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from gradience.telemetry import TelemetryWriter

CONFIG = {
    "model_name": "tiny-bert",
    "dataset_name": "sst2",
    "task_profile": "easy_classification",
    "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.0},
    "lora": {"r": 16, "alpha": 32, "target_modules": ["query", "value", "intermediate.dense", "output.dense"]},
    "training": {"seed": 7, "batch_size": 32, "max_steps": 300, "max_grad_norm": 1.0},
}


def write_healthy(path: Path, steps: int = 300, run_id: str = "healthy-run",
                  config: dict[str, Any] | None = None) -> Path:
    rng = random.Random(0)
    with TelemetryWriter(path, run_id=run_id) as w:
        w.run_start(config or CONFIG, {"framework": "huggingface", "world_size": 1})
        for s in range(1, steps + 1):
            loss = 0.7 * math.exp(-s / 120) + 0.2 + rng.uniform(-0.01, 0.01)
            g = 1.2 + 0.3 * math.sin(s / 10)
            w.train_step(s, loss=loss, lr=2e-4 * (1 - s / (steps + 1)), grad_norm=g, grad_norm_clipped=min(g, 1.0))
            if s % 100 == 0:
                w.eval(s, split="train", metrics={"loss": loss - 0.02, "accuracy": 0.80 + s / 3000, "n": 512})
                w.eval(s, split="test", metrics={"loss": loss + 0.05, "accuracy": 0.78 + s / 4000, "n": 872})
            if s % 50 == 0:
                w.metrics("spectral", {"kappa_tilde": 10 + s / 50, "risk_level": "STABLE" if s < 200 else "LEARNING"},
                          step=s)
        w.run_end("ok")
    return path


def write_guarded(path: Path) -> Path:
    """Rollback at 80 (NaN loss), a spike at 120, rollback at 150, lockout at 190 → aborted."""
    with TelemetryWriter(path, run_id="guard-run") as w:
        w.run_start(CONFIG, {"framework": "pytorch"})
        scale = 1.0
        for s in range(0, 191):
            if s % 25 == 0:
                w.metrics("guard", {"snapshot_step": s, "bytes": 1024}, step=s, action="snapshot")
            loss: float = 0.9 - s / 1000
            g = 1.0
            if s == 80:
                loss, g = float("nan"), float("inf")
            if s == 120:
                loss = 5.0
            w.train_step(s, loss=loss, lr=1e-4 * scale, grad_norm=g)
            if s in (80, 150):
                scale *= 0.5
                w.alert("warning", "GUARD_ROLLBACK", f"rolled back to snapshot at step {s - s % 25}", step=s,
                        context={"trigger": "nonfinite_loss" if s == 80 else "grad_explosion"})
                w.metrics("guard", {"restored_step": s - s % 25, "lr_scale": scale}, step=s, action="rollback")
        w.alert("critical", "GUARD_LOCKOUT", "3 rollbacks in window; stopping", step=190)
        w.metrics("guard", {"snapshots": 8, "rollbacks": 2, "lr_backoffs": 2, "final_lr_scale": 0.25,
                            "integrity_status": "LOCKOUT"}, step=190, action="summary")
        w.run_end("aborted", reason="guard lockout after repeated faults")
    return path


def audit_dict(n_layers: int = 4, with_udr: bool = True) -> dict[str, Any]:
    layers = []
    modules = [("query", "attn", "attention.self.query"), ("value", "attn", "attention.self.value"),
               ("dense", "mlp", "intermediate.dense")]
    for i in range(n_layers):
        for j, (_short, mtype, path) in enumerate(modules):
            util = round(0.05 + 0.1 * i + 0.07 * j, 3)  # layer 3 value is the most used, layer 0 query the least
            k90 = [2, 3, 5, 9][i] + j
            decay = 0.3 + 0.15 * i + 0.05 * j
            svs = [round(5.0 * math.exp(-k / (decay * 4)), 6) for k in range(16)]
            row = {
                "name": f"base_model.model.encoder.layer.{i}.{path}", "module_type": mtype, "layer": i,
                "r": 16, "alpha": 32, "scale": 2.0, "shape": [384, 384], "params": 16 * (384 + 384),
                "stable_rank": util * 16, "utilization": util, "effective_rank": util * 20,
                "energy_rank_90": k90, "energy_rank_95": k90 + 1, "energy_rank_99": k90 + 3,
                "delta_sigma_max": 2 * svs[0], "delta_fro_norm": 2 * math.sqrt(sum(v * v for v in svs)),
                "top_singular_values": svs,
            }
            if with_udr:
                row["udr"] = [0.005, 0.05, 0.2, 1.5][i] * (1 + j)
                row["sdi"] = math.log10(row["udr"] + 1e-12)
            layers.append(row)
    n = len(layers)
    return {
        "total_lora_params": n * 16 * 768, "n_layers": n, "stable_rank_mean": 4.0, "utilization_mean": 0.32,
        "effective_rank_mean": 6.0, "energy_rank_90_p50": 5.0, "energy_rank_90_p90": 10.0,
        "suggested_r_global_median": 8, "suggested_r_global_90": 16, "r": 16, "issues": [],
        "layers": layers,
    }


def lora_audit_summary() -> dict[str, Any]:
    """What `gradience audit --append` logs as ``metrics(kind="lora_audit")``: the audit's summary
    block only (no per-module rows, no rank_pattern). Shape and values of a real 12-module audit."""
    return {
        "n_layers": 12, "total_lora_params": 73728, "stable_rank_mean": 1.3197, "stable_rank_median": 1.1578,
        "effective_rank_mean": 3.701, "utilization_mean": 0.16496, "energy_rank_90_p50": 2.0,
        "energy_rank_90_p90": 2.9, "n_modules_measured": 12, "r": 8, "lora_alpha": 16.0, "use_rslora": False,
        "use_dora": False, "suggested_r_global_median": 2, "suggested_r_global_90": 4,
        "suggested_params_global_median": 18432, "suggested_params_global_90": 36864,
        "by_type": {
            "attn": {"n": 8, "params": 49152, "stable_rank_mean": 1.41, "utilization_mean": 0.176,
                     "effective_rank_mean": 3.9, "energy_rank_90_p50": 2.0, "energy_rank_90_p90": 3.3,
                     "suggested_r_median": 2, "energy_share": 0.81, "delta_sigma_max_mean": 1.52},
            "mlp": {"n": 4, "params": 24576, "stable_rank_mean": 1.14, "utilization_mean": 0.1425,
                    "effective_rank_mean": 3.3, "energy_rank_90_p50": 1.0, "energy_rank_90_p90": 1.7,
                    "suggested_r_median": 1, "energy_share": 0.19, "delta_sigma_max_mean": 1.22},
        },
        "top10pct_energy_share": 0.5007,
        "suggested_r_per_layer_default": 1, "per_layer_params_after": 17664,
        "per_layer_params_saved_fraction": 0.7604166666666666,
        "n_layers_with_udr": 12, "udr_base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "udr_skipped_reason": None, "udr_mean": 0.36952, "udr_median": 0.35352, "udr_p90": 0.55758,
        "udr_max": 1.0208, "sdi_mean": -0.5261, "sdi_median": -0.4542, "sdi_p90": -0.2538,
        "fraction_udr_gt_0_1": 0.9166666666666666, "fraction_udr_gt_0_3": 0.5833333333333334,
        "issues": [{"code": "NON_LORA_TENSORS", "severity": "info", "count": 2,
                    "message": "2 non-LoRA tensor(s) not audited (heads, modules_to_save): classifier.bias"}],
    }


def write_audited_run(path: Path, summary: dict[str, Any] | None = None) -> Path:
    """A short run whose file carries the ``lora_audit`` block, as `gradience audit --append` writes it."""
    with TelemetryWriter(path, run_id="audited-run") as w:
        w.run_start(CONFIG, {"framework": "huggingface"})
        for s in range(1, 21):
            w.train_step(s, loss=1.0 / s, lr=2e-4, grad_norm=0.8)
        w.run_end("ok")
        w.metrics("lora_audit", summary if summary is not None else lora_audit_summary())
    return path


def write_peft_adapter(d: Path, *, use_rslora: bool = False, r: int = 8, alpha: float = 16.0) -> Path:
    """A small PEFT LoRA directory (float32 safetensors) whose modules use 1, 2, 4 or all 8 of their
    rank, so the audit's per-module suggestion has a rank_pattern and an alpha_pattern."""
    rng = random.Random(3)
    dim = 32
    tensors: dict[str, tuple[list[int], list[float]]] = {}
    for layer, keep in enumerate((1, 2, 4, 8)):
        for j, mod in enumerate(("query", "value")):
            k = max(1, keep // (1 + j))  # value uses half the rank of query in the same layer
            a = [rng.gauss(0, 1) for _ in range(r * dim)]  # A: r × dim
            b = [rng.gauss(0, 1) * (1.0 if i % r < k else 1e-3) for i in range(dim * r)]  # B: dim × r
            name = f"base_model.model.encoder.layer.{layer}.attention.self.{mod}"
            tensors[f"{name}.lora_A.weight"] = ([r, dim], a)
            tensors[f"{name}.lora_B.weight"] = ([dim, r], b)
    header: dict[str, Any] = {}
    off = 0
    for key, (shape, vals) in tensors.items():
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4 * len(vals)]}
        off += 4 * len(vals)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, vals in tensors.values():
            f.write(struct.pack(f"<{len(vals)}f", *vals))
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["query", "value"],
        "use_rslora": use_rslora}))
    return d


@pytest.fixture
def healthy_run(tmp_path: Path) -> Path:
    return write_healthy(tmp_path / "run.jsonl")


@pytest.fixture
def guarded_run(tmp_path: Path) -> Path:
    return write_guarded(tmp_path / "guard.jsonl")


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    p = tmp_path / "audit.json"
    p.write_text(json.dumps(audit_dict()))
    return p
