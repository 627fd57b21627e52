"""The typed sections of a :class:`~gradience.telemetry.snapshot.SignalSnapshot` and the audit summary.

These are the contracts between packages: the event fold (telemetry) writes them, the policy
rules and every view (monitor, watch, report, bench) read them. Each one serialises to the JSON
object it has always been (see :mod:`gradience.telemetry.record`); the field order below is the
serialised key order.

Units: losses are the trainer's loss values (nats per token for language modelling); learning
rates are optimizer LRs (per step); gradient norms are global L2 norms over the trainable
parameters, before clipping unless named ``clipped``; steps are optimizer steps (the trainer's
``global_step``); counts are numbers of logged events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .record import Record
from .schema import real_number

__all__ = [
    "AuditIssue",
    "AuditSummary",
    "GradNormSummary",
    "GuardSummary",
    "LayerShare",
    "LossSummary",
    "LrSummary",
    "SpectralSummary",
    "TypeSummary",
]


@dataclass(eq=False)
class LossSummary(Record):
    """Training-loss statistics over the logged ``train_step`` events.

    Fields:
        first: first finite loss logged.
        last: last loss logged (NaN/Inf included: the run's last word on its loss).
        min: lowest finite loss.
        min_step: step of ``min``.
        n: number of finite losses logged.
        nonfinite_count: number of NaN/Inf losses logged.
        nonfinite_steps: steps of the NaN/Inf losses (the last 50; ``None`` where the event had no step).
        spikes: number of loss spikes (a loss above twice a robust running baseline).
        spike_steps: steps of the spikes (the last 50; ``None`` where the event had no step).
    """

    first: float | None = None
    last: float | None = None
    min: float | None = None
    min_step: int | None = None
    n: int = 0
    nonfinite_count: int = 0
    nonfinite_steps: list[int | None] = field(default_factory=list)
    spikes: int = 0
    spike_steps: list[int | None] = field(default_factory=list)


@dataclass(eq=False)
class LrSummary(Record):
    """Learning rate of the first parameter group.

    Fields:
        first: LR at the first logged step.
        last: LR at the last logged step.
    """

    first: float | None = None
    last: float | None = None


@dataclass(eq=False)
class GradNormSummary(Record):
    """Global gradient norm (L2 over the trainable parameters) of the run.

    From the run's full-run record (the newest ``metrics(kind="grad_norm")`` summary, which
    the training recorder writes every 50 optimizer steps and at the end, over every step)
    when there is one (``source == "full_run"``), else from the sampled ``train_step`` events
    (``source == "sampled"``). A sampled event newer than the record still sets ``last`` and
    ``level``, and raises ``max`` and ``nonfinite_count`` when it is above them.

    Fields:
        last: the newest norm, before clipping (NaN/Inf included).
        max: largest finite norm, before clipping.
        last_clipped: the newest norm after clipping, when the writer recorded it.
        history: the last 10 norms (oldest first): consecutive steps from the record, else the
            last 10 logged.
        level: the level of ``last``: ``vanishing``, ``healthy``, ``warning``, ``critical`` or
            ``nonfinite``; ``None`` when no norm was recorded.
        trend: trend arrow of ``history`` (``↑``, ``↓``, ``→``); ``None`` without history.
        sparkline: ``history`` as one character per value (``""`` without history).
        nonfinite_count: number of NaN/Inf norms.
        summary: the full-run record used (the newest ``metrics(kind="grad_norm")`` payload as
            recorded; for a resumed run, the record up to the resume merged with the record
            after it), else ``None``.
        source: ``full_run`` (from ``summary``), ``sampled`` (from the ``train_step`` events
            only) or ``None`` (no norm at all).
        n_steps: steps the numbers cover: steps measured by the record, else sampled events
            with a norm.
        clipped_steps: of those, the steps where clipping lowered the norm (sampled: the
            events whose ``grad_norm_clipped`` is below ``grad_norm``); ``None`` when unknown.
        record_step: the step of the record used; ``None`` without a record.
    """

    last: float | None = None
    max: float | None = None
    last_clipped: float | None = None
    history: list[float] = field(default_factory=list)
    level: str | None = None
    trend: str | None = None
    sparkline: str = ""
    nonfinite_count: int = 0
    summary: dict[str, Any] | None = None
    source: str | None = None
    n_steps: int | None = None
    clipped_steps: int | None = None
    record_step: int | None = None

    @property
    def clipped_share(self) -> float | None:
        """Fraction (0–1) of ``n_steps`` that were clipped; ``None`` when unknown."""
        if self.clipped_steps is None or not self.n_steps:
            return None
        return self.clipped_steps / self.n_steps

    def clipped_text(self, *, compact: bool = False) -> str | None:
        """``clipped 46 % of steps (55/120)`` (``of sampled steps`` without a full-run record);
        ``compact``: ``clipped 46 % (55/120)``. ``None`` when nothing says how many steps were clipped."""
        share = self.clipped_share
        if share is None:
            return None
        pct = f"{100 * share:.0f}" if share == 0 or share >= 0.01 else f"{100 * share:.1g}"
        if compact:
            return f"clipped {pct} % ({self.clipped_steps}/{self.n_steps})"
        of = "sampled steps" if self.source != "full_run" else "recorded steps" if self.partial_record else "steps"
        return f"clipped {pct} % of {of} ({self.clipped_steps}/{self.n_steps})"

    @property
    def partial_record(self) -> bool:
        """The record covers fewer steps than the run had when it was written (the steps before a
        resume whose own record was lost, for instance)."""
        return (self.source == "full_run" and self.n_steps is not None and self.record_step is not None
                and self.n_steps < self.record_step)

    def source_text(self) -> str | None:
        """Where the numbers come from, for people: ``full-run record (120 steps, at step 120)``."""
        if self.source == "full_run" and self.partial_record:
            return f"gradient record of {self.n_steps} of the run's {self.record_step} steps"
        if self.source == "full_run":
            at = f", at step {self.record_step}" if self.record_step is not None else ""
            steps = f"{self.n_steps} step{'s' if self.n_steps != 1 else ''}" if self.n_steps is not None else "every step"
            return f"full-run record ({steps}{at})"
        if self.source == "sampled":
            n = self.n_steps or 0
            return f"{n} sampled train_step value{'s' if n != 1 else ''} (no full-run record)"
        return None


@dataclass(eq=False)
class GuardSummary(Record):
    """What the training guard did (from its ``metrics(kind="guard")`` and ``GUARD_*`` alert events).

    Fields:
        enabled: whether the run shows any guard event.
        snapshots: weight snapshots taken (count).
        rollbacks: rollbacks to a snapshot (count).
        lr_backoffs: LR back-offs (count).
        aborts: guard stops (``GUARD_LOCKOUT`` and ``GUARD_ABORT`` alerts, count).
        lockout: whether the guard locked the run out (too many rollbacks).
        final_lr_scale: the LR multiplier the guard left in place (1.0 = untouched), from its summary.
        integrity_status: the guard's snapshot-integrity verdict, from its summary.
        last: the last guard event's payload as recorded, with its ``step`` and ``action``.
        amp_overflows: fp16 overflow steps the guard left to the AMP grad scaler (skipped by the
            scaler, not faults), from its summary; ``None`` when not recorded.
    """

    enabled: bool = False
    snapshots: int = 0
    rollbacks: int = 0
    lr_backoffs: int = 0
    aborts: int = 0
    lockout: bool = False
    final_lr_scale: float | None = None
    integrity_status: str | None = None
    last: dict[str, Any] | None = None
    amp_overflows: int | None = None


@dataclass(eq=False)
class SpectralSummary(Record):
    """The last spectral-monitor sample (``metrics(kind="spectral")``).

    Fields:
        kappa: κ̃ of the last sample (dimensionless; the recorded ``kappa_tilde``, else ``kappa``).
        risk_level: the monitor's risk level at that sample (``STABLE``, ``LEARNING``, ``WARNING``,
            ``DANGER``, ``INSTABILITY``, as recorded).
        step: step of that sample.
        n: number of spectral samples.
    """

    kappa: float | None = None
    risk_level: str | None = None
    step: int | None = None
    n: int = 0


@dataclass(eq=False)
class TypeSummary(Record):
    """The audit's figures for one module type (``attn``, ``mlp``, ``other``).

    Fields:
        n: modules of this type (all audited ones, measured or not).
        params: their LoRA parameters.
        stable_rank_mean: mean stable rank Σσ²/σ₁² over the measured modules of this type.
        utilization_mean: mean stable_rank / r (0–1).
        effective_rank_mean: mean exp(entropy of σ/Σσ).
        energy_rank_90_p50 / energy_rank_90_p90: median and p90 of the energy rank at 90%.
        suggested_r_median: ``energy_rank_90_p50`` rounded up to an allowed rank, capped at the
            type's largest r.
        energy_share: the type's share (0–1) of the update energy Σ‖s·B·A‖_F².
        delta_sigma_max_mean: mean σ₁ of the scaled update s·B·A.
    """

    n: int | None = None
    params: int | None = None
    stable_rank_mean: float | None = None
    utilization_mean: float | None = None
    effective_rank_mean: float | None = None
    energy_rank_90_p50: float | None = None
    energy_rank_90_p90: float | None = None
    suggested_r_median: int | None = None
    energy_share: float | None = None
    delta_sigma_max_mean: float | None = None


@dataclass(eq=False)
class LayerShare(Record):
    """One entry of the audit's ``top_layers``.

    Fields:
        layer: the layer key (the transformer block index as text, or a name outside blocks).
        energy_share: the layer's share (0–1) of the update energy.
    """

    layer: str | None = None
    energy_share: float | None = None


@dataclass(eq=False)
class AuditIssue(Record):
    """A finding about the adapter or the audit (``NONFINITE_WEIGHTS``, ``UDR_UNMAPPED``, ...).

    Fields:
        code: stable upper-case identifier.
        severity: ``info``, ``warning`` or ``error``.
        message: one line for people.
        count: how many modules or tensors it concerns, when it is about several.
    """

    OMIT_IF_NONE = frozenset({"count"})

    code: str | None = None
    severity: str | None = None
    message: str | None = None
    count: int | None = None


@dataclass(eq=False)
class AuditSummary(Record):
    """The audit summary of one LoRA adapter: what ``gradience audit --json`` prints at its top
    level and what ``audit --append`` and the training callback log as ``metrics(kind="lora_audit")``.

    A run's ``lora_audit`` block is this record read back from that event (any subset of the keys
    may be present in data from other releases or writers).

    Ranks and energy ranks are numbers of singular directions; "energy rank at 90%" of a module is
    the smallest k whose top-k singular values of ΔW = s·B·A hold ≥ 90% of Σσ². Parameter counts are
    LoRA parameters (r·(in + out) per module). Percentiles are over the measured modules (non-zero
    update), linear interpolation.

    Fields:
        n_layers: modules with finite weights (measured or zero update).
        total_lora_params: LoRA parameters of every audited module.
        stable_rank_mean / stable_rank_median: stable rank Σσ²/σ₁² over measured modules.
        stable_rank_weighted_mean: stable rank weighted by module parameters.
        effective_rank_mean: mean of exp(entropy of σ/Σσ).
        utilization_mean: mean of stable_rank / r (0–1).
        energy_rank_90_p50 / energy_rank_90_p90: median and p90 of the energy rank at 90%.
        delta_sigma_max_scaled_mean / _p50 / _p90: σ₁ of the scaled update s·B·A.
        delta_frob_norm_scaled_mean / _p50 / _p90: Frobenius norm of the scaled update s·B·A.
        n_modules_measured: modules with a non-zero update.
        r: the most common rank among the modules.
        lora_alpha: the config's lora_alpha.
        use_rslora / use_dora: the config's flags.
        suggested_r_global_median: one rank for every module: the median energy rank at 90%,
            rounded up to an allowed rank and capped at the largest r; ``None`` when nothing was measured.
        suggested_r_global_90: the same from the p90 (the conservative suggestion).
        suggested_params_global_median / suggested_params_global_90: LoRA parameters at those ranks
            (each module at min(suggested, its r)).
        energy_rank_95_p50 / energy_rank_99_p50: medians of the energy ranks at 95% and 99%.
        by_type: per module type (``attn``, ``mlp``, ``other``), see :class:`TypeSummary`.
        energy_total: Σ over measured modules of ‖s·B·A‖_F².
        energy_hhi: concentration index Σ share² over modules (1/n even, 1 all in one module).
        energy_hhi_layers: the same over layers.
        top10pct_energy_share: the energy share (0–1) of the top 10% of modules.
        top_layers: the layers holding most energy (:class:`LayerShare`), largest first.
        energy_by_layer: energy share (0–1) per layer key, in natural layer order.
        suggested_r_per_layer_default: the default ``r`` of the per-module suggestion (present
            only when one was made).
        per_layer_params_after: LoRA parameters under the per-module suggestion (idem).
        per_layer_params_saved_fraction: fraction (0–1) of parameters it saves (idem).
        n_layers_with_udr: modules with a UDR (a matching base weight was found).
        udr_base_model: the base model the UDR was measured against.
        udr_skipped_reason: why no UDR was measured, else ``None``.
        udr_mean / udr_median / udr_p90 / udr_max: update-to-data ratio σ₁(s·B·A) / σ₁(W_base).
        sdi_mean / sdi_median / sdi_p90: log10 of the UDR.
        udr_f_mean / udr_f_median / udr_f_p90: the same ratio with Frobenius norms.
        fraction_udr_gt_0_1 / fraction_udr_gt_0_3: fraction (0–1) of modules with UDR above 0.1 / 0.3.
        issues: findings about the adapter or the audit (:class:`AuditIssue`).
    """

    OMIT_IF_NONE = frozenset({"suggested_r_per_layer_default", "per_layer_params_after",
                              "per_layer_params_saved_fraction"})
    NESTED: ClassVar[dict[str, type[Record]]] = {"by_type": TypeSummary, "top_layers": LayerShare,
                                                 "issues": AuditIssue}

    n_layers: int | None = None
    total_lora_params: int | None = None
    stable_rank_mean: float | None = None
    stable_rank_median: float | None = None
    stable_rank_weighted_mean: float | None = None
    effective_rank_mean: float | None = None
    utilization_mean: float | None = None
    energy_rank_90_p50: float | None = None
    energy_rank_90_p90: float | None = None
    delta_sigma_max_scaled_mean: float | None = None
    delta_sigma_max_scaled_p50: float | None = None
    delta_sigma_max_scaled_p90: float | None = None
    delta_frob_norm_scaled_mean: float | None = None
    delta_frob_norm_scaled_p50: float | None = None
    delta_frob_norm_scaled_p90: float | None = None
    n_modules_measured: int | None = None
    r: int | None = None
    lora_alpha: float | None = None
    use_rslora: bool | None = None
    use_dora: bool | None = None
    suggested_r_global_median: int | None = None
    suggested_r_global_90: int | None = None
    suggested_params_global_median: int | None = None
    suggested_params_global_90: int | None = None
    energy_rank_95_p50: float | None = None
    energy_rank_99_p50: float | None = None
    by_type: dict[str, TypeSummary] | None = None
    energy_total: float | None = None
    energy_hhi: float | None = None
    energy_hhi_layers: float | None = None
    top10pct_energy_share: float | None = None
    top_layers: list[LayerShare] | None = None
    energy_by_layer: dict[str, float] | None = None
    suggested_r_per_layer_default: int | None = None
    per_layer_params_after: int | None = None
    per_layer_params_saved_fraction: float | None = None
    n_layers_with_udr: int | None = None
    udr_base_model: str | None = None
    udr_skipped_reason: str | None = None
    udr_mean: float | None = None
    udr_median: float | None = None
    udr_p90: float | None = None
    udr_max: float | None = None
    sdi_mean: float | None = None
    sdi_median: float | None = None
    sdi_p90: float | None = None
    udr_f_mean: float | None = None
    udr_f_median: float | None = None
    udr_f_p90: float | None = None
    fraction_udr_gt_0_1: float | None = None
    fraction_udr_gt_0_3: float | None = None
    issues: list[AuditIssue] | None = None

    def type_utilization(self, module_type: str) -> float | None:
        """The mean utilization of one module type, when the audit has it."""
        entry = (self.by_type or {}).get(module_type)
        return real_number(entry.utilization_mean) if entry is not None else None
