"""UDR (update dominance ratio) and SDI against the base model's weights.

UDR = ‖ΔW‖₂ / ‖W_base‖₂ (``udr``), the same with Frobenius norms (``udr_f``), and
SDI = log10(UDR + 1e-12). Base matrices are streamed one at a time (:mod:`.base_model`);
their σ₁ and ‖·‖_F come from :mod:`.lanczos` (σ₁ accurate to 1e-6 relative, or flagged
``UDR_SIGMA_APPROX`` when the Lanczos steps ran out) and are kept in the norms cache
(:mod:`.norm_cache`).

Reading guide: UDR < 0.1 small perturbation; ~1 comparable to the base; > 3 the adapter
dominates. UDR is descriptive, never a pass/fail gate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GradienceError
from . import lanczos
from .base_model import BaseWeights, resolve_base_model
from .lanczos import SIGMA1_TOL, fro_norm, sigma_max_checked
from .norm_cache import NormCache

__all__ = ["attach_udr"]


def _stats(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_mean": None, f"{prefix}_median": None, f"{prefix}_p90": None}
    a = np.asarray(values, dtype=np.float64)
    return {f"{prefix}_mean": float(a.mean()), f"{prefix}_median": float(np.percentile(a, 50)),
            f"{prefix}_p90": float(np.percentile(a, 90))}


def attach_udr(rows: list[dict[str, Any]], ad: Any, *, base_model: Any, cache_dir: Any,
               enabled: bool) -> dict[str, Any]:
    """Add ``udr``, ``udr_f``, ``sdi``, ``base_sigma_max``, ``base_fro_norm`` to each row that
    maps to a base tensor; return ``{"summary": {...}, "issues": [...]}``."""
    issues: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"n_layers_with_udr": 0, "udr_base_model": None, "udr_skipped_reason": None}
    empty = {**_stats([], "udr"), "udr_max": None, **_stats([], "sdi"), **_stats([], "udr_f"),
             "fraction_udr_gt_0_1": None, "fraction_udr_gt_0_3": None}
    summary.update(empty)
    if not enabled:
        summary["udr_skipped_reason"] = "disabled (--no-udr)"
        return {"summary": summary, "issues": issues}
    ident = base_model if base_model is not None else ad.config.base_model_name_or_path
    if ident is None:
        summary["udr_skipped_reason"] = "no base model (pass --base-model ID_OR_DIR)"
        return {"summary": summary, "issues": issues}
    try:
        directory = resolve_base_model(ident)
    except GradienceError as exc:
        if base_model is not None:
            raise  # asked for explicitly: a clear error, not a silent skip
        summary["udr_skipped_reason"] = exc.one_line()
        return {"summary": summary, "issues": issues}
    try:
        base = BaseWeights(directory, str(ident))
    except GradienceError as exc:
        if base_model is not None and not exc.args[0].startswith("the base checkpoint is quantized"):
            raise  # asked for explicitly: a clear error, not a silent skip
        summary["udr_skipped_reason"] = exc.one_line()  # UDR nobody asked for never fails the audit
        return {"summary": summary, "issues": issues}
    try:
        cache = NormCache(cache_dir, base.fingerprint(), owner=str(Path(directory).resolve()))
        unmapped: list[str] = []
        mismatched: list[str] = []
        approx: list[str] = []
        unreadable: list[str] = []
        dequantized: set[str] = set()
        for row in rows:
            if "delta_sigma_max" not in row:
                continue
            name = base.match(row["name"])
            if name is None:
                unmapped.append(row["name"])
                continue
            shp = base.shape(name)
            flat = (shp[0], int(np.prod(shp[1:])))
            out_f, in_f = row["out_features"], row["in_features"]
            if flat not in ((out_f, in_f), (in_f, out_f)):
                mismatched.append(f"{row['name']} (base {list(shp)}, update {[out_f, in_f]})")
                continue
            entry: dict[str, Any] | None = cache.data.get(name)
            if entry is None:
                try:
                    w = base.read2d(name)
                except GradienceError as exc:
                    unreadable.append(f"{row['name']} ({exc.args[0]})")
                    continue
                s1_w, ok = sigma_max_checked(w)
                entry = {"sigma_max": s1_w, "fro_norm": fro_norm(w), "converged": ok}
                if name in base.quant:
                    entry["dequantized"] = base.quant[name].kind
                cache.data[name] = entry
                cache.dirty = True
                del w
            s1, fro = entry["sigma_max"], entry["fro_norm"]
            if not entry.get("converged", True):
                approx.append(name)
            if entry.get("dequantized"):
                dequantized.add(str(entry["dequantized"]))
            row["base_tensor"] = name
            row["base_sigma_max"] = s1
            row["base_fro_norm"] = fro
            row["udr"] = row["delta_sigma_max"] / s1 if s1 > 0 else math.inf
            row["udr_f"] = row["delta_fro_norm"] / fro if fro > 0 else math.inf
            row["sdi"] = math.log10(row["udr"] + 1e-12)
        cache.save()
    finally:
        base.close()
    if unmapped:
        issues.append({"code": "UDR_UNMAPPED", "severity": "warning", "count": len(unmapped),
                       "message": f"{len(unmapped)} module(s) have no matching base tensor: " + ", ".join(unmapped[:3])})
    if mismatched:
        issues.append({"code": "UDR_SHAPE_MISMATCH", "severity": "warning", "count": len(mismatched),
                       "message": f"{len(mismatched)} module(s) do not match the base weight shape (wrong base "
                                  "model?): " + ", ".join(mismatched[:3])})
    if unreadable:
        issues.append({"code": "UDR_BASE_UNREADABLE", "severity": "warning", "count": len(unreadable),
                       "message": f"{len(unreadable)} module(s) have no UDR: their base tensor cannot be read as float "
                                  "weights: " + "; ".join(unreadable[:3])})
    if dequantized:
        issues.append({"code": "UDR_DEQUANTIZED", "severity": "info",
                       "message": f"UDR is measured against the dequantized weights of a {', '.join(sorted(dequantized))} "
                                  "base (the quantization error is part of ‖W‖)"})
    if approx:
        issues.append({"code": "UDR_SIGMA_APPROX", "severity": "info", "count": len(approx),
                       "message": f"σ₁ of {len(approx)} base tensor(s) did not reach the {SIGMA1_TOL:g} residual bound "
                                  f"in {lanczos.MAX_STEPS} Lanczos steps; their σ₁ is a lower bound, so the UDR may read "
                                  "slightly high: " + ", ".join(approx[:3])})
    udr = [r["udr"] for r in rows if "udr" in r]
    summary.update(_stats(udr, "udr"))
    summary.update(_stats([r["sdi"] for r in rows if "sdi" in r], "sdi"))
    summary.update(_stats([r["udr_f"] for r in rows if "udr_f" in r], "udr_f"))
    summary["udr_max"] = float(max(udr)) if udr else None
    summary["fraction_udr_gt_0_1"] = float(np.mean([u > 0.1 for u in udr])) if udr else None
    summary["fraction_udr_gt_0_3"] = float(np.mean([u > 0.3 for u in udr])) if udr else None
    summary["n_layers_with_udr"] = len(udr)
    summary["udr_base_model"] = str(ident)
    if not udr:
        summary["udr_skipped_reason"] = "no adapter module matched a base tensor"
    return {"summary": summary, "issues": issues}
