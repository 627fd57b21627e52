"""Streaming reader for telemetry v1 files.

Memory does not depend on file size: events are decoded line by line and folded into
bounded accumulators. Bad lines never crash the reader (unless ``strict_schema``): each
becomes one :class:`TelemetryIssue` with its 1-based line number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import GradienceError, TelemetryFormatError
from .encoding import decode_line, restore_nonfinite, source_converter
from .health import DEFAULT_THRESHOLDS, GradThresholds
from .schema import ENVELOPE_KEYS, MAX_LINE_BYTES, SCHEMA_ID, ConfigSnapshot
from .snapshot import RunAccumulator, SignalSnapshot, normalize_split

__all__ = ["LineDecoder", "TelemetryIssue", "TelemetryReader"]

ISSUE_KINDS = (
    "malformed_json",
    "not_object",
    "wrong_schema",
    "missing_envelope_key",
    "invalid_envelope",
    "truncated_last_line",
)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class TelemetryIssue:
    line: int
    kind: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.message}"


def _bounded_lines(f: Any, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The file's lines, each at most ``limit`` bytes; ``None`` stands for a longer line, which is
    read past in ``limit``-sized pieces (a file of gigabytes without a newline never sits in memory)."""
    readline = f.readline
    while True:
        raw = readline(limit + 1)
        if not raw:
            return
        if len(raw) <= limit:
            yield raw
            continue
        del raw
        piece = b""
        while True:  # the rest of the giant line, a megabyte at a time
            piece = readline(1 << 20)
            if not piece or piece.endswith(b"\n"):
                break
        yield None


