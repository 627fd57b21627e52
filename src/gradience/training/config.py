"""``GradienceConfig``: every setting of a monitored training run in one documented object.

Torch-free (``from gradience import GradienceConfig`` never imports torch). Each field carries
its help text in ``dataclasses.fields(...)[i].metadata["help"]``, as PEFT's ``LoraConfig`` does;
:func:`describe` prints them.

    cfg = GradienceConfig(out_dir="runs/mine", dataset_name="sst2",
                          guard=GuardConfig(snapshot_interval=50), spectral=SpectralConfig(interval=25))
    GradienceCallback(config=cfg)          # or GradienceController(config=cfg)

The flat keywords the integrations also take (``guard_enabled``, ``guard_snapshot_interval``,
``guard_violation_threshold``, ``guard_max_rollbacks``, ``guard_lr_backoff``,
``spectral_enabled``, ``spectral_interval``, ``telemetry_interval``, ``out_dir``, ...) are
shorthand that builds this object (:func:`resolve_config`). A keyword given together with a
``config`` that says otherwise is a ``ValueError``, never a silent override.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..telemetry.health import DEFAULT_THRESHOLDS, SPIKE_FLOOR, SPIKE_LIMIT, GradThresholds

__all__ = ["SHORTHAND", "GradienceConfig", "GuardConfig", "RiskThresholds", "SpectralConfig", "describe",
           "resolve_config"]


def _help(text: str) -> dict[str, str]:
    """A field's help text, as ``field(metadata=...)``."""
    return {"help": text}


@dataclass
class GuardConfig:
    """The training guard (``docs/guard.md``): detect, roll back, back off, give up cleanly.

    Steps are optimizer steps. A guard is on when a :class:`GradienceConfig` holds one
    (``GradienceConfig.guard``; the shorthand ``guard_enabled=True`` builds the default).
    """

    snapshot_interval: int = field(default=100, metadata=_help(
        "Optimizer steps between snapshots of the trainable state (plus one of the starting state). "
        "Steps."))
    ring_size: int = field(default=5, metadata=_help("Snapshots kept in CPU memory (oldest dropped first)."))
    violation_threshold: float = field(default=1e6, metadata=_help(
        "A finite loss above this is a fault (loss_violation). Loss units."))
    grad_explosion_threshold: float = field(default=DEFAULT_THRESHOLDS.explosion, metadata=_help(
        "A pre-clip total gradient L2 norm above this is a fault (grad_explosion)."))
    spike_ratio: float = field(default=3.0, metadata=_help(
        "Loss spike (after spike_warmup healthy steps): loss > spike_ratio × baseline (an EMA of healthy "
        "losses) ..."))
    spike_k: float = field(default=8.0, metadata=_help(
        "... and loss > baseline + spike_k × deviation (an EMA of absolute deviations) ..."))
    spike_floor: float = field(default=SPIKE_FLOOR, metadata=_help(
        "... and loss > spike_floor × the reference loss (loss_prior, else the mean of the first 5 healthy "
        "losses). The absolute floor: on a well-trained run (loss ≈ 0.02) a batch of rare examples "
        "(loss 0.9–1.8 on a binary classifier, reference ln 2 = 0.69) is far above the baseline but is not "
        "a divergence. 0 = no floor. Ratio."))
    spike_limit: float = field(default=SPIKE_LIMIT, metadata=_help(
        "A loss > spike_limit × the reference loss is a spike at any step, baseline or not (so also in the "
        "first steps, before a baseline exists): ten times the loss of guessing is no hard batch. Without a "
        "loss_prior (the reference then stands in from the first healthy losses) only until the baseline "
        "exists. 0 = off. Ratio."))
    spike_warmup: int = field(default=20, metadata=_help(
        "Healthy steps observed before the baseline rule (spike_ratio, spike_k) applies; spike_limit needs "
        "none. Steps."))
    loss_prior: float | None = field(default=None, metadata=_help(
        "The loss of an untrained model on this task, the reference of spike_floor and spike_limit: "
        "ln(num_labels) for a classifier, ln(vocab_size) for a language model (cross-entropy of a uniform "
        "guess). None: derived from the model's config when the run starts (recorded as "
        "run_start.meta.loss_prior); where it cannot be (a regression head, a custom model), the mean of the "
        "first 5 healthy losses is the reference. Loss units."))
    max_rollbacks: int = field(default=3, metadata=_help(
        "Rollbacks allowed inside `window` steps; one more trigger locks out (restores the newest good "
        "snapshot and asks training to stop)."))
    window: int = field(default=200, metadata=_help("The anti-thrash window for max_rollbacks. Steps."))
    cooldown: int = field(default=10, metadata=_help(
        "Steps after a rollback without new snapshots; telemetry is dense (every step) meanwhile. Steps."))
    lr_backoff: float = field(default=0.5, metadata=_help(
        "LR multiplier at each rollback (LR scale = lr_backoff ** rollbacks); in (0, 1]."))
    weight_check_interval: int = field(default=10, metadata=_help(
        "Steps between non-finite checks of the trainable weights; 0 = never. Steps."))
    amp_overflow_tolerance: int = field(default=24, metadata=_help(
        "With an enabled AMP grad scaler: consecutive steps of non-finite gradients with a finite loss "
        "left to the scaler (it skips them and lowers its scale); one more is a fault. Steps."))

    def __post_init__(self) -> None:
        if self.snapshot_interval < 1 or self.ring_size < 1 or self.max_rollbacks < 0:
            raise ValueError("snapshot_interval and ring_size must be >= 1, max_rollbacks >= 0")
        if not 0 < self.lr_backoff <= 1:
            raise ValueError("lr_backoff must be in (0, 1]")
        if self.window < 1 or self.cooldown < 0 or self.weight_check_interval < 0 or self.spike_warmup < 0 \
                or self.amp_overflow_tolerance < 0:
            raise ValueError("window must be >= 1; cooldown, weight_check_interval, spike_warmup and "
                             "amp_overflow_tolerance >= 0")
        if not (self.spike_floor >= 0 and self.spike_limit >= 0):
            raise ValueError("spike_floor and spike_limit must be >= 0")
        if self.loss_prior is not None and not (math.isfinite(self.loss_prior) and self.loss_prior > 0):
            raise ValueError(f"loss_prior must be a positive number or None, got {self.loss_prior!r}")


