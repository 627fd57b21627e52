"""Bounded parsing of the JSON and YAML files users hand to Gradience: one home for the limits.

Python's ``json`` and PyYAML build nested values by recursion, so a file nested deeper than the
interpreter's stack (``{"r": [[[[…]]]]}`` 200,000 levels deep) escapes as ``RecursionError``. Every
reader of a user's JSON or YAML goes through :func:`loads_json` or :func:`load_yaml`, which measure
the nesting first, without recursion, and refuse a file deeper than any real one with a one-line
error naming the file.

Limits (from what real files need):

- depth 64: PEFT adapter configs, TrainingArguments, ``trainer_state.json``, safetensors headers,
  bench YAML and telemetry events nest at most 6 levels; 64 leaves room for any user metadata;
- YAML aliases 1,000: anchors are rare in configs; a "billion laughs" file uses millions;
- text files 64 MiB (:data:`MAX_TEXT_BYTES`): the largest real ones are shard indexes and audit JSON
  of big models (a few MiB); parsing 64 MiB of JSON already takes about a GiB of memory.

Sizes are bounded by each reader for its own kind of file (a safetensors header by its length
field, a telemetry line by the line limit), since what is reasonable differs by kind.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, GradienceError

__all__ = ["MAX_DEPTH", "MAX_TEXT_BYTES", "MAX_YAML_ALIASES", "check_json_depth", "json_depth_exceeded",
           "load_yaml", "loads_json", "read_bytes", "read_json", "read_text"]

MAX_DEPTH = 64
MAX_YAML_ALIASES = 1_000
MAX_TEXT_BYTES = 64 * 1024 * 1024

# A JSON string (skipped whole: brackets inside it do not nest), an opening or a closing bracket. The
# string pattern is the unrolled form, linear in the string's length; an unterminated string runs to
# the end. One pattern per text type, one loop for both.
_TOKEN = r'(?P<s>"[^"\\]*(?:\\.[^"\\]*)*"?)|(?P<o>[\[{])|[\]}]'
_TOKENS: dict[type, re.Pattern[Any]] = {str: re.compile(_TOKEN, re.S), bytes: re.compile(_TOKEN.encode(), re.S)}


def json_depth_exceeded(data: str | bytes, limit: int = MAX_DEPTH) -> int | None:
    """The offset of the first bracket that nests deeper than ``limit``, or None.

    Linear in ``len(data)``, no recursion; valid or not, any text can be measured (a bracket inside
    a string does not count).
    """
    depth = 0
    for m in _TOKENS[type(data)].finditer(data):
        kind = m.lastgroup
        if kind == "o":
            depth += 1
            if depth > limit:
                return m.start()
        elif kind is None:  # a closing bracket
            depth -= 1
    return None


def check_json_depth(data: str | bytes, *, path: object, what: str, limit: int = MAX_DEPTH,
                     error: type[GradienceError] = ConfigError) -> None:
    """Raise ``error`` when ``data`` nests deeper than ``limit`` (see :func:`json_depth_exceeded`)."""
    at = json_depth_exceeded(data, limit)
    if at is not None:
        raise error(f"{what} nests deeper than {limit} levels (at byte {at}); no real {what} does", path=path,
                    hint="the file is corrupt or not what it claims to be")


def loads_json(data: str | bytes, *, path: object, what: str, limit: int = MAX_DEPTH,
               error: type[GradienceError] = ConfigError) -> Any:
    """``json.loads`` with the nesting bounded first.

    Raises:
        ``error`` (a :class:`GradienceError`, default :class:`ConfigError`): deeper than ``limit``,
        not UTF-8, or not JSON (with line and column), each naming ``path``.
    """
    check_json_depth(data, path=path, what=what, limit=limit, error=error)
    try:
        # Strict UTF-8 (json.loads on bytes would let invalid bytes through as surrogates).
        return _valid_unicode(json.loads(data.decode("utf-8") if isinstance(data, bytes) else data),
                              path=path, what=what, error=error)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start})", path=path,
                    hint="the file is corrupt or not what it claims to be") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})", path=path,
                    hint="fix the syntax, or re-save the file") from None
    except ValueError as exc:  # an integer of more digits than int() converts (sys.get_int_max_str_digits)
        raise error(f"{what} is not usable JSON ({str(exc).splitlines()[0][:120]})", path=path,
                    hint="the file is corrupt or not what it claims to be") from None


def _valid_unicode(value: Any, *, path: object, what: str, error: type[GradienceError]) -> Any:
    """``value`` when every string in it (keys too) is valid Unicode; a ``\\ud800``-style escape
    leaves a lone surrogate that no path, writer or terminal can encode, so the file is refused.
    Iterative (the nesting is already bounded, but no recursion is needed)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise error(f"{what} holds a string that is not valid Unicode (a lone surrogate escape)",
                            path=path, hint="the file is corrupt or not what it claims to be") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return value


