"""The base model a UDR is measured against: where it is, and its weight tensors.

:func:`resolve_base_model` turns a directory or a hub id into a local directory (a hub id is
looked up in the local Hugging Face cache, never downloaded). :class:`BaseWeights` reads the
base's tensors lazily across (sharded) safetensors files, maps an adapter module path to its
base tensor (longest unique suffix; ``lm_head`` falls back to the input embedding when the
base ties them), and fingerprints the files for the norms cache: the model identity and, per
file, its name, size, mtime, header hash and a hash of sampled data blocks (so a base
rewritten in place is re-measured).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..bounded import read_json
from ..errors import GradienceError
from .weights import SafetensorsFile

__all__ = ["BaseWeights", "resolve_base_model"]


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


class BaseWeights:
    """The base model's tensors across one or more safetensors shards (read lazily)."""

    def __init__(self, directory: Path, ident: str) -> None:
        self.directory = directory
        self.ident = ident
        self.quant_method = self._quant_method()
        if self.quant_method is not None and self.quant_method != "bitsandbytes":
            raise GradienceError(f"the base checkpoint is quantized with {self.quant_method}, whose weights this "
                                 "audit does not dequantize", path=directory,
                                 hint="pass --base-model with the float (unquantized) checkpoint for UDR")
        index = directory / "model.safetensors.index.json"
        files: list[Path]
        if index.exists():
            try:
                wm = read_json(index, what="shard index", error=GradienceError)["weight_map"]
                if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                    raise TypeError
            except (KeyError, TypeError):
                raise GradienceError("unreadable shard index (no weight_map of tensor → file names)",
                                     path=index) from None
            files = [directory / f for f in sorted(set(wm.values()))]
        else:
            files = sorted(directory.glob("*.safetensors"))
            files = [f for f in files if not f.name.startswith("adapter_model")]
        if not files:
            raise GradienceError("no safetensors weights in the base model directory", path=directory,
                                 hint="UDR reads base weights from *.safetensors; convert the checkpoint or use --no-udr")
        self.files: list[SafetensorsFile] = []
        try:
            for path in files:
                self.files.append(SafetensorsFile(path, lenient_dtypes=True))
        except BaseException:
            self.close()
            raise
        self.where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.names():
                self.where.setdefault(name, f)
        from .quantized import quant_info

        self.quant = quant_info(set(self.where), dict(self.where))
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
        """The logical shape (a 4-bit tensor's from its quant state, not the packed bytes)."""
        q = self.quant.get(name)
        return q.shape if q is not None else self.where[name].shape(name)

    def _quant_method(self) -> str | None:
        cfg = self.directory / "config.json"
        try:
            data = read_json(cfg, what="model config") if cfg.exists() else {}
        except GradienceError:
            return None
        qc = data.get("quantization_config") if isinstance(data, dict) else None
        if isinstance(qc, dict):
            return str(qc.get("quant_method") or "unknown").lower()
        return None

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
            data = read_json(cfg, what="model config") if cfg.exists() else {}
        except GradienceError:
            return True
        if not isinstance(data, dict):
            return True
        tie = data.get("tie_word_embeddings")
        if tie is None and isinstance(data.get("text_config"), dict):
            tie = data["text_config"].get("tie_word_embeddings")
        return tie is not False

    def read2d(self, name: str) -> np.ndarray:
        """The float weights as a 2-D matrix; quantized ones dequantized (:mod:`.quantized`). An
        integer tensor of no known scheme raises :class:`GradienceError` (its norms would be of the
        codes, not of the weights)."""
        q = self.quant.get(name)
        if q is not None:
            w = q.dequantize(dict(self.where))
        else:
            f = self.where[name]
            if f.dtype(name) not in ("F64", "F32", "F16", "BF16"):
                raise GradienceError(f"base tensor {name} is stored as {f.dtype(name)}, not a float: quantized by "
                                     "a scheme this audit does not read", path=f.path)
            w = f.read(name)
        return w.reshape(w.shape[0], -1) if w.ndim > 2 else w

    def close(self) -> None:
        for f in self.files:
            f.close()
