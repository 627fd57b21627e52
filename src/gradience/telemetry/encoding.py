"""Strict-JSON encoding of telemetry events: non-finite numbers and text redaction.

Non-finite floats become the strings "NaN", "Infinity", "-Infinity" so every line is
strict JSON; :func:`decode_line` turns them back and also accepts the bare tokens that
older files contain. Integers outside 64 bits become floats (their digits as a string when
a float overflows). Strings longer than ``max_str_len`` anywhere in an event, object keys
included, are replaced by ``"[REDACTED len=N]"`` unless text is allowed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import orjson

from ..bounded import MAX_DEPTH, json_depth_exceeded
from ..errors import GradienceError

NONFINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NONFINITE_MARKERS = (b'"NaN"', b'Infinity"')


class TextPolicyViolation(GradienceError):
    """A string longer than the limit was about to be written with on_text_violation="raise"."""


def _float_token(x: float) -> Any:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def _int_token(x: int) -> Any:
    """orjson writes integers in [-2**63, 2**64) only; a larger one becomes a float, or its exact
    text when even a float overflows (hex past the interpreter's 4300-digit decimal limit)."""
    if -(2**63) <= x < 2**64:
        return x
    try:
        return float(x)
    except OverflowError:
        pass
    try:
        return str(x)
    except ValueError:
        return hex(x)


def _redact(text: str, max_str_len: int, on_violation: str, where: str) -> str:
    if on_violation == "raise":
        raise TextPolicyViolation(
            f"string of length {len(text)} at {where} exceeds max_str_len={max_str_len}",
            hint="pass allow_text=True to log text deliberately",
        )
    return f"[REDACTED len={len(text)}]"


def sanitize(obj: Any, *, max_str_len: int | None = 256, on_violation: str = "redact", _path: str = "") -> Any:
    """Return a JSON-ready copy of ``obj``: non-finite floats encoded, long strings redacted.

    ``max_str_len=None`` disables redaction. Accepts dataclass-like objects with
    ``to_dict``, enums, tuples/sets, and numpy scalars/arrays.
    """
    if obj is None or obj is True or obj is False:
        return obj
    t = type(obj)
    if t is float:
        return _float_token(obj)
    if t is int:
        return _int_token(obj)
    if t is str:
        if max_str_len is not None and len(obj) > max_str_len:
            return _redact(obj, max_str_len, on_violation, _path or "<value>")
        return obj
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = k if type(k) is str else str(k)
            if max_str_len is not None and len(key) > max_str_len:
                # Keys are text too. Two long keys of one length must not overwrite each other.
                key = base = _redact(key, max_str_len, on_violation, f"{_path or '<value>'} (a key)")
                n = 1
                while key in out:
                    n += 1
                    key = f"{base} #{n}"
            out[key] = sanitize(v, max_str_len=max_str_len, on_violation=on_violation, _path=f"{_path}.{key}")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [
            sanitize(v, max_str_len=max_str_len, on_violation=on_violation, _path=f"{_path}[{i}]")
            for i, v in enumerate(obj)
        ]
    if isinstance(obj, Enum):
        return sanitize(obj.value, max_str_len=max_str_len, on_violation=on_violation, _path=_path)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, float):
        return _float_token(float(obj))
    if isinstance(obj, int):
        return _int_token(int(obj))
    if isinstance(obj, str):
        return sanitize(str(obj), max_str_len=max_str_len, on_violation=on_violation, _path=_path)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return sanitize(to_dict(), max_str_len=max_str_len, on_violation=on_violation, _path=_path)
    tolist = getattr(obj, "tolist", None)  # numpy scalars/arrays, torch tensors
    if callable(tolist):
        return sanitize(tolist(), max_str_len=max_str_len, on_violation=on_violation, _path=_path)
    return sanitize(str(obj), max_str_len=max_str_len, on_violation=on_violation, _path=_path)


