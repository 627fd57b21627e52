"""Telemetry v1: the JSONL flight recorder (schema, writer, reader, SignalSnapshot)."""

from .reader import TelemetryIssue, TelemetryReader
from .schema import (
    ENVELOPE_KEYS,
    EVENT_NAMES,
    SCHEMA_ID,
    ConfigSnapshot,
    Event,
    LoRAConfig,
    OptimizerConfig,
    Recommendation,
    Severity,
    TaskProfile,
    TrainingConfig,
)
from .sections import (
    AuditIssue,
    AuditSummary,
    GradNormSummary,
    GuardSummary,
    LayerShare,
    LossSummary,
    LrSummary,
    SpectralSummary,
    TypeSummary,
)
from .snapshot import SignalSnapshot
from .writer import TelemetryWriter

__all__ = [
    "ENVELOPE_KEYS",
    "EVENT_NAMES",
    "SCHEMA_ID",
    "AuditIssue",
    "AuditSummary",
    "ConfigSnapshot",
    "Event",
    "GradNormSummary",
    "GuardSummary",
    "LayerShare",
    "LoRAConfig",
    "LossSummary",
    "LrSummary",
    "OptimizerConfig",
    "Recommendation",
    "Severity",
    "SignalSnapshot",
    "SpectralSummary",
    "TaskProfile",
    "TelemetryIssue",
    "TelemetryReader",
    "TelemetryWriter",
    "TrainingConfig",
    "TypeSummary",
]
