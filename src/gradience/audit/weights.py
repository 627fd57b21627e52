"""Read the weights of PEFT LoRA adapters without torch, and pair their factors into modules.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``name -> {dtype, shape, data_offsets}``) and a flat data section. We parse the header
ourselves and read one tensor at a time with ``pread`` into anonymous memory, so fp32,
fp16 and bf16 adapters load without torch and the process never maps (or copies) the
whole file. ``.bin`` checkpoints need torch and are opened with ``weights_only=True``.
:func:`scan_modules` pairs every ``lora_A`` with its ``lora_B`` (and a DoRA magnitude) into a
:class:`LoraModule` with the update's geometry. The adapter's config is read by
:mod:`.adapter_config`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..bounded import json_depth_exceeded
from ..errors import AdapterFormatError, require

__all__ = [
    "FLOAT_DTYPES",
    "LoraModule",
    "ModuleScan",
    "SafetensorsFile",
    "TensorSource",
    "TorchBinFile",
    "open_weights",
    "scan_modules",
]

# safetensors dtype -> (numpy storage dtype, itemsize). bf16 is stored as uint16 and widened.
_DTYPES: dict[str, tuple[np.dtype[Any], int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_MAX_HEADER = 100 * 1024 * 1024
# safetensors' own reader refuses headers over 100 MB; tensors have at most a handful of dimensions.
_MAX_HEADER_DEPTH = 8
_MAX_DIMS = 16


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _short_name(name: str) -> str:
    return repr(name) if len(name) <= 80 else repr(name[:79] + "…")


# ---------------------------------------------------------------------------------------
# tensor sources
# ---------------------------------------------------------------------------------------
class TensorSource(Protocol):
    path: Path

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> str: ...
    def read(self, name: str) -> np.ndarray: ...
    def read_into(self, name: str, out: np.ndarray) -> None: ...
    def iter_blocks(self, name: str, shape: tuple[int, int], along_rows: bool) -> Iterator[np.ndarray]: ...
    def close(self) -> None: ...


# Elements per block yielded by ``iter_blocks``: 256 Ki values (2 MiB as float64) stay in
# cache while they are decoded and multiplied (measured best of 32 Ki … 512 Ki).
BLOCK_ELEMS = 1 << 18


def _block_slices(shape: tuple[int, int], along_rows: bool) -> Iterator[tuple[slice, slice]]:
    rows, cols = shape
    if along_rows:
        step = max(1, BLOCK_ELEMS // max(cols, 1))
        for i in range(0, rows, step):
            yield slice(i, i + step), slice(None)
    else:
        step = max(1, BLOCK_ELEMS // max(rows, 1))
        for j in range(0, cols, step):
            yield slice(None), slice(j, j + step)


class InMemorySource:
    """``read_into`` and ``iter_blocks`` for a source whose ``read`` returns the whole array (a pickle
    state dict, views built over another source): one home for the two, whatever ``read`` does."""

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def read_into(self, name: str, out: np.ndarray) -> None:
        out[...] = self.read(name).reshape(out.shape)

    def iter_blocks(self, name: str, shape: tuple[int, int], along_rows: bool) -> Iterator[np.ndarray]:
        x = self.read(name).reshape(shape)
        for rs, cs in _block_slices(shape, along_rows):
            yield x[rs, cs]

def _bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    """bf16 bits are the top half of an f32: widen and shift (exact)."""
    return np.left_shift(u16, 16, dtype=np.uint32).view(np.float32)


class SafetensorsFile:
    """A safetensors file read one tensor at a time (no torch, no whole-file mapping).

    ``read(name)`` returns float32 for fp16/bf16/fp32 tensors (float64 stays float64),
    in the stored shape. The header is validated up front: a truncated or corrupt file
    raises :class:`AdapterFormatError` naming the file.
    """

    def __init__(self, path: str | os.PathLike[str], lenient_dtypes: bool = False) -> None:
        self.path = Path(path)
        # A base checkpoint may hold tensors in dtypes we do not decode (fp8, …): with
        # ``lenient_dtypes`` they are listed and only reading them fails, naming the dtype.
        self._lenient = lenient_dtypes
        # Scratch buffers are per thread: the audit reads batches on several threads at once.
        self._local = threading.local()
        try:
            self._f = open(self.path, "rb")
        except OSError as exc:
            raise AdapterFormatError(f"cannot open weights: {exc.strerror}", path=self.path) from None
        try:
            self._parse()
        except BaseException:
            self._f.close()
            raise

    def _bad(self, what: str) -> AdapterFormatError:
        return AdapterFormatError(f"not a valid safetensors file: {what}", path=self.path,
                                  hint="the file may be truncated or corrupt; re-save the adapter")

    def _parse(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        if size == 0:
            raise AdapterFormatError("weights file is empty (zero-size file)", path=self.path)
        if size < 8:
            raise self._bad(f"only {size} bytes")
        head = self._f.read(8)
        n = int.from_bytes(head, "little")
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise self._bad(f"header length {n} does not fit a {size}-byte file")
        raw = self._f.read(n)
        if json_depth_exceeded(raw, _MAX_HEADER_DEPTH) is not None:
            raise self._bad(f"header nests deeper than {_MAX_HEADER_DEPTH} levels (real headers nest 3)")
        try:
            header = json.loads(raw)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError, or an integer of too many digits
            raise self._bad("header is not JSON") from None
        if not isinstance(header, dict):
            raise self._bad("header is not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._bad("__metadata__ is not an object of strings")
        self.metadata = meta
        self.header_bytes = raw
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dt = info["dtype"]
                shape = tuple(info["shape"])
                start, end = info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._bad(f"malformed entry for tensor {_short_name(name)}") from None
            if (not isinstance(dt, str) or not isinstance(info["shape"], list) or len(shape) > _MAX_DIMS
                    or not all(_is_index(x) for x in (*shape, start, end))):
                raise self._bad(f"malformed entry for tensor {_short_name(name)} (dtype a string, shape a list "
                                f"of at most {_MAX_DIMS} non-negative integers, data_offsets two of them)")
            if dt not in _DTYPES:
                if not self._lenient:
                    raise self._bad(f"tensor {_short_name(name)} has unsupported dtype {_short_name(dt)}")
                if start < 0 or end < start or end > data_len:
                    raise self._bad(f"tensor {_short_name(name)} extends past the end of the file (truncated?)")
                self._entries[name] = (dt, shape, start, end)
                continue
            count = math.prod(shape)  # exact: np.prod wraps around at 2**63 and could match a forged range
            if start < 0 or end < start or end - start != count * _DTYPES[dt][1]:
                raise self._bad(f"tensor {_short_name(name)}: byte range does not match shape {list(shape)} and dtype {dt}")
            if end > data_len:
                raise self._bad(f"tensor {_short_name(name)} extends past the end of the file (truncated?)")
            self._entries[name] = (dt, shape, start, end)
        self.size = size

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def nbytes(self, name: str) -> int:
        _, _, s, e = self._entries[name]
        return e - s

    def _raw(self, name: str, scratch: bool = False) -> np.ndarray:
        """The stored bits of a tensor. With ``scratch`` the array lives in a buffer reused
        by the next call (no fresh allocation, so no page faults per tensor)."""
        dt, shape, start, end = self._entries[name]
        if dt not in _DTYPES:
            raise AdapterFormatError(f"tensor {_short_name(name)} is stored as {dt}, which cannot be read here", path=self.path)
        storage = _DTYPES[dt][0]
        n = end - start
        if scratch:
            held = getattr(self._local, "scratch", None)
            if held is None or held.size < n:
                held = self._local.scratch = np.empty(max(n, 1 << 20), dtype=np.uint8)
            flat = held[:n]
            buf = flat.view(storage).reshape(shape)
        else:
            buf = np.empty(shape, dtype=storage)
            flat = buf.reshape(-1).view(np.uint8)
        got = os.preadv(self._f.fileno(), [memoryview(flat)], self._data_start + start) if n else 0  # type: ignore[arg-type]
        if got != n:
            raise self._bad(f"short read for tensor {_short_name(name)}")
        return buf

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (float64 if stored so); integer tensors as stored."""
        dt = self._entries[name][0]
        arr = self._raw(name)
        if dt == "BF16":
            return _bf16_to_f32(arr)
        if dt == "F16":
            return arr.astype(np.float32)
        return arr

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Decode the tensor into ``out`` (same number of elements; casting assignment)."""
        dt = self._entries[name][0]
        arr = self._raw(name, scratch=True)
        if dt == "BF16":
            n = arr.size
            held = getattr(self._local, "wide", None)
            if held is None or held.size < n:
                held = self._local.wide = np.empty(max(n, 1 << 18), dtype=np.uint32)
            wide = held[:n].reshape(arr.shape)
            np.left_shift(arr, 16, out=wide, dtype=np.uint32)
            arr = wide.view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite value is reported by the audit, not here
            out[...] = arr.reshape(out.shape)

    def iter_blocks(self, name: str, shape: tuple[int, int], along_rows: bool) -> Iterator[np.ndarray]:
        """The tensor viewed as a 2-D ``shape``, in consecutive row blocks (``along_rows``)
        or column blocks of about ``BLOCK_ELEMS`` values, each ready for a casting copy
        (float16/float32/float64; bf16 widened to float32). Blocks live in per-thread
        scratch: each is valid until the next one is requested."""
        dt = self._entries[name][0]
        raw = self._raw(name, scratch=True).reshape(shape)
        for rs, cs in _block_slices(shape, along_rows):
            blk = raw[rs, cs]
            if dt == "BF16":
                held = getattr(self._local, "block", None)
                if held is None or held.size < blk.size:
                    held = self._local.block = np.empty(max(blk.size, BLOCK_ELEMS), dtype=np.uint32)
                wide = held[: blk.size].reshape(blk.shape)
                np.left_shift(blk, 16, out=wide, dtype=np.uint32)
                yield wide.view(np.float32)
            else:
                yield blk

    def read_raw(self, name: str) -> tuple[np.ndarray, str]:
        """The stored bits (bf16 as uint16) and the safetensors dtype string."""
        return self._raw(name), self._entries[name][0]

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CODE_OPS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


def _pickle_verdict(path: Path, max_bytes: int = 256 << 20) -> str:
    """``"objects"`` when the file's pickle (``data.pkl`` of a torch zip) parses and builds Python
    objects, ``"corrupt"`` when its opcodes do not parse. Only walks the opcodes (pickletools):
    nothing is imported or called."""
    import io
    import pickletools
    import zipfile

    try:
        if os.path.getsize(path) > max_bytes:
            return "corrupt"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not pkl or z.getinfo(pkl[0]).file_size > max_bytes:
                    return "corrupt"
                data = z.read(pkl[0])
        else:
            data = Path(path).read_bytes()
        ops = {op.name for op, _, _ in pickletools.genops(io.BytesIO(data))}
    except Exception:  # any parse failure of untrusted bytes means the same: not a pickle
        return "corrupt"
    return "objects" if ops & _CODE_OPS else "corrupt"


def _missing_global(exc: BaseException) -> str | None:
    """The global a refused pickle names when it cannot exist: an attribute missing from one of the
    loaded modules torch.save refers to (``torch._utils._rebuild_tenzor_v2`` after a flipped bit).
    Any other name (a user's class, ``os.system``) is None: a foreign object."""
    import sys

    m = re.search(r"GLOBAL ([\w.]+)\.(\w+)", str(exc))
    if m is None:
        return None
    if m.group(1).split(".")[0] not in ("torch", "collections", "_codecs", "numpy"):  # what torch.save names
        return None
    module = sys.modules.get(m.group(1))
    if module is None or hasattr(module, m.group(2)):
        return None
    return f"{m.group(1)}.{m.group(2)}"


def _unpickler_reason(exc: BaseException) -> str:
    """The line of torch's weights_only message that says what stopped it ("Unsupported global:
    GLOBAL x.Y was not an allowed global", "Unsupported operand 103"), without its advice."""
    m = re.search(r"Unsupported [^\n]*", str(exc))
    return m.group(0).split(". ")[0].strip()[:160] if m else type(exc).__name__


class TorchBinFile(InMemorySource):
    """A ``.bin`` (pickle) state dict, loaded with ``torch.load(weights_only=True)``.

    ``weights_only`` refuses arbitrary objects, so a malicious pickle cannot run code.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise AdapterFormatError(f"cannot open weights: {exc.strerror}", path=self.path) from None
        if size == 0:
            raise AdapterFormatError("weights file is empty (zero-size file)", path=self.path)
        torch = require("torch", "hf", "reading .bin adapter weights")
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
                warnings.simplefilter("ignore")
                sd = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            foreign = _missing_global(exc) is None if "global" in str(exc).lower() else (
                _pickle_verdict(self.path) == "objects")
            if not foreign:
                # weights_only's unpickler stopped at an opcode it does not know, or at a torch
                # function that does not exist (a flipped bit in its name): damaged bytes, not a
                # foreign object.
                raise AdapterFormatError(
                    f"{self.path.suffix} file is corrupt: not a readable torch pickle ({_unpickler_reason(exc)})",
                    path=self.path, hint="the file may be truncated or damaged; re-save the adapter") from None
            # weights_only refused a global: the file holds objects other than tensors, and
            # unpickling them could run code. Never retried without the safeguard.
            raise AdapterFormatError(
                "refused to load: the .bin file holds Python objects other than tensors "
                f"({_unpickler_reason(exc)}; unpickling them could run code)", path=self.path,
                hint="re-save the adapter with safetensors (save_pretrained(..., safe_serialization=True))",
            ) from None
        except Exception as exc:  # torch raises many types for truncated or foreign files
            first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
            raise AdapterFormatError(f"{self.path.suffix} file is corrupt: cannot load it ({type(exc).__name__}: "
                                     f"{first})", path=self.path,
                                     hint="the file may be truncated or damaged; re-save the adapter") from None
        if not isinstance(sd, Mapping):
            raise AdapterFormatError("the .bin file does not hold a state dict", path=self.path)
        self._sd = {str(k): v for k, v in sd.items() if hasattr(v, "shape")}
        self._torch = torch

    def names(self) -> list[str]:
        return list(self._sd)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self._sd[name].shape)

    def dtype(self, name: str) -> str:
        t = self._sd[name]
        return {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
                "torch.float64": "F64"}.get(str(t.dtype), str(t.dtype))

    def nbytes(self, name: str) -> int:
        t = self._sd[name]
        return int(t.numel() * t.element_size())

    def read(self, name: str) -> np.ndarray:
        t = self._sd[name]
        if t.dtype == self._torch.float64:
            return t.detach().numpy()
        if t.is_floating_point():
            return t.detach().to(self._torch.float32).numpy()
        return t.detach().numpy()

    def close(self) -> None:
        self._sd = {}


def open_weights(path: str | os.PathLike[str]) -> SafetensorsFile | TorchBinFile:
    p = Path(path)
    if p.is_dir():
        raise AdapterFormatError("expected a weights file, got a directory", path=p)
    if p.suffix in (".bin", ".pt", ".pth", ".ckpt"):  # torch pickles (kohya files too)
        return TorchBinFile(p)
    return SafetensorsFile(p)


# ---------------------------------------------------------------------------------------
# pairing lora_A / lora_B
# ---------------------------------------------------------------------------------------
_LORA_KEY = re.compile(
    r"^(?P<mod>.+?)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>(?!(?:weight|bias)$)[^.]+))?(?:\.(?P<param>weight|bias))?$"
)
_MAGNITUDE_KEY = re.compile(
    r"^(?P<mod>.+?)\.lora_magnitude_vector(?:\.(?P<adapter>(?!weight$)[^.]+))?(?:\.weight)?$")
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraModule:
    """One adapted module: where its factors live and their geometry.

    ``name`` is the module path inside the base model (PEFT's ``base_model.model.``
    prefix removed), e.g. ``model.layers.0.self_attn.q_proj``. ``a_key``/``b_key`` name
    the tensors; ``kind`` is ``linear``, ``embedding`` or ``conv``. Geometry is of the
    update ΔW (out × in) after flattening conv kernels: B is out × r, A is r × in.
    """

    name: str
    key_prefix: str
    a_key: str
    b_key: str
    kind: str
    r: int
    out_features: int
    in_features: int
    adapter_name: str | None = None
    magnitude_key: str | None = None
    a_shape: tuple[int, ...] = ()
    b_shape: tuple[int, ...] = ()
    alpha_key: str | None = None  # kohya: the module's 0-d ``alpha`` tensor
    fused: str | None = None  # one expert of this fused MoE parameter's LoRA (see .experts)

    @property
    def params(self) -> int:
        return self.r * (self.in_features + self.out_features)


@dataclass
class ModuleScan:
    modules: list[LoraModule]
    skipped: list[str]
    problems: list[dict[str, Any]]
    adapters: list[str] = field(default_factory=list)  # adapter names in the keys (a raw state dict)


def _strip(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def scan_modules(src: TensorSource, adapter_name: str | None = None) -> ModuleScan:
    """Pair every ``lora_A`` with its ``lora_B``; list other tensors as skipped.

    A file whose keys carry several adapter names (``…lora_A.default.weight`` and
    ``…lora_A.other.weight``: a raw ``state_dict`` of a model with two adapters) is never merged
    into one: without ``adapter_name`` it is refused with the list of names, with it only that
    adapter's modules are read (keys without a name segment belong to every name).

    Raises :class:`AdapterFormatError` for a factor without its partner or when no LoRA
    module exists (never an empty audit). Geometry that does not fit a LoRA pair is
    returned in ``problems`` and that module is left out.
    """
    pairs: dict[tuple[str, str | None], dict[str, str]] = {}
    magnitudes: dict[tuple[str, str | None], str] = {}
    skipped: list[str] = []
    for key in src.names():
        m = _LORA_KEY.match(key)
        if m and m.group("param") != "bias":
            slot = "A" if m.group("which").endswith("A") else "B"
            emb = m.group("which").startswith("lora_embedding")
            d = pairs.setdefault((m.group("mod"), m.group("adapter")), {})
            if slot in d:
                raise AdapterFormatError(f"two lora_{slot} tensors for module {m.group('mod')!r}", path=src.path)
            d[slot] = key
            d["emb"] = "1" if emb else d.get("emb", "")
            continue
        mm = _MAGNITUDE_KEY.match(key)
        if mm:
            magnitudes[(mm.group("mod"), mm.group("adapter"))] = key
            continue
        skipped.append(key)

    named = sorted({a for (_, a) in pairs if a is not None})
    if adapter_name is not None and named and adapter_name not in named:
        raise AdapterFormatError(f"no adapter named {adapter_name!r} in the weights; it holds {', '.join(named)}",
                                 path=src.path, hint="pass --adapter-name with one of these names")
    if adapter_name is None and len(named) > 1:
        raise AdapterFormatError(
            f"the weights hold {len(named)} adapters ({', '.join(named)}), each with its own r and alpha; "
            "they are audited one at a time, never merged", path=src.path,
            hint="pass --adapter-name NAME (and that adapter's --adapter-config)")
    if named and adapter_name is not None:
        pairs = {k: v for k, v in pairs.items() if k[1] in (adapter_name, None)}
        magnitudes = {k: v for k, v in magnitudes.items() if k[1] in (adapter_name, None)}
    adapters = {a for (_, a) in pairs}
    modules: list[LoraModule] = []
    problems: list[dict[str, Any]] = []
    for (mod, adapter), d in pairs.items():
        if "A" not in d or "B" not in d:
            have, miss = ("B", "A") if "B" in d else ("A", "B")
            raise AdapterFormatError(f"module {mod!r} has lora_{have} but no lora_{miss}", path=src.path,
                                     hint="the adapter file is incomplete; re-save it")
        for k in (d["A"], d["B"]):
            if src.dtype(k) not in FLOAT_DTYPES:
                raise AdapterFormatError(f"tensor {k!r} has non-float dtype {src.dtype(k)}", path=src.path)
        a_shape, b_shape = src.shape(d["A"]), src.shape(d["B"])
        name = _strip(mod)
        if len(adapters) > 1 and adapter is not None:
            name = f"{name}[{adapter}]"
        geom = _geometry(a_shape, b_shape, bool(d["emb"]))
        if isinstance(geom, str):
            problems.append({"code": "SHAPE_MISMATCH", "severity": "error", "module": name,
                             "message": f"{name}: {geom} (lora_A {list(a_shape)}, lora_B {list(b_shape)}); module skipped"})
            continue
        kind, r, out_f, in_f = geom
        modules.append(LoraModule(
            name=name, key_prefix=mod, a_key=d["A"], b_key=d["B"], kind=kind, r=r, out_features=out_f,
            in_features=in_f, adapter_name=adapter, magnitude_key=magnitudes.get((mod, adapter)),
            a_shape=a_shape, b_shape=b_shape,
        ))
    if not modules:
        detail = f"; {len(problems)} module(s) had unusable shapes" if problems else ""
        raise AdapterFormatError(f"no LoRA modules found (no lora_A/lora_B tensor pairs){detail}", path=src.path,
                                 hint="is this a LoRA adapter saved by PEFT?")
    modules.sort(key=lambda m: _natural_key(m.name))
    return ModuleScan(modules=modules, skipped=sorted(skipped), problems=problems, adapters=named)


def _geometry(a: tuple[int, ...], b: tuple[int, ...], emb: bool) -> tuple[str, int, int, int] | str:
    """(kind, r, out, in) of ΔW = B·A, or the reason the shapes are not a LoRA pair."""
    if emb:
        # PEFT embedding LoRA: A is r × num_embeddings, B is embedding_dim × r; ΔW = (B·A)ᵀ.
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            return "embedding factors do not share a rank dimension"
        return "embedding", a[0], b[0], a[1]
    if len(a) == 2 and len(b) == 2:
        if a[0] != b[1]:
            return f"rank of lora_A ({a[0]}) differs from rank of lora_B ({b[1]})"
        return "linear", a[0], b[0], a[1]
    if len(a) >= 3 and len(b) == len(a):
        # Conv LoRA: A is r × in × k..., B is out × r × 1...; flatten the kernel into `in`.
        if a[0] != b[1] or any(s != 1 for s in b[2:]):
            return "conv factors do not form r × in × k / out × r × 1"
        return "conv", a[0], b[0], int(np.prod(a[1:]))
    return "factor shapes are not 2-D (linear/embedding) or matching conv kernels"


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
