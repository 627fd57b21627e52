"""Compression strategies: turn the probe's audit into concrete variant plans.

Pure logic (no torch). A :class:`VariantPlan` says what to build for one strategy: a global
rank and alpha, optional PEFT ``rank_pattern``/``alpha_pattern`` (true per-module ranks), and
whether it is retrained from scratch or made from the probe by SVD truncation (and then, for
``truncate_heal``, trained for a few more steps). Retrained plans set α from their rank by the
bench's ``compression.retrain_scaling`` (:func:`retrain_alpha`); truncated plans keep each
module's scale, as ``compress`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import GradienceError
from ..telemetry.sections import AuditSummary

__all__ = ["VariantPlan", "peft_module_key", "plan_variants", "retrain_alpha"]

_PEFT_PREFIXES = ("base_model.model.", "base_model.")


@dataclass
class VariantPlan:
    """What to build for one strategy.

    Attributes:
        strategy: one of ``uniform_median``, ``uniform_p90``, ``per_layer``, ``budget``, ``truncate``,
            ``truncate_heal``.
        r: global LoRA rank (for pattern plans, the most common per-module rank).
        alpha: global lora_alpha (from ``r`` by :func:`retrain_alpha`; truncations keep α/r).
        rank_pattern / alpha_pattern: PEFT per-module overrides, keys are module names.
        retrain: False for ``truncate`` and ``truncate_heal`` (made from the probe, not from scratch).
        heal_steps: ``truncate_heal``: optimizer steps trained after the truncation (0: none).
        heal_lr: ``truncate_heal``: their peak learning rate (None: the bench's ``train.lr``).
        scaling: the ``retrain_scaling`` rule that set ``alpha`` (retrained plans only).
        control: True when the plan equals the probe (nothing is compressed).
        truncate_rank / truncate_energy / truncate_budget: arguments for SVD truncation (one of them;
            ``truncate_budget`` is a LoRA parameter budget, allocated across modules as the audit does).
        note: why these numbers (from the audit).
    """

    strategy: str
    r: int
    alpha: float
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    retrain: bool = True
    control: bool = False
    truncate_rank: int | None = None
    truncate_energy: float | None = None
    truncate_budget: int | None = None
    heal_steps: int = 0
    heal_lr: float | None = None
    scaling: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Stable id of the plan (12 hex chars): resume reuses a variant only when it matches."""
        d = self.to_dict()
        d.pop("note", None)
        for k in ("truncate_budget", "heal_steps", "heal_lr", "scaling"):  # fields added later: absent when unset, so old plans keep their id
            if not d[k]:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def peft_module_key(name: str) -> str:
    """Module name as PEFT's ``rank_pattern`` matches it (no ``base_model.model.`` prefix, no weight suffix)."""
    for p in _PEFT_PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
            break
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_A", ".lora_B", ".weight"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def retrain_alpha(scaling: str, r: int, probe_r: int, probe_alpha: float) -> float:
    """lora_alpha of a rank-``r`` LoRA retrained in place of a rank-``probe_r``, alpha-``probe_alpha`` probe.

    ``keep_scale``: the probe's α/r (the update scale α/r is the same at every rank);
    ``keep_alpha``: the probe's α (the scale α/r grows as r shrinks);
    ``rslora``: the scale follows α/√r, anchored at the probe: scale(r) = (A/R)·√(R/r), so
    α = scale·r = (A/R)·√(R·r). PEFT's plain α/r convention is kept, so the adapter loads anywhere.
    """
    ratio = float(probe_alpha) / float(probe_r)
    if scaling == "keep_scale":
        return ratio * r
    if scaling == "keep_alpha":
        return float(probe_alpha)
    if scaling == "rslora":
        return ratio * math.sqrt(probe_r * r)
    raise GradienceError(f"unknown retrain_scaling {scaling!r}", hint="keep_scale, keep_alpha or rslora")


def _pattern_plan(strategy: str, ranks: Mapping[str, int], alpha_of: Any, probe_r: int, note: str) -> VariantPlan:
    if not ranks:
        raise GradienceError(f"{strategy}: the audit produced no per-module ranks")
    clean = {peft_module_key(k): max(1, int(v)) for k, v in ranks.items()}
    counts = Counter(clean.values())
    # The default rank is the most common one (ties: the smaller), so the pattern lists only exceptions.
    default = min(counts, key=lambda r: (-counts[r], r))
    rank_pattern = {k: v for k, v in sorted(clean.items()) if v != default}
    alpha_pattern = {k: alpha_of(v) for k, v in rank_pattern.items()}
    control = default == probe_r and not rank_pattern
    return VariantPlan(strategy=strategy, r=default, alpha=alpha_of(default), rank_pattern=rank_pattern,
                       alpha_pattern=alpha_pattern, control=control, note=note)


def plan_variants(summary: AuditSummary | Mapping[str, Any], strategies: Sequence[str], *, probe_r: int, probe_alpha: float,
                  per_module_ranks: Mapping[str, int] | None = None,
                  budget_ranks: Mapping[str, int] | None = None, truncate_rank: int | None = None,
                  truncate_energy: float | None = None, retrain_scaling: str = "keep_scale",
                  heal_steps: int = 100, heal_lr: float | None = None,
                  budget_params: int | None = None) -> list[VariantPlan]:
    """Build one plan per strategy from an audit ``summary``.

    The uniform and per-layer ranks come already rounded to ``compression.allowed_ranks``
    (:func:`.protocol.audit_probe` applies the audit's rank rule with that list); the budget
    allocation and truncation choose their own ranks. Nothing here rounds again.

    Args:
        summary: the audit summary (its ``suggested_r_global_median`` and ``suggested_r_global_90``),
            typed or as recorded in the bench's audit file.
        per_module_ranks: per-module suggested ranks (module name -> rank) for ``per_layer``.
        budget_ranks: per-module ranks from the budgeted allocation for ``budget``.
        truncate_rank / truncate_energy: SVD truncation target (default: the median suggestion), for
            ``truncate`` and ``truncate_heal`` alike.
        retrain_scaling: how a retrained plan's alpha follows its rank (:func:`retrain_alpha`).
        heal_steps / heal_lr: training steps of ``truncate_heal`` after the truncation, their peak LR.
        budget_params: the LoRA parameter budget of ``truncate_budget`` and ``truncate_budget_heal``
            (the audit's, so their ranks are those of ``budget``), passed to ``compress`` as is.
    """
    ratio = float(probe_alpha) / float(probe_r)

    def alpha_of(r: int) -> float:
        return retrain_alpha(retrain_scaling, r, probe_r, probe_alpha)

    sc = retrain_scaling if retrain_scaling != "keep_scale" else None  # keep_scale: plans as before
    audit = AuditSummary.from_dict(summary)
    med, p90 = audit.suggested_r_global_median, audit.suggested_r_global_90
    if med is None or p90 is None:
        raise GradienceError("the probe audit has no suggested global ranks (suggested_r_global_median/_90)",
                             hint="the probe adapter's update is zero or non-finite everywhere; check the probe run")
    plans: list[VariantPlan] = []
    for s in strategies:
        if s == "uniform_median":
            r = min(med, probe_r)
            plans.append(VariantPlan(s, r=r, alpha=alpha_of(r), control=r == probe_r, scaling=sc,
                                     note=f"median over modules of the rank keeping 90% energy, rounded up: {med}"))
        elif s == "uniform_p90":
            r = min(p90, probe_r)
            plans.append(VariantPlan(s, r=r, alpha=alpha_of(r), control=r == probe_r, scaling=sc,
                                     note=f"90th percentile of the per-module rank keeping 90% energy: {p90}"))
        elif s == "per_layer":
            plans.append(_pattern_plan(s, per_module_ranks or {}, alpha_of, probe_r,
                                       "each module's smallest allowed rank keeping 90% of its energy"))
        elif s == "budget":
            plans.append(_pattern_plan(s, budget_ranks or {}, alpha_of, probe_r,
                                       "ranks keeping the most update energy per parameter within the budget"))
        elif s in ("truncate", "truncate_heal"):
            heal = heal_steps if s == "truncate_heal" else 0
            hlr = heal_lr if heal else None
            then = f", then {heal} steps of training" if heal else ", no retraining"
            if truncate_energy is not None:
                plans.append(VariantPlan(s, r=probe_r, alpha=probe_alpha, retrain=False, truncate_energy=truncate_energy,
                                         heal_steps=heal, heal_lr=hlr,
                                         note=f"probe truncated by SVD keeping {truncate_energy:.0%} energy per module"
                                              + then))
            else:
                r = truncate_rank if truncate_rank is not None else min(med, probe_r)
                r = max(1, min(int(r), probe_r))
                plans.append(VariantPlan(s, r=r, alpha=ratio * r, retrain=False, truncate_rank=r, heal_steps=heal,
                                         heal_lr=hlr,
                                         control=r == probe_r and not heal,
                                         note=f"probe truncated by SVD to rank {r}" + then))
        elif s in ("truncate_budget", "truncate_budget_heal"):
            if not budget_params or not budget_ranks:
                raise GradienceError(f"{s}: the audit produced no budgeted allocation")
            heal = heal_steps if s == "truncate_budget_heal" else 0
            shape = _pattern_plan(s, budget_ranks, lambda r: ratio * r, probe_r, "")
            plans.append(VariantPlan(s, r=shape.r, alpha=shape.alpha, rank_pattern=shape.rank_pattern,
                                     alpha_pattern=shape.alpha_pattern, retrain=False, truncate_budget=budget_params,
                                     heal_steps=heal, heal_lr=heal_lr if heal else None,
                                     note=f"probe truncated by SVD to the budgeted ranks ({budget_params:,} LoRA "
                                          "parameters)" + (f", then {heal} steps of training" if heal else
                                                           ", no retraining")))
        else:
            raise GradienceError(f"unknown strategy {s!r}")
    if not math.isfinite(ratio):  # pragma: no cover - config validation guarantees r >= 1, alpha > 0
        raise GradienceError("probe alpha/r is not finite")
    return plans
