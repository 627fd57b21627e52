"""`audit_adapter`: stream an adapter's factors, compute exact spectra, summarise."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import AdapterFormatError, UsageError
from ..telemetry.sections import AuditSummary
from . import metrics as M
from .adapter_config import AdapterConfig, load_adapter_config, resolve_adapter_paths
from .formats import detect_format
from .naming import layer_index, layer_key, module_type, resolve_rank_alpha
from .rows import AuditLayer
from .spectrum import _blas_controller, singular_values_from_grams, streamed_gram
from .suggest import allocate, per_module_suggestion, round_up_rank
from .weights import LoraModule, SafetensorsFile, TorchBinFile, open_weights, scan_modules

__all__ = ["AuditLayer", "AuditResult", "AuditSummary", "LoadedAdapter", "audit_adapter", "iter_spectra", "map_factor_batches", "open_adapter"]

# Upper bound on the float64 working set of one batch (A and B stacks together). Keeps
# peak memory flat however large the adapter is.
BATCH_BYTES = 32 * 1024 * 1024

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")


@dataclass
class LoadedAdapter:
    """An opened adapter: config, weights reader and the paired modules (with r, α, s).

    ``format`` is ``peft``, ``kohya`` or ``diffusers`` (:mod:`.formats`); single-file formats
    carry their own r and α, so ``config_path`` is ``None`` and ``config`` is synthesised
    (the most common r and α). ``metadata`` is the safetensors ``__metadata__``.
    """

    config: AdapterConfig
    config_path: Path | None
    weights_path: Path
    source: Any  # SafetensorsFile | TorchBinFile, or an ExpertView over one (fused MoE experts)
    modules: list[LoraModule]
    skipped: list[str]
    issues: list[dict[str, Any]]
    module_r: dict[str, int] = field(default_factory=dict)
    module_alpha: dict[str, float] = field(default_factory=dict)
    module_scale: dict[str, float] = field(default_factory=dict)
    format: str = "peft"
    metadata: dict[str, str] = field(default_factory=dict)
    rslora_modules: set[str] = field(default_factory=set)
    adapter_name: str | None = None
    adapter_names: list[str] = field(default_factory=list)  # names in the keys of a raw state dict
    fused: list[Any] = field(default_factory=list)  # FusedParam per fused MoE expert parameter (.experts)
    initial_path: Path | None = None  # the initial adapter: modules measure s·(B·A − B₀·A₀) (.initial)

    def close(self) -> None:
        self.source.close()

    def rslora(self, name: str) -> bool:
        """Whether module ``name``'s scale is α/√r."""
        return self.config.use_rslora if self.format == "peft" else name in self.rslora_modules


def open_adapter(peft_dir: str | os.PathLike[str] | None = None, *,
                 adapter_config: str | os.PathLike[str] | None = None,
                 weights: str | os.PathLike[str] | None = None,
                 adapter_name: str | None = None,
                 initial_adapter: str | os.PathLike[str] | None = None) -> LoadedAdapter:
    """Resolve files, detect the format, pair factors and assign each module its r, α, scale.

    ``peft_dir`` may also be a weights file; a file in a format that carries its own ranks and
    alphas (kohya, diffusers) needs no config. ``adapter_name`` picks a named adapter: the
    subfolder ``save_pretrained`` wrote it to, or its keys in a file holding several adapters.
    """
    if peft_dir is not None and weights is None and Path(peft_dir).is_file():
        peft_dir, weights = None, peft_dir
    if weights is not None and peft_dir is None and adapter_config is None:
        w = Path(weights)
        if not w.exists():
            raise AdapterFormatError("adapter weights not found", path=w)
        src = open_weights(w)
        try:
            fmt = detect_format(src.names(), _metadata(src), w)
        except BaseException:
            src.close()
            raise
        if not fmt.needs_config:
            return _open_single_file(src, fmt.name, adapter_name)
        src.close()
    cfg_path, w_path = resolve_adapter_paths(peft_dir, adapter_config, weights, adapter_name)
    cfg = load_adapter_config(cfg_path)
    src = open_weights(w_path)
    try:
        fmt = detect_format(src.names(), _metadata(src), w_path)
        if fmt.name == "kohya":  # its alphas are in the file; a config beside it has nothing to add
            return _open_single_file(src, fmt.name, adapter_name)
        scan = scan_modules(src, adapter_name)
    except BaseException:
        src.close()
        raise
    issues = list(scan.problems)
    fused: list[Any] = []
    from .experts import ExpertView, split_experts

    if cfg.target_parameters:
        scan.modules, fused = split_experts(scan.modules, cfg.target_parameters, cfg.r, cfg.rank_pattern)
    source: Any = ExpertView(src, {f.a_key: (f.n_experts, f.r) for f in fused}) if fused else src
    ad = LoadedAdapter(config=cfg, config_path=cfg_path, weights_path=w_path, source=source, modules=scan.modules,
                       skipped=scan.skipped, issues=issues, metadata=_metadata(src),
                       adapter_name=adapter_name or _subfolder_name(peft_dir, cfg_path),
                       adapter_names=scan.adapters, fused=fused)
    mismatched = []
    param_of = {f.name: f.parameter for f in fused}
    for mod in scan.modules:
        base_name = mod.name.split("[")[0]
        if mod.fused is not None and param_of.get(mod.fused):
            base_name = f"{base_name}.{param_of[mod.fused]}"  # PEFT keys a parameter's patterns so
        r_cfg, alpha = resolve_rank_alpha(base_name, cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern)
        if mod.fused is not None:
            r_cfg = mod.r
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
    _common_issues(ad, cfg.use_dora)
    init = cfg.base_rewriting_init
    if initial_adapter is not None:
        _use_initial(ad, initial_adapter)
    elif init is not None:
        from .adapter_config import CONVERSION_HINT

        issues.append({"code": "BASE_REWRITING_INIT", "severity": "error",
                       "message": f"init_lora_weights={init!r} rewrote the base weights at initialisation, so B·A is "
                                  "not the learned update: the spectra below describe the factors, not what "
                                  f"training changed; UDR is not reported and compress refuses; {CONVERSION_HINT}"})
    return ad


