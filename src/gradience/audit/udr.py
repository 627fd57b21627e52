"""UDR (update dominance ratio) and SDI against the base model's weights.

UDR = ‖ΔW‖₂ / ‖W_base‖₂ (``udr``), the same with Frobenius norms (``udr_f``), and
SDI = log10(UDR + 1e-12). Base matrices are streamed one at a time from (sharded)
safetensors; σ₁(W) comes from Golub–Kahan–Lanczos bidiagonalization with full
reorthogonalization, stopped when the Ritz residual bound β_k·|p_k| ≤ 1e-6·σ₁ (the
returned σ₁ is then within that relative distance of a singular value of W, the largest
in practice). Matrix–vector products run in float32 (the storage precision of base
weights) on the matrix as read, with float64 vectors and Lanczos arithmetic: no float64
copy of the matrix is made, and the rounding of the products moves σ₁ by far less than
the tolerance (measured ≤ 5e-8 relative on tiny models, 1e-9 to 1e-8 on 600×400 to
11008×4096 matrices), so σ₁ is accurate to 1e-6 relative. ‖W‖_F is accumulated in
float64 over row blocks. Peak memory: the float32 matrix, the Lanczos vectors
(≤ 121·(m + n) float64) and a 4 MB block. Norms are
cached per tensor under a key made of the model identity and, per file, its name, size,
mtime, header hash and a hash of sampled data blocks (so a base rewritten in place is
re-measured). ``lm_head`` maps to ``lm_head.weight``, or to the input embedding when the
base ties them.

Reading guide: UDR < 0.1 small perturbation; ~1 comparable to the base; > 3 the adapter
dominates. UDR is descriptive, never a pass/fail gate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GradienceError
from .weights import SafetensorsFile

__all__ = ["SIGMA1_TOL", "BaseWeights", "attach_udr", "fro_norm", "resolve_base_model", "sigma_max"]

SIGMA1_TOL = 1e-6
_MAX_STEPS = 120


def sigma_max(w: np.ndarray, tol: float = SIGMA1_TOL, max_steps: int | None = None, seed: int = 0) -> float:
    """Largest singular value of a 2-D matrix (see :func:`sigma_max_checked`)."""
    return sigma_max_checked(w, tol, max_steps, seed)[0]


def sigma_max_checked(w: np.ndarray, tol: float = SIGMA1_TOL, max_steps: int | None = None,
                      seed: int = 0) -> tuple[float, bool]:
    """Largest singular value of a 2-D matrix by Golub–Kahan–Lanczos (no full SVD).

    ``w`` (m × n; products in its dtype when float32/float64, so a float32 matrix is never
    copied; vectors and the bidiagonal in float64). Stops when
    the residual bound of the top Ritz value is ≤ ``tol`` relative, or the Krylov space is
    exhausted (then the result is exact up to rounding). Returns ``(σ₁, converged)``; when
    ``max_steps`` (default 120) pass first, the value is a Ritz value, a lower bound on σ₁.
    """
    max_steps = _MAX_STEPS if max_steps is None else max_steps
    m, n = w.shape
    if m == 0 or n == 0:
        return 0.0, True
    wt = w.T
    dt = w.dtype if w.dtype in (np.float32, np.float64) else np.float32
    rng = np.random.default_rng(seed)
    k_max = min(max_steps, m, n)
    V = np.zeros((k_max + 1, n))
    U = np.zeros((k_max, m))
    alphas: list[float] = []
    betas: list[float] = []
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    V[0] = v
    u_prev = np.zeros(m)
    beta = 0.0
    best = 0.0
    converged = False
    for k in range(k_max):
        u = (w @ V[k].astype(dt)).astype(np.float64) - beta * u_prev
        if k:
            u -= U[:k].T @ (U[:k] @ u)
        alpha = float(np.linalg.norm(u))
        if alpha == 0.0:
            converged = True  # the Krylov space is exhausted: exact up to rounding
            break
        u /= alpha
        U[k] = u
        alphas.append(alpha)
        vn = (wt @ u.astype(dt)).astype(np.float64) - alpha * V[k]
        vn -= V[: k + 1].T @ (V[: k + 1] @ vn)
        beta = float(np.linalg.norm(vn))
        Bk = np.diag(alphas)
        if k:
            Bk[np.arange(k), np.arange(1, k + 1)] = betas
        P, S, _ = np.linalg.svd(Bk)
        best = float(S[0])
        if beta * abs(P[-1, 0]) <= tol * best or beta == 0.0:
            converged = True
            break
        betas.append(beta)
        V[k + 1] = vn / beta
        u_prev = u
    # Running out of the Krylov space (k_max = the smaller dimension) is exact as well.
    return best, converged or k_max == min(m, n)


def _hf_cache_dirs() -> list[Path]:
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def resolve_base_model(ident: str | os.PathLike[str]) -> Path:
    """A local directory holding the base model's safetensors: the path itself, or the
    snapshot of a hub id in the local Hugging Face cache (never downloads)."""
    p = Path(ident).expanduser()
    if p.is_dir():
        return p
    s = str(ident)
    if p.exists():
        raise GradienceError("base model must be a directory (or a hub id)", path=p)
    if s.count("/") <= 1 and not s.startswith((".", "/")):
        for root in _hf_cache_dirs():
            repo = root / f"models--{s.replace('/', '--')}"
            if not repo.is_dir():
                continue
            ref = repo / "refs" / "main"
            if ref.exists():
                snap = repo / "snapshots" / ref.read_text().strip()
                if snap.is_dir():
                    return snap
            snaps = sorted((repo / "snapshots").glob("*"), key=lambda q: q.stat().st_mtime, reverse=True)
            if snaps:
                return snaps[0]
    raise GradienceError(f"base model {s!r} not found locally (not a directory, not in the Hugging Face cache)",
                         hint="pass --base-model DIR with its safetensors, download it once while online, "
                              "or use --no-udr")


# Input-embedding module names (last path components) tried, in order, for a tied lm_head.
_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings", "shared",
                     "embeddings.word_embeddings")
_SAMPLES = 16
_SAMPLE_BYTES = 4096


def _sample_digest(path: Path, data_start: int, size: int) -> bytes:
    """SHA-256 of ``_SAMPLES`` blocks of ``_SAMPLE_BYTES`` spread evenly over the data
    region (first and last included): a few reads, whatever the file size."""
    h = hashlib.sha256()
    span = max(size - data_start - _SAMPLE_BYTES, 0)
    try:
        with open(path, "rb") as fh:
            for i in range(_SAMPLES):
                fh.seek(data_start + span * i // (_SAMPLES - 1))
                h.update(fh.read(_SAMPLE_BYTES))
    except OSError as exc:
        raise GradienceError(f"cannot read base weights: {exc.strerror}", path=path) from None
    return h.digest()


def fro_norm(w: np.ndarray, block_bytes: int = 4 << 20) -> float:
    """‖W‖_F of a 2-D matrix, accumulated in float64 over row blocks of at most
    ``block_bytes`` (no whole-matrix float64 copy)."""
    m, n = w.shape
    rows = max(1, block_bytes // (8 * max(n, 1)))
    acc = 0.0
    for i in range(0, m, rows):
        blk = w[i: i + rows].astype(np.float64).ravel()
        acc += float(np.dot(blk, blk))
    return math.sqrt(acc)


class BaseWeights:
    """The base model's tensors across one or more safetensors shards (read lazily)."""

    def __init__(self, directory: Path, ident: str) -> None:
        self.directory = directory
        self.ident = ident
        index = directory / "model.safetensors.index.json"
        files: list[Path]
        if index.exists():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError):
                raise GradienceError("unreadable shard index", path=index) from None
            files = [directory / f for f in sorted(set(wm.values()))]
        else:
            files = sorted(directory.glob("*.safetensors"))
            files = [f for f in files if not f.name.startswith("adapter_model")]
        if not files:
            raise GradienceError("no safetensors weights in the base model directory", path=directory,
                                 hint="UDR reads base weights from *.safetensors; convert the checkpoint or use --no-udr")
        self.files = [SafetensorsFile(f) for f in files]
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.names():
                self.where.setdefault(name, f)
        # suffix (last j components of the module path) -> module paths that end with it
        self._suffix: dict[str, list[str]] = {}
        for name in self.where:
            if not name.endswith(".weight") or len(self.shape(name)) < 2:
                continue
            mod = name[: -len(".weight")]
            parts = mod.split(".")
            for j in range(1, len(parts) + 1):
                self._suffix.setdefault(".".join(parts[-j:]), []).append(mod)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].shape(name)

    def fingerprint(self) -> str:
        """Cache key of the weights: the model identity and, per file, its name, size,
        modification time (ns), a hash of its header and of sampled data blocks. A file
        rewritten in place with the same shapes changes its mtime (and, almost always,
        the sampled bytes), so cached norms of the old weights are never served."""
        h = hashlib.sha256(self.ident.encode())
        for f in self.files:
            st = os.stat(f.path)
            h.update(f.path.name.encode())
            h.update(f"{f.size}:{st.st_mtime_ns}".encode())
            h.update(hashlib.sha256(f.header_bytes).digest())
            h.update(_sample_digest(f.path, 8 + len(f.header_bytes), f.size))
        return h.hexdigest()[:32]

    def match(self, module: str) -> str | None:
        """The base tensor for an adapter module path: the longest unique suffix match
        (handles wrapper prefixes such as ``base_model.model.``, a task head's ``bert.``,
        or checkpoints saved from the bare backbone). A one-component name (``lm_head``,
        ``score``, ``classifier``) matches only itself. ``lm_head`` with no tensor of its
        own maps to the input embedding when the model ties them (``tie_word_embeddings``
        not false in ``config.json``)."""
        parts = module.split("[")[0].split(".")
        lowest = 1 if len(parts) == 1 else 2
        for j in range(len(parts), lowest - 1, -1):
            cands = self._suffix.get(".".join(parts[-j:]))
            if cands:
                if len(cands) == 1:
                    return cands[0] + ".weight"
                exact = [c for c in cands if c == module]
                return exact[0] + ".weight" if exact else None
        if parts[-1] == "lm_head" and self._ties_embeddings():
            for suffix in _INPUT_EMBEDDINGS:
                cands = self._suffix.get(suffix)
                if cands and len(cands) == 1:
                    return cands[0] + ".weight"
        return None

    def _ties_embeddings(self) -> bool:
        """False only when ``config.json`` says ``tie_word_embeddings: false`` (transformers'
        default is true; a config without the key, or no config, ties)."""
        cfg = self.directory / "config.json"
        try:
            data = json.loads(cfg.read_text()) if cfg.exists() else {}
        except (OSError, ValueError):
            return True
        if not isinstance(data, dict):
            return True
        tie = data.get("tie_word_embeddings")
        if tie is None and isinstance(data.get("text_config"), dict):
            tie = data["text_config"].get("tie_word_embeddings")
        return tie is not False

    def read2d(self, name: str) -> np.ndarray:
        w = self.where[name].read(name)
        return w.reshape(w.shape[0], -1) if w.ndim > 2 else w

    def close(self) -> None:
        for f in self.files:
            f.close()


