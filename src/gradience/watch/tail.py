"""Incremental follower for a growing run.jsonl, and the live state ``watch`` renders.

Nothing is re-parsed from the start: :class:`FileFollower` remembers a byte offset, the
file's identity (device, inode) and a fingerprint of its first bytes, reads only what was
appended since the last poll and holds back a partial last line until its newline
arrives. A file that does not exist yet is waited for; a file that was replaced (new
inode, e.g. ``mv new run.jsonl``) or truncated / rewritten in place is read again from
the start, and the consumer is told so it can drop what it folded.

:class:`WatchState` feeds each complete line through the telemetry
:class:`~gradience.telemetry.reader.LineDecoder` into one
:class:`~gradience.telemetry.snapshot.RunAccumulator` per run id, plus bounded whole-run
histories (loss, learning rate, alert/recommendation log) that the dashboard draws.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..telemetry.encoding import source_converter
from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds
from ..telemetry.reader import LineDecoder, TelemetryIssue
from ..telemetry.run_select import match_run_id
from ..telemetry.schema import MAX_LINE_BYTES
from ..telemetry.snapshot import GRAD_HISTORY, REPLAY_WINDOW, RunAccumulator, SignalSnapshot

__all__ = ["FileFollower", "FollowResult", "RunHistory", "SeriesBuffer", "WatchState", "WatchView"]

# Bytes compared to detect a file rewritten in place (same inode, same or larger size).
_HEAD_BYTES = 256
# A single line longer than this is not telemetry; it is dropped as one issue rather than
# held in memory while we wait for its newline.
DEFAULT_CHUNK = 1 << 20
MAX_KEPT_ISSUES = 100
MAX_KEPT_LOG = 200
MAX_KEPT_NOTICES = 20


# ---------------------------------------------------------------------------------------
# bytes -> lines
# ---------------------------------------------------------------------------------------
@dataclass
class FollowResult:
    """What one :meth:`FileFollower.read` produced.

    ``lines`` are complete lines (without the newline) with their 1-based line numbers.
    ``reset`` is set when the file was replaced or truncated: the lines start again at
    line 1 and everything folded from the old content should be dropped.
    """

    lines: list[tuple[int, bytes]] = field(default_factory=list)
    reset: bool = False
    reset_reason: str | None = None
    oversized: list[int] = field(default_factory=list)  # line numbers of dropped giant lines


class FileFollower:
    """Follow one file by byte offset (``tail -F`` semantics, but line-exact).

    Args:
        path: the file; it may not exist yet.

    Attributes:
        offset: bytes consumed so far (complete lines plus the held-back partial line).
        lineno: number of complete lines handed out since the last reset.
        size: file size in bytes at the last poll (0 while missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.lineno = 0
        self.size = 0
        self.exists = False
        self.partial = b""
        self.partial_since: float | None = None  # monotonic time the partial line last grew
        self._identity: tuple[int, int] | None = None
        self._head = b""
        self._skipping = False  # inside an oversized line: drop bytes until its newline
        self._convert: Any = None  # a UTF-16 / UTF-8-with-BOM file: its chunks turned into UTF-8

    @property
    def caught_up(self) -> bool:
        """True when every byte present at the last poll has been consumed."""
        return self.offset >= self.size

    def _restart(self) -> None:
        self.offset = 0
        self.lineno = 0
        self.partial = b""
        self.partial_since = None
        self._head = b""
        self._skipping = False
        self._convert = None

    def read(self, max_bytes: int = DEFAULT_CHUNK) -> FollowResult:
        """Consume up to ``max_bytes`` new bytes and return the complete lines among them."""
        out = FollowResult()
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            if self.exists:
                # Gone (mid-rotation, or deleted): whatever reappears is a new file.
                self.exists = False
                self._identity = None
                out.reset, out.reset_reason = True, "file disappeared"
                self._restart()
            self.size = 0
            return out
        except (IsADirectoryError, PermissionError):
            raise
        with f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino)
            reason = None
            if self._identity is not None and identity != self._identity:
                reason = "file was replaced"
            elif st.st_size < self.offset:
                reason = "file was truncated"
            elif self._head:
                head = os.pread(f.fileno(), len(self._head), 0)
                if head != self._head:
                    reason = "file was rewritten"
            if reason is not None:
                out.reset, out.reset_reason = True, reason
                self._restart()
            self._identity = identity
            self.exists = True
            self.size = st.st_size
            if st.st_size <= self.offset:
                return out
            f.seek(self.offset)
            data = f.read(max_bytes)
        if not data:
            return out
        if len(self._head) < _HEAD_BYTES and self.offset < _HEAD_BYTES:
            self._head = (self._head + data)[:_HEAD_BYTES]
        if self.offset == 0:  # the same encodings the file reader accepts (a byte-order mark)
            self._convert = source_converter(data[:4])
        self.offset += len(data)
        self._split(data if self._convert is None else self._convert(data, False), out)
        return out

    def _split(self, data: bytes, out: FollowResult) -> None:
        pieces = data.split(b"\n")
        tail = pieces.pop()  # bytes after the last newline: an unfinished line (maybe empty)
        for i, piece in enumerate(pieces):
            if i == 0:
                if self._skipping:
                    self._skipping = False
                    self.partial = b""
                    continue
                piece = self.partial + piece
                self.partial = b""
            self.lineno += 1
            out.lines.append((self.lineno, piece))
        if self._skipping:
            return
        if pieces:
            self.partial = tail
        else:
            self.partial += tail
        if len(self.partial) > MAX_LINE_BYTES:
            self.lineno += 1
            out.oversized.append(self.lineno)
            self.partial = b""
            self._skipping = True
        self.partial_since = time.monotonic() if self.partial else None