def _use_initial(ad: LoadedAdapter, initial_adapter: str | os.PathLike[str]) -> None:
    """Measure s·(B·A − B₀·A₀) against the initial adapter's factors (:mod:`.initial`)."""
    from .initial import DifferenceView, difference_modules

    init = ad.config.base_rewriting_init
    if init is None:
        ad.close()
        raise UsageError("--initial-adapter is for adapters whose init rewrote the base (init_lora_weights "
                         "pissa/olora/corda/loftq); this adapter's B·A already is its update", path=ad.config_path)
    if ad.fused:
        ad.close()
        raise UsageError("--initial-adapter with fused MoE experts is not supported", path=ad.config_path)
    _, w0 = resolve_adapter_paths(initial_adapter)
    src0 = open_weights(w0)
    try:
        ad.modules = difference_modules(ad.modules, src0)
    except BaseException:
        src0.close()
        ad.close()
        raise
    ad.source = DifferenceView(ad.source, src0)
    for m in ad.modules:
        ad.module_r[m.name] = m.r
    ad.initial_path = w0
    ad.issues.append({"code": "TRUE_UPDATE_FROM_INITIAL", "severity": "info",
                      "message": f"init_lora_weights={init!r} rewrote the base; each module is measured as "
                                 f"s·(B·A − B₀·A₀) with the initial factors from {w0} (rank 2r), the update the "
                                 "fine-tune made to the original base"})


def _subfolder_name(peft_dir: str | os.PathLike[str] | None, cfg_path: Path) -> str | None:
    """The adapter's name when it was found in a named subfolder of ``peft_dir``."""
    if peft_dir is None or Path(peft_dir).is_file():
        return None
    return cfg_path.parent.name if cfg_path.parent.parent == Path(peft_dir) else None


def _metadata(src: SafetensorsFile | TorchBinFile) -> dict[str, str]:
    meta = getattr(src, "metadata", None) or {}
    return {str(k): str(v) for k, v in meta.items()}


def _common_issues(ad: LoadedAdapter, use_dora: bool) -> None:
    if use_dora or any(m.magnitude_key for m in ad.modules):
        ad.issues.append({"code": "DORA_ADAPTER", "severity": "info",
                          "message": "DoRA adapter: the audit measures the low-rank direction update B·A only; "
                                     "the learned magnitude vector is not included"})
    if ad.skipped:
        ex = ", ".join(ad.skipped[:3]) + (" …" if len(ad.skipped) > 3 else "")
        ad.issues.append({"code": "NON_LORA_TENSORS", "severity": "info", "count": len(ad.skipped),
                          "message": f"{len(ad.skipped)} non-LoRA tensor(s) not audited (heads, modules_to_save): {ex}"})