class NormCache:
    """Base-weight norms on disk, one file per weights fingerprint. ``owner`` (the base model's
    directory) is recorded so that saving drops the files of the same directory's earlier,
    superseded weights instead of letting them pile up."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None, key: str, owner: str = "") -> None:
        self.path = Path(cache_dir) / f"base_norms_{key}.json" if cache_dir is not None else None
        self.owner = owner
        self.data: dict[str, dict[str, float]] = {}
        self.dirty = False
        if self.path is not None and self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict) and loaded.get("tol") == SIGMA1_TOL:
                    self.data = dict(loaded.get("tensors", {}))
            except (OSError, ValueError):
                self.data = {}  # a damaged cache is rebuilt, never trusted

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"tol": SIGMA1_TOL, "owner": self.owner, "tensors": self.data}))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise GradienceError(f"cannot write base-norms cache: {exc.strerror}", path=self.path) from None
        if self.owner:
            self._drop_superseded()

    def _drop_superseded(self) -> None:
        assert self.path is not None
        for old in self.path.parent.glob("base_norms_*.json"):
            if old == self.path:
                continue
            try:
                if json.loads(old.read_text()).get("owner") == self.owner:
                    old.unlink()
            except (OSError, ValueError, AttributeError):
                continue  # not ours to judge: leave it


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
    base = BaseWeights(directory, str(ident))
    try:
        cache = NormCache(cache_dir, base.fingerprint(), owner=str(Path(directory).resolve()))
        unmapped: list[str] = []
        mismatched: list[str] = []
        approx: list[str] = []
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
            entry = cache.data.get(name)
            if entry is None:
                w = base.read2d(name)
                s1_w, ok = sigma_max_checked(w)
                entry = {"sigma_max": s1_w, "fro_norm": fro_norm(w), "converged": ok}
                cache.data[name] = entry
                cache.dirty = True
                del w
            s1, fro = entry["sigma_max"], entry["fro_norm"]
            if not entry.get("converged", True):
                approx.append(name)
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
    if approx:
        issues.append({"code": "UDR_SIGMA_APPROX", "severity": "info", "count": len(approx),
                       "message": f"σ₁ of {len(approx)} base tensor(s) did not reach the {SIGMA1_TOL:g} residual bound "
                                  f"in {_MAX_STEPS} Lanczos steps; their σ₁ is a lower bound, so the UDR may read "
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
