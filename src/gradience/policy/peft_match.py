"""Which modules a ``LoraConfig`` adapts, and with which r and α: PEFT's matching rules, torch-free.

The rules (PEFT's ``check_target_module_exists`` and ``get_pattern_key``), restated:

- ``exclude_modules`` first: a string is a regex that must match the whole module name; a list
  excludes a name equal to an entry or ending in ``.<entry>``.
- ``modules_to_save`` entries are never adapted (a module whose path contains the entry as whole
  components).
- ``target_modules`` as a **string** is a regex that must match the whole name (``re.fullmatch``);
  ``"all-linear"`` (any case) means every linear layer but the output head. As a **list**, an entry
  matches a name equal to it or ending in ``.<entry>``: entries are literal, never regexes.
- ``layers_to_transform`` keeps only modules whose layer index (the first number after a
  ``layers_pattern`` component, or the first numbered component after at least one other) is listed.
- ``rank_pattern`` / ``alpha_pattern``: the first key, in order, that matches the end of the name
  at a component boundary as a regex (``(.*\\.)?(key)$``) gives the value; else the global r / α.

``tests/policy/test_peft_match.py`` runs these side by side with PEFT's own functions on generated
names and patterns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..audit.naming import pattern_key

__all__ = ["REGEX_CHARS", "Resolution", "is_all_linear", "layer_of", "resolve", "target_match"]

ALL_LINEAR = "all-linear"
# Characters that make a list entry look like a regex (PEFT matches list entries literally).
REGEX_CHARS = frozenset("*\\^$()[]|+?{}")
# Leaves treated as the output head / embeddings when "all-linear" is resolved from names alone.
_HEAD_LEAVES = frozenset({"lm_head", "embed_out", "output", "classifier", "score", "qa_outputs"})
_EMBED_HINTS = ("embed", "wte", "wpe", "shared", "position_embeddings", "token_type_embeddings")


def is_all_linear(target: Any) -> bool:
    return isinstance(target, str) and target.lower() == ALL_LINEAR


def layer_of(key: str, layers_pattern: str | Sequence[str] | None) -> int | None:
    """The layer index PEFT's ``layers_to_transform`` reads from a module name, or ``None``."""
    parts = key.split(".")
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [])
    if not patterns:
        # the first all-digit component with at least two components before it and one after
        for i in range(2, len(parts) - 1):
            if re.fullmatch(r"\d+", parts[i]):
                return int(parts[i])
        return None
    for pat in patterns:
        m = re.match(rf"(?:^|.*?\.){pat}\.(?P<idx>\d+)\.", key)
        if m is not None:
            return int(m.group("idx"))
    return None


def target_match(key: str, target_modules: str | Sequence[str] | None, *,
                 exclude_modules: str | Sequence[str] | None = None,
                 modules_to_save: Sequence[str] | None = None,
                 layers_to_transform: int | Sequence[int] | None = None,
                 layers_pattern: str | Sequence[str] | None = None) -> bool | None:
    """``True`` when PEFT adapts module ``key``, ``False`` when it does not, ``None`` when an
    exclusion (``exclude_modules`` or ``modules_to_save``) rules it out.

    ``"all-linear"`` is not resolved here (it needs module types): see :func:`resolve`.
    """
    if exclude_modules:
        if isinstance(exclude_modules, str):
            if re.fullmatch(exclude_modules, key):
                return None
        elif any(key == e or key.endswith("." + e) for e in exclude_modules):
            return None
    if modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in modules_to_save):
        return None
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    if key in target_modules:
        return True
    found = any(key.endswith("." + t) for t in target_modules)
    uses_layers = layers_to_transform is not None and (
        len(layers_to_transform) != 0 if isinstance(layers_to_transform, Sequence) else True)
    if found and uses_layers and layers_to_transform is not None:
        idx = layer_of(key, layers_pattern)
        if idx is None:
            return False
        return idx == layers_to_transform if isinstance(layers_to_transform, int) else idx in layers_to_transform
    return found