def _converted_lines(f: Any, convert: Callable[[bytes, bool], bytes], chunk: int = 1 << 20,
                     limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines (with their newline; the last one may lack it) of a file in another encoding, as
    UTF-8; ``None`` for a line longer than ``limit`` (as :func:`_bounded_lines`)."""
    rest = b""
    skipping = False
    while True:
        data = f.read(chunk)
        rest += convert(data, not data)
        *lines, rest = rest.split(b"\n")
        for ln in lines:
            if skipping:  # the end of a giant line
                skipping = False
                continue
            yield ln + b"\n" if len(ln) <= limit else None
        if skipping or len(rest) > limit:
            if not skipping:
                yield None
            skipping, rest = True, b""
        if not data:
            break
    if rest:
        yield rest


class LineDecoder:
    """Validates and decodes lines; shared by the file reader and the live tailer (watch)."""

    def __init__(self, *, strict_schema: bool = False, path: object = None) -> None:
        self.strict_schema = strict_schema
        self.path = path

    def _issue(self, lineno: int, kind: str, message: str) -> TelemetryIssue:
        issue = TelemetryIssue(lineno, kind, message)
        if self.strict_schema:
            raise TelemetryFormatError(f"{issue}", path=self.path, hint="fix or remove the line, or read without --strict-schema")
        return issue

    def decode(self, raw: bytes, lineno: int, *, complete: bool = True) -> dict[str, Any] | TelemetryIssue | None:
        """Return the event dict, an issue, or ``None`` for a blank line."""
        if not raw.strip():
            return None
        try:
            obj = decode_line(raw)
        except ValueError as exc:
            if not complete:
                return self._issue(lineno, "truncated_last_line", "last line has no newline and is not valid JSON (torn write?)")
            return self._issue(lineno, "malformed_json", str(exc).split("\n")[0][:120])
        if not isinstance(obj, dict):
            return self._issue(lineno, "not_object", f"expected a JSON object, got {type(obj).__name__}")
        for key in ENVELOPE_KEYS:
            if key not in obj:
                return self._issue(lineno, "missing_envelope_key", f"missing envelope key {key!r}")
        if obj["schema"] != SCHEMA_ID:
            return self._issue(lineno, "wrong_schema", f"schema {str(obj['schema'])[:60]!r} is not {SCHEMA_ID!r}")
        rid = obj["run_id"]
        if type(rid) is not str:
            # run_id keys the runs: a number reads as its text (the same run as "7"); anything else
            # (null, a boolean, a list, an object) cannot name a run.
            if isinstance(rid, bool) or not isinstance(rid, (int, float)):
                return self._issue(lineno, "invalid_envelope",
                                   f"run_id must be a string, got {'null' if rid is None else type(rid).__name__}")
            obj["run_id"] = str(rid)
        return obj


class TelemetryReader:
    """Read a telemetry v1 JSONL file.

    Args:
        path: the file (must exist).
        strict_schema: raise :class:`TelemetryFormatError` on the first bad line instead of
            recording an issue.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict_schema: bool = False,
                 thresholds: GradThresholds = DEFAULT_THRESHOLDS) -> None:
        self.path = Path(path)
        self.strict_schema = strict_schema
        self.thresholds = thresholds
        if not self.path.exists():
            raise GradienceError("telemetry file not found", path=self.path, hint="check the path (a run writes <out_dir>/run.jsonl)")
        if self.path.is_dir():
            raise GradienceError("expected a telemetry file, got a directory", path=self.path,
                                 hint=f"pass {self.path / 'run.jsonl'}")
        self._decoder = LineDecoder(strict_schema=strict_schema, path=self.path)
        self._issues: dict[int, TelemetryIssue] = {}
        self._scanned = False

    # -- raw streaming --------------------------------------------------------------
    def _iter_raw(self) -> Iterator[dict[str, Any]]:
        """Every valid event in file order; bad lines are recorded as issues once."""
        decode = self._decoder.decode
        issues = self._issues
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise GradienceError(f"cannot read telemetry file: {exc.strerror}", path=self.path) from None
        with f:
            lineno = 0
            convert = source_converter(f.read(4))
            f.seek(0)
            for raw in (_bounded_lines(f) if convert is None else _converted_lines(f, convert)):
                lineno += 1
                if raw is None:  # a line past MAX_LINE_BYTES, skipped without holding it
                    if lineno not in issues:
                        issues[lineno] = TelemetryIssue(lineno, "malformed_json",
                                                        f"line longer than {MAX_LINE_BYTES} bytes")
                    continue
                # Fast path (the hot loop of summarize): a well-formed v1 line.
                try:
                    obj = loads(raw)
                except JSONDecodeError:
                    obj = None
                if (type(obj) is dict and obj.get("schema") == SCHEMA_ID and type(obj.get("run_id")) is str
                        and "ts" in obj and "event" in obj and "step" in obj):
                    if b'NaN"' in raw or b'Infinity"' in raw:
                        obj = restore_nonfinite(obj)
                    yield obj
                    continue
                # Slow path: bare NaN tokens from older files, or a bad line to report.
                out = decode(raw, lineno, complete=raw.endswith(b"\n"))
                if out is None:
                    continue
                if type(out) is dict:
                    yield out
                elif lineno not in issues:
                    issues[lineno] = out  # type: ignore[assignment]
        self._scanned = True

    def iter_events(self, event_type: str | None = None, run_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream events, optionally only one event type and/or one run."""
        for ev in self._iter_raw():
            if event_type is not None and ev["event"] != event_type:
                continue
            if run_id is not None and ev["run_id"] != run_id:
                continue
            yield ev

    @property
    def issues(self) -> list[TelemetryIssue]:
        """Bad lines, each once, in line order (scans the file if not yet read in full)."""
        if not self._scanned:
            for _ in self._iter_raw():
                pass
        return [self._issues[k] for k in sorted(self._issues)]

    # -- queries --------------------------------------------------------------------
    def runs(self) -> list[str]:
        """Run ids in order of first appearance."""
        seen: dict[str, None] = {}
        for ev in self._iter_raw():
            seen.setdefault(ev["run_id"], None)
        return list(seen)

    def last_run_id(self) -> str | None:
        last = None
        for ev in self._iter_raw():
            last = ev["run_id"]
        return last

    def latest_config(self, run_id: str | None = None) -> ConfigSnapshot | None:
        """The newest ``run_start`` config, typed (see :meth:`ConfigSnapshot.typed`)."""
        cfg = None
        for ev in self.iter_events("run_start", run_id=run_id):
            if isinstance(ev.get("config"), dict):
                cfg = ev["config"]
        return ConfigSnapshot.from_dict(cfg).typed() if cfg is not None else None

    def latest_eval(self, split: str = "test", run_id: str | None = None) -> dict[str, Any] | None:
        """The newest eval event for ``split`` (``eval``/``validation`` count as ``test``)."""
        want = normalize_split(split)
        found = None
        for ev in self.iter_events("eval", run_id=run_id):
            if normalize_split(ev.get("split")) == want:
                found = ev
        return found

    def accumulate(self) -> dict[str, RunAccumulator]:
        """One pass over the file; an accumulator per run id (insertion order = file order)."""
        accs: dict[str, RunAccumulator] = {}
        for ev in self._iter_raw():
            rid = ev["run_id"]
            acc = accs.get(rid)
            if acc is None:
                acc = accs[rid] = RunAccumulator(rid, self.thresholds)
            elif ev["event"] == "run_start":
                accs[rid] = accs.pop(rid)  # a resumed run becomes the latest again
            acc.add(ev)
        return accs

    def summarize(self, run_id: str | None = None) -> SignalSnapshot:
        """SignalSnapshot of ``run_id`` (default: the last run in the file)."""
        accs = self.accumulate()
        if not accs:
            snap = SignalSnapshot(status="empty")
            return snap
        # Default: the run that started last. A requested id may be any unique prefix.
        from .run_select import resolve_run_id

        return accs[resolve_run_id(run_id, list(accs), self.path)].snapshot()
