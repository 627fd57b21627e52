"""Telemetry v1 contract: schema id, event names, envelope, and the typed payload objects.

Everything here is plain data with ``to_dict``/``from_dict``; no I/O. ``from_dict`` is
lenient: missing keys take defaults (old files) and unknown keys are kept in ``extras``
so nothing a newer writer recorded is lost when an older reader re-serialises it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

SCHEMA_ID = "gradience.vnext.telemetry/v1"
# The longest line a reader accepts (the writer's events are far below it: strings over 256
# characters are redacted). A longer line is reported and skipped without being held in memory.
MAX_LINE_BYTES = 16 << 20

ENVELOPE_KEYS = ("schema", "ts", "run_id", "event", "step")
# Written by this release's writer; files of earlier releases lack them, so readers treat them as optional.
OPTIONAL_ENVELOPE_KEYS = ("mono",)


class Event(str, Enum):
    """Stable event names. Renaming or removing one is a v2 change."""

    RUN_START = "run_start"
    TRAIN_STEP = "train_step"
    EVAL = "eval"
    METRICS = "metrics"
    ALERT = "alert"
    RECOMMENDATION = "recommendation"
    RUN_END = "run_end"


EVENT_NAMES = frozenset(e.value for e in Event)

RUN_STATUSES = ("ok", "aborted", "error")
# Held-out split names. Earlier public releases wrote "eval" for the held-out split.
HELD_OUT_SPLITS = ("test", "val", "eval", "validation")


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self.value]

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        v = str(value).strip().lower()
        if v in ("warn",):
            v = "warning"
        return cls(v)


_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


class TaskProfile(str, Enum):
    EASY_CLASSIFICATION = "easy_classification"
    HARD_REASONING = "hard_reasoning"
    GENERATION = "generation"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | TaskProfile | None) -> TaskProfile:
        if value is None:
            return cls.UNKNOWN
        if isinstance(value, TaskProfile):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_language_modelling(self) -> bool:
        """Profiles where ppl = exp(loss) is meaningful."""
        return self in (TaskProfile.HARD_REASONING, TaskProfile.GENERATION)


def real_number(x: Any) -> float | None:
    """``x`` as a float when it is a JSON number (bools are not) within the float range, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:  # an integer beyond ~1.8e308
        return None


def whole_number(x: Any) -> int | None:
    """``x`` as an int when it is an integral JSON number within the 64-bit range, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, float):
        if not (math.isfinite(x) and x.is_integer()):
            return None
        x = int(x)
    return x if -(2**63) <= x < 2**64 else None


def typed_value(annotation: str, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits a field declared ``annotation`` (``None`` always fits)."""
    if value is None:
        return True, None
    kind = annotation.replace(" | None", "")
    if kind == "str":
        return isinstance(value, str), value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        n = whole_number(value)
        return n is not None, n
    if kind == "float":
        return real_number(value) is not None, value
    if kind == "list[str]":  # target_modules: PEFT also accepts one string (a regex or "all-linear")
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)), value
    if kind == "list[float]":
        return isinstance(value, list) and all(real_number(v) is not None for v in value), value
    if kind in ("dict[str, int]", "dict[str, float]"):
        return isinstance(value, dict) and all(real_number(v) is not None for v in value.values()), value
    return True, value


def _typed_section(obj: Any) -> Any:
    """A copy of a config section whose known fields have their declared types; every ill-typed
    value moves to ``extras["_invalid"]`` (kept, never interpreted)."""
    values: dict[str, Any] = {}
    invalid: dict[str, Any] = {}
    for f in fields(obj):
        if f.name == "extras":
            continue
        raw = getattr(obj, f.name)
        ok, value = typed_value(str(f.type), raw)
        if ok:
            values[f.name] = value
        else:
            values[f.name] = None
            invalid[f.name] = raw
    out = type(obj)(**values)
    out.extras = dict(obj.extras) if isinstance(obj.extras, dict) else {"_unparsed": obj.extras}
    if invalid:
        out.extras["_invalid"] = invalid
    return out


def _split_known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in data.items() if k in names}
    unknown = {k: v for k, v in data.items() if k not in names}
    return known, unknown


def _from_dict(cls: type, data: Any) -> Any:
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        # Telemetry from other writers may hold anything here: keep it, never crash.
        obj = cls()
        obj.extras = {"_unparsed": data}
        return obj
    known, unknown = _split_known(cls, data)
    raw_extras = known.pop("extras", None)
    extras = dict(raw_extras) if isinstance(raw_extras, dict) else {}
    extras.update(unknown)
    obj = cls(**known)
    obj.extras = extras
    return obj


@dataclass
class OptimizerConfig:
    name: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    betas: list[float] | None = None
    eps: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> OptimizerConfig:
        return _from_dict(cls, data)