def _linear_like(name: str, names: set[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf not in _HEAD_LEAVES and not any(h in leaf for h in _EMBED_HINTS) and "norm" not in leaf.lower()


@dataclass
class Resolution:
    """What a config adapts in a model with the given module names.

    ``targeted``: module name -> (r, α); ``excluded``: names an exclusion removed although a
    target matched them; ``unmatched_targets``: list entries that match no module;
    ``unmatched_patterns``: ``{"rank_pattern": [...], "alpha_pattern": [...]}`` keys that match no
    targeted module (PEFT warns and ignores them); ``bad_regex``: (field, key, error) for keys
    PEFT would fail to compile.
    """

    targeted: dict[str, tuple[int, float]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    unmatched_targets: list[str] = field(default_factory=list)
    unmatched_patterns: dict[str, list[str]] = field(default_factory=dict)
    bad_regex: list[tuple[str, str, str]] = field(default_factory=list)

    def scales(self, use_rslora: bool) -> dict[str, float]:
        return {n: (a / (math.sqrt(r) if use_rslora else r)) if r > 0 else math.inf
                for n, (r, a) in self.targeted.items()}


def _compiles(pat: str) -> str | None:
    try:
        re.compile(pat)
    except re.error as exc:
        return str(exc)
    return None


def resolve(names: Sequence[str], *, target_modules: str | Sequence[str] | None, r: int, alpha: float,
            rank_pattern: Mapping[str, int] | None = None, alpha_pattern: Mapping[str, float] | None = None,
            exclude_modules: str | Sequence[str] | None = None, modules_to_save: Sequence[str] | None = None,
            layers_to_transform: int | Sequence[int] | None = None,
            layers_pattern: str | Sequence[str] | None = None) -> Resolution:
    """Resolve a LoRA config against module ``names`` (e.g. read from a checkpoint's header)."""
    res = Resolution()
    for fld, pats in (("target_modules", [target_modules] if isinstance(target_modules, str) else []),
                      ("exclude_modules", [exclude_modules] if isinstance(exclude_modules, str) else []),
                      ("rank_pattern", list(rank_pattern or {})), ("alpha_pattern", list(alpha_pattern or {}))):
        for p in pats:
            if fld == "target_modules" and is_all_linear(p):
                continue
            err = _compiles(p if fld not in ("rank_pattern", "alpha_pattern") else rf"(.*\.)?({p})$")
            if err is not None:
                res.bad_regex.append((fld, p, err))
    if res.bad_regex:
        return res
    name_set = set(names)
    all_linear = is_all_linear(target_modules)
    kw: dict[str, Any] = {"exclude_modules": exclude_modules, "modules_to_save": modules_to_save,
                          "layers_to_transform": layers_to_transform, "layers_pattern": layers_pattern}
    for n in names:
        if all_linear:
            hit = target_match(n, ".*", **kw)
            if hit and not _linear_like(n, name_set):
                hit = False
        else:
            hit = target_match(n, target_modules, **kw)
        if hit is None:
            if all_linear or target_match(n, target_modules) is True:
                res.excluded.append(n)
            continue
        if hit:
            rk = pattern_key(list(rank_pattern or {}), n)
            ak = pattern_key(list(alpha_pattern or {}), n)
            res.targeted[n] = (int(rank_pattern[rk]) if rank_pattern and rk is not None else int(r),
                               float(alpha_pattern[ak]) if alpha_pattern and ak is not None else float(alpha))
    if isinstance(target_modules, Sequence) and not isinstance(target_modules, str):
        res.unmatched_targets = [t for t in target_modules
                                 if not any(n == t or n.endswith("." + t) for n in names)]
    for fld, table in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        res.unmatched_patterns[fld] = [k for k in (table or {})
                                       if not any(re.match(rf"(.*\.)?({k})$", n) for n in res.targeted)]
    return res
