"""Classify LoRA ``target_modules`` names as attention or MLP projections.

Covers the module names of LLaMA/Mistral/Qwen, GPT-2, GPT-J/NeoX, Falcon, BLOOM, OPT,
Phi, MPT, BERT/RoBERTa, DistilBERT, T5, ViT and Whisper. A name that could be either
(GPT-2's ``c_proj``, BERT's ``dense``, ``all-linear``) counts as both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["TargetSummary", "classify_target", "summarize_targets"]

ATTN_NAMES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "out_proj",  # LLaMA, OPT, Whisper, Phi
    "query", "key", "value",  # BERT, ViT
    "q_lin", "k_lin", "v_lin", "out_lin",  # DistilBERT
    "c_attn",  # GPT-2, Qwen-1
    "q", "k", "v", "o",  # T5
    "query_key_value",  # Falcon, BLOOM, GPT-NeoX
    "wqkv", "qkv", "attn_proj",  # MPT, Phi-1, misc
    "in_proj",
})
MLP_NAMES = frozenset({
    "gate_proj", "up_proj", "down_proj",  # LLaMA
    "c_fc",  # GPT-2
    "fc1", "fc2", "fc_in", "fc_out",  # OPT, Whisper, GPT-J
    "lin1", "lin2",  # DistilBERT
    "wi", "wi_0", "wi_1", "wo",  # T5
    "dense_h_to_4h", "dense_4h_to_h",  # Falcon, BLOOM, NeoX
    "w1", "w2", "w3", "gate_up_proj",  # Mixtral experts, Qwen
    "intermediate",
})
AMBIGUOUS_NAMES = frozenset({"c_proj", "dense", "output", "proj", "all-linear", "all_linear"})
_ATTN_PATH = ("attn", "attention", "self_attn", "selfattention", "encdecattention")
_MLP_PATH = ("mlp", "intermediate", "ffn", "feed_forward", "feedforward", "densereludense", "experts")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def classify_target(name: str) -> frozenset[str]:
    """``{"attn"}``, ``{"mlp"}``, ``{"attn", "mlp"}`` (ambiguous) or empty (unrecognised).

    Accepts bare names (``"q_proj"``), dotted paths (``"mlp.c_proj"``) and PEFT regex
    strings (every identifier inside is classified and the results are merged).
    """
    raw = name.strip()
    lowered = raw.lower()
    if lowered in ("all-linear", "all_linear"):
        return frozenset({"attn", "mlp"})
    if any(ch in raw for ch in "*()[]|\\^$?+"):
        out: set[str] = set()
        for ident in _IDENT.findall(raw):
            out |= classify_target(ident)
        return frozenset(out)
    parts = [p for p in lowered.split(".") if p]
    if not parts:
        return frozenset()
    path = parts[:-1]
    leaf = parts[-1]
    # The enclosing block decides for generic leaves ("attention.output.dense" vs "intermediate.dense").
    if any(p in _ATTN_PATH for p in path):
        return frozenset({"attn"})
    if any(p in _MLP_PATH for p in path):
        return frozenset({"mlp"})
    if leaf in ATTN_NAMES:
        return frozenset({"attn"})
    if leaf in MLP_NAMES:
        return frozenset({"mlp"})
    if leaf in AMBIGUOUS_NAMES:
        return frozenset({"attn", "mlp"})
    return frozenset()


@dataclass
class TargetSummary:
    """What a ``target_modules`` list touches."""

    names: list[str] = field(default_factory=list)
    attn: list[str] = field(default_factory=list)
    mlp: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.names

    @property
    def has_attn(self) -> bool:
        return bool(self.attn or self.ambiguous)

    @property
    def has_mlp(self) -> bool:
        return bool(self.mlp or self.ambiguous)

    @property
    def attention_only(self) -> bool:
        return bool(self.attn) and not self.mlp and not self.ambiguous


def summarize_targets(names: Iterable[str] | str | None) -> TargetSummary:
    """Group target names; a single string (PEFT regex or ``all-linear``) counts as one name."""
    if names is None:
        return TargetSummary()
    items = [names] if isinstance(names, str) else [str(n) for n in names]
    s = TargetSummary(names=items)
    for n in items:
        kinds = classify_target(n)
        if kinds == {"attn"}:
            s.attn.append(n)
        elif kinds == {"mlp"}:
            s.mlp.append(n)
        elif kinds:
            s.ambiguous.append(n)
        else:
            s.unrecognised.append(n)
    return s
