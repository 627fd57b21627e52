"""Append-only JSONL writer for telemetry v1.

Guarantees (docs/telemetry.md#encoding-and-safety): never truncates; every event is one complete line handed to the
kernel in one ``write`` on an ``O_APPEND`` descriptor, so a crash leaves at most one
partial last line and concurrent appenders never interleave inside a line. Only the
global rank-0 process writes in a distributed run.

Telemetry never kills training: when a write fails (a full disk, a quota, a file size limit), the
writer says so once on stderr, keeps the unwritten lines in memory (up to ``PENDING_LIMIT_BYTES``,
then counts what it drops) and writes them, after terminating any torn line, as soon as a later write
succeeds, followed by a ``TELEMETRY_GAP`` alert that says how many events were delayed or lost.
Opening a file whose last line is torn (a crash, a full disk) starts on a fresh line.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import GradienceError
from .encoding import encode_line, sanitize
from .schema import (
    ENVELOPE_KEYS,
    EVENT_NAMES,
    OPTIONAL_ENVELOPE_KEYS,
    RUN_STATUSES,
    SCHEMA_ID,
    ConfigSnapshot,
    Event,
    Recommendation,
    Severity,
)

__all__ = ["TelemetryWriter", "global_rank"]

_ALWAYS_FLUSH = frozenset({Event.ALERT.value, Event.RUN_END.value})
# Unwritten lines kept in memory while writes fail (about 10,000 train steps); beyond it they are counted.
PENDING_LIMIT_BYTES = 4 << 20


def global_rank() -> int:
    """Global process rank from the launcher's environment (torchrun, accelerate, SLURM, MPI)."""
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        value = os.environ.get(var)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


