"""The adapter audit as the report shows it: load, validate, and derive the display tables.

Input shapes (SPEC §3): the output of ``gradience audit --json --layers`` — the summary keys
at the top level plus ``layers`` (one row per module) — or the run's own
``metrics(kind="lora_audit")`` block (summary only). Nothing here recomputes a spectrum:
suggested per-module ranks follow the audit's own rule (smallest allowed rank ≥ k@90%,
capped at the module's r) applied to the rows the audit wrote.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GradienceError

__all__ = ["ALLOWED_RANKS", "AuditView", "audit_from_peft_dir", "build_audit_view", "load_audit_json"]

ALLOWED_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TYPE_ORDER = {"attn": 0, "mlp": 1, "other": 2}
_SUMMARY_HINTS = ("total_lora_params", "n_layers", "utilization_mean", "stable_rank_mean",
                  "suggested_r_global_median", "energy_rank_90_p50")
_NOISE = {"weight", "default", "lora_a", "lora_b", "lora_embedding_a", "lora_embedding_b", "base_layer"}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def load_audit_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an audit JSON file (``gradience audit --json --layers``); one-line errors on bad input."""
    p = Path(path)
    if not p.exists():
        raise GradienceError("audit file not found", path=p, hint="write one with: gradience audit --peft-dir DIR "
                             "--json --layers > audit.json")
    if p.is_dir():
        raise GradienceError("expected an audit JSON file, got a directory", path=p,
                             hint="for an adapter directory use --peft-dir")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GradienceError(f"cannot read audit file: {exc}", path=p) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GradienceError(f"audit file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                             path=p, hint="regenerate it with: gradience audit --json --layers") from None
    return validate_audit(obj, path=p)


def validate_audit(obj: Any, *, path: object = None) -> dict[str, Any]:
    """Accept an audit dict (top-level summary, or ``{"summary": {...}, "layers": [...]}``)."""
    if not isinstance(obj, dict):
        raise GradienceError(f"audit JSON must be an object, got {type(obj).__name__}", path=path,
                             hint="pass the output of: gradience audit --json --layers")
    out = dict(obj)
    if isinstance(obj.get("summary"), dict):  # tolerate a nested summary
        out = {**obj["summary"], **{k: v for k, v in obj.items() if k != "summary"}}
    layers = out.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise GradienceError("audit JSON 'layers' must be a list of module rows", path=path)
    if not layers and not any(k in out for k in _SUMMARY_HINTS):
        raise GradienceError("not a Gradience audit: no 'layers' and none of the summary keys "
                             f"({', '.join(_SUMMARY_HINTS[:3])}, ...)", path=path,
                             hint="pass the output of: gradience audit --json --layers")
    return out


def audit_from_peft_dir(peft_dir: str | os.PathLike[str], top_singular_values: int = 16) -> dict[str, Any]:
    """Audit a PEFT adapter directory with ``gradience.audit`` and return its dict with layer rows."""
    try:
        from ..audit import audit_adapter  # type: ignore[attr-defined]
    except ImportError as exc:
        if exc.name is not None and not exc.name.startswith("gradience"):
            raise  # a real missing dependency inside the audit package: do not mask it
        raise GradienceError("this build has no adapter audit (gradience.audit.audit_adapter)",
                             hint="pass a saved audit with --audit AUDIT.json instead") from None
    result = audit_adapter(peft_dir, top_singular_values=top_singular_values)
    data = result.to_dict(layers=True) if hasattr(result, "to_dict") else result
    return validate_audit(data, path=peft_dir)


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


def suggest_rank(k90: float | None, r: int | None) -> int | None:
    """Smallest allowed rank ≥ k@90%, never above the module's current r."""
    if k90 is None or r is None:
        return None
    for a in ALLOWED_RANKS:
        if a >= k90:
            return min(a, r)
    return r


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
    summary: dict[str, Any]
    modules: list[ModuleRow] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # "q_proj (attn)" ordered by type then name
    layers: list[int | None] = field(default_factory=list)
    util_grid: list[list[float | None]] = field(default_factory=list)
    k90_grid: list[list[float | None]] = field(default_factory=list)
    total_params: int | None = None
    per_module_params_after: int | None = None
    uniform: list[UniformOption] = field(default_factory=list)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    most_used: list[ModuleRow] = field(default_factory=list)
    least_used: list[ModuleRow] = field(default_factory=list)

    @property
    def has_layers(self) -> bool:
        return bool(self.modules)

    @property
    def udr_values(self) -> list[float]:
        return [m.udr for m in self.modules if m.udr is not None and m.udr > 0]

    @property
    def per_module_saving(self) -> float | None:
        if not self.total_params or self.per_module_params_after is None:
            return None
        return 1 - self.per_module_params_after / self.total_params


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _row(raw: dict[str, Any]) -> ModuleRow:
    name = str(raw.get("name", "?"))
    r = raw.get("r")
    r = int(r) if isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 else None
    k90 = _num(raw.get("energy_rank_90"))
    params = raw.get("params")
    svs = raw.get("top_singular_values") or []
    mtype = str(raw.get("module_type") or "other")
    return ModuleRow(
        name=name,
        short=_short_name(name),
        module_type=mtype if mtype in TYPE_ORDER else "other",
        layer=_layer_index(raw),
        r=r,
        params=int(params) if isinstance(params, (int, float)) and not isinstance(params, bool) else None,
        utilization=_num(raw.get("utilization")),
        stable_rank=_num(raw.get("stable_rank")),
        effective_rank=_num(raw.get("effective_rank")),
        k90=k90,
        # The audit's own per-module suggestion when it wrote one; else the same rule applied here.
        suggested_r=raw["suggested_r"] if _is_int(raw.get("suggested_r")) else suggest_rank(k90, r),
        top_sv=[float(v) for v in svs if _num(v) is not None],
        udr=_num(raw.get("udr")),
        sdi=_num(raw.get("sdi")),
        delta_fro=_num(raw.get("delta_fro_norm")),
    )


def build_audit_view(audit: dict[str, Any], source: str, *, n_spectra: int = 3) -> AuditView:
    """Heatmap grids (layer × module), suggested ranks with parameter savings, spectra picks."""
    summary = {k: v for k, v in audit.items() if k != "layers"}
    view = AuditView(source=source, summary=summary)
    rows = [_row(r) for r in audit.get("layers") or [] if isinstance(r, dict)]
    view.modules = rows
    total = summary.get("total_lora_params")
    view.total_params = int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None
    if not rows:
        for key, label in (("suggested_r_global_median", "median"), ("suggested_r_global_90", "p90")):
            r_new = summary.get(key)
            r_cur = summary.get("r")
            if isinstance(r_new, int) and view.total_params and isinstance(r_cur, int) and r_cur > 0:
                kept = round(view.total_params * min(r_new, r_cur) / r_cur)
                view.uniform.append(UniformOption(label, r_new, kept, 1 - kept / view.total_params))
            elif isinstance(r_new, int):
                view.uniform.append(UniformOption(label, r_new, None, None))
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
    if _is_int(summary.get("per_layer_params_after")):
        view.per_module_params_after = summary["per_layer_params_after"]
    elif all_sized:
        view.per_module_params_after = sum(round(p * r_s / r) for p, r, r_s in sized)
    suggestion = summary.get("per_layer_suggestion")
    if isinstance(suggestion, dict) and isinstance(suggestion.get("rank_pattern"), dict):
        view.rank_pattern = {str(k): v for k, v in suggestion["rank_pattern"].items()}
    else:
        view.rank_pattern = {m.name: m.suggested_r for m in rows if m.suggested_r is not None and m.suggested_r != m.r}
    k90s = [m.k90 for m in rows if m.k90 is not None]
    r_max = max((m.r for m in rows if m.r), default=None)
    for key, label, q in (("suggested_r_global_median", "median", 50), ("suggested_r_global_90", "p90", 90)):
        given = summary.get(key)
        r_new = given if isinstance(given, int) else suggest_rank(percentile(k90s, q), r_max)
        if r_new is None:
            continue
        after: int | None = None
        audit_after = summary.get(key.replace("suggested_r_", "suggested_params_"))
        if _is_int(audit_after) and isinstance(given, int):
            after = audit_after
        elif all_sized:
            after = sum(round(p * min(r_new, r) / r) for p, r, _ in sized)
        frac = 1 - after / view.total_params if after is not None and view.total_params else None
        view.uniform.append(UniformOption(label, r_new, after, frac))

    with_sv = [m for m in rows if m.top_sv and m.utilization is not None]
    with_sv.sort(key=lambda m: (m.utilization, m.name))  # type: ignore[arg-type, return-value]
    n = min(n_spectra, len(with_sv) // 2) if len(with_sv) >= 2 else len(with_sv)
    view.least_used = with_sv[:n]
    view.most_used = list(reversed(with_sv[-n:])) if n else []
    return view