def _open_single_file(src: SafetensorsFile | TorchBinFile, fmt: str, adapter_name: str | None = None) -> LoadedAdapter:
    """A kohya or diffusers file: modules, and r/α/s as that format's loader assigns them."""
    from collections import Counter

    from .formats import diffusers_scales, kohya_scales, scan_kohya

    meta = _metadata(src)
    try:
        if fmt == "kohya":
            scan = scan_kohya(src)
            scales = kohya_scales(src, scan.modules)
        else:
            scan = scan_modules(src, adapter_name)
            scales = diffusers_scales(scan.modules, meta, src.path)
    except BaseException:
        src.close()
        raise
    rs = Counter(scales.r.values())
    alphas = Counter(scales.alpha.values())
    cfg = AdapterConfig(r=max(rs, key=lambda k: (rs[k], -k)), lora_alpha=max(alphas, key=lambda a: (alphas[a], -a)),
                        use_rslora=bool(scales.rslora) and len(scales.rslora) == len(scan.modules),
                        peft_type="LORA")
    ad = LoadedAdapter(config=cfg, config_path=None, weights_path=src.path, source=src, modules=scan.modules,
                       skipped=scan.skipped, issues=list(scan.problems), format=fmt, metadata=meta,
                       rslora_modules=set(scales.rslora), adapter_name=adapter_name, adapter_names=scan.adapters)
    for m in scan.modules:
        ad.module_r[m.name] = m.r
        ad.module_alpha[m.name] = scales.alpha[m.name]
        ad.module_scale[m.name] = scales.scale[m.name]
    _common_issues(ad, False)
    return ad