class TelemetryWriter:
    """Write telemetry v1 events to ``path`` (appending; several runs may share a file).

    Args:
        path: the JSONL file; parent directories are created.
        run_id: keep the same id to resume a run; default a new UUID4.
        max_str_len: strings longer than this, anywhere in an event, are redacted.
        allow_text: opt out of redaction (you are deliberately logging text).
        on_text_violation: ``"redact"`` (default) or ``"raise"``.
        flush_every: 1 (default) writes each event immediately; N > 1 buffers up to N
            complete lines for very high event rates. ``alert`` and ``run_end`` always flush.
        enabled: ``None`` means "only on global rank 0"; ``False`` makes every call a no-op.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        run_id: str | None = None,
        *,
        max_str_len: int = 256,
        allow_text: bool = False,
        on_text_violation: str = "redact",
        flush_every: int = 1,
        enabled: bool | None = None,
    ) -> None:
        if on_text_violation not in ("redact", "raise"):
            raise ValueError("on_text_violation must be 'redact' or 'raise'")
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.path = Path(path)
        self.run_id = run_id or str(uuid.uuid4())
        self.max_str_len = None if allow_text else int(max_str_len)
        self.on_text_violation = on_text_violation
        self.flush_every = int(flush_every)
        self.enabled = (global_rank() == 0) if enabled is None else bool(enabled)
        self._fd: int | None = None
        self._buffer: list[bytes] = []
        self._started = False
        self._ended = False
        self.events_written = 0
        # Write failures (telemetry never kills training): the first error, lines not yet written,
        # lines dropped past PENDING_LIMIT_BYTES, and whether a line was left torn in the file.
        self.write_error: OSError | None = None
        self._pending: list[bytes] = []
        self.events_dropped = 0
        self._torn = False
        if self.enabled:
            self._open()

    # -- file handling -------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: never truncate, and each write lands atomically at the end.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GradienceError(
                f"cannot open telemetry file for appending: {exc.strerror}",
                path=self.path,
                hint="choose a writable location",
            ) from None
        # A torn last line (a crash or a full disk in an earlier process): start on a fresh line, so
        # this process's first event is not glued onto it.
        try:
            with open(self.path, "rb") as f:
                head = f.read(2)
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    self._torn = f.read(1) != b"\n"
        except OSError:
            head = b""
        if head in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 (a PowerShell redirect): UTF-8 lines would corrupt it
            os.close(self._fd)
            self._fd = None
            raise GradienceError("the telemetry file is UTF-16; appending UTF-8 events would corrupt it", path=self.path,
                                 hint="readers take it as it is; to append, convert it first "
                                      "(iconv -f UTF-16 -t UTF-8 IN > OUT) or write to a new file")

    def _write(self, data: bytes) -> tuple[int, OSError | None]:
        """Hand whole lines to the kernel; returns how many bytes of ``data`` reached the file (all of
        them, or fewer when a write failed) and the error that stopped it."""
        assert self._fd is not None
        done = 0
        try:
            if self._torn:
                if os.write(self._fd, b"\n") != 1:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self._torn = False
            while done < len(data):
                n = os.write(self._fd, memoryview(data)[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
                self._torn = data[done - 1:done] != b"\n"
        except OSError as exc:
            return done, exc
        return done, None

    def flush(self) -> None:
        """Write buffered and pending lines. A failed write is reported once (stderr) and never raised:
        the unwritten lines stay pending and are written, followed by a ``TELEMETRY_GAP`` alert, once
        the disk has room."""
        if self._fd is None or not (self._buffer or self._pending):
            return
        self._reopen_if_removed()
        data = b"".join(self._pending + self._buffer)
        self._buffer.clear()
        self._pending.clear()
        done, failure = self._write(data)
        if failure is None:
            if self.write_error is not None:
                self._report_gap()
            return
        rest = data[done:]
        lost = 0
        if done and data[done - 1:done] != b"\n":  # this write tore a line: its remainder alone is garbage
            cut = rest.find(b"\n") + 1
            rest, lost = rest[cut:], 1
        lines = [ln + b"\n" for ln in rest.split(b"\n")[:-1]]
        kept: list[bytes] = []
        size = 0
        for ln in reversed(lines):  # keep the newest within the limit (a run's end matters most)
            if size + len(ln) > PENDING_LIMIT_BYTES:
                lost += 1
                continue
            kept.append(ln)
            size += len(ln)
        self._pending = kept[::-1]
        self.events_dropped += lost
        if self.write_error is None:
            exc = self.write_error = failure
            print(f"gradience: cannot write telemetry to {self.path} ({exc.strerror or exc}); training "
                  "continues, the events are kept in memory and written when the disk has room", file=sys.stderr,
                  flush=True)

    def _reopen_if_removed(self) -> None:
        """The file was deleted (or moved away) under the open descriptor: appending to it would lose
        every later event with the inode. Start a new file at the path and say what happened."""
        try:
            removed = os.fstat(self._fd).st_nlink == 0 if self._fd is not None else False
        except OSError:
            return
        if not removed:
            return
        lost = self.events_written - len(self._pending) - len(self._buffer)
        os.close(self._fd)  # type: ignore[arg-type]
        self._fd = None
        self._torn = False
        self._open()
        print(f"gradience: the telemetry file {self.path} was removed while this run was writing it; writing a "
              f"new one from here (the {lost} earlier event(s) went with the removed file)", file=sys.stderr,
              flush=True)
        self._buffer.insert(0, encode_line(self._record(Event.ALERT.value, None, {
            "severity": Severity.WARNING.value, "code": "TELEMETRY_GAP", "dropped": lost,
            "message": f"the telemetry file was removed during the run; this file starts mid-run ({lost} earlier "
                       "event(s) are not in it)"})))

    def _report_gap(self) -> None:
        exc, self.write_error = self.write_error, None
        dropped, self.events_dropped = self.events_dropped, 0
        why = (exc.strerror or str(exc)) if exc is not None else "write failed"
        msg = (f"telemetry writes failed ({why}); the events were written late"
               + (f", {dropped} could not be kept and are missing" if dropped else ", none is missing"))
        self.emit(Event.ALERT, step=None, code="TELEMETRY_GAP", severity=Severity.WARNING.value, message=msg,
                  dropped=dropped)

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            if self._pending or self.events_dropped:  # still failing at the end: say what is lost
                why = self.write_error.strerror if self.write_error is not None else "write failed"
                print(f"gradience: {len(self._pending) + self.events_dropped} telemetry event(s) could not be "
                      f"written to {self.path} ({why})", file=sys.stderr, flush=True)
            os.close(self._fd)
            self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.enabled and self._started and not self._ended and not self.closed:
                if exc_type is None:
                    self.run_end(status="ok")
                elif issubclass(exc_type, KeyboardInterrupt):
                    self.run_end(status="aborted", reason="KeyboardInterrupt")
                else:
                    self.run_end(status="error", reason=f"{exc_type.__name__}: {exc}")
        finally:
            self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- generic ---------------------------------------------------------------------
    def _record(self, name: str, step: int | None, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The sanitized event: the envelope, then ``payload``."""
        record: dict[str, Any] = {
            "schema": SCHEMA_ID,
            "ts": time.time(),
            "run_id": self.run_id,
            "event": name,
            "step": None if step is None else int(step),
            # Seconds on this machine's monotonic clock: durations survive wall-clock steps
            # (NTP, a changed time zone setting); only differences within one process mean anything.
            "mono": round(time.monotonic(), 6),
        }
        record.update(payload)
        return sanitize(record, max_str_len=self.max_str_len, on_violation=self.on_text_violation)


    def emit(self, event: str | Event, step: int | None = None, **payload: Any) -> dict[str, Any] | None:
        """Write one event; returns the sanitized event (``None`` when disabled)."""
        name = event.value if isinstance(event, Event) else str(event)
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown telemetry event {name!r}; stable names: {sorted(EVENT_NAMES)}")
        for key in (*ENVELOPE_KEYS, *OPTIONAL_ENVELOPE_KEYS):
            if key in payload:
                raise ValueError(f"payload key {key!r} collides with the envelope")
        if not self.enabled:
            return None
        if self._fd is None:
            raise GradienceError("telemetry writer is closed", path=self.path)
        clean = self._record(name, step, payload)
        self._buffer.append(encode_line(clean))
        self.events_written += 1
        if len(self._buffer) >= self.flush_every or name in _ALWAYS_FLUSH:
            self.flush()
        if name == Event.RUN_START.value:
            self._started = True
            self._ended = False
        elif name == Event.RUN_END.value:
            self._ended = True
        return clean

    # -- helpers with the signatures of earlier releases -------------------------------
    def run_start(
        self, config: ConfigSnapshot | Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
        *, step: int | None = None, **extra: Any,
    ) -> dict[str, Any] | None:
        cfg = ConfigSnapshot.from_dict(dict(config) if isinstance(config, Mapping) else config).to_dict()
        return self.emit(Event.RUN_START, step=step, config=cfg, meta=dict(meta or {}), **extra)

    def train_step(
        self, step: int, loss: float | None = None, lr: float | list[float] | None = None, **extra: Any
    ) -> dict[str, Any] | None:
        payload: dict[str, Any] = {}
        if loss is not None:
            payload["loss"] = loss
        if lr is not None:
            payload["lr"] = lr
        payload.update({k: v for k, v in extra.items() if v is not None})
        return self.emit(Event.TRAIN_STEP, step=step, **payload)

    def eval(
        self, step: int | None, split: str = "test", metrics: Mapping[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any] | None:
        return self.emit(Event.EVAL, step=step, split=split, metrics=dict(metrics or {}), **extra)

    def metrics(
        self, kind: str, metrics: Mapping[str, Any] | None = None, step: int | None = None, **extra: Any
    ) -> dict[str, Any] | None:
        return self.emit(Event.METRICS, step=step, kind=kind, metrics=dict(metrics or {}), **extra)

    def alert(
        self,
        severity: str | Severity = "warning",
        code: str = "ALERT",
        message: str = "",
        step: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        return self.emit(
            Event.ALERT, step=step, severity=Severity.parse(severity).value, code=str(code),
            message=message, context=dict(context or {}),
        )

    def recommendation(
        self, recommendations: Iterable[Recommendation | Mapping[str, Any]], step: int | None = None
    ) -> dict[str, Any] | None:
        recs = [r.to_dict() if isinstance(r, Recommendation) else dict(r) for r in recommendations]
        return self.emit(Event.RECOMMENDATION, step=step, recommendations=recs)

    def run_end(
        self, status: str = "ok", reason: str | None = None, summary: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> dict[str, Any] | None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run_end status must be one of {RUN_STATUSES}, got {status!r}")
        payload: dict[str, Any] = {"status": status}
        if reason is not None:
            payload["reason"] = reason
        if summary is not None:
            payload["summary"] = dict(summary)
        return self.emit(Event.RUN_END, step=step, **payload)
