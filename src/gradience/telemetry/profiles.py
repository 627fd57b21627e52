"""Task-profile inference (docs/policy.md#task-profiles), next to the TaskProfile type it returns.

The profile decides which pre-flight rule table applies. It is taken as given when the
configuration names one, else inferred from the dataset/task name by keyword.
"""

from __future__ import annotations

import re

from .schema import ConfigSnapshot, TaskProfile

__all__ = ["EASY_CLASSIFICATION_KEYWORDS", "HARD_REASONING_KEYWORDS", "infer_task_profile", "resolve_profile"]

# Matched as word prefixes ("reasoning" ← "reason", "sst2" ← "sst"), never as bare
# substrings: "assistant" must not read as SST, "chocolate" not as CoLA.
HARD_REASONING_KEYWORDS = ("gsm8k", "svamp", "math", "aqua", "asdiv", "multiarith", "proof", "reason")
EASY_CLASSIFICATION_KEYWORDS = (
    "sst", "sst2", "mnli", "qqp", "qnli", "rte", "cola", "mrpc", "sentiment", "classification",
)

_WORD = re.compile(r"[a-z0-9]+")


def _words(name: str) -> list[str]:
    # Words as written ("MultiArith" → "multiarith") plus camelCase pieces ("mathQA" → "math", "qa").
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return _WORD.findall(name.lower()) + _WORD.findall(spaced.lower())


def infer_task_profile(name: str | None) -> TaskProfile:
    """Profile from a dataset or task name (``"glue/sst2"``, ``"openai/gsm8k"``, ``"my_reasoning_set"``).

    Hard-reasoning keywords win over classification ones; no keyword → ``UNKNOWN``.
    """
    if not name:
        return TaskProfile.UNKNOWN
    words = _words(str(name))
    for keywords, profile in ((HARD_REASONING_KEYWORDS, TaskProfile.HARD_REASONING),
                              (EASY_CLASSIFICATION_KEYWORDS, TaskProfile.EASY_CLASSIFICATION)):
        if any(w.startswith(k) for w in words for k in keywords):
            return profile
    return TaskProfile.UNKNOWN


def resolve_profile(cfg: ConfigSnapshot) -> tuple[TaskProfile, str]:
    """The profile the rules use and where it came from (``"given"``, ``"inferred from dataset 'x'"``, ...)."""
    given = TaskProfile.parse(cfg.task_profile)
    if given is not TaskProfile.UNKNOWN:
        return given, "given"
    inferred = infer_task_profile(cfg.dataset_name)
    if inferred is not TaskProfile.UNKNOWN:
        return inferred, f"inferred from dataset {cfg.dataset_name!r}"
    return TaskProfile.UNKNOWN, "no --task given and the dataset name matches no profile keyword"
