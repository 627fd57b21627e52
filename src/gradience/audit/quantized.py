"""Base weights saved quantized by bitsandbytes, read back as the float weights they stand for.

- **LLM.int8** (``load_in_8bit``): ``<module>.weight`` is int8 (out × in) and ``<module>.SCB`` the
  float32 absmax of each row; W = int8 · SCB / 127 (bitsandbytes' own vector-wise dequantization,
  the same float32 operations), decoded here without torch.
- **4-bit NF4 / FP4** (``load_in_4bit``): ``<module>.weight`` is packed uint8 (two codes a byte,
  shape (n/2, 1)) beside ``weight.absmax``, ``weight.quant_map`` (and ``weight.nested_*`` with double
  quantization) and ``weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``), a JSON blob that holds
  the logical shape. The logical shape is read from that JSON (torch-free); the weights are
  dequantized with bitsandbytes' ``dequantize_4bit`` (the ``quant`` extra; without it the module's
  UDR is skipped with that reason).

Norms of the raw integers are never used: a quantized tensor is either dequantized or not read.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..bounded import loads_json
from ..errors import GradienceError, require

__all__ = ["QUANT_STATE_SUFFIXES", "QuantInfo", "quant_info"]

QUANT_STATE_SUFFIXES = (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")
_INV_127 = np.float32(7.874015718698502e-3)  # 1/127 as bitsandbytes writes it


class _Source(Protocol):
    def read(self, name: str) -> np.ndarray: ...
    def dtype(self, name: str) -> str: ...
    def shape(self, name: str) -> tuple[int, ...]: ...


class QuantInfo:
    """How one quantized ``.weight`` tensor is stored, its logical shape and its dequantization."""

    def __init__(self, kind: str, weight: str, shape: tuple[int, ...], aux: dict[str, str]) -> None:
        self.kind = kind  # "bnb-int8", "bnb-nf4", "bnb-fp4"
        self.weight = weight
        self.shape = shape
        self.aux = aux  # role -> tensor name

    def dequantize(self, where: dict[str, Any]) -> np.ndarray:
        """The float32 weights (logical shape). ``where``: tensor name -> its reader."""
        if self.kind == "bnb-int8":
            q = where[self.weight].read(self.weight).astype(np.float32)
            scb = where[self.aux["SCB"]].read(self.aux["SCB"]).astype(np.float32)
            return (q * scb.reshape(-1, 1)) * _INV_127
        torch = require("torch", "quant", f"dequantizing {self.kind} base weights")
        bnbf = require("bitsandbytes.functional", "quant", f"dequantizing {self.kind} base weights")
        qs = {role: torch.from_numpy(np.ascontiguousarray(where[name].read(name))) for role, name in self.aux.items()}
        packed = torch.from_numpy(np.ascontiguousarray(where[self.weight].read(self.weight)))
        try:
            state = bnbf.QuantState.from_dict(qs, device=torch.device("cpu"))
            w = bnbf.dequantize_4bit(packed, quant_state=state)
        except Exception as exc:  # bitsandbytes raises many types for states it cannot read
            raise GradienceError(f"bitsandbytes could not dequantize {self.weight} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        return w.to(torch.float32).numpy().reshape(self.shape)


def quant_info(names: set[str], src_of: dict[str, _Source]) -> dict[str, QuantInfo]:
    """Every bitsandbytes-quantized ``.weight`` among ``names`` (tensor name -> reader)."""
    out: dict[str, QuantInfo] = {}
    for name in names:
        if not name.endswith(".weight"):
            continue
        mod = name[: -len(".weight")]
        if f"{mod}.SCB" in names and src_of[name].dtype(name) == "I8":
            out[name] = QuantInfo("bnb-int8", name, src_of[name].shape(name), {"SCB": f"{mod}.SCB"})
            continue
        for suffix in QUANT_STATE_SUFFIXES:
            blob = name + suffix
            if blob not in names:
                continue
            try:
                meta = loads_json(bytes(src_of[blob].read(blob).astype(np.uint8)), path=None,
                                  what="quantization state")
                shape = tuple(int(x) for x in meta["shape"])
            except (GradienceError, ValueError, KeyError, TypeError, OverflowError):
                continue  # an unreadable state: the tensor stays unmapped rather than read as integers
            aux = {n[len(name) + 1:]: n for n in names if n.startswith(name + ".")}
            out[name] = QuantInfo("bnb-" + suffix.rsplit("__", 1)[1], name, shape, aux)
    return out