def encode_line(event: dict[str, Any]) -> bytes:
    """Encode an already-sanitized event as one ``\\n``-terminated strict-JSON line."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def restore_nonfinite(obj: Any) -> Any:
    """Turn the strings "NaN"/"Infinity"/"-Infinity" back into floats, at any depth."""
    if type(obj) is str:
        return NONFINITE_STRINGS.get(obj, obj)
    if type(obj) is dict:
        return {k: restore_nonfinite(v) for k, v in obj.items()}
    if type(obj) is list:
        return [restore_nonfinite(v) for v in obj]
    return obj


_BARE_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _parse_int(text: str) -> int | float:
    """Integers as orjson reads them: exact within 64 bits, a float beyond (±inf past the float
    range), so no reader path ever hands out an integer that ``float()`` cannot take."""
    if len(text) <= 20:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return float(text)


def decode_line(line: bytes) -> Any:
    """Decode one line. Raises ``ValueError`` when it is not JSON.

    Fast path: orjson. Fallback: the stdlib parser, which accepts the bare ``NaN`` /
    ``Infinity`` tokens written by earlier releases; it reads integers the way orjson does
    (a float outside 64 bits, ±inf past the float range, where orjson gives up).
    """
    try:
        obj = orjson.loads(line)  # bounded inside (it refuses nesting past 1024 levels)
    except orjson.JSONDecodeError:
        # The stdlib parser recurses: measure the nesting first (bounded.py), never rely on the stack.
        deep_at = json_depth_exceeded(line)
        if deep_at is not None:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels (at byte {deep_at})") from None
        try:
            # Strict UTF-8 first: json.loads on bytes would let invalid bytes through as surrogates.
            obj = json.loads(line.decode("utf-8"), parse_constant=_BARE_CONSTANTS.__getitem__, parse_int=_parse_int)
            # A \ud800-style escape yields a lone surrogate no writer can encode again (orjson, which
            # refuses it, is what every later step uses): such a line is malformed, as orjson says.
            json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate escape (not valid Unicode)") from None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError) as exc:
            raise ValueError(str(exc)) from None
    if _NONFINITE_MARKERS[0] in line or _NONFINITE_MARKERS[1] in line:
        obj = restore_nonfinite(obj)
    return obj


# Mappings whose key order carries meaning: PEFT takes the *first* rank_pattern/alpha_pattern
# key that matches a module, so these are written in the order they were built.
ORDERED_KEYS = frozenset({"rank_pattern", "alpha_pattern"})


def _sorted(obj: Any, keep_order: bool = False) -> Any:
    if isinstance(obj, dict):
        items = obj.items() if keep_order else sorted(obj.items(), key=lambda kv: kv[0])
        return {k: _sorted(v, k in ORDERED_KEYS) for k, v in items}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


def dumps_pretty(obj: Any) -> str:
    """Strict JSON for files and ``--json`` output: non-finite numbers as strings, indented,
    keys sorted, except inside ``rank_pattern``/``alpha_pattern`` (their order is PEFT's
    matching order and is kept)."""
    clean = _sorted(sanitize(obj, max_str_len=None))
    return orjson.dumps(clean, option=orjson.OPT_INDENT_2).decode()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as pretty strict JSON via a temp file + rename: never a half-written file."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps_pretty(obj) + "\n")
    os.replace(tmp, path)


# -- files not written by Gradience's writer: a byte-order mark ------------------------------
def source_converter(head: bytes) -> Callable[[bytes, bool], bytes] | None:
    """For a run file that starts with ``head`` (its first bytes): ``None`` when it is plain UTF-8
    (what the writer writes), else a function turning the file's successive byte chunks into UTF-8
    (``convert(chunk, final)``, keeping state across chunks).

    Handles the byte-order marks a copy through other tools can add: UTF-16 LE/BE (what Windows
    PowerShell 5.1's ``>`` redirect writes) and UTF-8 with a BOM. Undecodable bytes become U+FFFD, so
    the line they are on is reported as malformed instead of being dropped silently.
    """
    import codecs

    if head.startswith(codecs.BOM_UTF8):
        name = "utf-8-sig"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        name = "utf-16"
    else:
        return None
    dec = codecs.getincrementaldecoder(name)(errors="replace")

    def convert(chunk: bytes, final: bool = False) -> bytes:
        return dec.decode(chunk, final).encode("utf-8")

    return convert
