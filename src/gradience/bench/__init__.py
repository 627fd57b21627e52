"""Bench: turn "your rank looks oversized" into a tested claim.

Train a high-rank probe, audit it, build compressed variants (uniform median/p90 ranks,
true per-module ranks, a parameter budget, SVD truncation), retrain and evaluate them across
seeds, and judge each with the safe-uniform policy. Importing this package does not import
torch; training code loads it lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import STRATEGIES, BenchConfig, config_from_dict, load_config
from .verdicts import Policy, Score, SeedResult, judge, load_policy

if TYPE_CHECKING:
    from pathlib import Path

    from .protocol import BenchOutcome, Reporter

__all__ = [
    "STRATEGIES",
    "BenchConfig",
    "Policy",
    "Score",
    "SeedResult",
    "config_from_dict",
    "judge",
    "load_config",
    "load_policy",
    "run_bench",
]


def run_bench(cfg: BenchConfig, output: str | Path, *, device: str = "auto",
              reporter: Reporter | None = None) -> BenchOutcome:
    """See :func:`gradience.bench.protocol.run_bench` (imported lazily)."""
    from .protocol import run_bench as _run

    return _run(cfg, output, device=device, reporter=reporter)
