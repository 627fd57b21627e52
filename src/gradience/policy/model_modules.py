"""Module names of the model a LoRA config will be applied to, without loading any weights.

From a local checkpoint (a directory, or a hub id found in the local Hugging Face cache; never
downloaded): the tensor names in ``model.safetensors.index.json`` or in the safetensors headers,
each ≥ 2-D ``<module>.weight`` giving a module that LoRA can adapt. Otherwise, when the model name
names a known family, a two-layer sketch of that family's usual module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bounded import read_json
from ..errors import GradienceError

__all__ = ["ModuleNames", "family_names", "module_names", "names_from_checkpoint"]


@dataclass(frozen=True)
class ModuleNames:
    """Module names and where they came from (``checkpoint <dir>`` or ``usual <family> names``)."""

    names: tuple[str, ...]
    source: str
    exact: bool  # True for a checkpoint's own names, False for a family sketch


def _layers(prefix: str, n: int, leaves: list[str]) -> list[str]:
    return [f"{prefix}.{i}.{leaf}" for i in range(n) for leaf in leaves]


_FAMILIES: dict[str, list[str]] = {
    "llama": ["model.embed_tokens", *_layers("model.layers", 2, [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]), "lm_head"],
    "gpt2": ["transformer.wte", "transformer.wpe", *_layers("transformer.h", 2, [
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]), "lm_head"],
    "bert": ["bert.embeddings.word_embeddings", *_layers("bert.encoder.layer", 2, [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"]), "bert.pooler.dense", "classifier"],
    "roberta": ["roberta.embeddings.word_embeddings", *_layers("roberta.encoder.layer", 2, [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"]), "classifier.dense", "classifier.out_proj"],
    "distilbert": ["distilbert.embeddings.word_embeddings", *_layers("distilbert.transformer.layer", 2, [
        "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"]),
        "pre_classifier", "classifier"],
    "t5": ["shared", *_layers("encoder.block", 2, [
        "layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v", "layer.0.SelfAttention.o",
        "layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wo"]), *_layers("decoder.block", 2, [
        "layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v", "layer.0.SelfAttention.o",
        "layer.1.EncDecAttention.q", "layer.1.EncDecAttention.k", "layer.1.EncDecAttention.v",
        "layer.1.EncDecAttention.o", "layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wo"]), "lm_head"],
}
# Model-name fragments -> family (first hit wins; "distilbert" before "bert", "roberta" before "bert").
_NAME_HINTS = (("distilbert", "distilbert"), ("roberta", "roberta"), ("minilm", "bert"), ("bert", "bert"),
               ("t5", "t5"), ("gpt2", "gpt2"), ("llama", "llama"), ("mistral", "llama"), ("mixtral", "llama"),
               ("qwen", "llama"), ("gemma", "llama"), ("smollm", "llama"), ("phi-3", "llama"))


def family_names(model_name: str | None) -> ModuleNames | None:
    """The usual module names of the family ``model_name`` belongs to, or ``None``."""
    if not model_name:
        return None
    low = model_name.lower()
    for hint, fam in _NAME_HINTS:
        if hint in low:
            return ModuleNames(tuple(_FAMILIES[fam]), f"usual {fam} module names", exact=False)
    return None


def names_from_checkpoint(directory: Path) -> tuple[str, ...]:
    """Module names of ≥ 2-D ``.weight`` tensors in a checkpoint directory's index or headers."""
    from ..audit.weights import SafetensorsFile

    index = directory / "model.safetensors.index.json"
    mods: set[str] = set()
    if index.is_file():
        try:
            wm = read_json(index, what="shard index", error=GradienceError)["weight_map"]
            if not isinstance(wm, dict):
                raise TypeError
            keys = [str(k) for k in wm]
        except (KeyError, TypeError):
            raise GradienceError("unreadable shard index", path=index) from None
        # The index holds no shapes: every .weight is a candidate module (norms included).
        mods = {k[: -len(".weight")] for k in keys if k.endswith(".weight")}
    else:
        files = [f for f in sorted(directory.glob("*.safetensors")) if not f.name.startswith("adapter_model")]
        if not files:
            raise GradienceError("no safetensors weights (or index) in the model directory", path=directory,
                                 hint="pass --model DIR with the checkpoint's *.safetensors")
        for f in files:
            with SafetensorsFile(f) as sf:
                mods |= {n[: -len(".weight")] for n in sf.names() if n.endswith(".weight") and len(sf.shape(n)) >= 2}
    return tuple(sorted(mods))


def module_names(model: str | None, *, required: bool = False) -> ModuleNames | None:
    """Names from the local checkpoint ``model`` resolves to, else the family sketch, else ``None``.

    ``required``: ``model`` was given with ``--model`` as a path, so a checkpoint that cannot be
    read is an error rather than a fallback.
    """
    if not model:
        return None
    from ..audit.base_model import resolve_base_model

    try:
        directory = resolve_base_model(model)
    except GradienceError:
        if required and Path(model).expanduser().exists():
            raise
        return family_names(model)
    try:
        names = names_from_checkpoint(directory)
    except GradienceError:
        if required:
            raise
        return family_names(model)
    return ModuleNames(names, f"checkpoint {directory}", exact=True)
