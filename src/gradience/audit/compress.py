"""Shrink a LoRA adapter exactly: per module the best rank-k approximation of ΔW (Eckart–Young),
computed from the factored SVD (ΔW is never formed), written as an adapter PEFT loads unchanged.

New factors B' = Q_B U_k Σ_k^½ and A' = Σ_k^½ V_kᵀ Q_Aᵀ satisfy B'·A' = (B·A)_k, and each module
keeps its scale s (α' = s·k, or s·√k with rsLoRA), so s·B'·A' is the truncated s·B·A. Work is
float64; the output keeps the input dtype.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..bounded import loads_json
from ..errors import AdapterFormatError, UsageError
from .core import LoadedAdapter, iter_spectra, map_factor_batches, open_adapter
from .metrics import energy_rank, percentile
from .naming import exact_patterns, resolve_rank_alpha
from .spectrum import truncated_factors
from .suggest import allocate, alpha_for, peft_pattern, per_module_suggestion, round_up_rank
from .weights import LoraModule, SafetensorsFile

__all__ = ["STRATEGIES", "compress_adapter", "exact_patterns"]  # exact_patterns re-exported


STRATEGIES = ("uniform_median", "uniform_p90", "per_layer")
_ST_DTYPE = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_TORCH_ST_DTYPE = {"torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
                   "torch.uint8": "U8", "torch.bool": "BOOL"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _encode(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        # round to nearest even, like torch's bf16 cast
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(x, dtype=_ST_DTYPE[dtype]).tobytes()


def _check_paths(src_dir: Path, out: Path, force: bool, dry_run: bool) -> None:
    src = src_dir.resolve()
    dst = out.resolve()
    if dst == src or src in dst.parents:
        raise UsageError("the output must not be the input adapter directory or inside it", path=out,
                         hint="choose a new directory, e.g. runs/x/peft-r16")
    if dry_run:
        return
    if dst.exists() and not dst.is_dir():
        raise UsageError("output exists and is not a directory", path=out)
    if dst.exists() and any(dst.iterdir()) and not force:
        raise UsageError("output directory exists and is not empty", path=out, hint="pass --force to overwrite")


def _sigmas(ad: LoadedAdapter) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for chunk, s in iter_spectra(ad):
        for m, row in zip(chunk, s, strict=True):
            out[m.name] = row
    return out


def compress_adapter(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    rank: int | None = None,
    energy: float | None = None,
    strategy: str | None = None,
    budget_params: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    adapter_name: str | None = None,
) -> dict[str, Any]:
    """Compress the adapter in directory ``path`` into ``out`` (a new directory).

    Exactly one of: ``rank`` (every module to min(rank, r)), ``energy`` (per module the
    smallest k keeping that fraction of Σσ²), ``strategy`` (``uniform_median``,
    ``uniform_p90`` or ``per_layer`` from the audit's suggestions) or ``budget_params``
    (the audit's budgeted allocation). ``dry_run`` computes the report without writing.

    Returns the report: ``modules`` (per module old/new rank, retained energy, spectral
    error s·σ_{k+1}, Frobenius error) and ``summary`` (parameters and file bytes before/after,
    minimum/mean retained energy).
    """
    given = [x is not None for x in (rank, energy, strategy, budget_params)]
    if sum(given) != 1:
        raise UsageError("give exactly one of --rank, --energy, --strategy, --budget-params")
    if rank is not None and rank < 1:
        raise UsageError(f"rank must be >= 1, got {rank}")
    if energy is not None and not (0.0 < energy <= 1.0):
        raise UsageError(f"energy must be in (0, 1], got {energy}")
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    src_path = Path(path)
    out_path = Path(out)
    if not src_path.exists():
        raise AdapterFormatError("adapter directory or file not found", path=src_path)
    ad = open_adapter(src_path, adapter_name=adapter_name)
    try:
        if len(ad.adapter_names) > 1:
            raise AdapterFormatError(
                f"the weights hold {len(ad.adapter_names)} adapters ({', '.join(ad.adapter_names)}); compress writes "
                "one adapter per output", path=ad.weights_path,
                hint="save each adapter on its own (save_pretrained writes one folder per adapter) and compress that")
        if ad.format == "peft" and ad.config_path is not None:
            # the folder holding the config: a named subfolder, or the folder of a weights file given
            src_path = ad.config_path.parent
        if ad.format == "peft":
            _check_paths(src_path, out_path, force, dry_run)
        else:
            out_path = _file_output(src_path, out_path, force, dry_run)
        init = ad.config.base_rewriting_init
        if init is not None:
            from .adapter_config import CONVERSION_HINT

            raise AdapterFormatError(
                f"init_lora_weights={init!r}: the base weights were rewritten at initialisation, so B·A is not "
                "the learned update and truncating it would change the model by far more than the fine-tune did",
                path=ad.config_path, hint=CONVERSION_HINT)
        if ad.config.use_dora or any(m.magnitude_key for m in ad.modules):
            raise AdapterFormatError(
                "DoRA adapters cannot be compressed by truncating B·A: the learned magnitude is normalised "
                "by the norm of W + s·B·A, which truncation changes", path=src_path,
                hint="compress a plain LoRA adapter, or merge the DoRA adapter into the base model first")
        bad = [p for p in ad.issues if p["code"] == "SHAPE_MISMATCH"]
        if bad:
            raise AdapterFormatError(f"cannot compress an adapter with unusable modules: {bad[0]['message']}",
                                     path=ad.weights_path)
        return _compress(ad, out_path, rank, energy, strategy, budget_params, dry_run)
    finally:
        ad.close()


def _file_output(src: Path, out: Path, force: bool, dry_run: bool) -> Path:
    """The output file of a single-file format: ``out`` itself when it names a ``.safetensors``
    file, else ``out/<input file name>``; never the input."""
    target = out if out.suffix == ".safetensors" else out / src.name
    if target.resolve() == src.resolve():
        raise UsageError("the output must not be the input file", path=out,
                         hint="choose a new file, e.g. my_lora-r8.safetensors")
    if target.suffix != ".safetensors":
        raise UsageError("the output of a single-file LoRA must be a .safetensors file", path=out)
    if not dry_run:
        if target.exists() and not force:
            raise UsageError("output file exists", path=target, hint="pass --force to overwrite")
        if target.parent.exists() and not target.parent.is_dir():
            raise UsageError("output folder is not a directory", path=target.parent)
    return target


def _target_ranks(ad: LoadedAdapter, rank: int | None, energy: float | None, strategy: str | None,
                  budget_params: int | None) -> dict[str, int]:
    if rank is not None:
        return {m.name: min(rank, m.r) for m in ad.modules}
    sig = _sigmas(ad)
    nonfinite = [n for n, s in sig.items() if not np.all(np.isfinite(s))]
    if nonfinite:
        raise AdapterFormatError(f"{len(nonfinite)} module(s) contain NaN/Inf, e.g. {nonfinite[0]}",
                                 path=ad.weights_path, hint="the adapter is corrupt; it cannot be compressed")
    if energy is not None:
        return {m.name: max(1, energy_rank(sig[m.name], energy)) for m in ad.modules}
    rows: list[dict[str, Any]] = [{"name": m.name, "r": m.r, "scale": ad.module_scale[m.name], "in_features": m.in_features,
             "out_features": m.out_features, "params": m.params,
             "energy_rank_90": energy_rank(sig[m.name], 0.90)} for m in ad.modules]
    if budget_params is not None:
        try:
            alloc = allocate(rows, [sig[r["name"]] for r in rows], ad.config.use_rslora, budget_params=budget_params)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return {k: int(v) for k, v in alloc["ranks"].items()}
    if strategy == "per_layer":
        return {k: int(v) for k, v in per_module_suggestion(rows, ad.config.use_rslora)["ranks"].items()}
    measured = [float(r["energy_rank_90"]) for r in rows if np.any(sig[r["name"]] > 0)] or [1.0]
    q = 50 if strategy == "uniform_median" else 90
    k = round_up_rank(percentile(measured, q), max(m.r for m in ad.modules)) or 1
    return {m.name: min(k, m.r) for m in ad.modules}


def _compress(ad: LoadedAdapter, out_path: Path, rank: int | None, energy: float | None, strategy: str | None,
              budget_params: int | None, dry_run: bool) -> dict[str, Any]:
    targets = _target_ranks(ad, rank, energy, strategy, budget_params)
    fused_by_name = {f.name: f for f in ad.fused}
    if ad.fused:
        _uniform_experts(ad, targets)
    pending: dict[str, dict[int, tuple[int, Any]]] = {}
    src = ad.source
    single = ad.format != "peft"
    out_dir = out_path.parent if single else out_path
    reports: dict[str, dict[str, Any]] = {}
    tmp_data = None
    entries: list[tuple[str, str, list[int], int, int]] = []  # name, dtype, shape, start, end
    offset = 0
    created: list[Path] = []  # folders this call makes, removed again (if still empty) when it fails
    finished = False
    if not dry_run:
        p = out_dir
        while not p.exists() and p != p.parent:
            created.append(p)
            p = p.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp_data = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".compress-", suffix=".tmp", delete=False)

    def emit(name: str, dtype: str, shape: list[int], data: bytes) -> None:
        nonlocal offset
        size = int(np.prod(shape)) * _ITEMSIZE.get(dtype, 4) if dry_run else len(data)
        entries.append((name, dtype, shape, offset, offset + size))
        offset += size
        if tmp_data is not None:
            tmp_data.write(data)

    def copy(name: str) -> None:
        """Emit tensor ``name`` with its stored bits and dtype."""
        if isinstance(src, SafetensorsFile) or hasattr(src, "read_raw"):
            if dry_run:
                emit(name, src.dtype(name), list(src.shape(name)), b"")
                return
            raw, dt = src.read_raw(name)
            emit(name, dt, list(raw.shape), raw.tobytes())
            return
        dt = _TORCH_ST_DTYPE.get(src.dtype(name), src.dtype(name))
        if dt not in _ITEMSIZE:
            raise AdapterFormatError(f"tensor {name!r} has dtype {dt}, which cannot be written to safetensors here",
                                     path=ad.weights_path, hint="re-save the adapter with safetensors")
        if dry_run:
            emit(name, dt, list(src.shape(name)), b"")
            return
        # .bin: a float read as float32/float64 holds the stored value exactly, so re-encoding is exact
        x = src.read(name)
        emit(name, dt, list(x.shape), _encode(x, dt) if dt in _ST_DTYPE or dt == "BF16"
             else np.ascontiguousarray(x).tobytes())

    try:
        def factors(chunk: list[LoraModule], a: np.ndarray, b: np.ndarray) -> list[Any]:
            """Per module (k, (A', B', σ) or None, finite): None when k == r (the factors are
            copied bit for bit, not re-factored)."""
            ks = [max(1, min(int(targets[m.name]), m.r)) for m in chunk]
            cut = [j for j, (m, k) in enumerate(zip(chunk, ks, strict=True)) if k < m.r]
            out: list[Any] = [None] * len(chunk)
            if cut:
                whole = len(cut) == len(chunk)  # no copy of the stacks in the common case
                facs = truncated_factors(a if whole else a[cut], b if whole else b[cut], [ks[j] for j in cut])
                for j, fac in zip(cut, facs, strict=True):
                    out[j] = (ks[j], fac, bool(np.all(np.isfinite(fac[2]))))
            for j, k in enumerate(ks):
                if out[j] is None:
                    out[j] = (k, None, bool(np.isfinite(a[j]).all() and np.isfinite(b[j]).all()))
            return out

        def emit_fused(f: Any, group: dict[int, tuple[int, Any]]) -> None:
            """Write a fused expert parameter's factors: A' stacks the experts' rows (E·k × in), B'
            interleaves their columns (out × k·E, expert e at columns e, e+E, …) as PEFT reads them."""
            if all(fac is None for _, fac in group.values()):
                copy(f.a_key)
                copy(f.b_key)
                return
            k = group[0][0]
            n = f.n_experts
            dt_a, dt_b = src.dtype(f.a_key), src.dtype(f.b_key)
            a_shape = [k * n, *f.a_shape[1:]]
            b_shape = [f.b_shape[0], k * n]
            if dry_run:
                emit(f.a_key, dt_a, a_shape, b"")
                emit(f.b_key, dt_b, b_shape, b"")
                return
            new_a = np.concatenate([group[e][1][0] for e in range(n)], axis=0)
            new_b = np.empty((f.b_shape[0], k * n))
            for e in range(n):
                new_b[:, e::n] = group[e][1][1]
            emit(f.a_key, dt_a, a_shape, _encode(new_a.reshape(a_shape), dt_a))
            emit(f.b_key, dt_b, b_shape, _encode(new_b, dt_b))

        cfg_in = ad.config
        for chunk, facs in map_factor_batches(ad, factors):
            for m, (k, fac, finite) in zip(chunk, facs, strict=True):
                if not finite:
                    raise AdapterFormatError(f"module {m.name} contains NaN/Inf", path=ad.weights_path)
                s = ad.module_scale[m.name]
                row = {"name": m.name, "old_r": m.r, "new_r": k, "untouched": fac is None, "scale": s,
                       "alpha": alpha_for(s, k, ad.rslora(m.name)), "retained_energy": 1.0, "spectral_error": 0.0,
                       "frob_error": 0.0, "params_before": m.params,
                       "params_after": k * (m.in_features + m.out_features)}
                reports[m.name] = row
                if m.fused is not None:
                    if fac is not None:
                        row.update(_errors(fac[2], k, s))
                    group = pending.setdefault(m.fused, {})
                    group[int(m.name.rsplit("[expert ", 1)[1].rstrip("]"))] = (k, fac)
                    f = fused_by_name[m.fused]
                    if len(group) == f.n_experts:
                        emit_fused(f, group)
                    continue
                if fac is None:
                    if single:
                        row["alpha"] = ad.module_alpha[m.name]  # the input α itself: the scale is unchanged to the bit
                        if m.alpha_key is not None:
                            copy(m.alpha_key)
                    else:
                        r_cfg, alpha_cfg = resolve_rank_alpha(m.name.split("[")[0], cfg_in.r, cfg_in.lora_alpha,
                                                              cfg_in.rank_pattern, cfg_in.alpha_pattern)
                        if r_cfg == k:
                            row["alpha"] = alpha_cfg  # the input α itself, so PEFT's scale is unchanged to the bit
                    copy(m.a_key)
                    copy(m.b_key)
                    continue
                new_a, new_b, sig = fac
                row.update(_errors(sig, k, s))
                dt_a, dt_b = src.dtype(m.a_key), src.dtype(m.b_key)
                a_shape = [k, *m.a_shape[1:]]
                b_shape = [m.b_shape[0], k, *m.b_shape[2:]]
                emit(m.a_key, dt_a, a_shape, b"" if dry_run else _encode(new_a.reshape(a_shape), dt_a))
                emit(m.b_key, dt_b, b_shape, b"" if dry_run else _encode(new_b.reshape(b_shape), dt_b))
                if m.alpha_key is not None:
                    dt, data = _alpha_tensor(src.dtype(m.alpha_key), row["alpha"])
                    emit(m.alpha_key, dt, list(src.shape(m.alpha_key)), data)
        # everything that is not a LoRA factor is copied bit for bit
        for name in ad.skipped + [m.magnitude_key for m in ad.modules if m.magnitude_key]:
            copy(name)
        rows = [reports[m.name] for m in ad.modules]
        if single:
            cfg = _file_config(ad, rows, rank, energy, strategy, budget_params)
            weights_out = out_path
            metadata = cfg["metadata"]
        else:
            cfg = _new_config(ad, rows)
            weights_out = out_dir / "adapter_model.safetensors"
            metadata = {"format": "pt"}
        validate_output(ad, rows, entries)
        if tmp_data is not None:
            tmp_data.close()
            header: dict[str, Any] = {"__metadata__": metadata}
            for name, dt, shape, start, end in entries:
                header[name] = {"dtype": dt, "shape": shape, "data_offsets": [start, end]}
            raw_h = json.dumps(header, separators=(",", ":")).encode()
            raw_h += b" " * (-len(raw_h) % 8)
            part = out_dir / f".{weights_out.name}.part"
            with open(part, "wb") as fo, open(tmp_data.name, "rb") as fi:
                fo.write(len(raw_h).to_bytes(8, "little"))
                fo.write(raw_h)
                shutil.copyfileobj(fi, fo, 16 << 20)
            os.replace(part, weights_out)
            if not single:
                # top-level keys sorted; the patterns keep their order (PEFT takes the first matching key)
                (out_dir / "adapter_config.json").write_text(json.dumps(dict(sorted(cfg.items())), indent=2))
                stale = out_dir / "adapter_model.bin"
                if stale.exists():
                    stale.unlink()  # PEFT must not pick up an old .bin beside the new file
        finished = True
    finally:
        if tmp_data is not None:
            tmp_data.close()
            Path(tmp_data.name).unlink(missing_ok=True)
        if not finished:
            for d in created:  # deepest first; a refused compress leaves nothing behind
                try:
                    d.rmdir()
                except OSError:
                    break

    header_est = 8 + sum(len(n) + 80 for n, *_ in entries)  # JSON entry per tensor, roughly
    bytes_after = weights_out.stat().st_size if not dry_run else header_est + offset
    retained = [r["retained_energy"] for r in rows]
    before = sum(r["params_before"] for r in rows)
    after = sum(r["params_after"] for r in rows)
    summary = {
        "method": ("rank" if rank is not None else "energy" if energy is not None
                   else "budget_params" if budget_params is not None else strategy),
        "rank": rank, "energy": energy, "strategy": strategy, "budget_params": budget_params,
        "n_modules": len(rows),
        "n_truncated": sum(r["new_r"] < r["old_r"] for r in rows),
        "n_untouched": sum(r["untouched"] for r in rows),
        "params_before": before, "params_after": after,
        "params_saved_fraction": (1 - after / before) if before else 0.0,
        "bytes_before": ad.weights_path.stat().st_size, "bytes_after": int(bytes_after),
        "bytes_after_estimated": dry_run,
        "retained_energy_min": min(retained), "retained_energy_mean": float(np.mean(retained)),
        "spectral_error_max": max(r["spectral_error"] for r in rows),
        "ranks": dict(sorted(Counter(r["new_r"] for r in rows).items())),
        "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
        "format": ad.format,
        "input": str(ad.config_path.parent) if ad.config_path is not None else str(ad.weights_path),
        "output": str(out_path), "dry_run": dry_run,
    }
    return {"summary": summary, "modules": rows, "config": cfg}


def _new_config(ad: LoadedAdapter, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The input config with r/alpha set to the most common new values and full-module-name
    rank_pattern/alpha_pattern entries that PEFT resolves to exactly each module's new r and α."""
    names = [r["name"].split("[")[0] for r in rows]
    frag = peft_pattern([{"name": n, "scale": r["scale"]} for n, r in zip(names, rows, strict=True)],
                        [r["new_r"] for r in rows], ad.config.use_rslora)
    cfg = dict(ad.config.raw)
    cfg["r"] = frag["r"]
    cfg["lora_alpha"] = frag["lora_alpha"]
    cfg["rank_pattern"] = exact_patterns(names, [int(r["new_r"]) for r in rows], frag["r"], ad.config_path)
    cfg["alpha_pattern"] = exact_patterns(names, [r["alpha"] for r in rows], frag["lora_alpha"], ad.config_path)
    cfg.pop("alpha", None)  # very old key; lora_alpha is authoritative now
    return cfg


def _alpha_tensor(dtype: str, alpha: float) -> tuple[str, bytes]:
    """A 0-d alpha tensor holding ``alpha``: in the input's dtype when that dtype stores it
    exactly, else float32 (loaders read it with ``.item()``, so the dtype is free)."""
    if dtype in _ST_DTYPE or dtype == "BF16":
        data = _encode(np.asarray(alpha, dtype=np.float64), dtype)
        if dtype == "BF16":
            back = float((np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)[0])
        else:
            back = float(np.frombuffer(data, _ST_DTYPE[dtype])[0])
        if back == alpha:
            return dtype, data
    return "F32", _encode(np.asarray(alpha, dtype=np.float64), "F32")


def _file_config(ad: LoadedAdapter, rows: list[dict[str, Any]], rank: int | None, energy: float | None,
                 strategy: str | None, budget_params: int | None) -> dict[str, Any]:
    """The report's config of a single-file output and its updated safetensors metadata: kohya's
    ``ss_network_dim``/``ss_network_alpha``/``ss_training_comment`` (stale ``sshs_*`` hashes
    dropped), diffusers' per-component ``lora_adapter_metadata``, and a ``gradience_compressed``
    note saying from what and how."""
    from .formats import DIFFUSERS_METADATA_KEY, diffusers_component, diffusers_configs

    ranks = Counter(int(r["new_r"]) for r in rows)
    alphas = Counter(float(r["alpha"]) for r in rows)
    mode_r = max(ranks, key=lambda k: (ranks[k], -k))
    mode_alpha = max(alphas, key=lambda a: (alphas[a], -a))
    meta = dict(ad.metadata)
    old = sorted({int(r["old_r"]) for r in rows})
    method = ("rank " + str(rank) if rank is not None else f"energy {energy}" if energy is not None
              else f"budget {budget_params} params" if budget_params is not None else f"strategy {strategy}")
    if ad.format == "kohya":
        one_r = len(ranks) == 1
        one_alpha = len(alphas) == 1
        meta["ss_network_dim"] = str(mode_r) if one_r else "Dynamic"
        meta["ss_network_alpha"] = _num(mode_alpha) if one_alpha else "Dynamic"
        comment = meta.get("ss_training_comment", "")
        old_s = "/".join(map(str, old))
        meta["ss_training_comment"] = (f"rank compressed by gradience from {old_s} ({method}; exact truncation, "
                                       f"each module's scale kept)" + (f"; {comment}" if comment else ""))
        for key in ("sshs_model_hash", "sshs_legacy_hash"):
            meta.pop(key, None)  # hashes of the input's tensors: stale now
    elif DIFFUSERS_METADATA_KEY in meta:
        configs = diffusers_configs(meta, ad.weights_path)
        packed: dict[str, Any] = loads_json(meta[DIFFUSERS_METADATA_KEY], path=ad.weights_path,
                                            what="diffusers metadata", error=AdapterFormatError)
        for comp, fields in configs.items():
            sub = [r for r in rows if diffusers_component(r["name"].split("[")[0])[0] == comp]
            if not sub:
                continue
            inner = [diffusers_component(r["name"].split("[")[0])[1] for r in sub]
            frag = peft_pattern([{"name": n, "scale": r["scale"]} for n, r in zip(inner, sub, strict=True)],
                                [int(r["new_r"]) for r in sub], bool(fields.get("use_rslora")))
            new = {"r": frag["r"], "lora_alpha": frag["lora_alpha"],
                   "rank_pattern": exact_patterns(inner, [int(r["new_r"]) for r in sub], frag["r"], ad.weights_path),
                   "alpha_pattern": exact_patterns(inner, [r["alpha"] for r in sub], frag["lora_alpha"],
                                                   ad.weights_path)}
            for fld, value in new.items():
                packed[f"{comp}.{fld}" if comp else fld] = value
        meta[DIFFUSERS_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
    meta["gradience_compressed"] = json.dumps({
        "from": ad.weights_path.name, "method": method, "ranks_before": old,
        "ranks_after": sorted(ranks), "scale": "kept per module"}, sort_keys=True)
    meta.setdefault("format", "pt")
    return {"r": mode_r, "lora_alpha": mode_alpha, "rank_pattern": {}, "alpha_pattern": {}, "metadata": meta}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def validate_output(ad: LoadedAdapter, rows: list[dict[str, Any]],
                    entries: list[tuple[str, str, list[int], int, int]]) -> None:
    """Check the tensors about to be written against what the owning loader expects: the same
    tensor names as the input, every factor pair sharing its new rank k ≤ r, every other
    dimension as in the input, alpha tensors 0-d. Raises :class:`AdapterFormatError` (nothing is
    written) on the first violation."""
    shapes = {name: shape for name, _, shape, _, _ in entries}
    want = set(ad.source.names())
    if set(shapes) != want:
        missing = sorted(want - set(shapes))[:3]
        extra = sorted(set(shapes) - want)[:3]
        raise AdapterFormatError(f"internal check failed: output tensor names differ from the input "
                                 f"(missing {missing}, extra {extra}); nothing written", path=ad.weights_path)
    fused_k: dict[str, int] = {}
    for m, row in zip(ad.modules, rows, strict=True):
        k = int(row["new_r"])
        if m.fused is not None:
            fused_k[m.fused] = k
            continue
        a, b = shapes[m.a_key], shapes[m.b_key]
        emb = m.kind == "embedding"
        ok = (1 <= k <= m.r and a[0] == k and list(a[1:]) == list(m.a_shape[1:])
              and (b[1] == k and b[0] == m.b_shape[0] and list(b[2:]) == list(m.b_shape[2:])))
        if emb:
            ok = 1 <= k <= m.r and a == [k, *m.a_shape[1:]] and b == [m.b_shape[0], k]
        if m.alpha_key is not None:
            ok = ok and list(shapes[m.alpha_key]) == list(ad.source.shape(m.alpha_key))
        if not ok:
            raise AdapterFormatError(f"internal check failed: module {m.name} would be written with lora_A {a}, "
                                     f"lora_B {b} for rank {k} (input {list(m.a_shape)}, {list(m.b_shape)}); "
                                     "nothing written", path=ad.weights_path)
    for f in ad.fused:
        k, n = fused_k[f.name], f.n_experts
        a, b = shapes[f.a_key], shapes[f.b_key]
        if not (1 <= k <= f.r and a == [k * n, *f.a_shape[1:]] and b == [f.b_shape[0], k * n]):
            raise AdapterFormatError(f"internal check failed: fused experts {f.name} would be written with lora_A "
                                     f"{a}, lora_B {b} for {n} experts at rank {k}; nothing written",
                                     path=ad.weights_path)


def _errors(sig: np.ndarray, k: int, s: float) -> dict[str, float]:
    """Retained energy and the spectral / Frobenius error of truncating σ to k (scale s)."""
    total = float(np.dot(sig, sig))
    kept = float(np.dot(sig[:k], sig[:k]))
    return {"retained_energy": kept / total if total > 0 else 1.0,
            "spectral_error": abs(s) * float(sig[k]) if k < sig.size else 0.0,
            "frob_error": abs(s) * math.sqrt(max(total - kept, 0.0))}


def _uniform_experts(ad: LoadedAdapter, targets: dict[str, int]) -> None:
    """PEFT gives every expert of a fused parameter one rank, so its experts share the largest
    target. PEFT keys a parameter's rank_pattern/alpha_pattern by ``<module>.<parameter>``, which
    the adapter file does not name when a module has several targeted parameters: an output that
    would need per-module patterns is refused."""
    for f in ad.fused:
        experts = [m for m in ad.modules if m.fused == f.name]
        k = max(min(int(targets[m.name]), m.r) for m in experts)
        for m in experts:
            targets[m.name] = k
    ranks = {min(int(targets[m.name]), m.r) for m in ad.modules}
    scales = {round(ad.module_scale[m.name], 12) for m in ad.modules}
    if len(ranks) > 1 or len(scales) > 1:
        raise AdapterFormatError(
            f"this adapter adapts fused MoE experts (target_parameters: {', '.join(ad.config.target_parameters)}) and "
            f"the result would need per-module ranks or alphas ({len(ranks)} ranks, {len(scales)} scales); PEFT "
            "resolves a parameter's rank_pattern by <module>.<parameter>, which the adapter does not record, so "
            "the output could not be loaded as written", path=ad.weights_path,
            hint="compress every module to one rank with --rank N (at most the smallest r)")