@dataclass
class LoRAConfig:
    r: int | None = None
    alpha: float | None = None
    alpha_over_r: float | None = None
    target_modules: list[str] | None = None
    dropout: float | None = None
    bias: str | None = None
    use_rslora: bool | None = None
    use_dora: bool | None = None
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Recorded configs are not type-checked on read: derive α/r only from real numbers.
        if self.alpha_over_r is None:
            r, alpha = real_number(self.r), real_number(self.alpha)
            if r and alpha is not None:
                self.alpha_over_r = alpha / r

    @classmethod
    def from_dict(cls, data: Any) -> LoRAConfig:
        return _from_dict(cls, data)


@dataclass
class TrainingConfig:
    seed: int | None = None
    batch_size: int | None = None
    gradient_accumulation: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    dtype: str | None = None
    max_grad_norm: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> TrainingConfig:
        return _from_dict(cls, data)


@dataclass
class ConfigSnapshot:
    """What the run was configured to do (docs/telemetry.md#run_start). All fields optional."""

    model_name: str | None = None
    dataset_name: str | None = None
    task_profile: str = TaskProfile.UNKNOWN.value
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    notes: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # A classifier's number of labels (model.config.num_labels): with the held-out set's
    # majority-class rate, the chance level a "not learning" run is compared against. None for
    # other tasks and in files of earlier releases.
    n_labels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ConfigSnapshot:
        if isinstance(data, ConfigSnapshot):
            return data
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise TypeError(f"ConfigSnapshot.from_dict expects an object, got {type(data).__name__}")
        known, unknown = _split_known(cls, data)
        raw_extras = known.pop("extras", None)
        extras = dict(raw_extras) if isinstance(raw_extras, dict) else {}
        extras.update(unknown)
        profile = known.pop("task_profile", None)
        return cls(
            model_name=known.get("model_name"),
            dataset_name=known.get("dataset_name"),
            task_profile=TaskProfile.parse(profile).value,
            optimizer=OptimizerConfig.from_dict(known.get("optimizer")),
            lora=LoRAConfig.from_dict(known.get("lora")),
            training=TrainingConfig.from_dict(known.get("training")),
            notes=known.get("notes"),
            extras=extras,
            n_labels=known.get("n_labels"),
        )

    def typed(self) -> ConfigSnapshot:
        """A copy where every known field has its declared type or is None.

        ``from_dict`` keeps recorded values as they are (so ``check`` can name a bad one);
        views and rules that summarise a recorded run use this copy instead, where a value of the
        wrong type (``r="abc"``, an integer past 64 bits, ``use_dora="yes"``) reads as missing and
        is kept under that section's ``extras["_invalid"]``.
        """
        top_ok = {name: isinstance(getattr(self, name), (str, type(None)))
                  for name in ("model_name", "dataset_name", "notes")}
        out = ConfigSnapshot(
            model_name=self.model_name if top_ok["model_name"] else None,
            dataset_name=self.dataset_name if top_ok["dataset_name"] else None,
            task_profile=TaskProfile.parse(self.task_profile).value,
            optimizer=_typed_section(OptimizerConfig.from_dict(self.optimizer)),
            lora=_typed_section(LoRAConfig.from_dict(self.lora)),
            training=_typed_section(TrainingConfig.from_dict(self.training)),
            notes=self.notes if top_ok["notes"] else None,
            extras=dict(self.extras) if isinstance(self.extras, dict) else {"_unparsed": self.extras},
        )
        n_labels = whole_number(self.n_labels)
        top_ok["n_labels"] = self.n_labels is None or (n_labels is not None and n_labels >= 1)
        out.n_labels = n_labels if top_ok["n_labels"] else None
        invalid = {name: getattr(self, name) for name, ok in top_ok.items() if not ok}
        if invalid:
            out.extras["_invalid"] = invalid
        return out


@dataclass
class Recommendation:
    """One conservative, testable suggestion (docs/policy.md#recommendations)."""

    severity: str
    action: str
    message: str
    rationale: str = ""
    confidence: float = 0.5
    scope: str = "config"
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.severity = Severity.parse(self.severity).value
        if not (0.0 <= float(self.confidence) <= 1.0) or math.isnan(float(self.confidence)):
            raise ValueError(f"confidence must be within [0, 1], got {self.confidence}")

    @property
    def severity_rank(self) -> int:
        return Severity.parse(self.severity).rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        """Lenient: a recorded recommendation with odd values reads with defaults, never raises."""
        known, unknown = _split_known(cls, data)
        try:
            severity = Severity.parse(known.get("severity", "info")).value
        except ValueError:
            severity = Severity.INFO.value
        confidence = real_number(known.get("confidence"))
        if confidence is None or not 0.0 <= confidence <= 1.0:
            confidence = 0.5
        evidence = known.get("evidence")

        def text(key: str, default: str) -> str:
            v = known.get(key)
            return v if isinstance(v, str) and v else default

        rec = cls(
            severity=severity,
            action=text("action", "unknown"),
            message=text("message", ""),
            rationale=text("rationale", ""),
            confidence=confidence,
            scope=text("scope", "config"),
            evidence=dict(evidence) if isinstance(evidence, dict) else {},
        )
        if unknown:
            rec.evidence.setdefault("_extra", unknown)
        return rec
