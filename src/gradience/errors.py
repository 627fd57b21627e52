"""One exception hierarchy for everything Gradience reports as bad input.

The CLI turns any :class:`GradienceError` into a one-line message on stderr and exit
code 2, never a traceback. Messages should name the file (or option) and the fix.
"""

from __future__ import annotations

__all__ = [
    "AdapterFormatError",
    "ConfigError",
    "GradienceError",
    "MissingExtraError",
    "TelemetryFormatError",
    "UsageError",
]


class GradienceError(Exception):
    """Base class: an expected failure caused by the user's input or environment."""

    exit_code = 2

    def __init__(self, message: str, *, path: object = None, hint: str | None = None) -> None:
        self.path = path
        self.hint = hint
        super().__init__(message)

    def one_line(self) -> str:
        parts = [str(self.args[0]) if self.args else self.__class__.__name__]
        if self.path is not None and str(self.path) not in parts[0]:
            parts[0] = f"{self.path}: {parts[0]}"
        if self.hint:
            parts.append(self.hint)
        return " — ".join(p.replace("\n", " ") for p in parts)


class UsageError(GradienceError):
    """Options that contradict each other or are missing."""


class ConfigError(GradienceError):
    """A configuration file (training args, adapter config, bench YAML) is invalid."""


class AdapterFormatError(GradienceError):
    """An adapter directory or weights file cannot be read as a LoRA adapter."""


class TelemetryFormatError(GradienceError):
    """A telemetry file violates the v1 schema (raised only in strict mode)."""


class MissingExtraError(GradienceError):
    """An optional dependency group is not installed."""

    def __init__(self, module: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{module}' package, which is not installed",
            hint=f"install it with: pip install 'gradience[{extra}]'",
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, feature: str):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised on machines without extras
        raise MissingExtraError(module, extra, feature) from exc