# ---------------------------------------------------------------------------------------
# bounded whole-run histories
# ---------------------------------------------------------------------------------------
def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


class SeriesBuffer:
    """A whole-run series in bounded memory.

    Values are averaged in buckets of ``bucket`` consecutive points; once ``capacity``
    buckets exist, adjacent pairs merge and the bucket size doubles. So a run of any
    length is kept as at most ``capacity`` evenly spaced means (NaN/Inf do not enter a
    mean; a bucket with no finite value is NaN, which a sparkline marks).
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.bucket = 1
        self.n = 0
        self._buckets: list[float] = []
        self._pending: list[float] = []

    def append(self, value: float) -> None:
        self.n += 1
        self._pending.append(value)
        if len(self._pending) < self.bucket:
            return
        self._buckets.append(_mean_finite(self._pending))
        self._pending = []
        if len(self._buckets) >= self.capacity:
            b = self._buckets
            self._buckets = [_mean_finite([b[i], b[i + 1]]) for i in range(0, len(b), 2)]
            self.bucket *= 2

    def drop_last(self, k: int) -> None:
        """Forget the last ``k`` values (a resumed run replays them). Exact while they lie in the
        open bucket or in whole buckets; a bucket only partly covered keeps its mean."""
        k = min(k, self.n)
        take = min(k, len(self._pending))
        if take:
            del self._pending[len(self._pending) - take:]
            self.n -= take
            k -= take
        while k >= self.bucket and self._buckets:
            self._buckets.pop()
            self.n -= self.bucket
            k -= self.bucket

    def values(self) -> list[float]:
        """The kept points, oldest first (the last one may cover a partial bucket)."""
        if self._pending:
            return [*self._buckets, _mean_finite(self._pending)]
        return list(self._buckets)

    def __len__(self) -> int:
        return self.n


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


class RunHistory:
    """What the snapshot does not keep but a dashboard draws: whole-run loss and LR
    series, the steps of the snapshot's last grad-norm values, a chronological alert +
    recommendation log, and the step rate."""

    def __init__(self, capacity: int = 1024, log_size: int = MAX_KEPT_LOG) -> None:
        self.loss = SeriesBuffer(capacity)
        self.lr = SeriesBuffer(capacity)
        # The steps of the last values of each series, to drop what a resumed run replays.
        self._loss_steps: deque[int | None] = deque(maxlen=REPLAY_WINDOW)
        self._lr_steps: deque[int | None] = deque(maxlen=REPLAY_WINDOW)
        # The step of each value in the snapshot's grad-norm history (same rule, same window).
        self.grad_steps: deque[int | None] = deque(maxlen=GRAD_HISTORY)
        # (event index, entry): entries of one recommendation event share an index, so
        # "newest first" can keep their own order (most severe first) inside the event.
        self.log: deque[tuple[int, dict[str, Any]]] = deque(maxlen=log_size)
        self.n_log = 0
        self._n_events = 0
        self._rate_first: tuple[float, int] | None = None
        self._rate_last: tuple[float, int] | None = None

    def add(self, ev: dict[str, Any]) -> None:
        self._n_events += 1
        name = ev.get("event")
        ts = ev.get("ts")
        step = ev.get("step")
        if type(step) is not int:  # exact type: a bool is not a step
            step = None
        if name == "train_step":
            # The hot path (most lines): exact type checks instead of isinstance chains.
            loss = ev.get("loss")
            if type(loss) is float or type(loss) is int:
                self.loss.append(float(loss))
                self._loss_steps.append(step)
            lr = ev.get("lr")
            if type(lr) is list:
                lr = lr[0] if lr else None
            if type(lr) is float or type(lr) is int:
                self.lr.append(float(lr))
                self._lr_steps.append(step)
            g = ev.get("grad_norm")
            if type(g) is float or type(g) is int:
                self.grad_steps.append(step)
            if step is not None and (type(ts) is float or type(ts) is int):
                if self._rate_first is None:
                    self._rate_first = (float(ts), step)
                self._rate_last = (float(ts), step)
            return
        ts = _num(ts)
        if name == "run_start":
            # A resumed run restarts its clock; a rate across the gap would be meaningless.
            self._rate_first = self._rate_last = None
            meta = ev.get("meta")
            resumed = meta.get("resumed_from_step") if isinstance(meta, dict) else None
            if type(resumed) is int and resumed >= 0:
                self._drop_after(resumed)
        elif name == "alert":
            self._log({"ts": ts, "step": step, "kind": "alert", "severity": str(ev.get("severity", "info")),
                       "code": str(ev.get("code", "ALERT")), "message": str(ev.get("message") or "")})
        elif name == "recommendation":
            recs = ev.get("recommendations")
            for rec in recs if isinstance(recs, list) else []:
                if isinstance(rec, dict):
                    self._log({"ts": ts, "step": step, "kind": "recommendation",
                               "severity": str(rec.get("severity", "info")),
                               "code": str(rec.get("action", "recommendation")),
                               "message": str(rec.get("message") or ""),
                               "confidence": _num(rec.get("confidence"))})

    def _drop_after(self, step: int) -> None:
        """A resume from ``step``: the values of later steps will be replayed; the newer ones count."""
        for series, steps in ((self.loss, self._loss_steps), (self.lr, self._lr_steps)):
            k = 0
            while steps and steps[-1] is not None and steps[-1] > step:
                steps.pop()
                k += 1
            series.drop_last(k)
        while self.grad_steps and self.grad_steps[-1] is not None and self.grad_steps[-1] > step:
            self.grad_steps.pop()

    def _log(self, entry: dict[str, Any]) -> None:
        self.n_log += 1
        self.log.append((self._n_events, entry))

    def newest_first(self) -> list[dict[str, Any]]:
        """Log entries, newest event first; entries of one event keep their order."""
        return [e for _, e in sorted(self.log, key=lambda t: -t[0])]

    @property
    def steps_per_s(self) -> float | None:
        """Training steps per second between the first and last ``train_step`` (since the last start)."""
        if self._rate_first is None or self._rate_last is None:
            return None
        (t0, s0), (t1, s1) = self._rate_first, self._rate_last
        if t1 <= t0 or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)


# ---------------------------------------------------------------------------------------
# live state
# ---------------------------------------------------------------------------------------
@dataclass
class WatchView:
    """Everything one frame of the dashboard shows (built by :meth:`WatchState.view`)."""

    path: str
    file_exists: bool
    file_size: int
    bytes_read: int
    now: float
    snapshot: SignalSnapshot | None = None
    run_ids: list[str] = field(default_factory=list)
    requested_run_id: str | None = None
    loss_series: list[float] = field(default_factory=list)
    lr_series: list[float] = field(default_factory=list)
    grad_steps: list[int | None] = field(default_factory=list)  # steps of snapshot.grad_norm["history"]
    n_train_steps: int = 0
    steps_per_s: float | None = None
    log: list[dict[str, Any]] = field(default_factory=list)  # newest first
    n_log: int = 0
    issues: list[TelemetryIssue] = field(default_factory=list)  # newest first
    n_issues: int = 0
    notices: list[str] = field(default_factory=list)  # newest first
    partial_bytes: int = 0
    partial_age_s: float | None = None
    paused: bool = False

    @property
    def catching_up(self) -> bool:
        return self.bytes_read < self.file_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``gradience watch --once --json``)."""
        return {
            "path": self.path,
            "file_exists": self.file_exists,
            "file_size": self.file_size,
            "bytes_read": self.bytes_read,
            "run_ids": list(self.run_ids),
            "requested_run_id": self.requested_run_id,
            "snapshot": self.snapshot.to_dict() if self.snapshot is not None else None,
            "loss_series": list(self.loss_series),
            "lr_series": list(self.lr_series),
            "n_train_steps": self.n_train_steps,
            "steps_per_s": self.steps_per_s,
            "log": list(self.log),
            "issues": [i.to_dict() for i in self.issues],
            "n_issues": self.n_issues,
            "notices": list(self.notices),
            "partial_bytes": self.partial_bytes,
        }


