"""Bench configuration: typed dataclasses, validated on load from YAML.

Every section is a dataclass whose fields carry their own help text (``metadata["help"]``).
Loading is strict: an unknown key or a value of the wrong type is a :class:`ConfigError`
that names the dotted key (``train.max_steps``), so a typo never silently falls back to a
default. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

from ..audit.suggest import ALLOWED_RANKS
from ..errors import ConfigError

__all__ = [
    "PROFILES",
    "RETRAIN_SCALINGS",
    "STRATEGIES",
    "BenchConfig",
    "CompressionConfig",
    "LoRASection",
    "ModelConfig",
    "RuntimeConfig",
    "TaskConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
]

#: compression strategies the protocol knows, in the order they run.
STRATEGIES = ("uniform_median", "uniform_p90", "per_layer", "budget", "truncate", "truncate_heal", "truncate_budget",
              "truncate_budget_heal")
#: how a retrained variant's lora_alpha follows its rank r (the probe has rank R and alpha A).
RETRAIN_SCALINGS = ("keep_scale", "keep_alpha", "rslora")
#: task profiles: sequence classification (accuracy) and causal-LM answer accuracy (exact match).
PROFILES = ("classification", "causal_lm_answer")
BUNDLED_MINILM = "bundled:minilm"


def _f(default: Any = MISSING, help: str = "", factory: Any = MISSING) -> Any:
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name: str = _f(BUNDLED_MINILM, "hub id, local directory, or 'bundled:minilm' (all-MiniLM-L6-v2, offline)")
    max_length: int = _f(64, "tokens per example after truncation")
    revision: str | None = _f(None, "hub revision (hub ids only)")


@dataclass
class TaskConfig:
    name: str = _f("sst2", "task name; also picks the probe quality gate in the policy")
    profile: str = _f("classification", "'classification' (accuracy) or 'causal_lm_answer' (exact match)")
    dataset: str | None = _f(None, "hub dataset name (needs the 'datasets' package and a cache when offline)")
    subset: str | None = _f(None, "hub dataset configuration, e.g. 'sst2' for dataset 'glue'")
    data_dir: str | None = _f(None, "local GLUE-style TSV directory (train.tsv + dev.tsv, header, label first)")
    train_split: str = _f("train", "split (or TSV file stem) to train on")
    eval_split: str = _f("dev", "split (or TSV file stem) to evaluate on; 'validation' for hub GLUE")
    eval_files: list[str] | None = _f(None, "labelled TSV files scored as the eval set instead of eval_split "  # noqa: RUF009
                                      "(paths relative to the config file, then the working directory)")
    text_column: str | None = _f(None, "text column; default: the second TSV column / 'sentence'")
    label_column: str | None = _f(None, "label column; default: the first TSV column / 'label'")
    num_labels: int = _f(2, "classes (classification profile)")
    metric: str = _f("accuracy", "'accuracy' (classification) or 'exact_match' (causal_lm_answer)")
    arithmetic_examples: int = _f(400, "size of the generated arithmetic set (causal_lm_answer without data)")
    max_new_tokens: int = _f(8, "greedy generation budget per answer (causal_lm_answer)")
    quality_gate: float | None = _f(None, "minimum probe metric in [0, 1] (default: the policy's gate for this task)")


@dataclass
class TrainConfig:
    max_steps: int = _f(200, "optimizer steps per training run")
    lr: float = _f(1e-3, "peak learning rate (linear decay after warmup)")
    batch_size: int = _f(32, "train micro-batch size")
    eval_batch_size: int = _f(64, "evaluation batch size")
    gradient_accumulation: int = _f(1, "micro-batches per optimizer step")
    warmup_ratio: float = _f(0.1, "fraction of max_steps spent warming up")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    eval_every: int = _f(0, "evaluate every N steps during training (0: only at the end)")
    logging_steps: int = _f(10, "train_step telemetry cadence")
    seeds: list[int] = _f(factory=lambda: [42], help="one training run per seed (probe and every variant)")  # noqa: RUF009
    train_samples: int | None = _f(None, "use only the first N shuffled training rows (None: all)")
    val_samples: int = _f(0, "rows carved from the shuffled training file as the validation slice of the "
                             "plateau rule; never trained on, never the eval set (0: no slice)")
    plateau_every: int = _f(0, "plateau rule: score the validation slice every N steps and stop when it stops "
                               "improving (0: always train max_steps); max_steps is the cap")
    plateau_patience: int = _f(3, "plateau rule: stop after this many scores in a row without a new best")
    plateau_min_delta: float = _f(0.002, "plateau rule: a new best must beat the old by more than this "
                                         "(metric fraction, 0.002 = 0.2 points)")
    plateau_variants: bool = _f(True, "apply the plateau rule to retrained variants too (False: they train "
                                      "as many steps as their seed's probe did)")
    eval_samples: int | None = _f(None, "evaluate on the first N rows of the eval split (None: all)")


@dataclass
class LoRASection:
    probe_r: int = _f(32, "rank of the high-rank probe")
    alpha: float = _f(64.0, "probe lora_alpha; retrained variants follow compression.retrain_scaling")
    dropout: float = _f(0.0, "lora_dropout")
    target_modules: list[str] = _f(factory=lambda: ["query", "value"], help="modules that get LoRA")  # noqa: RUF009
    modules_to_save: list[str] | None = _f(None, "extra trainable modules (default: the task head via PEFT)")  # noqa: RUF009


@dataclass
class CompressionConfig:
    strategies: list[str] = _f(factory=lambda: list(STRATEGIES), help=f"any of {', '.join(STRATEGIES)}")  # noqa: RUF009
    allowed_ranks: list[int] = _f(factory=lambda: list(ALLOWED_RANKS),  # noqa: RUF009
                                  help="ranks a suggestion may round up to")
    acc_tolerance: float | None = _f(None, "per-seed allowed drop in points (default: the policy's 2.5)")
    budget_fraction: float = _f(0.1, "budget strategy: LoRA parameter budget as a fraction of the probe's")
    truncate_rank: int | None = _f(None, "truncate strategy: rank (default: the audit's median suggestion)")
    truncate_energy: float | None = _f(None, "truncate strategy: keep this energy per module instead of a rank")
    retrain_scaling: str = _f("keep_scale", "retrained variants' alpha at rank r: 'keep_scale' (alpha/r of the "
                                            "probe), 'keep_alpha' (the probe's alpha), 'rslora' (alpha/sqrt(r) "
                                            "continued from the probe: alpha = (A/R)*sqrt(R*r))")
    heal_steps: int = _f(100, "truncate_heal, truncate_budget_heal: optimizer steps of training after the SVD "
                              "truncation")
    heal_lr: float | None = _f(None, "truncate_heal, truncate_budget_heal: peak learning rate of the healing "
                                     "steps (None: train.lr)")


@dataclass
class RuntimeConfig:
    device: str = _f("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    threads: int | None = _f(None, "torch CPU threads (None: torch's default)")
    smoke: dict[str, Any] = _f(factory=dict, help="overrides applied with --smoke, e.g. {train: {max_steps: 5}}")  # noqa: RUF009


@dataclass
class BenchConfig:
    name: str = _f("bench", "label shown in reports")
    policy: str = _f("safe_uniform", "policy file name in gradience/bench/policies/ or a YAML path")
    model: ModelConfig = _f(factory=ModelConfig, help="model to fine-tune")  # noqa: RUF009
    task: TaskConfig = _f(factory=TaskConfig, help="task data and metric")  # noqa: RUF009
    train: TrainConfig = _f(factory=TrainConfig, help="training loop")  # noqa: RUF009
    lora: LoRASection = _f(factory=LoRASection, help="probe LoRA")  # noqa: RUF009
    compression: CompressionConfig = _f(factory=CompressionConfig, help="variants to build and retrain")  # noqa: RUF009
    runtime: RuntimeConfig = _f(factory=RuntimeConfig, help="device and smoke overrides")  # noqa: RUF009
    source: str | None = field(default=None, compare=False, metadata={"help": "file it was loaded from"})

    # -- derived -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        return d

    def config_hash(self) -> str:
        """Identity of everything that changes results except the seed list (16 hex chars).

        Seeds are excluded so a bench can be extended with more seeds in the same output
        directory; runtime (device, threads) is excluded because it does not change the protocol.
        """
        d = self.to_dict()
        d["train"].pop("seeds", None)
        d.pop("runtime", None)
        d.pop("name", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def probe_hash(self) -> str:
        """Identity of what the probe depends on (16 hex chars): the config hash without the
        compression section and the policy, so a probe trained for one bench can seed another
        that only compresses or judges differently (copy ``seed_N/probe`` into its output)."""
        d = self.to_dict()
        for k in ("runtime", "name", "compression", "policy"):
            d.pop(k, None)
        d["train"].pop("seeds", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_smoke(self) -> BenchConfig:
        """A copy with ``runtime.smoke`` overrides applied (validated like the file)."""
        if not self.runtime.smoke:
            return self
        merged = _deep_merge(self.to_dict(), self.runtime.smoke)
        out = config_from_dict(merged, source=self.source)
        return out

    def with_seeds(self, seeds: list[int]) -> BenchConfig:
        out = copy.deepcopy(self)
        out.train.seeds = list(seeds)
        _check_semantics(out)
        return out


# -- validation ------------------------------------------------------------------------------
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "smoke":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list of {_type_name(arg)}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", v, arg) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return value
    if is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it when it parses as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every annotation above is covered
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: Any, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown key '{dotted}'",
                              hint=f"known keys in {where}: {', '.join(sorted(known))}")
    kwargs = {}
    for name in known:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(dotted, data[name], hints[name])
    return cls(**kwargs)


def _check_semantics(cfg: BenchConfig) -> None:
    t, tr, lo, co = cfg.task, cfg.train, cfg.lora, cfg.compression

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{key}: {msg}")

    if t.profile not in PROFILES:
        raise bad("task.profile", f"must be one of {', '.join(PROFILES)}, got {t.profile!r}")
    wanted_metric = "accuracy" if t.profile == "classification" else "exact_match"
    if t.metric != wanted_metric:
        raise bad("task.metric", f"profile {t.profile!r} measures {wanted_metric!r}, got {t.metric!r}")
    if t.dataset and t.data_dir:
        raise bad("task", "give either task.dataset (hub) or task.data_dir (local TSV), not both")
    if t.profile == "classification" and not (t.dataset or t.data_dir):
        raise bad("task", "classification needs task.data_dir (local TSV directory) or task.dataset (hub)")
    if t.quality_gate is not None and not 0 <= t.quality_gate <= 1:
        raise bad("task.quality_gate", "is a metric value and must be in [0, 1]")
    if t.num_labels < 2:
        raise bad("task.num_labels", "must be >= 2")
    for key, val in (("train.max_steps", tr.max_steps), ("train.batch_size", tr.batch_size),
                     ("train.eval_batch_size", tr.eval_batch_size),
                     ("train.gradient_accumulation", tr.gradient_accumulation),
                     ("train.logging_steps", tr.logging_steps), ("lora.probe_r", lo.probe_r),
                     ("model.max_length", cfg.model.max_length)):
        if val < 1:
            raise bad(key, f"must be >= 1, got {val}")
    if tr.lr <= 0:
        raise bad("train.lr", f"must be > 0, got {tr.lr}")
    if not 0 <= tr.warmup_ratio < 1:
        raise bad("train.warmup_ratio", "must be in [0, 1)")
    if tr.eval_every < 0:
        raise bad("train.eval_every", "must be >= 0")
    for key, val in (("train.val_samples", tr.val_samples), ("train.plateau_every", tr.plateau_every)):
        if val < 0:
            raise bad(key, f"must be >= 0, got {val}")
    if tr.plateau_every and not tr.val_samples:
        raise bad("train.plateau_every", "the plateau rule scores a validation slice: set train.val_samples")
    if tr.plateau_patience < 1:
        raise bad("train.plateau_patience", "must be >= 1")
    if tr.plateau_min_delta < 0:
        raise bad("train.plateau_min_delta", "must be >= 0")
    for key, opt in (("train.train_samples", tr.train_samples), ("train.eval_samples", tr.eval_samples)):
        if opt is not None and opt < 1:
            raise bad(key, "must be >= 1 or null")
    if not tr.seeds:
        raise bad("train.seeds", "needs at least one seed")
    if len(set(tr.seeds)) != len(tr.seeds):
        raise bad("train.seeds", f"duplicate seeds in {tr.seeds}")
    if lo.alpha <= 0:
        raise bad("lora.alpha", "must be > 0")
    if not 0 <= lo.dropout < 1:
        raise bad("lora.dropout", "must be in [0, 1)")
    if not lo.target_modules:
        raise bad("lora.target_modules", "needs at least one module name")
    for s in co.strategies:
        if s not in STRATEGIES:
            raise bad("compression.strategies", f"unknown strategy {s!r}; known: {', '.join(STRATEGIES)}")
    if len(set(co.strategies)) != len(co.strategies):
        raise bad("compression.strategies", "duplicate strategy")
    if not co.allowed_ranks or any(r < 1 for r in co.allowed_ranks):
        raise bad("compression.allowed_ranks", "needs positive ranks")
    if co.acc_tolerance is not None and co.acc_tolerance < 0:
        raise bad("compression.acc_tolerance", "is a drop in points and must be >= 0")
    if not 0 < co.budget_fraction <= 1:
        raise bad("compression.budget_fraction", "must be in (0, 1]")
    if co.truncate_rank is not None and co.truncate_rank < 1:
        raise bad("compression.truncate_rank", "must be >= 1")
    if co.truncate_energy is not None and not 0 < co.truncate_energy <= 1:
        raise bad("compression.truncate_energy", "must be in (0, 1]")
    if co.retrain_scaling not in RETRAIN_SCALINGS:
        raise bad("compression.retrain_scaling", f"must be one of {', '.join(RETRAIN_SCALINGS)}, "
                                                 f"got {co.retrain_scaling!r}")
    if co.heal_steps < 1:
        raise bad("compression.heal_steps", "must be >= 1")
    if co.heal_lr is not None and co.heal_lr <= 0:
        raise bad("compression.heal_lr", "must be > 0")
    if t.eval_files is not None and not t.eval_files:
        raise bad("task.eval_files", "needs at least one file (or null: the eval split)")
    if co.truncate_rank is not None and co.truncate_energy is not None:
        raise bad("compression", "give truncate_rank or truncate_energy, not both")
    if cfg.runtime.smoke:
        # Validate the overrides now, so a typo in `smoke:` fails before any training.
        try:
            _build(BenchConfig, _deep_merge(cfg.to_dict(), cfg.runtime.smoke), "")
        except ConfigError as exc:
            raise ConfigError(f"runtime.smoke: {exc.args[0]}", hint=exc.hint) from None


def config_from_dict(data: Any, source: str | None = None) -> BenchConfig:
    """Build and validate a :class:`BenchConfig` from plain data (raises ConfigError)."""
    cfg: BenchConfig = _build(BenchConfig, data, "")
    cfg.source = source
    if cfg.task.data_dir and source and not Path(cfg.task.data_dir).is_absolute():
        # Relative data paths are relative to the config file, so configs travel with their data.
        # (Resolved even when missing, so an error names the folder that was looked for.)
        cfg.task.data_dir = str((Path(source).parent / cfg.task.data_dir).resolve())
    if cfg.task.eval_files and source:
        resolved = []
        for f in cfg.task.eval_files:
            cand = Path(source).parent / f
            resolved.append(str(cand.resolve()) if not Path(f).is_absolute() and cand.exists() else f)
        cfg.task.eval_files = resolved
    _check_semantics(cfg)
    return cfg


def load_config(path: str | Path) -> BenchConfig:
    """Read a bench YAML file; any problem is a ConfigError naming the file and key."""

    p = Path(path)
    if not p.is_file():
        raise ConfigError("bench config not found", path=p, hint="pass a YAML file, e.g. configs/bench_minilm_sst2.yaml")
    from ..bounded import load_yaml, read_text

    data = load_yaml(read_text(p, what="bench config"), path=p, what="bench config")
    try:
        return config_from_dict(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError(str(exc.args[0]), path=p, hint=exc.hint) from None
