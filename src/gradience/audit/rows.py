"""`AuditLayer`: one audited module, the row of ``gradience audit --json --layers``.

The audit's summary is :class:`gradience.telemetry.sections.AuditSummary` (it is also a telemetry
payload); the two together are the audit's output contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..telemetry.record import Record

__all__ = ["AuditLayer"]


@dataclass(eq=False)
class AuditLayer(Record):
    """One LoRA module of an audited adapter (ΔW = s·B·A with B (out × r), A (r × in)).

    Every row has the geometry fields. A module whose factors hold NaN/Inf has ``error`` and no
    metric fields; a measured one has the metrics and ``suggested_r``; a module matched to a base
    weight also has the UDR fields. A field a row does not have is absent from its JSON (and
    reads as ``None``).

    Fields:
        name: module path as PEFT names it (``model.layers.0.self_attn.q_proj``; ``[i]`` suffix for
            the i-th of several adapters on one module).
        module_type: ``attn``, ``mlp`` or ``other``.
        layer: transformer block index, ``None`` when the path has none.
        layer_key: the block the module belongs to (``"3"``, or a name for modules outside blocks).
        kind: ``linear``, ``embedding`` or ``conv``.
        r: the module's rank (from its tensors).
        alpha: the module's lora_alpha (config, with ``alpha_pattern``).
        scale: the LoRA scale s = α / r (α / √r with rsLoRA; from the config's r).
        shape: ``[out_features, in_features]`` of ΔW.
        in_features / out_features: ΔW's input and output dimensions.
        params: LoRA parameters of the module, r·(in + out).
        dtype: storage dtype of the factors (``F32``, ``BF16``, ...).
        sigma_max: σ₁ of the unscaled B·A.
        frob_sq: Σσ² of the unscaled B·A.
        stable_rank: Σσ²/σ₁² (0 for a zero update).
        utilization: stable_rank / r (0–1).
        effective_rank: exp(entropy of σ/Σσ).
        delta_sigma_max: σ₁ of the scaled update, |s|·σ₁.
        delta_fro_norm: Frobenius norm of the scaled update, |s|·‖σ‖₂.
        energy_rank_90 / energy_rank_95 / energy_rank_99: smallest k whose top-k σ hold that share
            of Σσ² (0 for a zero update).
        top_singular_values: the top K σ of the unscaled B·A, descending (only with
            ``--top-singular-values K``).
        suggested_r: energy_rank_90 rounded up to an allowed rank, capped at r.
        error: why the module was not measured.
        energy_share: the module's share (0–1) of Σ delta_fro_norm² over the measured modules;
            ``None`` when every update is zero.
        base_tensor: the base weight the module was matched to.
        base_sigma_max / base_fro_norm: σ₁ and Frobenius norm of that base weight.
        udr: update-to-data ratio delta_sigma_max / base_sigma_max.
        udr_f: delta_fro_norm / base_fro_norm.
        sdi: log10(udr + 1e-12).
    """

    OMIT_IF_NONE = frozenset({
        "sigma_max", "frob_sq", "stable_rank", "utilization", "effective_rank", "delta_sigma_max", "delta_fro_norm",
        "energy_rank_90", "energy_rank_95", "energy_rank_99", "top_singular_values", "suggested_r", "error",
        "base_tensor", "base_sigma_max", "base_fro_norm", "udr", "udr_f", "sdi"})

    name: str = ""
    module_type: str | None = None
    layer: int | None = None
    layer_key: str | None = None
    kind: str | None = None
    r: int | None = None
    alpha: float | None = None
    scale: float | None = None
    shape: list[int] | None = None
    in_features: int | None = None
    out_features: int | None = None
    params: int | None = None
    dtype: str | None = None
    sigma_max: float | None = None
    frob_sq: float | None = None
    stable_rank: float | None = None
    utilization: float | None = None
    effective_rank: float | None = None
    delta_sigma_max: float | None = None
    delta_fro_norm: float | None = None
    energy_rank_90: int | None = None
    energy_rank_95: int | None = None
    energy_rank_99: int | None = None
    top_singular_values: list[float] | None = None
    suggested_r: int | None = None
    error: str | None = None
    energy_share: float | None = None
    base_tensor: str | None = None
    base_sigma_max: float | None = None
    base_fro_norm: float | None = None
    udr: float | None = None
    udr_f: float | None = None
    sdi: float | None = None
