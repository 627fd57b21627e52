"""`audit_adapter`: stream an adapter's factors, compute exact spectra, summarise."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from . import metrics as M
from .loading import (
    AdapterConfig,
    LoraModule,
    SafetensorsFile,
    TorchBinFile,
    load_adapter_config,
    open_weights,
    resolve_adapter_paths,
    scan_modules,
)
from .naming import layer_index, layer_key, module_type, resolve_rank_alpha
from .spectrum import singular_values
from .suggest import allocate, per_module_suggestion, round_up_rank

__all__ = ["AuditResult", "LoadedAdapter", "audit_adapter", "iter_factor_batches", "open_adapter"]

# Upper bound on the float64 working set of one batch (A and B stacks together). Keeps
# peak memory flat however large the adapter is.
BATCH_BYTES = 32 * 1024 * 1024

ProgressFn = Callable[[int, int], None]


@dataclass
class LoadedAdapter:
    """An opened adapter: config, weights reader and the paired modules (with r, α, s)."""

    config: AdapterConfig
    config_path: Path
    weights_path: Path
    source: SafetensorsFile | TorchBinFile
    modules: list[LoraModule]
    skipped: list[str]
    issues: list[dict[str, Any]]
    module_r: dict[str, int] = field(default_factory=dict)
    module_alpha: dict[str, float] = field(default_factory=dict)
    module_scale: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        self.source.close()


def open_adapter(peft_dir: str | os.PathLike[str] | None = None, *,
                 adapter_config: str | os.PathLike[str] | None = None,
                 weights: str | os.PathLike[str] | None = None) -> LoadedAdapter:
    """Resolve files, parse the config, pair factors and assign each module its r, α, scale."""
    cfg_path, w_path = resolve_adapter_paths(peft_dir, adapter_config, weights)
    cfg = load_adapter_config(cfg_path)
    src = open_weights(w_path)
    try:
        scan = scan_modules(src)
    except BaseException:
        src.close()
        raise
    issues = list(scan.problems)
    ad = LoadedAdapter(config=cfg, config_path=cfg_path, weights_path=w_path, source=src, modules=scan.modules,
                       skipped=scan.skipped, issues=issues)
    mismatched = []
    for mod in scan.modules:
        base_name = mod.name.split("[")[0]
        r_cfg, alpha = resolve_rank_alpha(base_name, cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern)
        if r_cfg != mod.r:
            mismatched.append((mod.name, r_cfg, mod.r))
            # The tensors are the truth for the spectrum; PEFT computes the scale from the
            # config, so keep the config's r there.
        denom = math.sqrt(r_cfg) if cfg.use_rslora else float(r_cfg)
        ad.module_r[mod.name] = mod.r
        ad.module_alpha[mod.name] = alpha
        ad.module_scale[mod.name] = alpha / denom if denom > 0 else 0.0
    if mismatched:
        ex = ", ".join(f"{n} (config r={c}, tensors r={t})" for n, c, t in mismatched[:3])
        issues.append({"code": "RANK_MISMATCH", "severity": "warning", "count": len(mismatched),
                       "message": f"{len(mismatched)} module(s) have a tensor rank that differs from the config: {ex}"})
    if cfg.use_dora or any(m.magnitude_key for m in scan.modules):
        issues.append({"code": "DORA_ADAPTER", "severity": "info",
                       "message": "DoRA adapter: the audit measures the low-rank direction update B·A only; "
                                  "the learned magnitude vector is not included"})
    if scan.skipped:
        ex = ", ".join(scan.skipped[:3]) + (" …" if len(scan.skipped) > 3 else "")
        issues.append({"code": "NON_LORA_TENSORS", "severity": "info", "count": len(scan.skipped),
                       "message": f"{len(scan.skipped)} non-LoRA tensor(s) not audited (heads, modules_to_save): {ex}"})
    return ad


def iter_factor_batches(ad: LoadedAdapter, modules: list[LoraModule] | None = None,
                        batch_bytes: int = BATCH_BYTES, prefetch: bool = True,
                        ) -> Iterator[tuple[list[LoraModule], np.ndarray, np.ndarray]]:
    """Yield ``(modules, A, B)`` float64 stacks of equal-shaped modules: A (n, r, in),
    B (n, out, r). Tensors are read one at a time; a batch never exceeds ``batch_bytes``.

    With ``prefetch`` a background thread reads and decodes the next batch while the
    caller computes on this one (numpy and the file reads release the GIL). Stacks come
    from a small ring of reused buffers: a yielded batch is valid until the next one is
    requested; copy what you keep.
    """
    mods_all = modules if modules is not None else ad.modules
    if not prefetch:
        yield from _read_batches(ad, mods_all, batch_bytes, ring=1)
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in _read_batches(ad, mods_all, batch_bytes, ring=3):
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer thread
            q.put(exc)

    t = threading.Thread(target=produce, name="gradience-audit-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


def _read_batches(ad: LoadedAdapter, modules: list[LoraModule], batch_bytes: int, ring: int,
                  ) -> Iterator[tuple[list[LoraModule], np.ndarray, np.ndarray]]:
    groups: dict[tuple[int, int, int], list[LoraModule]] = defaultdict(list)
    for m in modules:
        groups[(m.r, m.in_features, m.out_features)].append(m)
    src = ad.source
    for (r, n_in, n_out), mods in groups.items():
        per = 8 * r * (n_in + n_out)
        step = max(1, min(len(mods), batch_bytes // max(per, 1)))
        n_chunks = -(-len(mods) // step)
        # Buffers are reused across chunks (a ring of `ring`, so a prefetching reader never
        # overwrites the batch being computed on): fresh 32 MB arrays per chunk would cost
        # more in page faults than the arithmetic does.
        bufs = [(np.empty((step, r, n_in)), np.empty((step, n_out, r))) for _ in range(min(ring, n_chunks))]
        for c, i in enumerate(range(0, len(mods), step)):
            chunk = mods[i: i + step]
            a_buf, b_buf = bufs[c % len(bufs)]
            a, b = a_buf[: len(chunk)], b_buf[: len(chunk)]
            for j, m in enumerate(chunk):
                src.read_into(m.a_key, a[j])
                src.read_into(m.b_key, b[j])
            yield chunk, a, b


@dataclass
class AuditResult:
    """The audit of one adapter.

    ``summary``: SPEC §3 summary keys (also what ``--append`` logs as ``lora_audit``).
    ``layers``: one dict per audited module. ``per_layer``: the per-module rank suggestion
    (PEFT-ready). ``allocation``: the budgeted allocation, when one was asked for.
    """

    summary: dict[str, Any]
    layers: list[dict[str, Any]]
    per_layer: dict[str, Any]
    adapter: dict[str, Any]
    allocation: dict[str, Any] | None = None
    skipped_tensors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """Exactly the object ``gradience audit --json [--layers]`` prints."""
        out: dict[str, Any] = dict(self.summary)
        out["adapter"] = dict(self.adapter)
        out["per_layer_suggestion"] = self.per_layer
        out["skipped_tensors"] = list(self.skipped_tensors)
        if self.allocation is not None:
            out["allocation"] = self.allocation
        if layers:
            out["layers"] = [dict(r) for r in self.layers]
        return out

    def top_wasteful(self, n: int = 10) -> list[dict[str, Any]]:
        """Modules with the most parameters left unused: params · (1 − utilization)."""
        rows = [r for r in self.layers if r.get("stable_rank") is not None]
        rows.sort(key=lambda r: -(r["params"] * (1.0 - r["utilization"])))
        return rows[:n]


def audit_adapter(
    peft_dir: str | os.PathLike[str] | None = None,
    *,
    adapter_config: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    top_singular_values: int = 0,
    base_model: str | os.PathLike[str] | None = None,
    base_norms_cache: str | os.PathLike[str] | None = None,
    udr: bool = True,
    budget_params: int | None = None,
    energy: float | None = None,
    progress: ProgressFn | None = None,
) -> AuditResult:
    """Audit a LoRA adapter (a PEFT directory, or explicit config + weights files).

    Args:
        top_singular_values: keep the top K σ of B·A (unscaled, descending) per module.
        base_model: a local directory or hub id (from the local cache) for UDR/SDI. When
            ``None`` and ``udr`` is true, the config's ``base_model_name_or_path`` is used
            if it resolves locally; otherwise UDR is skipped and the reason recorded.
        base_norms_cache: directory caching base-weight norms (σ₁, Frobenius) across runs.
        budget_params / energy: also compute a budgeted per-module rank allocation.
        progress: called as ``progress(done_modules, total_modules)``.
    Raises:
        GradienceError subclasses for unreadable or non-LoRA inputs (never an empty audit).
    """
    if budget_params is not None and energy is not None:
        raise UsageError("give either a parameter budget or an energy target, not both")
    if energy is not None and not (0.0 < energy <= 1.0):
        raise UsageError(f"energy target must be in (0, 1], got {energy}")
    if budget_params is not None and budget_params <= 0:
        raise UsageError(f"parameter budget must be positive, got {budget_params}")
    if top_singular_values < 0:
        raise UsageError("top_singular_values must be >= 0")
    t0 = time.perf_counter()
    ad = open_adapter(peft_dir, adapter_config=adapter_config, weights=weights)
    try:
        return _audit_open(ad, top_singular_values, base_model, base_norms_cache, udr, budget_params, energy,
                           progress, t0)
    finally:
        ad.close()


def _audit_open(ad: LoadedAdapter, top_k: int, base_model: Any, cache: Any, udr: bool,
                budget_params: int | None, energy: float | None, progress: ProgressFn | None,
                t0: float) -> AuditResult:
    cfg = ad.config
    issues = list(ad.issues)
    sigmas: dict[str, np.ndarray] = {}
    nonfinite: list[str] = []
    done = 0
    for chunk, a, b in iter_factor_batches(ad):
        s = singular_values(a, b)
        for m, sig in zip(chunk, s, strict=True):
            if not np.all(np.isfinite(sig)):
                nonfinite.append(m.name)
            else:
                sigmas[m.name] = sig
        done += len(chunk)
        if progress is not None:
            progress(done, len(ad.modules))
    t_spec = time.perf_counter()

    rows: list[dict[str, Any]] = []
    for m in ad.modules:
        scale = ad.module_scale[m.name]
        row: dict[str, Any] = {
            "name": m.name,
            "module_type": module_type(m.name),
            "layer": layer_index(m.name),
            "layer_key": layer_key(m.name),
            "kind": m.kind,
            "r": m.r,
            "alpha": ad.module_alpha[m.name],
            "scale": scale,
            "shape": [m.out_features, m.in_features],
            "in_features": m.in_features,
            "out_features": m.out_features,
            "params": m.params,
            "dtype": ad.source.dtype(m.a_key),
        }
        if m.name in sigmas:
            row.update(M.module_metrics(sigmas[m.name], m.r, scale, top_k))
            row["suggested_r"] = round_up_rank(max(row["energy_rank_90"], 1), m.r)
        else:
            row["error"] = "non-finite values in lora_A/lora_B"
        rows.append(row)
    if nonfinite:
        issues.append({"code": "NONFINITE_WEIGHTS", "severity": "error", "count": len(nonfinite),
                       "message": f"{len(nonfinite)} module(s) contain NaN/Inf and were not measured: "
                                  + ", ".join(nonfinite[:3])})
    good = [r for r in rows if "stable_rank" in r]
    zero = [r["name"] for r in good if r["frob_sq"] == 0.0]
    if zero:
        issues.append({"code": "ZERO_UPDATE", "severity": "warning", "count": len(zero),
                       "message": f"{len(zero)} module(s) have an exactly zero update B·A (untrained? B is still "
                                  f"its zero initialisation): " + ", ".join(zero[:3])})
    measured = [r for r in good if r["frob_sq"] > 0.0]

    summary: dict[str, Any] = M.summarize_modules(measured)
    summary["n_layers"] = len(good)
    summary["total_lora_params"] = int(sum(r["params"] for r in rows))
    summary["n_modules_measured"] = len(measured)
    rs = [r["r"] for r in rows]
    summary["r"] = max(set(rs), key=rs.count)
    summary["lora_alpha"] = cfg.lora_alpha
    summary["use_rslora"] = cfg.use_rslora
    summary["use_dora"] = cfg.use_dora
    r_max = max(rs)
    summary["suggested_r_global_median"] = round_up_rank(summary["energy_rank_90_p50"], r_max)
    summary["suggested_r_global_90"] = round_up_rank(summary["energy_rank_90_p90"], r_max)
    for key in ("suggested_r_global_median", "suggested_r_global_90"):
        k = summary[key]
        summary[key.replace("suggested_r", "suggested_params")] = (
            int(sum(min(k, r["r"]) * (r["in_features"] + r["out_features"]) for r in rows)) if k else None)
    summary["energy_rank_95_p50"] = M.percentile([r["energy_rank_95"] for r in measured], 50)
    summary["energy_rank_99_p50"] = M.percentile([r["energy_rank_99"] for r in measured], 50)
    summary["by_type"] = _by_type(measured, rows)
    comp = M.composition(measured)
    summary.update({k: v for k, v in comp.items() if k != "energy_by_layer"})
    summary["energy_by_layer"] = comp["energy_by_layer"]

    per_layer = per_module_suggestion(measured, cfg.use_rslora) if measured else {}
    if per_layer:
        summary["suggested_r_per_layer_default"] = per_layer["r"]
        summary["per_layer_params_after"] = per_layer["params_after"]
        summary["per_layer_params_saved_fraction"] = per_layer["params_saved_fraction"]
    allocation = None
    if (budget_params is not None or energy is not None) and measured:
        try:
            allocation = allocate(measured, [sigmas[r["name"]] for r in measured], cfg.use_rslora,
                                  budget_params=budget_params, energy=energy)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # UDR / SDI against the base weights.
    from .udr import attach_udr

    udr_info = attach_udr(rows, ad, base_model=base_model, cache_dir=cache, enabled=udr)
    summary.update(udr_info.pop("summary"))
    issues.extend(udr_info.pop("issues"))

    summary["issues"] = issues
    t_end = time.perf_counter()
    adapter = {
        "config_path": str(ad.config_path),
        "weights_path": str(ad.weights_path),
        "weights_bytes": ad.weights_path.stat().st_size,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "peft_type": cfg.peft_type,
        "target_modules": cfg.target_modules,
        "rank_pattern": cfg.rank_pattern,
        "alpha_pattern": cfg.alpha_pattern,
        "dtype": sorted({r["dtype"] for r in rows}),
    }
    return AuditResult(
        summary=summary, layers=rows, per_layer=per_layer, adapter=adapter, allocation=allocation,
        skipped_tensors=ad.skipped,
        timings={"spectrum_s": t_spec - t0, "total_s": t_end - t0},
    )


def _by_type(measured: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total_e = sum(r["delta_fro_norm"] ** 2 for r in measured)
    for t in ("attn", "mlp", "other"):
        sub = [r for r in measured if r["module_type"] == t]
        allr = [r for r in rows if r["module_type"] == t]
        if not allr:
            continue
        k90 = [r["energy_rank_90"] for r in sub]
        p50 = M.percentile(k90, 50)
        out[t] = {
            "n": len(allr),
            "params": int(sum(r["params"] for r in allr)),
            "stable_rank_mean": float(np.mean([r["stable_rank"] for r in sub])) if sub else None,
            "utilization_mean": float(np.mean([r["utilization"] for r in sub])) if sub else None,
            "effective_rank_mean": float(np.mean([r["effective_rank"] for r in sub])) if sub else None,
            "energy_rank_90_p50": p50,
            "energy_rank_90_p90": M.percentile(k90, 90),
            "suggested_r_median": round_up_rank(p50, max(r["r"] for r in allr)) if p50 is not None else None,
            "energy_share": (sum(r["delta_fro_norm"] ** 2 for r in sub) / total_e) if total_e > 0 else None,
            "delta_sigma_max_mean": float(np.mean([r["delta_sigma_max"] for r in sub])) if sub else None,
        }
    return out
