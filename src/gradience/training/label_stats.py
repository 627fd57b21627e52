"""The majority-class rate of an evaluation set: the accuracy a classifier gets by always
predicting the most frequent label, the chance level ``monitor``'s ``not_learning`` compares the
held-out accuracy against (docs/policy.md#core-rules). Torch-free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_SCAN", "dataset_labels", "majority_rate"]

LABEL_KEYS = ("labels", "label")
# A map-style dataset without a label column is read item by item: never more than this many.
MAX_SCAN = 100_000


def majority_rate(labels: Iterable[Any]) -> float | None:
    """Share (0–1) of the most frequent label; None without labels or when a label is not a
    single class id (a token sequence: a language-modelling set)."""
    counts: Counter[int] = Counter()
    for y in labels:
        if hasattr(y, "item") and getattr(y, "ndim", 0) == 0:  # a 0-dim tensor or numpy scalar
            y = y.item()
        if isinstance(y, bool) or not isinstance(y, int):
            return None
        if y < 0:  # ignored positions (-100): not a class
            continue
        counts[y] += 1
    total = sum(counts.values())
    return max(counts.values()) / total if total else None


def dataset_labels(dataset: Any) -> list[Any] | None:
    """The class labels of an evaluation dataset, or None when it has none that can be read cheaply:
    a ``datasets.Dataset`` column ``labels``/``label``, else (a map-style dataset of at most
    ``MAX_SCAN`` items returning mappings) each item's ``labels``/``label``."""
    if dataset is None:
        return None
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list):
        key = next((k for k in LABEL_KEYS if k in columns), None)
        return list(dataset[key]) if key is not None else None
    try:
        n = len(dataset)
    except TypeError:
        return None
    if not 0 < n <= MAX_SCAN or not hasattr(dataset, "__getitem__"):
        return None
    first = dataset[0]
    if not hasattr(first, "keys"):
        return None
    key = next((k for k in LABEL_KEYS if k in first), None)
    if key is None:
        return None
    return [dataset[i][key] for i in range(n)]
