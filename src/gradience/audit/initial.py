"""The learned update of an adapter whose initialisation rewrote the base (PiSSA, OLoRA, CorDA, LoftQ).

Such an init sets W′ = W − s·B₀·A₀, so after training the model is W + s·(B·A − B₀·A₀): the update is
the product of B̃ = [B, −B₀] (out × 2r) and Ã = [A; A₀] (2r × in), which is what PEFT's conversion
(``path_initial_model_for_weight_conversion``) writes. Given the initial adapter (saved right after
``get_peft_model``), :class:`DifferenceView` serves B̃ and Ã under virtual names, so the exact factored
audit measures the true update without writing anything.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdapterFormatError
from .weights import InMemorySource, LoraModule

__all__ = ["DifferenceView", "difference_modules"]

_VIRTUAL = re.compile(r"^(?P<key>.+)#minus-initial$")


class DifferenceView(InMemorySource):
    """Tensor source serving ``<key>#minus-initial``: [A; A₀] for lora_A keys, [B, −B₀] for lora_B."""

    def __init__(self, src: Any, initial: Any) -> None:
        self._src = src
        self._init = initial
        self.path: Path = src.path
        self.metadata = getattr(src, "metadata", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._src, name)

    def names(self) -> list[str]:
        return self._src.names()

    def shape(self, name: str) -> tuple[int, ...]:
        m = _VIRTUAL.match(name)
        if m is None:
            return self._src.shape(name)
        full = self._src.shape(m.group("key"))
        if "lora_A" in m.group("key") or "lora_embedding_A" in m.group("key"):
            return (2 * full[0], *full[1:])
        return (full[0], 2 * full[1], *full[2:])

    def dtype(self, name: str) -> str:
        m = _VIRTUAL.match(name)
        return self._src.dtype(m.group("key") if m else name)

    def read(self, name: str) -> np.ndarray:
        m = _VIRTUAL.match(name)
        if m is None:
            return self._src.read(name)
        key = m.group("key")
        now, then = self._src.read(key), self._init.read(key)
        if "lora_A" in key or "lora_embedding_A" in key:
            return np.concatenate([now, then], axis=0)
        return np.concatenate([now, -then], axis=1)

    def close(self) -> None:
        self._src.close()
        self._init.close()


def difference_modules(modules: list[LoraModule], initial: Any) -> list[LoraModule]:
    """Each module as the rank-2r pair (B̃, Ã); the initial adapter must hold the same factors' shapes."""
    have = set(initial.names())
    out = []
    for m in modules:
        for key in (m.a_key, m.b_key):
            if key not in have or tuple(initial.shape(key)) != tuple(m.a_shape if key == m.a_key else m.b_shape):
                raise AdapterFormatError(f"the initial adapter has no factor {key!r} of the same shape", path=initial.path,
                                         hint="pass the adapter saved right after get_peft_model, before training")
        if m.kind == "embedding":
            raise AdapterFormatError("embedding LoRA with a base-rewriting init is not supported here",
                                     path=initial.path, hint="convert the adapter with PEFT instead")
        out.append(replace(m, a_key=m.a_key + "#minus-initial", b_key=m.b_key + "#minus-initial", r=2 * m.r,
                           a_shape=(2 * m.r, *m.a_shape[1:]), b_shape=(m.b_shape[0], 2 * m.r, *m.b_shape[2:])))
    return out
