"""Task profiles for the rules; the inference lives with the telemetry schema (it is needed
to derive ppl when summarising a run, below the policy layer)."""

from ..telemetry.profiles import (
    EASY_CLASSIFICATION_KEYWORDS,
    HARD_REASONING_KEYWORDS,
    infer_task_profile,
    resolve_profile,
)

__all__ = ["EASY_CLASSIFICATION_KEYWORDS", "HARD_REASONING_KEYWORDS", "infer_task_profile", "resolve_profile"]
