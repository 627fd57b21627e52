"""Builders for single-file LoRA formats (kohya sd-scripts, diffusers) and for files that are not
B·A products (LyCORIS LoHa/LoKr, kohya DoRA). Pure numpy; tiny shapes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ._helpers import to_bf16_bits

_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
               dtypes: dict[str, str] | None = None, dtype: str = "F32") -> Path:
    """A safetensors file with ``__metadata__`` and a dtype per tensor (0-d tensors allowed)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs = []
    off = 0
    for name, x in tensors.items():
        dt = (dtypes or {}).get(name, dtype)
        b = to_bf16_bits(np.asarray(x)).tobytes() if dt == "BF16" else np.ascontiguousarray(x, dtype=_NP[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(np.shape(x)), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    return path


def kohya_tensors(modules: dict[str, tuple[np.ndarray, np.ndarray, float | None]]) -> dict[str, np.ndarray]:
    """``{prefix: (down, up, alpha or None)}`` -> kohya keys."""
    out: dict[str, np.ndarray] = {}
    for name, (down, up, alpha) in modules.items():
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        if alpha is not None:
            out[f"{name}.alpha"] = np.asarray(alpha, dtype=np.float32)
    return out


def kohya_modules(rng: np.random.Generator, r: int = 4, sdxl: bool = False,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    """An SD-style set: UNet attention (linear), a LoCon 3×3 conv (1×1 up), a 1×1 conv proj_in,
    text-encoder attention/MLP (``lora_te_`` or SDXL's ``lora_te1_``/``lora_te2_``); one module
    without an alpha tensor (s = 1)."""
    mods: dict[str, tuple[np.ndarray, np.ndarray, float | None]] = {}

    def lin(out_f: int, in_f: int, alpha: float | None, rank: int = r) -> tuple[np.ndarray, np.ndarray, float | None]:
        return rng.standard_normal((rank, in_f)), rng.standard_normal((out_f, rank)), alpha

    unet = "lora_unet_input_blocks_4_1" if sdxl else "lora_unet_down_blocks_0_attentions_0"
    mods[f"{unet}_transformer_blocks_0_attn1_to_q"] = lin(24, 24, r / 2)
    mods[f"{unet}_transformer_blocks_0_attn2_to_k"] = lin(24, 16, r / 2)
    mods[f"{unet}_transformer_blocks_0_ff_net_2"] = lin(24, 48, 1.0)
    mods[f"{unet}_proj_in"] = (rng.standard_normal((r, 24, 1, 1)), rng.standard_normal((24, r, 1, 1)), float(r))
    conv = "lora_unet_input_blocks_4_0_in_layers_2" if sdxl else "lora_unet_down_blocks_0_resnets_0_conv1"
    mods[conv] = (rng.standard_normal((2, 8, 3, 3)), rng.standard_normal((16, 2, 1, 1)), 1.0)
    tes = ("lora_te1", "lora_te2") if sdxl else ("lora_te",)
    for te in tes:
        mods[f"{te}_text_model_encoder_layers_0_self_attn_q_proj"] = lin(16, 16, None)
        mods[f"{te}_text_model_encoder_layers_0_mlp_fc1"] = lin(32, 16, 8.0, rank=8)
    return mods


KOHYA_META = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
              "ss_training_comment": "my style", "sshs_model_hash": "abc", "sshs_legacy_hash": "def",
              "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1"})}


def kohya_dense(mod: tuple[np.ndarray, np.ndarray, float | None]) -> np.ndarray:
    """s·up·down in float64 with conv kernels flattened (out × in·kh·kw)."""
    down, up, alpha = mod
    r = down.shape[0]
    s = (alpha if alpha is not None else r) / r
    return s * up.reshape(up.shape[0], r).astype(np.float64) @ down.reshape(r, -1).astype(np.float64)


def diffusers_tensors(modules: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, (a, b) in modules.items():
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = b
    return out


def diffusers_metadata(per_component: dict[str, dict[str, Any]]) -> dict[str, str]:
    """diffusers' ``lora_adapter_metadata``: each component's LoraConfig fields as ``comp.field``."""
    packed = {f"{comp}.{k}": v for comp, d in per_component.items() for k, v in d.items()}
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, sort_keys=True)}


def not_low_rank(kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tensors of a LyCORIS LoHa / LoKr or a kohya DoRA file (one module)."""
    m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    x = rng.standard_normal((4, 8))
    if kind == "loha":
        return {f"{m}.hada_w1_a": x.T, f"{m}.hada_w1_b": x, f"{m}.hada_w2_a": x.T, f"{m}.hada_w2_b": x,
                f"{m}.alpha": np.asarray(4.0)}
    if kind == "lokr":
        return {f"{m}.lokr_w1": rng.standard_normal((2, 2)), f"{m}.lokr_w2": rng.standard_normal((4, 4))}
    if kind == "dora":
        return {f"{m}.lora_down.weight": x, f"{m}.lora_up.weight": x.T, f"{m}.alpha": np.asarray(4.0),
                f"{m}.dora_scale": rng.standard_normal((1, 8))}
    raise ValueError(kind)
