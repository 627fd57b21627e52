"""Build a ConfigSnapshot from the files practitioners already have.

Recognised inputs (JSON or YAML, detected by content, not by name):
- a PEFT ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``, ...),
- an HF ``TrainingArguments`` dump (``args.to_dict()``: ``learning_rate``, ``weight_decay``, ...),
- a Gradience ConfigSnapshot (``{"lora": {...}, "optimizer": {...}, ...}``),
- a telemetry ``run.jsonl`` (its latest ``run_start`` config),
- a directory holding ``adapter_config.*`` and/or ``training_args.*``.
Every problem is a :class:`~gradience.errors.ConfigError` (or UsageError) naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..bounded import load_yaml, loads_json, read_text
from ..errors import ConfigError, UsageError
from ..telemetry.schema import ConfigSnapshot, LoRAConfig, TaskProfile
from .profiles import resolve_profile

__all__ = ["OVERRIDE_KEYS", "coerce_numbers", "detect_kind", "load_config", "parse_peft", "parse_training"]

PEFT_NAMES = ("adapter_config.json", "adapter_config.yaml", "adapter_config.yml")
TRAINING_NAMES = ("training_args.json", "training_args.yaml", "training_args.yml")
OVERRIDE_KEYS = ("dataset_name", "model_name", "task_profile", "optimizer", "lr", "weight_decay", "r",
                 "alpha", "target_modules", "notes")
_PEFT_KEYS = {"peft_type", "lora_alpha", "target_modules", "r", "lora_dropout", "base_model_name_or_path"}
_TRAINING_KEYS = {"learning_rate", "per_device_train_batch_size", "output_dir", "num_train_epochs",
                  "gradient_accumulation_steps", "max_grad_norm", "lr_scheduler_type"}
_SNAPSHOT_KEYS = {"lora", "optimizer", "training", "task_profile"}


def _as_num(v: Any, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond the float range: not a usable setting
        return None
    if integer:
        return int(v) if math.isfinite(f) and f.is_integer() else None
    return f


def coerce_numbers(cfg: ConfigSnapshot) -> ConfigSnapshot:
    """A copy of ``cfg`` whose numeric fields are numbers or None (recorded configs are not
    type-checked when read, and a rule must never crash on an odd value)."""
    out = ConfigSnapshot.from_dict(cfg.to_dict())
    opt, lora, tr = out.optimizer, out.lora, out.training
    opt.lr, opt.weight_decay = _as_num(opt.lr), _as_num(opt.weight_decay)
    lora.r, lora.alpha = _as_num(lora.r, integer=True), _as_num(lora.alpha)
    lora.dropout, lora.alpha_over_r = _as_num(lora.dropout), _as_num(lora.alpha_over_r)
    tr.max_grad_norm, tr.max_steps = _as_num(tr.max_grad_norm), _as_num(tr.max_steps, integer=True)
    tm = lora.target_modules
    if isinstance(tm, str):
        lora.target_modules = [tm]
    elif not isinstance(tm, list):
        lora.target_modules = None
    else:
        lora.target_modules = [str(t) for t in tm]
    for name in ("use_rslora", "use_dora"):
        if not isinstance(getattr(lora, name), (bool, type(None))):
            setattr(lora, name, None)
    for name in ("model_name", "dataset_name"):
        v = getattr(out, name)
        if v is not None and not isinstance(v, str):
            setattr(out, name, str(v))
    return out


# -- reading --------------------------------------------------------------------------
def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError("file not found", path=path, hint="check the path")
    if path.is_dir():
        raise ConfigError("expected a file, got a directory", path=path, hint="use the --*-dir option for directories")
    if path.suffix == ".bin":
        raise ConfigError("this is a pickled file (training_args.bin) that cannot be read safely without torch",
                          path=path, hint="dump it as JSON: json.dump(trainer.args.to_dict(), open('training_args.json', 'w'))")
    text = read_text(path, what="config file")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = load_yaml(text, path=path, what="config file")
    else:
        try:
            data = loads_json(text, path=path, what="config file")
        except ConfigError:
            if _looks_like_telemetry(text):
                raise ConfigError("this is a telemetry stream (one JSON event per line), not a config file",
                                  path=path, hint=f"pass it as CONFIG: gradience check {path}") from None
            raise
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON/YAML object at the top level, got {type(data).__name__}", path=path)
    return data


def _looks_like_telemetry(text: str) -> bool:
    """The first line is a JSON object with the envelope of a Gradience event."""
    try:
        first = loads_json(text.split("\n", 1)[0], path=None, what="first line")
    except ConfigError:
        return False
    return isinstance(first, dict) and "event" in first and ("schema" in first or "run_id" in first)


def detect_kind(data: Mapping[str, Any]) -> str | None:
    """``"snapshot"``, ``"peft"``, ``"training"``, ``"combined"`` (peft + training sections) or None."""
    if isinstance(data.get("peft"), dict) or isinstance(data.get("training_args"), dict):
        return "combined"
    if any(isinstance(data.get(k), dict) for k in ("lora", "optimizer", "training")) or "task_profile" in data:
        return "snapshot"
    keys = set(data)
    if keys & _PEFT_KEYS and ("r" in keys or "peft_type" in keys or "lora_alpha" in keys):
        return "peft"
    if keys & _TRAINING_KEYS:
        return "training"
    return None


# -- typed field access ---------------------------------------------------------------
def _number(data: Mapping[str, Any], key: str, path: Path | None, *, integer: bool = False) -> Any:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = float(v)  # YAML reads "5e-5" as a string
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {v!r}", path=path) from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key} must be a number, got {type(v).__name__}", path=path)
    try:
        f = float(v)
    except OverflowError:
        raise ConfigError(f"{key} is too large ({len(str(abs(int(v))))} digits)", path=path) from None
    if integer:
        if not math.isfinite(f) or not f.is_integer():
            raise ConfigError(f"{key} must be an integer, got {v!r}", path=path)
        return int(v)
    return f


def _targets(v: Any, path: Path | None) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [v]  # a PEFT regex or "all-linear"
    if isinstance(v, (list, tuple, set)) and all(isinstance(x, str) for x in v):
        return sorted(v) if isinstance(v, set) else list(v)
    raise ConfigError("target_modules must be a list of module names or a regex string", path=path)


def _pattern_value(name: str, key: Any, v: Any, path: Path | None) -> Any:
    if v is None:
        raise ConfigError(f"{name}[{str(key)[:60]!r}] must be a number, got null", path=path)
    return _number({key: v}, key, path, integer=name == "rank_pattern")


def parse_peft(data: Mapping[str, Any], path: Path | None = None) -> tuple[LoRAConfig, str | None]:
    """LoRA fields of a PEFT ``adapter_config`` → (LoRAConfig, base model name)."""
    ptype = str(data.get("peft_type") or "LORA").upper()
    if ptype not in ("LORA",):
        raise ConfigError(f"peft_type {ptype} is not LoRA; Gradience checks LoRA adapters", path=path)
    rank_pattern = data.get("rank_pattern") or None
    alpha_pattern = data.get("alpha_pattern") or None
    for name, pat in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if pat is not None and not isinstance(pat, dict):
            raise ConfigError(f"{name} must be an object mapping module patterns to numbers", path=path)
    # each value a (finite) number from here on ("4" from YAML too)
    if rank_pattern is not None:
        rank_pattern = {k: _pattern_value("rank_pattern", k, v, path) for k, v in rank_pattern.items()}
    if alpha_pattern is not None:
        alpha_pattern = {k: _pattern_value("alpha_pattern", k, v, path) for k, v in alpha_pattern.items()}
    lora = LoRAConfig(
        r=_number(data, "r", path, integer=True),
        alpha=_number(data, "lora_alpha", path) if "lora_alpha" in data else _number(data, "alpha", path),
        target_modules=_targets(data.get("target_modules"), path),
        dropout=_number(data, "lora_dropout", path),
        bias=data.get("bias"),
        use_rslora=bool(data["use_rslora"]) if data.get("use_rslora") is not None else None,
        use_dora=bool(data["use_dora"]) if data.get("use_dora") is not None else None,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    for key in ("task_type", "modules_to_save", "layers_to_transform", "layers_pattern", "init_lora_weights",
                "exclude_modules", "target_parameters"):
        if data.get(key) is not None:
            lora.extras[key] = data[key]
    if isinstance(data.get("target_modules"), str):
        # PEFT reads a string as one regex over the whole module name, a list as literal names
        lora.extras["target_modules_is_regex"] = True
    base = data.get("base_model_name_or_path")
    return lora, (str(base) if base else None)


def _optim_name(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v)
    return s.split(".", 1)[1].lower() if s.startswith("OptimizerNames.") else s


def parse_training(data: Mapping[str, Any], cfg: ConfigSnapshot, path: Path | None = None) -> None:
    """Merge an HF ``TrainingArguments`` dump into ``cfg`` (in place)."""
    opt, tr = cfg.optimizer, cfg.training
    lr = _number(data, "learning_rate", path)
    if lr is not None:
        opt.lr = lr
    wd = _number(data, "weight_decay", path)
    if wd is not None:
        opt.weight_decay = wd
    if data.get("optim") is not None:
        opt.name = _optim_name(data["optim"])
    b1, b2 = _number(data, "adam_beta1", path), _number(data, "adam_beta2", path)
    if b1 is not None and b2 is not None:
        opt.betas = [b1, b2]
    eps = _number(data, "adam_epsilon", path)
    if eps is not None:
        opt.eps = eps
    for attr, key in (("seed", "seed"), ("batch_size", "per_device_train_batch_size"),
                      ("gradient_accumulation", "gradient_accumulation_steps")):
        v = _number(data, key, path, integer=True)
        if v is not None:
            setattr(tr, attr, v)
    ms = _number(data, "max_steps", path, integer=True)
    if ms is not None and ms > 0:  # HF uses -1 for "derive from epochs"
        tr.max_steps = ms
    ep = _number(data, "num_train_epochs", path)
    if ep is not None:
        tr.epochs = ep
    mgn = _number(data, "max_grad_norm", path)
    if mgn is not None:
        tr.max_grad_norm = mgn
    if data.get("bf16"):
        tr.dtype = "bfloat16"
    elif data.get("fp16"):
        tr.dtype = "float16"
    elif "bf16" in data or "fp16" in data:  # TrainingArguments written with both off: full precision
        tr.dtype = "float32"
    for key in ("lr_scheduler_type", "warmup_ratio", "warmup_steps", "run_name"):
        if data.get(key) not in (None, "", 0):
            tr.extras[key] = data[key]


def _merge_snapshot(base: ConfigSnapshot, data: Mapping[str, Any], path: Path) -> ConfigSnapshot:
    try:
        snap = ConfigSnapshot.from_dict(dict(data))
    except TypeError as exc:
        raise ConfigError(f"not a valid Gradience config: {exc}", path=path) from None
    for section, name, want in (("lora", "r", int), ("lora", "alpha", (int, float)),
                                ("lora", "alpha_over_r", (int, float)), ("optimizer", "lr", (int, float)),
                                ("optimizer", "weight_decay", (int, float))):
        v = getattr(getattr(snap, section), name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, want)):
            raise ConfigError(f"{section}.{name} must be a number, got {v!r}", path=path)
        if v is not None and _as_num(v) is None:  # an integer past the float range
            raise ConfigError(f"{section}.{name} is too large ({len(str(abs(int(v))))} digits)", path=path)
    return snap if base == ConfigSnapshot() else _overlay(base, snap)


def _overlay(base: ConfigSnapshot, top: ConfigSnapshot) -> ConfigSnapshot:
    """Fields set in ``top`` win; unset (None) fields keep ``base``."""
    for section in ("optimizer", "lora", "training"):
        b, t = getattr(base, section), getattr(top, section)
        for k, v in vars(t).items():
            if k == "extras":
                b.extras.update(v)
            elif v is not None:
                setattr(b, k, v)
    for k in ("model_name", "dataset_name", "notes"):
        if getattr(top, k) is not None:
            setattr(base, k, getattr(top, k))
    if TaskProfile.parse(top.task_profile) is not TaskProfile.UNKNOWN:
        base.task_profile = top.task_profile
    base.extras.update(top.extras)
    return base


def _apply_peft(cfg: ConfigSnapshot, data: Mapping[str, Any], path: Path | None) -> None:
    lora, base_model = parse_peft(data, path)
    _overlay(cfg, ConfigSnapshot(lora=lora))
    if base_model and cfg.model_name is None:
        cfg.model_name = base_model


def _find_one(directory: Path, names: tuple[str, ...], what: str, option: str) -> Path | None:
    if not directory.exists():
        raise ConfigError("directory not found", path=directory, hint=f"check the {option} path")
    if not directory.is_dir():
        raise ConfigError("expected a directory", path=directory, hint=f"pass the file with {option.replace('-dir', '')}")
    found = [directory / n for n in names if (directory / n).is_file()]
    if len(found) > 1:
        raise UsageError(f"ambiguous {what}: {', '.join(p.name for p in found)} in {directory}",
                         hint=f"pass one explicitly with {option.replace('-dir', '')} FILE")
    return found[0] if found else None


def _load_file(cfg: ConfigSnapshot, path: Path, sources: list[str]) -> ConfigSnapshot:
    if path.is_dir():
        peft = _find_one(path, PEFT_NAMES, "adapter config", "--peft-dir")
        training = _find_one(path, TRAINING_NAMES, "training arguments", "--training-dir")
        if peft is None and training is None:
            raise ConfigError("no adapter_config.{json,yaml,yml} or training_args.{json,yaml,yml} in directory",
                              path=path, hint="pass the files with --peft/--training")
        if peft is not None:
            _apply_peft(cfg, _read_mapping(peft), peft)
            sources.append(f"peft:{peft}")
        if training is not None:
            parse_training(_read_mapping(training), cfg, training)
            sources.append(f"training:{training}")
        return cfg
    if path.suffix.lower() == ".jsonl":
        from ..telemetry.reader import TelemetryReader

        found = TelemetryReader(path).latest_config()
        if found is None:
            raise ConfigError("telemetry file has no run_start with a config", path=path)
        sources.append(f"telemetry:{path}")
        return found if cfg == ConfigSnapshot() else _overlay(cfg, found)
    data = _read_mapping(path)
    kind = detect_kind(data)
    if kind is None:
        raise ConfigError("not a recognised config: expected a PEFT adapter_config, HF TrainingArguments dump, "
                          "or Gradience config", path=path,
                          hint="pass adapter configs with --peft and training args with --training")
    sources.append(f"{kind}:{path}")
    if kind == "snapshot":
        return _merge_snapshot(cfg, data, path)
    if kind == "peft":
        _apply_peft(cfg, data, path)
    elif kind == "training":
        parse_training(data, cfg, path)
    else:  # combined: {peft: {...}, training_args: {...}, plus snapshot-level keys}
        if isinstance(data.get("peft"), dict):
            _apply_peft(cfg, data["peft"], path)
        if isinstance(data.get("training_args"), dict):
            parse_training(data["training_args"], cfg, path)
        for k in ("model_name", "dataset_name", "notes", "task_profile"):
            if data.get(k) is not None:
                setattr(cfg, k, str(data[k]))
    return cfg


def _apply_overrides(cfg: ConfigSnapshot, overrides: Mapping[str, Any]) -> None:
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise UsageError(f"unknown override(s): {', '.join(sorted(unknown))}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("dataset_name", "model_name", "notes"):
            setattr(cfg, key, str(value))
        elif key == "task_profile":
            prof = TaskProfile.parse(value)
            if prof.value != str(value).strip().lower():
                raise UsageError(f"unknown task profile {value!r}",
                                 hint=f"choose one of {', '.join(p.value for p in TaskProfile)}")
            cfg.task_profile = prof.value
        elif key == "optimizer":
            cfg.optimizer.name = str(value)
        elif key == "lr":
            cfg.optimizer.lr = float(value)
        elif key == "weight_decay":
            cfg.optimizer.weight_decay = float(value)
        elif key == "r":
            cfg.lora.r = int(value)
        elif key == "alpha":
            cfg.lora.alpha = float(value)
        elif key == "target_modules":
            items = [value] if isinstance(value, str) else list(value)
            names = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
            cfg.lora.target_modules = names or None


def load_config(config: str | Path | None = None, peft: str | Path | None = None,
                training: str | Path | None = None, peft_dir: str | Path | None = None,
                training_dir: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> ConfigSnapshot:
    """Assemble the ConfigSnapshot that ``gradience check`` reviews.

    Order of precedence (later wins): ``config`` (any recognised file or a directory) →
    PEFT adapter config (``peft`` or the one found in ``peft_dir``) → training arguments
    (``training`` or found in ``training_dir``) → ``overrides`` (keys in ``OVERRIDE_KEYS``;
    ``target_modules`` may be a comma-separated string). The task profile, when not given,
    is inferred from the dataset name and its source recorded in ``extras["task_profile_source"]``.

    Raises:
        UsageError: contradictory inputs (a file and a directory for the same thing,
            several candidate files in one directory, nothing to check).
        ConfigError: unreadable, unrecognised or ill-typed files.
    """
    if peft is not None and peft_dir is not None:
        raise UsageError("give either --peft FILE or --peft-dir DIR, not both")
    if training is not None and training_dir is not None:
        raise UsageError("give either --training FILE or --training-dir DIR, not both")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if all(x is None for x in (config, peft, training, peft_dir, training_dir)) and not overrides:
        raise UsageError("nothing to check", hint="pass a config file, --peft-dir/--training-dir, or options such as --lr/--r")
    cfg = ConfigSnapshot()
    sources: list[str] = []
    if config is not None:
        cfg = _load_file(cfg, Path(config), sources)
    if peft_dir is not None:
        found = _find_one(Path(peft_dir), PEFT_NAMES, "adapter config", "--peft-dir")
        if found is None:
            raise ConfigError("no adapter_config.{json,yaml,yml} in directory", path=peft_dir,
                              hint="point --peft-dir at a saved PEFT adapter (model.save_pretrained(dir))")
        peft = found
    if peft is not None:
        p = Path(peft)
        data = _read_mapping(p)
        kind = detect_kind(data)
        if kind == "training":
            raise UsageError("this looks like training arguments, not a PEFT adapter config", path=p,
                             hint="pass it with --training")
        if kind != "peft":
            raise ConfigError("not a PEFT adapter config (no r / lora_alpha / peft_type)", path=p,
                              hint="pass the adapter's adapter_config.json")
        _apply_peft(cfg, data, p)
        sources.append(f"peft:{p}")
    if training_dir is not None:
        found = _find_one(Path(training_dir), TRAINING_NAMES, "training arguments", "--training-dir")
        if found is None:
            raise ConfigError("no training_args.{json,yaml,yml} in directory", path=training_dir,
                              hint="dump the HF arguments there: json.dump(args.to_dict(), open('training_args.json', 'w'))")
        training = found
    if training is not None:
        p = Path(training)
        data = _read_mapping(p)
        kind = detect_kind(data)
        if kind == "peft":
            raise UsageError("this looks like a PEFT adapter config, not training arguments", path=p,
                             hint="pass it with --peft")
        if kind in ("snapshot", "combined"):
            raise UsageError("this is a Gradience config, not HF training arguments", path=p,
                             hint=f"pass it as CONFIG: gradience check {p}")
        if kind != "training":
            # Never review silently with every field missing: say why the file was not used.
            raise ConfigError("not HF training arguments (no learning_rate, output_dir, "
                              "per_device_train_batch_size, ...)", path=p,
                              hint="dump them with json.dump(trainer.args.to_dict(), open('training_args.json', 'w'))")
        parse_training(data, cfg, p)
        sources.append(f"training:{p}")
    _apply_overrides(cfg, overrides)
    if sources or overrides:
        cfg.extras["sources"] = sources + (["overrides"] if overrides else [])
    # alpha_over_r is derived; recompute after any merge so it matches r and alpha.
    lora = cfg.lora
    lora.alpha_over_r = (float(lora.alpha) / float(lora.r)) if (lora.alpha is not None and lora.r) else None
    for name, v in (("lr", cfg.optimizer.lr), ("weight_decay", cfg.optimizer.weight_decay)):
        if v is not None and math.isnan(v):
            raise ConfigError(f"{name} is NaN")
    profile, source = resolve_profile(cfg)
    cfg.task_profile = profile.value
    cfg.extras["task_profile_source"] = source
    return cfg
