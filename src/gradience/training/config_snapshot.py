"""Build a faithful :class:`~gradience.telemetry.ConfigSnapshot` from a live training setup.

Reads ``transformers.TrainingArguments`` (or any object with the same attribute names),
the optimizer actually constructed (its class and first param group win over the
arguments, because that is what runs), and the LoRA configuration of a PEFT model.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from ..policy.profiles import infer_task_profile
from ..telemetry.schema import ConfigSnapshot, LoRAConfig, OptimizerConfig, TaskProfile, TrainingConfig

__all__ = ["build_config_snapshot", "build_meta", "is_causal_lm", "lora_config_from_model", "unwrap_model"]

def unwrap_model(model: Any) -> Any:
    """Strip DDP/FSDP/compile wrappers (``.module``, ``._orig_mod``) to reach the user's model."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            break
        model = inner
        seen += 1
    return model


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, GPT2LMHeadModel, BertLMHeadModel, ...


def _causal_lm_class_names() -> set[str]:
    """Class names transformers' ``AutoModelForCausalLM`` maps to (empty when unavailable)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except Exception:  # optional: the suffix rule still applies
        return set()
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else list(value))
    return names


def is_causal_lm(model: Any) -> bool:
    """Is ``model`` (PEFT-wrapped or not) a decoder-only causal language model?

    Then ``ppl = exp(loss)`` is a perplexity. Evidence, in order: a PEFT task type
    (``CAUSAL_LM`` yes; seq2seq, classification or QA no); an encoder-decoder config (no: a
    seq2seq loss); the class name or ``config.architectures`` ending in ``ForCausalLM`` or
    ``LMHeadModel`` (GPT2LMHeadModel, OpenAIGPTLMHeadModel, ...) or listed by
    ``AutoModelForCausalLM``. Masked LMs (``...ForMaskedLM``) and classifiers are not.
    """
    inner = unwrap_model(model)
    peft_config = getattr(inner, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        task = getattr(next(iter(peft_config.values())), "task_type", None)
        task = str(getattr(task, "value", task) or "")
        if task == "CAUSAL_LM":
            return True
        if task in ("SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"):
            return False
    base = inner
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    elif getattr(getattr(inner, "base_model", None), "model", None) is not None:
        base = inner.base_model.model
    config = getattr(base, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    names = [type(base).__name__, *(str(a) for a in (getattr(config, "architectures", None) or []))]
    if any(n.endswith(_CAUSAL_SUFFIXES) for n in names):
        return True
    return bool(_causal_lm_class_names().intersection(names))


_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice",
                        "ForImageClassification", "ForAudioClassification")


def classifier_n_labels(model: Any) -> int | None:
    """A classifier's number of labels (``config.num_labels``), else None.

    Only for a classification head (the class name or ``config.architectures`` ending in
    ``ForSequenceClassification``, ``ForTokenClassification``, ...; or a PEFT ``SEQ_CLS`` /
    ``TOKEN_CLS`` task): every transformers config carries ``num_labels`` (2 by default), so a
    causal LM's would mean nothing.
    """
    inner = unwrap_model(model)
    peft_config = getattr(inner, "peft_config", None)
    task = ""
    if isinstance(peft_config, dict) and peft_config:
        raw = getattr(next(iter(peft_config.values())), "task_type", None)
        task = str(getattr(raw, "value", raw) or "")
    base = inner
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    config = getattr(base, "config", None)
    names = [type(base).__name__, *(str(a) for a in (getattr(config, "architectures", None) or []))]
    if task not in ("SEQ_CLS", "TOKEN_CLS") and not any(n.endswith(_CLASSIFIER_SUFFIXES) for n in names):
        return None
    n = getattr(config, "num_labels", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(str(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def lora_config_from_model(model: Any) -> tuple[LoRAConfig, dict[str, Any]]:
    """LoRA settings of the active adapter of a PEFT model (empty config when not PEFT).

    Returns ``(LoRAConfig, extras)`` where extras name the adapter and PEFT type.
    """
    model = unwrap_model(model)
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or not peft_config:
        return LoRAConfig(), {}
    active = getattr(model, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    name = active if active in peft_config else next(iter(peft_config))
    cfg = peft_config[name]
    targets = getattr(cfg, "target_modules", None)
    lora = LoRAConfig(
        r=getattr(cfg, "r", None),
        alpha=getattr(cfg, "lora_alpha", None),
        target_modules=None if targets is None else ([targets] if isinstance(targets, str) else _plain(targets)),
        dropout=getattr(cfg, "lora_dropout", None),
        bias=getattr(cfg, "bias", None),
        use_rslora=getattr(cfg, "use_rslora", None),
        use_dora=getattr(cfg, "use_dora", None),
        rank_pattern=_plain(getattr(cfg, "rank_pattern", None)) or None,
        alpha_pattern=_plain(getattr(cfg, "alpha_pattern", None)) or None,
    )
    peft_type = getattr(cfg, "peft_type", None)
    extras = {
        "adapter_name": name,
        "peft_type": getattr(peft_type, "value", peft_type),
        "modules_to_save": _plain(getattr(cfg, "modules_to_save", None)),
        "task_type": _plain(getattr(getattr(cfg, "task_type", None), "value", getattr(cfg, "task_type", None))),
    }
    return lora, {k: v for k, v in extras.items() if v is not None}


def _model_name(model: Any) -> str | None:
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if name:
        return str(name)
    return type(model).__name__ if model is not None else None


def _optimizer_config(args: Any, optimizer: Any) -> OptimizerConfig:
    opt = OptimizerConfig(
        name=str(getattr(getattr(args, "optim", None), "value", getattr(args, "optim", None)) or "") or None,
        lr=getattr(args, "learning_rate", None),
        weight_decay=getattr(args, "weight_decay", None),
        eps=getattr(args, "adam_epsilon", None),
    )
    b1, b2 = getattr(args, "adam_beta1", None), getattr(args, "adam_beta2", None)
    if b1 is not None and b2 is not None:
        opt.betas = [float(b1), float(b2)]
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real optimizer
    groups = getattr(inner, "param_groups", None)
    if groups:
        g = groups[0]
        opt.name = type(inner).__name__
        # initial_lr is the schedule's base; "lr" may already be warmup-scaled.
        lr = g.get("initial_lr", g.get("lr"))
        opt.lr = float(lr) if lr is not None else opt.lr
        if "weight_decay" in g:
            opt.weight_decay = float(g["weight_decay"])
        if isinstance(g.get("betas"), (tuple, list)):
            opt.betas = [float(b) for b in g["betas"]]
        if "eps" in g and g["eps"] is not None:
            opt.eps = float(g["eps"])
        if len(groups) > 1:
            opt.extras["param_groups"] = [
                {"lr": grp.get("initial_lr", grp.get("lr")), "weight_decay": grp.get("weight_decay"),
                 "n_params": len(grp.get("params", []))} for grp in groups
            ]
    return opt


def _dtype(args: Any, model: Any) -> str | None:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    model = unwrap_model(model)
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        return str(dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16").replace(
            "float16", "fp16")
    return None


def build_config_snapshot(
    args: Any = None,
    model: Any = None,
    optimizer: Any = None,
    *,
    max_steps: int | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    task_profile: str | None = None,
    notes: str | None = None,
    world_size: int = 1,
) -> ConfigSnapshot:
    """ConfigSnapshot for a run.

    Args:
        args: ``TrainingArguments`` (any object with the same attributes) or ``None``.
        model: the (possibly PEFT, possibly DDP-wrapped) model.
        optimizer: the optimizer that will run; its first param group wins over ``args``.
        max_steps: the resolved number of optimizer steps (``TrainerState.max_steps``).
        world_size: data-parallel processes; the effective batch is reported in extras.
    """
    lora, lora_extras = lora_config_from_model(model) if model is not None else (LoRAConfig(), {})
    lora.extras.update(lora_extras)
    bs = getattr(args, "per_device_train_batch_size", None)
    accum = getattr(args, "gradient_accumulation_steps", None)
    arg_steps = getattr(args, "max_steps", None)
    training = TrainingConfig(
        seed=getattr(args, "seed", None),
        batch_size=bs,
        gradient_accumulation=accum,
        max_steps=max_steps if max_steps is not None else (arg_steps if arg_steps and arg_steps > 0 else None),
        epochs=getattr(args, "num_train_epochs", None),
        dtype=_dtype(args, model),
        max_grad_norm=getattr(args, "max_grad_norm", None),
    )
    if bs is not None:
        training.extras["effective_batch_size"] = int(bs) * int(accum or 1) * int(world_size)
    for key in ("lr_scheduler_type", "warmup_steps", "warmup_ratio", "label_smoothing_factor"):
        value = getattr(args, key, None)
        if value is not None:
            training.extras[key] = _plain(getattr(value, "value", value))
    profile = task_profile or infer_task_profile(dataset_name).value
    return ConfigSnapshot(
        model_name=model_name or _model_name(model),
        dataset_name=dataset_name,
        task_profile=TaskProfile.parse(profile).value,
        optimizer=_optimizer_config(args, optimizer),
        lora=lora,
        training=training,
        notes=notes,
        n_labels=classifier_n_labels(model) if model is not None else None,
    )


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            import importlib

            mod = importlib.import_module(module)
        except ImportError:
            return None
    return getattr(mod, "__version__", None)


def build_meta(*, framework: str, world_size: int = 1, resumed_from_step: int | None = None,
               model: Any = None, **extra: Any) -> dict[str, Any]:
    """``run_start.meta``: library versions, world size, host, resume point, quantization."""
    from .._version import __version__

    meta: dict[str, Any] = {
        "framework": framework,
        "gradience_version": __version__,
        "python": platform.python_version(),
        "torch_version": _version("torch"),
        "transformers_version": _version("transformers"),
        "peft_version": _version("peft"),
        "world_size": int(world_size),
        "host": platform.node(),
        "resumed_from_step": resumed_from_step,
    }
    inner = unwrap_model(model) if model is not None else None
    qcfg = getattr(getattr(inner, "config", None), "quantization_config", None)
    if qcfg is not None:
        qd = qcfg.to_dict() if hasattr(qcfg, "to_dict") else qcfg
        meta["quantization"] = _plain(qd) if isinstance(qd, dict) else str(qd)
    else:
        meta["quantization"] = None
    if inner is not None:
        params = list(inner.parameters()) if hasattr(inner, "parameters") else []
        meta["n_params"] = int(sum(p.numel() for p in params))
        meta["n_trainable_params"] = int(sum(p.numel() for p in params if p.requires_grad))
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta
