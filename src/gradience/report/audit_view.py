"""The adapter audit as the report shows it: load, validate, and derive the display tables.

Input shapes (docs/audit.md#summary-keys, #layer-rows): the output of ``gradience audit --json --layers`` — the summary keys
at the top level plus ``layers`` (one row per module) — or the run's own
``metrics(kind="lora_audit")`` block (summary only: by-type table, UDR figures and suggested
ranks with their savings, but no per-module rows). Nothing here recomputes a spectrum:
suggested per-module ranks follow the audit's own rule (smallest allowed rank ≥ k@90%,
capped at the module's r) applied to the rows the audit wrote, and the PEFT-ready fragment
(``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``) keeps every module's scale.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ..audit import audit_adapter
from ..audit.suggest import peft_pattern, round_up_rank
from ..bounded import read_json
from ..errors import GradienceError
from ..telemetry.sections import AuditSummary, TypeSummary

__all__ = ["AUDIT_COMMAND", "AuditView", "audit_from_peft_dir", "build_audit_view", "load_audit_json"]

# The audit command whose JSON has everything the report draws (per-module rows and spectra).
AUDIT_COMMAND = "gradience audit --json --layers --top-singular-values 16"

TYPE_ORDER = {"attn": 0, "mlp": 1, "other": 2}
_SUMMARY_HINTS = ("total_lora_params", "n_layers", "utilization_mean", "stable_rank_mean",
                  "suggested_r_global_median", "energy_rank_90_p50")
_NOISE = {"weight", "default", "lora_a", "lora_b", "lora_embedding_a", "lora_embedding_b", "base_layer"}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:  # an integer past the float range
        return None
    return v if math.isfinite(v) else None


def load_audit_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an audit JSON file (``gradience audit --json --layers``); one-line errors on bad input."""
    p = Path(path)
    if not p.exists():
        raise GradienceError("audit file not found", path=p,
                             hint=f"write one with: {AUDIT_COMMAND} --peft-dir DIR > audit.json")
    if p.is_dir():
        raise GradienceError("expected an audit JSON file, got a directory", path=p,
                             hint="for an adapter directory use --peft-dir")
    obj = read_json(p, what="audit file", error=GradienceError)
    return validate_audit(obj, path=p)


def validate_audit(obj: Any, *, path: object = None) -> dict[str, Any]:
    """Accept an audit dict (top-level summary, or ``{"summary": {...}, "layers": [...]}``)."""
    if not isinstance(obj, dict):
        raise GradienceError(f"audit JSON must be an object, got {type(obj).__name__}", path=path,
                             hint=f"pass the output of: {AUDIT_COMMAND}")
    out = dict(obj)
    if isinstance(obj.get("summary"), dict):  # tolerate a nested summary
        out = {**obj["summary"], **{k: v for k, v in obj.items() if k != "summary"}}
    layers = out.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise GradienceError("audit JSON 'layers' must be a list of module rows", path=path)
    if not layers and not any(k in out for k in _SUMMARY_HINTS):
        raise GradienceError("not a Gradience audit: no 'layers' and none of the summary keys "
                             f"({', '.join(_SUMMARY_HINTS[:3])}, ...)", path=path,
                             hint=f"pass the output of: {AUDIT_COMMAND}")
    return out


def audit_from_peft_dir(peft_dir: str | os.PathLike[str], top_singular_values: int = 16) -> dict[str, Any]:
    """Audit a PEFT adapter directory with ``gradience.audit`` and return its dict with layer rows."""
    result = audit_adapter(peft_dir, top_singular_values=top_singular_values)
    return validate_audit(result.to_dict(layers=True), path=peft_dir)


def _short_name(name: str) -> str:
    """``base_model.model.encoder.layer.3.attention.self.query.lora_A.weight`` → ``query``."""
    parts = [p for p in re.split(r"[./]", name) if p]
    for p in reversed(parts):
        if p.lower() not in _NOISE and not p.isdigit():
            return p
    return name


def _layer_index(row: dict[str, Any]) -> int | None:
    layer = row.get("layer")
    if isinstance(layer, int) and not isinstance(layer, bool):
        return layer
    m = re.search(r"(?:^|[._])(?:layers?|h|block|blocks)[._](\d+)(?:[._]|$)", str(row.get("name", "")))
    return int(m.group(1)) if m else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (``q`` in 0..100), numpy's default definition."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class ModuleRow:
    name: str
    short: str
    module_type: str
    layer: int | None
    r: int | None
    params: int | None
    utilization: float | None
    stable_rank: float | None
    effective_rank: float | None
    k90: float | None
    suggested_r: int | None
    top_sv: list[float]
    udr: float | None
    sdi: float | None
    delta_fro: float | None
    scale: float | None = None  # α/r (α/√r with rsLoRA), as the adapter applies it


@dataclass
class TypeRow:
    """One line of the audit's ``by_type`` block (attention / MLP / other)."""

    name: str
    n: int | None
    params: int | None
    utilization: float | None
    stable_rank: float | None
    k90_p50: float | None
    k90_p90: float | None
    suggested_r: int | None
    energy_share: float | None


@dataclass
class UniformOption:
    label: str  # "median" | "p90"
    r: int
    params_after: int | None
    saving_fraction: float | None


@dataclass
class AuditView:
    """Display tables derived from one audit dict."""

    source: str  # "file" | "peft-dir" | "telemetry"
    # The audit's summary keys (read leniently from the file or event); the file's other top-level
    # keys (adapter, per_layer_suggestion, ...) are in its extras.
    summary: AuditSummary
    modules: list[ModuleRow] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # "q_proj (attn)" ordered by type then name
    layers: list[int | None] = field(default_factory=list)
    util_grid: list[list[float | None]] = field(default_factory=list)
    k90_grid: list[list[float | None]] = field(default_factory=list)
    total_params: int | None = None
    per_module_params_after: int | None = None
    uniform: list[UniformOption] = field(default_factory=list)
    # PEFT-ready per-module suggestion: {"r", "lora_alpha", "rank_pattern", "alpha_pattern"};
    # None when neither the audit wrote one nor the rows allow deriving it (summary-only audits).
    peft_fragment: dict[str, Any] | None = None
    per_module_default_r: int | None = None
    by_type: list[TypeRow] = field(default_factory=list)
    most_used: list[ModuleRow] = field(default_factory=list)
    least_used: list[ModuleRow] = field(default_factory=list)

    @property
    def has_layers(self) -> bool:
        return bool(self.modules)

    @property
    def has_spectra(self) -> bool:
        return any(m.top_sv for m in self.modules)

    @property
    def udr_summary(self) -> dict[str, Any]:
        """The audit's UDR figures (count, mean, median, p90, max, fractions above 0.1 / 0.3)."""
        s = self.summary
        out: dict[str, Any] = {
            "udr_mean": _num(s.udr_mean), "udr_median": _num(s.udr_median), "udr_p90": _num(s.udr_p90),
            "udr_max": _num(s.udr_max), "fraction_udr_gt_0_1": _num(s.fraction_udr_gt_0_1),
            "fraction_udr_gt_0_3": _num(s.fraction_udr_gt_0_3), "n": s.n_layers_with_udr,
        }
        return {k: v for k, v in out.items() if v is not None}

    @property
    def udr_values(self) -> list[float]:
        return [m.udr for m in self.modules if m.udr is not None and m.udr > 0]

    @property
    def per_module_saving(self) -> float | None:
        if not self.total_params or self.per_module_params_after is None:
            return None
        return 1 - self.per_module_params_after / self.total_params


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _row(raw: dict[str, Any], use_rslora: bool = False) -> ModuleRow:
    name = str(raw.get("name", "?"))
    r = raw.get("r")
    r = int(r) if isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 2**31 else None
    scale = _num(raw.get("scale"))
    alpha = _num(raw.get("alpha"))
    if scale is None and alpha is not None and r:
        scale = alpha / (math.sqrt(r) if use_rslora else r)
    k90 = _num(raw.get("energy_rank_90"))
    params = _num(raw.get("params"))
    svs = raw.get("top_singular_values")
    svs = svs if isinstance(svs, list) else []
    mtype = str(raw.get("module_type") or "other")
    return ModuleRow(
        name=name,
        short=_short_name(name),
        module_type=mtype if mtype in TYPE_ORDER else "other",
        layer=_layer_index(raw),
        r=r,
        params=int(params) if params is not None else None,
        utilization=_num(raw.get("utilization")),
        stable_rank=_num(raw.get("stable_rank")),
        effective_rank=_num(raw.get("effective_rank")),
        k90=k90,
        # The audit's own per-module suggestion when it wrote one; else the same rule applied here.
        suggested_r=raw["suggested_r"] if _is_int(raw.get("suggested_r")) else _suggest(k90, r),
        top_sv=[float(v) for v in svs if _num(v) is not None],
        udr=_num(raw.get("udr")),
        sdi=_num(raw.get("sdi")),
        delta_fro=_num(raw.get("delta_fro_norm")),
        scale=scale,
    )


def _suggest(k: float | None, r: int | None) -> int | None:
    """The audit's rank rule (:func:`gradience.audit.suggest.round_up_rank`) for a row or a
    percentile; ``None`` when k or the current rank is unknown."""
    return round_up_rank(k, r) if k is not None and r is not None else None


def peft_fragment(rows: list[ModuleRow], use_rslora: bool) -> dict[str, Any] | None:
    """``{r, lora_alpha, rank_pattern, alpha_pattern}`` for the suggested per-module ranks.

    Built by the audit's own :func:`gradience.audit.suggest.peft_pattern`, so it matches what
    ``gradience audit`` writes: the most common suggested rank is the global ``r``, and the
    pattern keys resolve in PEFT to exactly each module's rank and α (each keeps its scale).
    Rows with no suggested rank, no known scale or an exactly zero update are left out (the
    audit leaves them out too).
    """
    use = [m for m in rows if m.suggested_r is not None and m.scale is not None and m.delta_fro != 0.0]
    if not use:
        return None
    return peft_pattern([{"name": m.name, "scale": m.scale} for m in use],
                        [int(m.suggested_r) for m in use if m.suggested_r is not None], use_rslora)


def _by_type(block: dict[str, TypeSummary] | None) -> list[TypeRow]:
    out = []
    for name, st in (block or {}).items():
        legacy_n = st.extras.get("n_modules", st.extras.get("n_layers"))  # the count's name in other writers
        out.append(TypeRow(
            name=str(name),
            n=st.n if st.n is not None else (legacy_n if _is_int(legacy_n) else None),
            params=st.params,
            utilization=_num(st.utilization_mean),
            stable_rank=_num(st.stable_rank_mean),
            k90_p50=_num(st.energy_rank_90_p50),
            k90_p90=_num(st.energy_rank_90_p90),
            suggested_r=st.suggested_r_median,
            energy_share=_num(st.energy_share),
        ))
    out.sort(key=lambda t: (TYPE_ORDER.get(t.name, len(TYPE_ORDER)), t.name))
    return out


