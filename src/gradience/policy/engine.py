"""Run rule tables and turn their output into the final, ordered recommendation list.

Finalisation (docs/policy.md#engine): duplicates by ``action`` keep the higher severity (then the
higher confidence); ``config_ok`` is added only when nothing actionable fired; the list
is sorted by severity (critical first), then confidence, then rule order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..telemetry.schema import ConfigSnapshot, Recommendation
from ..telemetry.snapshot import SignalSnapshot
from .rules_check import CHECK_RULES, CheckContext
from .rules_run import DEFAULT_GAP_THRESHOLD, RUN_RULES, RunContext

__all__ = ["INFORMATIONAL_ACTIONS", "check_config", "finalize", "is_actionable", "run_recommendations"]

# Advice that does not point at a problem in this configuration or run; it never
# suppresses ``config_ok``.
INFORMATIONAL_ACTIONS = frozenset({"config_ok", "calibration_probe", "note_high_udr", "review_spectral_risk",
                                   "note_amp_overflows", "note_loss_gap"})

C = TypeVar("C")


def is_actionable(rec: Recommendation) -> bool:
    return rec.action not in INFORMATIONAL_ACTIONS


def _run_rules(rules: Sequence[Callable[[C], Iterable[Recommendation]]], ctx: C) -> list[Recommendation]:
    out: list[Recommendation] = []
    for rule in rules:
        out.extend(rule(ctx))
    return out


def finalize(recs: Iterable[Recommendation], *, ok_message: str, ok_scope: str = "config") -> list[Recommendation]:
    """Dedupe by action (higher severity, then confidence wins; first seen on ties), add
    ``config_ok`` when nothing actionable fired, sort by severity then confidence."""
    best: dict[str, tuple[int, Recommendation]] = {}
    for order, rec in enumerate(recs):
        held = best.get(rec.action)
        if held is None:
            best[rec.action] = (order, rec)
            continue
        old = held[1]
        if (rec.severity_rank, rec.confidence) > (old.severity_rank, old.confidence):
            best[rec.action] = (held[0], rec)  # keep the first position for a stable order
    kept = sorted(best.values(), key=lambda t: t[0])
    result = [rec for _, rec in kept]
    if not any(is_actionable(r) for r in result):
        result.append(Recommendation(
            severity="info", action="config_ok", message=ok_message,
            rationale="No rule found anything to change; this is not proof of a good configuration, so verify "
                      "with a held-out eval.", confidence=0.5, scope=ok_scope, evidence={}))
    position = {id(r): i for i, r in enumerate(result)}
    result.sort(key=lambda r: (-r.severity_rank, r.action == "config_ok", -r.confidence, position[id(r)]))
    return result


def check_config(cfg: ConfigSnapshot) -> list[Recommendation]:
    """Pre-flight recommendations for ``cfg``: deduplicated, sorted by severity (critical first).

    The task profile is the configured one, else inferred from ``dataset_name``.
    """
    ctx = CheckContext.build(cfg)
    return finalize(_run_rules(CHECK_RULES, ctx),
                    ok_message="Nothing to change before training by these rules; verify with a held-out eval.")


def run_recommendations(snap: SignalSnapshot, *, gap_threshold: float = DEFAULT_GAP_THRESHOLD,
                        config: ConfigSnapshot | None = None) -> list[Recommendation]:
    """Recommendations for a finished (or running) run, from its SignalSnapshot.

    Args:
        snap: the run's snapshot (``TelemetryReader.summarize()``).
        gap_threshold: ppl (and loss) gap test/train at or above which memorisation is flagged.
        config: overrides the configuration recorded in ``snap.config`` (e.g. a parsed one).

    Returns:
        Deduplicated recommendations sorted by severity (critical first).
    """
    if not gap_threshold > 0:
        raise ValueError(f"gap_threshold must be positive, got {gap_threshold}")
    ctx = RunContext.build(snap, gap_threshold=gap_threshold, config=config)
    return finalize(_run_rules(RUN_RULES, ctx), ok_scope="run",
                    ok_message="No actionable signal in this run by these rules; verify with a held-out eval.")