@dataclass(frozen=True)
class RiskThresholds:
    """κ̃ risk-level boundaries on the relative change per step (``docs/guard.md#risk-levels``).

    Units: 1/step (the κ̃ change relative to its previous value, divided by the steps between).
    """

    instability_volatility: float = field(default=0.003, metadata=_help(
        "INSTABILITY when the std of relative changes exceeds this."))
    danger_slope: float = field(default=0.004, metadata=_help(
        "DANGER when |mean relative change| exceeds this."))
    warning_slope: float = field(default=0.002, metadata=_help(
        "WARNING when |mean relative change| exceeds this."))
    learning_slope: float = field(default=0.0005, metadata=_help(
        "LEARNING when |mean relative change| exceeds this; else STABLE."))


@dataclass
class SpectralConfig:
    """κ̃ sampling (``docs/guard.md#spectral-monitor``): a diagnostic of the trainable update's conditioning.

    Sampling is on when a :class:`GradienceConfig` holds one (the default);
    ``spectral_enabled=False`` sets ``GradienceConfig.spectral`` to ``None``.
    """

    interval: int = field(default=50, metadata=_help("Optimizer steps between κ̃ samples. Steps."))
    window: int = field(default=5, metadata=_help("Samples the risk level is computed over (at least 2)."))
    thresholds: RiskThresholds = field(default_factory=RiskThresholds, metadata=_help(
        "Risk-level boundaries."))
    actions: bool = field(default=False, metadata=_help(
        "With the guard on, act on κ̃ risk levels once a full window exists (WARNING: snapshot + dense "
        "telemetry; DANGER: snapshot + LR backoff; INSTABILITY: rollback). Off by default: measured, κ̃ "
        "risk did not lead a loss blow-up and fired in healthy early training (docs/guard.md)."))

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError("spectral_interval must be >= 1")
        if self.window < 2:
            raise ValueError("spectral window must be >= 2")