def audit_workers() -> int:
    """Threads for the spectrum pass: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _plan_batches(modules: list[LoraModule], batch_bytes: int, max_modules: int | None = None,
                  ) -> list[list[LoraModule]]:
    """Split modules into runs of equal shape whose float64 A and B stacks fit ``batch_bytes``
    (and hold at most ``max_modules``)."""
    groups: dict[tuple[int, int, int], list[LoraModule]] = defaultdict(list)
    for m in modules:
        groups[(m.r, m.in_features, m.out_features)].append(m)
    plan: list[list[LoraModule]] = []
    for (r, n_in, n_out), mods in groups.items():
        step = max(1, min(len(mods), batch_bytes // max(8 * r * (n_in + n_out), 1), max_modules or len(mods)))
        plan.extend(mods[i: i + step] for i in range(0, len(mods), step))
    return plan


def map_batches(plan: list[list[LoraModule]], fn: Callable[[list[LoraModule]], T],
                workers: int | None = None) -> Iterator[tuple[list[LoraModule], T]]:
    """Apply ``fn`` to every batch of ``plan`` on ``workers`` threads (default: one per
    usable CPU) with single-threaded BLAS; yield ``(batch, result)`` in plan order.

    The spectrum work is GEMMs with r × r outputs and long reductions, where OpenBLAS gains
    nothing from a second thread on one call, while two calls on two threads run about
    1.9× faster (measured on a 2-core machine: 22 → 42 GMAC/s); reading and decoding
    overlap the arithmetic the same way. A worker runs at most two batches per worker
    ahead of the consumer, so finished results never pile up.
    """
    n_workers = max(1, min(workers if workers is not None else audit_workers(), max(len(plan), 1)))
    lock = threading.Condition()
    results: dict[int, tuple[bool, Any]] = {}
    next_job = 0
    stop = False
    window = threading.Semaphore(2 * n_workers)

    def work() -> None:
        nonlocal next_job
        while True:
            while not window.acquire(timeout=0.1):
                if stop:
                    return
            with lock:
                if stop or next_job >= len(plan):
                    window.release()
                    return
                i = next_job
                next_job += 1
            try:
                out: tuple[bool, Any] = (True, fn(plan[i]))
            except BaseException as exc:  # handed to the consumer, re-raised there
                out = (False, exc)
            with lock:
                results[i] = out
                lock.notify_all()

    threads = [threading.Thread(target=work, name=f"gradience-audit-{k}", daemon=True) for k in range(n_workers)]
    with _blas_controller().limit(limits=1, user_api="blas"):
        for t in threads:
            t.start()
        try:
            for i, chunk in enumerate(plan):
                with lock:
                    while i not in results:
                        lock.wait()
                    ok, value = results.pop(i)
                window.release()
                if not ok:
                    raise value
                yield chunk, value
        finally:
            with lock:
                stop = True
                lock.notify_all()
            for t in threads:
                t.join()


def _factor_stack(ad: LoadedAdapter, mods: list[LoraModule], which: str) -> np.ndarray:
    """Freshly read float64 stack of the A (n, r, in) or B (n, out, r) factors of ``mods``."""
    m0 = mods[0]
    shape = (m0.r, m0.in_features) if which == "a" else (m0.out_features, m0.r)
    x = np.empty((len(mods), *shape))
    for j, m in enumerate(mods):
        ad.source.read_into(m.a_key if which == "a" else m.b_key, x[j])
    return x


def map_factor_batches(ad: LoadedAdapter, fn: Callable[[list[LoraModule], np.ndarray, np.ndarray], T],
                       modules: list[LoraModule] | None = None, batch_bytes: int = BATCH_BYTES,
                       workers: int | None = None) -> Iterator[tuple[list[LoraModule], T]]:
    """Apply ``fn(modules, A, B)`` to float64 stacks of equal-shaped modules (A (n, r, in),
    B (n, out, r)) and yield ``(modules, fn's result)`` in module order, on
    :func:`map_batches` threads. Each thread reads its batches one tensor at a time into
    buffers it reuses; the stacks of all threads together stay within ``batch_bytes``.
    ``fn`` must not keep references to A or B (the next batch overwrites them).
    """
    n_workers = max(1, workers if workers is not None else audit_workers())
    plan = _plan_batches(modules if modules is not None else ad.modules, max(1, batch_bytes // n_workers))
    local = threading.local()

    def read_then(chunk: list[LoraModule]) -> T:
        m0 = chunk[0]
        key = (len(chunk), m0.r, m0.in_features, m0.out_features)
        if getattr(local, "key", None) != key:
            local.key = key
            local.bufs = (np.empty((len(chunk), m0.r, m0.in_features)), np.empty((len(chunk), m0.out_features, m0.r)))
        a, b = local.bufs
        for j, m in enumerate(chunk):
            ad.source.read_into(m.a_key, a[j])
            ad.source.read_into(m.b_key, b[j])
        return fn(chunk, a, b)

    return map_batches(plan, read_then, n_workers)


def batch_spectra(ad: LoadedAdapter, chunk: list[LoraModule]) -> np.ndarray:
    """σ of B·A (n, r) for a batch of equal-shaped modules, streaming each factor through
    cache-sized blocks into its Gram matrix (no float64 copy of any factor is kept)."""
    src = ad.source
    ga = np.stack([streamed_gram(src.iter_blocks(m.a_key, (m.r, m.in_features), along_rows=False), m.r, tall=False)
                   for m in chunk])
    gb = np.stack([streamed_gram(src.iter_blocks(m.b_key, (m.out_features, m.r), along_rows=True), m.r, tall=True)
                   for m in chunk])
    return singular_values_from_grams(ga, gb, lambda idx: _factor_stack(ad, [chunk[i] for i in idx], "a"),
                                      lambda idx: _factor_stack(ad, [chunk[i] for i in idx], "b"))


def iter_spectra(ad: LoadedAdapter, modules: list[LoraModule] | None = None,
                 workers: int | None = None) -> Iterator[tuple[list[LoraModule], np.ndarray]]:
    """``(modules, σ (n, r))`` for every batch of equal-shaped modules, in module order.
    Batches of up to 16 modules keep the r × r LAPACK calls batched and both threads busy."""
    plan = _plan_batches(modules if modules is not None else ad.modules, BATCH_BYTES, max_modules=16)
    return map_batches(plan, lambda chunk: batch_spectra(ad, chunk), workers)


@dataclass
class AuditResult:
    """The audit of one adapter.

    ``summary``: the keys of docs/audit.md#summary-keys (also what ``--append`` logs as ``lora_audit``).
    ``layers``: one :class:`AuditLayer` per audited module. ``per_layer``: the per-module rank
    suggestion (PEFT-ready). ``allocation``: the budgeted allocation, when one was asked for.
    """

    summary: AuditSummary
    layers: list[AuditLayer]
    per_layer: dict[str, Any]
    adapter: dict[str, Any]
    allocation: dict[str, Any] | None = None
    skipped_tensors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """Exactly the object ``gradience audit --json [--layers]`` prints."""
        out: dict[str, Any] = self.summary.to_dict()
        out["adapter"] = dict(self.adapter)
        out["per_layer_suggestion"] = self.per_layer
        out["skipped_tensors"] = list(self.skipped_tensors)
        if self.allocation is not None:
            out["allocation"] = self.allocation
        if layers:
            out["layers"] = [r.to_dict() for r in self.layers]
        return out

    def top_wasteful(self, n: int = 10) -> list[AuditLayer]:
        """Modules with the most parameters left unused: params · (1 − utilization)."""
        rows = [r for r in self.layers if r.stable_rank is not None]
        rows.sort(key=lambda r: -((r.params or 0) * (1.0 - (r.utilization or 0.0))))
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
    adapter_name: str | None = None,
    initial_adapter: str | os.PathLike[str] | None = None,
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
        initial_adapter: for an init that rewrote the base (PiSSA, OLoRA, …), the adapter saved right
            after ``get_peft_model``: the audit then measures the learned update s·(B·A − B₀·A₀).
        adapter_name: the adapter to audit when a directory holds several in named subfolders, or
            a weights file holds several (``lora_A.<name>``); they are never merged.
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
    ad = open_adapter(peft_dir, adapter_config=adapter_config, weights=weights, adapter_name=adapter_name,
                      initial_adapter=initial_adapter)
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
    for chunk, s in iter_spectra(ad):
        for m, sig in zip(chunk, s, strict=True):
            if not np.all(np.isfinite(sig)):
                nonfinite.append(m.name)
            else:
                sigmas[m.name] = sig
        done += len(chunk)
        if progress is not None:
            progress(done, len(ad.modules))
    t_spec = time.perf_counter()
    if ad.modules and len(nonfinite) == len(ad.modules):
        # Never an empty audit: nothing could be measured, so there is nothing to report.
        raise AdapterFormatError(
            f"every LoRA module ({len(nonfinite)}) holds NaN/Inf values in lora_A/lora_B; nothing can be audited",
            path=ad.weights_path, hint="the adapter was saved from a diverged run; re-save it from a healthy checkpoint")

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
    shares = M.energy_shares(good)
    for i, r in enumerate(good):
        r["energy_share"] = float(shares[i]) if shares is not None else None
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

    rewritten = cfg.base_rewriting_init if ad.initial_path is None else None
    udr_info = attach_udr(rows, ad, base_model=base_model, cache_dir=cache, enabled=udr and rewritten is None)
    if rewritten is not None:
        udr_info["summary"]["udr_skipped_reason"] = (
            f"init_lora_weights={rewritten!r} rewrote the base: B·A is not the update, so no UDR "
            "(convert the adapter with path_initial_model_for_weight_conversion)")
    summary.update(udr_info.pop("summary"))
    issues.extend(udr_info.pop("issues"))

    summary["issues"] = issues
    t_end = time.perf_counter()
    adapter = {
        "format": ad.format,
        "adapter_name": ad.adapter_name,
        "config_path": str(ad.config_path) if ad.config_path is not None else None,
        "weights_path": str(ad.weights_path),
        "weights_bytes": ad.weights_path.stat().st_size,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "peft_type": cfg.peft_type,
        "target_modules": cfg.target_modules,
        "rank_pattern": cfg.rank_pattern,
        "alpha_pattern": cfg.alpha_pattern,
        "dtype": sorted({r["dtype"] for r in rows}),
        "fused_experts": _fused_summary(ad, rows),
        "initial_adapter": str(ad.initial_path) if ad.initial_path is not None else None,
    }
    # The pipeline above assembles plain dicts (metrics, composition, UDR each add their keys);
    # the result carries them as the typed contract, with the same keys in the same order.
    return AuditResult(
        summary=AuditSummary.from_dict(summary), layers=[AuditLayer.from_dict(r) for r in rows],
        per_layer=per_layer, adapter=adapter, allocation=allocation,
        skipped_tensors=ad.skipped,
        timings={"spectrum_s": t_spec - t0, "total_s": t_end - t0},
    )


def _fused_summary(ad: LoadedAdapter, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fused MoE expert parameter: E, r, and its experts' spread (each expert is its own row)."""
    out = []
    for f in ad.fused:
        sub = [r for r in rows if r["name"].startswith(f.name + "[expert ") and "stable_rank" in r]
        norms = [r["delta_sigma_max"] for r in sub]
        out.append({
            "name": f.name, "parameter": f.parameter, "candidates": f.candidates, "n_experts": f.n_experts,
            "r": f.r, "stable_rank_mean": float(np.mean([r["stable_rank"] for r in sub])) if sub else None,
            "delta_sigma_max_max": max(norms) if norms else None,
            "delta_sigma_max_min": min(norms) if norms else None,
            "most_changed_expert": int(np.argmax(norms)) if norms else None,
            "energy_share": float(sum(r.get("energy_share") or 0.0 for r in sub)) if sub else None,
        })
    return out


def _by_type(measured: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total_e = sum(r["delta_fro_norm"] * r["delta_fro_norm"] for r in measured)
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
            "energy_share": (sum(r["delta_fro_norm"] * r["delta_fro_norm"] for r in sub) / total_e) if total_e > 0 else None,
            "delta_sigma_max_mean": float(np.mean([r["delta_sigma_max"] for r in sub])) if sub else None,
        }
    return out
