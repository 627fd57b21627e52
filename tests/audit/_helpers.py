"""Builders for synthetic adapters (pure numpy; bf16 rounded to nearest even)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values a tensor has after being stored in ``dtype`` (what the audit sees)."""
    if dtype == "F32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        return from_bf16_bits(to_bf16_bits(x)).astype(np.float64)
    return x.astype(np.float64)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> None:
    header: dict[str, Any] = {}
    blobs = []
    off = 0
    for name, x in tensors.items():
        if dtype == "BF16":
            b = to_bf16_bits(x).tobytes()
        else:
            b = np.ascontiguousarray(x, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def make_adapter(d: Path, modules: dict[str, tuple[np.ndarray, np.ndarray]], *, r: int, alpha: float,
                 dtype: str = "F32", extra_tensors: dict[str, np.ndarray] | None = None,
                 prefix: str = "base_model.model.", emb: frozenset[str] = frozenset(), **cfg: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for name, (a, b) in modules.items():
        if name in emb:
            tensors[f"{prefix}{name}.lora_embedding_A"] = a
            tensors[f"{prefix}{name}.lora_embedding_B"] = b
        else:
            tensors[f"{prefix}{name}.lora_A.weight"] = a
            tensors[f"{prefix}{name}.lora_B.weight"] = b
    tensors.update(extra_tensors or {})
    write_safetensors(d / "adapter_model.safetensors", tensors, dtype)
    conf = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": sorted({n.split(".")[-1] for n in modules})}
    conf.update(cfg)
    (d / "adapter_config.json").write_text(json.dumps(conf))
    return d


def dense_sigma(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference: σ of the dense B·A (conv kernels flattened), float64 full SVD."""
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    return np.linalg.svd(b2 @ a2, compute_uv=False)[: a2.shape[0]]


def assert_sigma_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-6) -> None:
    """Every σ within ``rel`` relative of the reference; values that are numerically zero in
    the reference (below 1e-12·σ₁, i.e. rounding noise of the dense SVD) compare absolutely."""
    got = np.asarray(got, dtype=np.float64)
    floor = 1e-12 * float(ref[0]) if ref.size else 0.0
    err = np.abs(got - ref)
    bad = err > rel * ref + floor
    assert not bad.any(), f"σ mismatch at {np.flatnonzero(bad)}: got {got[bad]}, want {ref[bad]}"