@dataclass
class GradienceConfig:
    """Everything Gradience does around one training run. Every field has a default.

    Used by :class:`~gradience.GradienceCallback` (HF ``Trainer``) and
    :class:`~gradience.GradienceController` (plain PyTorch) alike.
    """

    out_dir: str | Path | None = field(default=None, metadata=_help(
        "Where run.jsonl, peft/, training/ (and, for the controller, summary.json) go. Callback default: "
        "TrainingArguments.output_dir; the controller requires it."))
    filename: str = field(default="run.jsonl", metadata=_help(
        "Telemetry file name inside out_dir (appended to, never truncated)."))
    telemetry_interval: int = field(default=10, metadata=_help(
        "A train_step event every N optimizer steps, at step 1, at the last step and at every step the "
        "guard acts on. Steps."))
    guard: GuardConfig | None = field(default=None, metadata=_help(
        "The training guard; None = off (observe only)."))
    spectral: SpectralConfig | None = field(default_factory=SpectralConfig, metadata=_help(
        "κ̃ sampling; None = off."))
    grad_thresholds: GradThresholds = field(default=DEFAULT_THRESHOLDS, metadata=_help(
        "Gradient-norm health levels (vanishing / warning / critical), pre-clip L2 norm."))
    model_name: str | None = field(default=None, metadata=_help(
        "Recorded in run_start.config.model_name (default: from the model)."))
    dataset_name: str | None = field(default=None, metadata=_help(
        "Recorded in run_start.config.dataset_name; also picks the task profile when task_profile is not "
        "given."))
    task_profile: str | None = field(default=None, metadata=_help(
        "The policy profile (docs/policy.md); inferred from dataset_name."))
    notes: str | None = field(default=None, metadata=_help("Free text recorded in the ConfigSnapshot."))
    test_split: str = field(default="test", metadata=_help(
        "Split name written for held-out evaluations (eval, validation, dev and an unnamed eval set map "
        "to it)."))
    save_adapter: bool = field(default=True, metadata=_help(
        "Save a PEFT model's adapter to out_dir/peft at the end (never when the trainable weights are not"
        " finite)."))
    audit: bool = field(default=True, metadata=_help(
        "Append metrics(kind='lora_audit') for the saved adapter."))
    recommend: bool = field(default=True, metadata=_help(
        "Append a recommendation event from the run rules (docs/policy.md)."))
    gap_threshold: float = field(default=1.5, metadata=_help(
        "Memorisation-gap threshold (test/train ppl or loss ratio) for the run rules."))
    run_id: str | None = field(default=None, metadata=_help(
        "Reuse a run id (a resumed HF run keeps the file's last id by default)."))

    def __post_init__(self) -> None:
        if self.telemetry_interval < 1:
            raise ValueError("telemetry_interval must be >= 1")
        if not (isinstance(self.gap_threshold, (int, float)) and math.isfinite(self.gap_threshold)
                and self.gap_threshold > 0):
            raise ValueError(f"gap_threshold must be a positive number, got {self.gap_threshold!r}")
        if self.guard is not None and not isinstance(self.guard, GuardConfig):
            raise ValueError(f"guard must be a GuardConfig or None, got {type(self.guard).__name__}")
        if self.spectral is not None and not isinstance(self.spectral, SpectralConfig):
            raise ValueError(f"spectral must be a SpectralConfig or None, got {type(self.spectral).__name__}")

    @property
    def guard_enabled(self) -> bool:
        return self.guard is not None

    @property
    def spectral_enabled(self) -> bool:
        return self.spectral is not None


# Shorthand keyword -> where it lives in GradienceConfig. ``guard_*`` keywords other than
# guard_enabled need the guard on; ``spectral_*`` ones need sampling on.
SHORTHAND: dict[str, tuple[str, ...]] = {
    "guard_enabled": ("guard",),
    "guard_snapshot_interval": ("guard", "snapshot_interval"),
    "guard_violation_threshold": ("guard", "violation_threshold"),
    "guard_max_rollbacks": ("guard", "max_rollbacks"),
    "guard_lr_backoff": ("guard", "lr_backoff"),
    "guard_config": ("guard",),
    "spectral_enabled": ("spectral",),
    "spectral_interval": ("spectral", "interval"),
    "spectral_actions": ("spectral", "actions"),
}


