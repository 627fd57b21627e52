"""Hypothesis strategies that turn a valid file into a hostile one.

Two families, both drawn for every reader:

- structured: the file's value with one key's value replaced by a value of another type, a huge
  number, NaN/Inf, a long string or a deeply nested list; a key written twice;
- byte-level: the serialised file truncated, with bits flipped, with invalid UTF-8 spliced in,
  nested far deeper than any real file, or empty.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from hypothesis import strategies as st

DEPTHS = (65, 1_000, 100_000)  # just past the limit, deep, and deeper than the interpreter's stack


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# Values a key should never hold; ``DEEP`` and ``BIGINT`` are spliced in as text (json.dumps would
# recurse on the first, and the second needs the raw digits).
HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, -(2**63), 2**64, 10**30, 1e308, math.nan, math.inf, -math.inf, 0.5, "", "x",
    "[/]", "\u0000", "9" * 50, "é" * 10, [], [None], [1, "a"], {}, {"a": {"b": []}}, "DEEP", "BIGINT",
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a JSON value (the root included)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    out = list(obj)
    out[head] = _replace(obj[head], rest, value)
    return out


def dumps_hostile(obj: Any, depth: int, digits: int) -> str:
    """JSON text of ``obj`` with the ``"DEEP"`` / ``"BIGINT"`` markers written out raw."""
    text = json.dumps(obj, allow_nan=True)
    return text.replace('"DEEP"', _deep(depth)).replace('"BIGINT"', "1" * digits)


@st.composite
def structured(draw: st.DrawFn, seed: Any) -> bytes:
    """``seed`` with one value replaced (or a key duplicated), serialised as JSON."""
    path = draw(st.sampled_from(_paths(seed)))
    value = draw(st.sampled_from(HOSTILE_VALUES) | st.integers() | st.floats() | st.text(max_size=40))
    depth = draw(st.sampled_from(DEPTHS))
    digits = draw(st.sampled_from((20, 400, 5_000)))
    if draw(st.booleans()) and isinstance(seed, dict) and seed:
        key = draw(st.sampled_from(sorted(seed)))  # the same key twice: the later one wins in json
        body = dumps_hostile(seed, depth, digits)[:-1]
        return (body + f', {json.dumps(key)}: ' + dumps_hostile(value, depth, digits) + "}").encode()
    return dumps_hostile(_replace(seed, path, value), depth, digits).encode()


@st.composite
def byte_level(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` truncated, bit-flipped, with invalid UTF-8 spliced in, wrapped deep, or empty."""
    kind = draw(st.sampled_from(("truncate", "flip", "utf8", "deep", "empty", "splice")))
    if kind == "empty" or not raw:
        return b""
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        b = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if kind == "utf8":
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xfe\xff", b"\x00"))) + raw[i:]
    if kind == "deep":
        n = draw(st.sampled_from(DEPTHS))
        return b"[" * n + raw + b"]" * n
    i = draw(st.integers(0, len(raw)))
    return raw[:i] + draw(st.binary(max_size=64)) + raw[i:]


def json_file(seed: Any) -> st.SearchStrategy[bytes]:
    """Hostile variants of the JSON file holding ``seed``."""
    raw = json.dumps(seed, indent=2).encode()
    return structured(seed) | byte_level(raw)


def yaml_file(seed: Any) -> st.SearchStrategy[bytes]:
    """Hostile variants of the YAML file holding ``seed`` (JSON is YAML: the structured family
    applies as is), plus YAML's own: tags, anchors and aliases, deep flow nesting."""
    import yaml

    raw = yaml.safe_dump(seed).encode()
    own = st.sampled_from((
        b"a: !!python/object/apply:os.system ['true']\n",
        b"a: &x [1]\nb: [*x, *x, *x]\n",
        b"a: &a [" + b"x," * 10 + b"]\n" + b"".join(b"%c: &%c [*%c,*%c,*%c]\n" % ((98 + i,) * 2 + (97 + i,) * 3)
                                                    for i in range(9)),
        b"a: " + b"[" * 100_000 + b"\n",
        b"a: " + b"{x: " * 5_000 + b"1" + b"}" * 5_000 + b"\n",
        b"\xff\xfe" + "a: 1\n".encode("utf-16-le"),
        b"- - - - 1\n",
        b"? [1, 2]\n: 3\n",
    ))
    return structured(seed) | byte_level(raw) | own


def safetensors_bytes(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def safetensors_file(draw: st.DrawFn, header: dict[str, Any], body: bytes) -> bytes:
    """Hostile variants of a safetensors file: its header's values replaced (structured), its
    length field forged, its body cut or extended, or the whole file mutated byte by byte."""
    kind = draw(st.sampled_from(("header", "header", "length", "body", "bytes", "deep")))
    if kind == "header":
        text = draw(structured(header))
        return struct.pack("<Q", len(text)) + text + body
    if kind == "length":
        raw = json.dumps(header).encode()
        n = draw(st.sampled_from((0, 1, len(raw) - 1, len(raw) + 1, 2**63, 2**64 - 1, 100 * 2**20 + 1)))
        n = draw(st.just(n) | st.integers(0, 2**64 - 1))
        return struct.pack("<Q", n) + raw + body
    if kind == "body":
        cut = draw(st.integers(0, len(body)))
        return safetensors_bytes(header, body[:cut] + draw(st.binary(max_size=16)))
    if kind == "deep":
        n = draw(st.sampled_from(DEPTHS))
        raw = b"[" * n + b"]" * n
        return struct.pack("<Q", len(raw)) + raw + body
    return draw(byte_level(safetensors_bytes(header, body)))