class WatchState:
    """Follows a telemetry file and folds it, one accumulator per run id.

    Args:
        path: the run.jsonl (may not exist yet).
        run_id: follow this run; default the run that started last.
        thresholds: grad-norm level thresholds for the snapshot.
        history_points: points kept per whole-run series (loss, LR).
        clock: wall clock in unix seconds (injectable for stable output in tests).
    """

    def __init__(self, path: str | os.PathLike[str], *, run_id: str | None = None,
                 thresholds: GradThresholds = DEFAULT_THRESHOLDS, history_points: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.requested_run_id = run_id
        self.thresholds = thresholds
        self.history_points = history_points
        self.clock = clock
        self.follower = FileFollower(self.path)
        self.decoder = LineDecoder(path=self.path)
        self.paused = False
        self.notices: deque[str] = deque(maxlen=MAX_KEPT_NOTICES)
        self.generation = 0  # bumps whenever anything visible changed
        self._clear()

    def _clear(self) -> None:
        self.accumulators: dict[str, RunAccumulator] = {}  # order: the run started last is last
        self.histories: dict[str, RunHistory] = {}
        self.issues: deque[TelemetryIssue] = deque(maxlen=MAX_KEPT_ISSUES)
        self.n_issues = 0
        self.n_events = 0

    # -- ingest -----------------------------------------------------------------------
    def add_event(self, ev: dict[str, Any]) -> None:
        rid = str(ev["run_id"])
        acc = self.accumulators.get(rid)
        if acc is None:
            acc = self.accumulators[rid] = RunAccumulator(rid, self.thresholds)
            self.histories[rid] = RunHistory(self.history_points)
        elif ev.get("event") == "run_start":
            self.accumulators[rid] = self.accumulators.pop(rid)  # a resumed run is the latest again
        acc.add(ev)
        self.histories[rid].add(ev)
        self.n_events += 1

    def _add_issue(self, issue: TelemetryIssue) -> None:
        self.n_issues += 1
        self.issues.append(issue)

    def poll(self, *, budget_s: float | None = 0.1, chunk: int = DEFAULT_CHUNK) -> bool:
        """Read what was appended, chunk by chunk, until caught up or ``budget_s`` spent.

        ``budget_s=None`` reads to the end. Returns True when anything visible changed.
        Does nothing while paused.
        """
        if self.paused:
            return False
        deadline = None if budget_s is None else time.monotonic() + budget_s
        changed = False
        existed = self.follower.exists
        while True:
            before = self.follower.offset
            res = self.follower.read(chunk)
            if res.reset:
                self._clear()
                stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
                self.notices.append(f"{stamp} {res.reset_reason}; reading it again from the start")
                changed = True
            for lineno in res.oversized:
                self._add_issue(TelemetryIssue(lineno, "malformed_json", f"line longer than {MAX_LINE_BYTES} bytes"))
                changed = True
            decode = self.decoder.decode
            for lineno, raw in res.lines:
                out = decode(raw, lineno)
                if out is None:
                    continue
                if isinstance(out, TelemetryIssue):
                    self._add_issue(out)
                else:
                    self.add_event(out)
                changed = True
            if self.follower.caught_up or (self.follower.offset == before and not res.reset):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        if self.follower.exists != existed:
            changed = True
        if changed:
            self.generation += 1
        return changed

    def finish(self) -> None:
        """Treat an unfinished last line as final (one-shot mode): decode it like the reader does."""
        f = self.follower
        if f.partial.strip():
            out = self.decoder.decode(f.partial, f.lineno + 1, complete=False)
            if isinstance(out, TelemetryIssue):
                self._add_issue(out)
            elif out is not None:
                self.add_event(out)
            self.generation += 1
        f.partial = b""

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        self.generation += 1
        return self.paused

    # -- query ------------------------------------------------------------------------
    @property
    def run_ids(self) -> list[str]:
        return list(self.accumulators)

    def selected_run_id(self) -> str | None:
        """``--run-id`` when given (the run it names as a full id or unique prefix; the id itself
        while no run matches, so a run can be followed before it appears), else the run that started
        last."""
        if self.requested_run_id is not None:
            found = match_run_id(self.requested_run_id, self.run_ids)
            return found[0] if len(found) == 1 else self.requested_run_id
        return next(reversed(self.accumulators), None)

    def view(self) -> WatchView:
        f = self.follower
        rid = self.selected_run_id()
        acc = self.accumulators.get(rid) if rid is not None else None
        hist = self.histories.get(rid) if rid is not None else None
        v = WatchView(
            path=str(self.path), file_exists=f.exists, file_size=f.size, bytes_read=f.offset,
            now=self.clock(), run_ids=self.run_ids, requested_run_id=self.requested_run_id,
            issues=list(reversed(self.issues)), n_issues=self.n_issues,
            notices=list(reversed(self.notices)), paused=self.paused,
            partial_bytes=len(f.partial),
            partial_age_s=None if f.partial_since is None else time.monotonic() - f.partial_since,
        )
        if acc is not None:
            v.snapshot = acc.snapshot(now=v.now)
        if hist is not None:
            v.loss_series = hist.loss.values()
            v.lr_series = hist.lr.values()
            v.grad_steps = list(hist.grad_steps)
            v.n_train_steps = max(len(hist.loss), len(hist.lr))
            v.steps_per_s = hist.steps_per_s
            v.log = hist.newest_first()
            v.n_log = hist.n_log
        return v