def build_audit_view(audit: dict[str, Any], source: str, *, n_spectra: int = 3) -> AuditView:
    """Heatmap grids (layer × module), suggested ranks with parameter savings, spectra picks."""
    summary = AuditSummary.from_dict({k: v for k, v in audit.items() if k != "layers"})
    view = AuditView(source=source, summary=summary)
    use_rslora = summary.use_rslora is True
    rows = [_row(r, use_rslora) for r in audit.get("layers") or [] if isinstance(r, dict)]
    view.modules = rows
    view.by_type = _by_type(summary.by_type)
    view.total_params = summary.total_lora_params
    suggestion = summary.extras.get("per_layer_suggestion")
    if isinstance(suggestion, dict) and isinstance(suggestion.get("rank_pattern"), dict):
        view.peft_fragment = {k: suggestion.get(k) for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern")}
        if not isinstance(view.peft_fragment["alpha_pattern"], dict):
            view.peft_fragment["alpha_pattern"] = {}
    elif rows:
        view.peft_fragment = peft_fragment(rows, use_rslora)
    default_r = summary.suggested_r_per_layer_default
    if default_r is not None:
        view.per_module_default_r = default_r
    elif view.peft_fragment is not None and _is_int(view.peft_fragment.get("r")):
        view.per_module_default_r = view.peft_fragment["r"]
    if summary.per_layer_params_after is not None:
        view.per_module_params_after = summary.per_layer_params_after
    # The audit's uniform suggestions: (label, percentile, suggested r, LoRA parameters at that r).
    uniform = (("median", 50, summary.suggested_r_global_median, summary.suggested_params_global_median),
               ("p90", 90, summary.suggested_r_global_90, summary.suggested_params_global_90))
    if not rows:
        r_cur = summary.r
        for label, _, r_new, given in uniform:
            if r_new is None:
                continue
            kept: int | None = None
            if given is not None:
                kept = given
            elif view.total_params and r_cur is not None and r_cur > 0:
                kept = round(view.total_params * min(r_new, r_cur) / r_cur)
            frac = 1 - kept / view.total_params if kept is not None and view.total_params else None
            view.uniform.append(UniformOption(label, r_new, kept, frac))
        return view

    # Columns: one per module short name, ordered attention → MLP → other, then by name.
    col_keys = sorted({(m.module_type, m.short) for m in rows}, key=lambda t: (TYPE_ORDER[t[0]], t[1]))
    view.columns = [f"{short} ({mtype})" for mtype, short in col_keys]
    col_idx = {k: j for j, k in enumerate(col_keys)}
    layer_keys = sorted({m.layer for m in rows}, key=lambda v: (v is None, v if v is not None else 0))
    view.layers = layer_keys
    row_idx = {k: i for i, k in enumerate(layer_keys)}
    sums_u: dict[tuple[int, int], list[float]] = {}
    sums_k: dict[tuple[int, int], list[float]] = {}
    for m in rows:
        cell = (row_idx[m.layer], col_idx[(m.module_type, m.short)])
        if m.utilization is not None:
            sums_u.setdefault(cell, []).append(m.utilization)
        if m.k90 is not None:
            sums_k.setdefault(cell, []).append(m.k90)

    def grid(sums: dict[tuple[int, int], list[float]]) -> list[list[float | None]]:
        g: list[list[float | None]] = [[None] * len(col_keys) for _ in layer_keys]
        for (i, j), vals in sums.items():
            g[i][j] = sum(vals) / len(vals)  # several adapters/experts on one cell: their mean
        return g

    view.util_grid = grid(sums_u)
    view.k90_grid = grid(sums_k)

    if view.total_params is None and all(m.params is not None for m in rows):
        view.total_params = sum(m.params for m in rows if m.params is not None)
    # LoRA parameters are linear in r (A: r×in, B: out×r), so a module at r' keeps params·r'/r.
    sized = [(m.params, m.r, m.suggested_r or m.r) for m in rows if m.params is not None and m.r]
    all_sized = bool(sized) and len(sized) == len(rows)
    if view.per_module_params_after is None and all_sized:
        view.per_module_params_after = sum(round(p * r_s / r) for p, r, r_s in sized)
    k90s = [m.k90 for m in rows if m.k90 is not None]
    r_max = max((m.r for m in rows if m.r), default=None)
    for label, q, given, audit_after in uniform:
        r_new = given if given is not None else _suggest(percentile(k90s, q), r_max)
        if r_new is None:
            continue
        after: int | None = None
        if audit_after is not None and given is not None:
            after = audit_after
        elif all_sized:
            after = sum(round(p * min(r_new, r) / r) for p, r, _ in sized)
        frac = 1 - after / view.total_params if after is not None and view.total_params else None
        view.uniform.append(UniformOption(label, r_new, after, frac))

    with_sv = [m for m in rows if m.top_sv and m.utilization is not None]
    with_sv.sort(key=lambda m: (m.utilization, m.name))
    n = min(n_spectra, len(with_sv) // 2) if len(with_sv) >= 2 else len(with_sv)
    view.least_used = with_sv[:n]
    view.most_used = list(reversed(with_sv[-n:])) if n else []
    return view
