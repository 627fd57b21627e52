"""Gradience: a telemetry-first monitor for LoRA/PEFT fine-tuning.

Importing ``gradience`` never imports torch or transformers; the training integration
(``GradienceCallback``, ``GradienceController``) is loaded on first access.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import AdapterFormatError, ConfigError, GradienceError, MissingExtraError, TelemetryFormatError
from .telemetry import (
    ConfigSnapshot,
    Recommendation,
    Severity,
    SignalSnapshot,
    TaskProfile,
    TelemetryIssue,
    TelemetryReader,
    TelemetryWriter,
)
from .training.config import GradienceConfig, GuardConfig, SpectralConfig

# name -> (module, attribute); resolved lazily so torch stays unimported until needed.
_LAZY = {
    "GradienceCallback": ("gradience.training.callback", "GradienceCallback"),
    "GradienceController": ("gradience.training.controller", "GradienceController"),
    "audit_adapter": ("gradience.audit", "audit_adapter"),
    "compress_adapter": ("gradience.audit.compress", "compress_adapter"),
}

__all__ = [
    "AdapterFormatError",
    "ConfigError",
    "ConfigSnapshot",
    "GradienceCallback",
    "GradienceConfig",
    "GradienceController",
    "GradienceError",
    "GuardConfig",
    "MissingExtraError",
    "Recommendation",
    "Severity",
    "SignalSnapshot",
    "SpectralConfig",
    "TaskProfile",
    "TelemetryFormatError",
    "TelemetryIssue",
    "TelemetryReader",
    "TelemetryWriter",
    "__version__",
    "audit_adapter",
    "compress_adapter",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'gradience' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