def load_yaml(text: str, *, path: object, what: str, limit: int = MAX_DEPTH, max_aliases: int = MAX_YAML_ALIASES,
              error: type[GradienceError] = ConfigError) -> Any:
    """``yaml.safe_load`` with nesting and aliases bounded first, by walking PyYAML's event stream
    (its parser is a state machine: no recursion, no values built).

    Raises:
        ``error``: deeper than ``limit``, more than ``max_aliases`` aliases, or invalid YAML (first line
        of PyYAML's message), each naming ``path``.
    """
    import yaml

    depth = aliases = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > limit:
                    line = ev.start_mark.line + 1 if ev.start_mark is not None else "?"
                    raise error(f"{what} nests deeper than {limit} levels (line {line}); no real "
                                f"{what} does", path=path, hint="the file is corrupt or not what it claims to be")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise error(f"{what} uses more than {max_aliases} YAML aliases; refusing a possible alias bomb",
                                path=path, hint="write the values out instead of aliasing them")
        return _valid_unicode(yaml.safe_load(text), path=path, what=what, error=error)
    except ValueError as exc:  # an integer of more digits than int() converts
        raise error(f"{what} is not usable YAML ({str(exc).splitlines()[0][:120]})", path=path,
                    hint="the file is corrupt or not what it claims to be") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise error(f"{what} is not valid YAML: {first}", path=path, hint="fix the syntax") from None


def read_bytes(path: Path, *, what: str, error: type[GradienceError] = ConfigError,
               max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """A file's bytes, at most ``max_bytes`` of them, or ``error`` naming the file (missing, a
    folder, unreadable, larger than ``max_bytes``)."""
    try:
        with open(path, "rb") as f:
            # read(n) allocates n bytes up front: ask for what the file holds, not the limit.
            data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
    except FileNotFoundError:
        raise error(f"{what} not found", path=path, hint="check the path") from None
    except IsADirectoryError:
        raise error(f"expected a {what} file, got a directory", path=path) from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror}", path=path) from None
    if len(data) > max_bytes:
        raise error(f"{what} is larger than {max_bytes >> 20} MiB; no real {what} is", path=path,
                    hint="the file is corrupt or not what it claims to be")
    return data


def read_json(path: Path, *, what: str, error: type[GradienceError] = ConfigError,
              max_bytes: int = MAX_TEXT_BYTES, limit: int = MAX_DEPTH) -> Any:
    """A JSON file's value, bounded in size (``max_bytes``) and nesting (``limit``); every
    failure is ``error`` naming the file."""
    return loads_json(read_bytes(path, what=what, error=error, max_bytes=max_bytes), path=path, what=what,
                      limit=limit, error=error)


def read_text(path: Path, *, what: str, error: type[GradienceError] = ConfigError,
              max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A file's UTF-8 text, or ``error`` naming the file (missing, a folder, unreadable, not UTF-8,
    larger than ``max_bytes``)."""
    data = read_bytes(path, what=what, error=error, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start})", path=path,
                    hint="the file is corrupt or not what it claims to be") from None
