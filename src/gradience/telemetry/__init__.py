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
from .snapshot import SignalSnapshot
from .writer import TelemetryWriter

__all__ = [
    "ENVELOPE_KEYS",
    "EVENT_NAMES",
    "SCHEMA_ID",
    "ConfigSnapshot",
    "Event",
    "LoRAConfig",
    "OptimizerConfig",
    "Recommendation",
    "Severity",
    "SignalSnapshot",
    "TaskProfile",
    "TelemetryIssue",
    "TelemetryReader",
    "TelemetryWriter",
    "TrainingConfig",
]