def _current(cfg: GradienceConfig, name: str) -> Any:
    """The value keyword ``name`` stands for in ``cfg``."""
    if name == "guard_enabled":
        return cfg.guard is not None
    if name == "spectral_enabled":
        return cfg.spectral is not None
    if name == "guard_config":
        return cfg.guard
    path = SHORTHAND.get(name, (name,))
    obj: Any = cfg
    for part in path:
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


def resolve_config(config: GradienceConfig | None, given: dict[str, Any], owner: str) -> GradienceConfig:
    """Build the run's :class:`GradienceConfig` from ``config`` and the keywords the caller gave.

    Args:
        config: a full config, or ``None`` (then ``given`` builds one on the defaults).
        given: only the keywords the caller passed explicitly (shorthand names of
            :data:`SHORTHAND` or :class:`GradienceConfig` field names).
        owner: the class name, for error messages.

    Raises:
        ValueError: a keyword conflicts with ``config`` (also when the keyword equals its
            default), a ``guard_*`` keyword without the guard on, a ``spectral_*`` keyword
            with sampling off, or an invalid value.
        TypeError: an unknown keyword.
    """
    names = {f.name for f in dataclasses.fields(GradienceConfig)}
    for key in given:
        if key not in names and key not in SHORTHAND:
            raise TypeError(f"{owner}: unknown setting {key!r} (see GradienceConfig for the settings)")
    if config is not None:
        if not isinstance(config, GradienceConfig):
            raise ValueError(f"{owner}: config must be a GradienceConfig, got {type(config).__name__}")
        for key, value in given.items():
            have = _current(config, key)
            if value != have:
                raise ValueError(f"{owner}: {key}={value!r} conflicts with config (which has {have!r}); "
                                 f"set it in the GradienceConfig or drop the keyword")
        return config
    kw = {k: v for k, v in given.items() if k in names}
    guard_cfg = given.get("guard_config")
    if guard_cfg is not None and not isinstance(guard_cfg, GuardConfig):
        raise ValueError(f"{owner}: guard_config must be a GuardConfig, got {type(guard_cfg).__name__}")
    enabled = given.get("guard_enabled")
    guard_keys = {k: given[k] for k in ("guard_snapshot_interval", "guard_violation_threshold",
                                        "guard_max_rollbacks", "guard_lr_backoff") if k in given}
    if enabled is False and (guard_cfg is not None or guard_keys):
        extra = "guard_config" if guard_cfg is not None else ", ".join(guard_keys)
        raise ValueError(f"{owner}: guard_enabled=False conflicts with {extra}; drop one of them")
    if enabled is None and guard_cfg is None and guard_keys:
        raise ValueError(f"{owner}: {', '.join(guard_keys)} given but the guard is off; "
                         f"pass guard_enabled=True")
    if guard_cfg is not None or enabled:
        base = guard_cfg if guard_cfg is not None else GuardConfig()
        for key, value in guard_keys.items():
            attr = SHORTHAND[key][1]
            if guard_cfg is not None and getattr(guard_cfg, attr) != value:
                raise ValueError(f"{owner}: {key}={value!r} conflicts with guard_config (which has "
                                 f"{attr}={getattr(guard_cfg, attr)!r}); drop one of them")
        kw["guard"] = dataclasses.replace(base, **{SHORTHAND[k][1]: v for k, v in guard_keys.items()})
    spec_keys = {k: given[k] for k in ("spectral_interval", "spectral_actions") if k in given}
    if given.get("spectral_enabled") is False:
        if spec_keys:
            raise ValueError(f"{owner}: spectral_enabled=False conflicts with {', '.join(spec_keys)}; "
                             f"drop one of them")
        kw["spectral"] = None
    else:
        kw["spectral"] = SpectralConfig(**{SHORTHAND[k][1]: v for k, v in spec_keys.items()})
    return GradienceConfig(**kw)


def describe(cls: type = GradienceConfig) -> str:
    """Every field of a config class with its default and help text, one per line."""
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f"{getattr(f.default_factory, '__name__', 'factory')}()"
        else:
            default = "required"
        lines.append(f"{f.name} = {default}: {f.metadata.get('help', '')}")
    return "\n".join(lines)
