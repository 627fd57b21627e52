"""Fused MoE experts adapted through PEFT's ``target_parameters`` (``lora.ParamWrapper``).

PEFT adapts a 3-D expert parameter (E experts) with one ``lora_A`` of shape (r·E) × in and one
``lora_B`` of shape out × (r·E). Expert e's factors are the rows ``e·r … e·r+r−1`` of A and the
columns ``e, e+E, e+2E, …`` of B (PEFT reshapes A to (E, r, in) and B to (out, r, E)), and its
update is ΔW_e = s·B_e·A_e. Read as one matrix, B·A = Σ_e B_e·A_e is none of the experts' updates,
so each expert is audited on its own: :func:`split_experts` replaces a fused module by E modules
whose factors are read through :class:`ExpertView`, a tensor source that serves each expert's
slice under a virtual name.

Several parameters on one module are nested wrappers (``experts.base_layer`` is the parameter
wrapped first: the module's first-declared targeted parameter); which parameter a key holds is
therefore told by ``target_parameters`` only when the module has one targeted parameter.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .naming import pattern_key
from .weights import InMemorySource, LoraModule

__all__ = ["ExpertView", "FusedParam", "split_experts"]

_VIRTUAL = re.compile(r"^(?P<key>.+)#expert(?P<e>\d+)of(?P<n>\d+)$")
_BASE_LAYER = re.compile(r"(\.base_layer)+$")


def _virtual(key: str, e: int, n: int) -> str:
    return f"{key}#expert{e}of{n}"


@dataclass
class FusedParam:
    """One fused expert parameter's LoRA: the module path, the candidate parameter names, E and r."""

    name: str  # module name as audited (PEFT prefix removed), e.g. model.layers.0.mlp.experts
    parameter: str | None  # e.g. gate_up_proj, when target_parameters tells it
    candidates: list[str]
    n_experts: int
    r: int
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


class ExpertView(InMemorySource):
    """A tensor source that also serves expert slices of fused factors under virtual names
    (``<key>#expert<e>of<E>``): A rows ``e·r … e·r+r−1``, B columns ``e::E``."""

    def __init__(self, src: Any, experts: dict[str, tuple[int, int]]) -> None:
        self._src = src
        self._experts = experts  # real key -> (E, r)
        self._local = threading.local()
        self.path: Path = src.path
        self.metadata = getattr(src, "metadata", {})

    def __getattr__(self, name: str) -> Any:  # read_raw, nbytes, header_bytes … of the real file
        return getattr(self._src, name)

    def names(self) -> list[str]:
        return self._src.names()

    def _parse(self, name: str) -> tuple[str, int, int] | None:
        m = _VIRTUAL.match(name)
        return (m.group("key"), int(m.group("e")), int(m.group("n"))) if m else None

    def shape(self, name: str) -> tuple[int, ...]:
        v = self._parse(name)
        if v is None:
            return self._src.shape(name)
        key, _, n = v
        full = self._src.shape(key)
        if "lora_A" in key:
            return (full[0] // n, *full[1:])
        return (full[0], full[1] // n, *full[2:])

    def dtype(self, name: str) -> str:
        v = self._parse(name)
        return self._src.dtype(v[0] if v else name)

    def _full(self, key: str) -> np.ndarray:
        held = getattr(self._local, "held", None)
        if held is None or held[0] != key:
            held = self._local.held = (key, self._src.read(key))
        return held[1]

    def read(self, name: str) -> np.ndarray:
        v = self._parse(name)
        if v is None:
            return self._src.read(name)
        key, e, n = v
        full = self._full(key)
        if "lora_A" in key:
            r = full.shape[0] // n
            return full[e * r:(e + 1) * r]
        return full[:, e::n]

    def close(self) -> None:
        self._src.close()


def _module_path(key_prefix: str) -> str:
    from .weights import PEFT_PREFIX

    p = key_prefix[len(PEFT_PREFIX):] if key_prefix.startswith(PEFT_PREFIX) else key_prefix
    return _BASE_LAYER.sub("", p)


def split_experts(modules: list[LoraModule], target_parameters: Sequence[str], r: int,
                  rank_pattern: dict[str, int]) -> tuple[list[LoraModule], list[FusedParam]]:
    """Replace every fused expert module (a module named by ``target_parameters`` whose factor
    rank is E × its configured r, E > 1) by E per-expert modules named ``<module>[expert e]``."""
    out: list[LoraModule] = []
    fused: list[FusedParam] = []
    for m in modules:
        path = _module_path(m.key_prefix)
        cands = [t.rpartition(".")[2] for t in sorted(target_parameters)
                 if path == t.rpartition(".")[0] or path.endswith("." + t.rpartition(".")[0])]
        if not cands or m.kind != "linear":
            out.append(m)
            continue
        # PEFT resolves rank_pattern for a parameter against "<module>.<parameter>"
        r_cfg = r
        for p in cands:
            k = pattern_key(list(rank_pattern), f"{path}.{p}")
            if k is not None:
                r_cfg = int(rank_pattern[k])
                break
        n = m.r // r_cfg if r_cfg > 0 else 0
        if n <= 1 or m.r % r_cfg:
            out.append(m)
            continue
        param = cands[0] if len(cands) == 1 else None
        fused.append(FusedParam(name=m.name, parameter=param, candidates=cands, n_experts=n, r=r_cfg,
                                a_key=m.a_key, b_key=m.b_key, a_shape=m.a_shape, b_shape=m.b_shape))
        for e in range(n):
            out.append(replace(m, name=f"{m.name}[expert {e}]", a_key=_virtual(m.a_key, e, n),
                               b_key=_virtual(m.b_key, e, n), r=r_cfg, a_shape=(r_cfg, *m.a_shape[1:]),
                               b_shape=(m.b_shape[0], r_cfg, *m.b_shape[2:]), fused=m.name))
    return out, fused
