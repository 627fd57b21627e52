"""Module names: type (attn / mlp / other), layer index, and PEFT pattern matching."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from ..errors import AdapterFormatError

__all__ = ["exact_patterns", "layer_index", "layer_key", "module_type", "pattern_key", "resolve_rank_alpha"]

# Leaf names that decide the type on their own, across LLaMA/Mistral/Qwen, GPT-2/NeoX/Falcon,
# BERT/RoBERTa, DistilBERT, T5, ViT, Whisper/BART, Phi and MoE experts.
_ATTN_LEAVES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj", "c_attn", "query", "key", "value",
    "q_lin", "k_lin", "v_lin", "out_lin", "qkv", "Wqkv", "query_key_value", "in_proj", "q", "k", "v", "o",
    "wq", "wk", "wv", "wo_attn", "kv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
})
_MLP_LEAVES = frozenset({
    "gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "wi", "wi_0", "wi_1", "wo",
    "w1", "w2", "w3", "lin1", "lin2", "dense_h_to_4h", "dense_4h_to_h", "fc_in", "fc_out", "c_fc2",
})
_ATTN_CONTEXT = re.compile(r"(attn|attention|selfattention|encdecattention|self_attn|cross_attn)", re.I)
_MLP_CONTEXT = re.compile(r"(mlp|ffn|feed_forward|feedforward|intermediate|densereludense|experts|moe)", re.I)


def module_type(name: str) -> str:
    """``attn``, ``mlp`` or ``other`` for a module path such as ``model.layers.3.mlp.up_proj``.

    The parent path decides ambiguous leaves (GPT-2 ``attn.c_proj`` vs ``mlp.c_proj``,
    BERT ``attention.output.dense`` vs ``output.dense``); T5's ``wo`` is the MLP output
    unless it sits in an attention block.
    """
    parts = name.split("[")[0].split(".")
    leaf = parts[-1]
    parents = ".".join(parts[:-1])
    if _ATTN_CONTEXT.search(parents):
        return "attn"
    if _MLP_CONTEXT.search(parents):
        return "mlp"
    if leaf in _ATTN_LEAVES:
        return "attn"
    if leaf in _MLP_LEAVES:
        return "mlp"
    # BERT/ViT: <layer>.output.dense (no attention in the path) is the FFN output.
    if leaf == "dense" and len(parts) >= 2 and parts[-2] == "output":
        return "mlp"
    return "other"


def layer_index(name: str) -> int | None:
    """The first integer path component (the block index), or ``None`` (e.g. embeddings)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def layer_key(name: str) -> str:
    """The path up to and including the block index (``encoder.block.3``); the module itself
    when it has no index. Used to group modules into layers for composition stats."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name


def pattern_key(pattern_keys: Iterable[str], key_to_match: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of the module path
    at a component boundary (patterns are regular expressions), else ``None``."""
    for key in pattern_keys:
        try:
            if re.match(rf"(.*\.)?({key})$", key_to_match):
                return key
        except re.error:
            if key_to_match == key or key_to_match.endswith("." + key):
                return key
    return None


def resolve_rank_alpha(
    name: str, r: int, alpha: float, rank_pattern: Mapping[str, int], alpha_pattern: Mapping[str, float]
) -> tuple[int, float]:
    """(r, alpha) that PEFT assigns to module ``name`` from the patterns or the global values."""
    rk = pattern_key(rank_pattern.keys(), name)
    ak = pattern_key(alpha_pattern.keys(), name)
    return (int(rank_pattern[rk]) if rk is not None else int(r),
            float(alpha_pattern[ak]) if ak is not None else float(alpha))


# ---------------------------------------------------------------------------------------
# writing patterns that PEFT resolves exactly
# ---------------------------------------------------------------------------------------
V = TypeVar("V", int, float)


def exact_patterns(names: list[str], values: list[V], default: V, path: Path | None = None) -> dict[str, V]:
    """Pattern entries (``rank_pattern`` or ``alpha_pattern``) under which PEFT gives module
    ``names[i]`` exactly ``values[i]`` and every other module ``default``.

    PEFT matches each key as the regular expression ``(.*\\.)?(key)$`` against the module path and
    takes the first key that matches, in dict order; so the key ``a.lin`` also catches ``b.a.lin``.
    Every module that differs from ``default``, or that another key would catch, gets its own
    full-name key, and keys are ordered longest first (fewer dots first at equal length): a module
    then meets its own key before any shorter key that ends its name, and before an equal-length key
    whose ``.`` wildcards happen to match it. Raises :class:`AdapterFormatError` for names that no
    ordering separates (regex characters in module names).
    """
    want = dict(zip(names, values, strict=True))
    keys = {n for n, v in want.items() if v != default}

    def order(k: str) -> tuple[int, int, str]:
        return (-len(k), k.count("."), k)

    while True:
        ordered = sorted(keys, key=order)
        first = _first_match(ordered)
        wrong = []
        for n, v in want.items():
            hit = first(n)
            if (want[hit] if hit is not None else default) != v:
                wrong.append(n)
        if not wrong:
            return {k: want[k] for k in ordered}
        if set(wrong) <= keys:
            raise AdapterFormatError(f"module name {wrong[0]!r} cannot be given its own rank/alpha by a PEFT "
                                     "rank_pattern/alpha_pattern key", path=path,
                                     hint="compress to one rank for every module (--rank N)")
        keys.update(wrong)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]*")


def _first_match(keys: list[str]) -> Callable[[str], str | None]:
    """``name -> naming.pattern_key(keys, name)`` (PEFT's first matching key), fast for thousands of
    keys: a key made of letters, digits, ``_``, ``-`` and ``.`` (the only regex character, one
    wildcard) matches a name iff some suffix of it starting at a component boundary has the key's
    length, and equals the key off the key's dots. Keys are indexed by (length, dot positions)."""
    if not all(_PLAIN_KEY.fullmatch(k) for k in keys):
        return lambda name: pattern_key(keys, name)
    rank = {k: i for i, k in enumerate(keys)}
    index: dict[int, dict[tuple[int, ...], dict[str, str]]] = {}
    for k in keys:
        dots = tuple(i for i, c in enumerate(k) if c == ".")
        index.setdefault(len(k), {}).setdefault(dots, {}).setdefault(k.replace(".", ""), k)

    def first(name: str) -> str | None:
        best: str | None = None
        starts = [0] + [i + 1 for i, c in enumerate(name) if c == "."]
        for i in starts:
            tail = name[i:]
            own = {j for j, c in enumerate(tail) if c == "."}
            for dots, table in index.get(len(tail), {}).items():
                if not own.issubset(dots):
                    continue  # a dot in the name only matches a dot of the key
                skip = set(dots)
                k = table.get("".join(c for j, c in enumerate(tail) if j not in skip))
                if k is not None and (best is None or rank[k] < rank[best]):
                    best = k
        return best

    return first
