"""One streaming pass over a telemetry file → bounded, display-ready curves.

Memory does not depend on run length: every curve is a :class:`BucketSeries`, a fixed
number of step buckets (min / max / mean / last per bucket) whose width doubles, merging
neighbours, when a step falls past the end. A 100k-step run therefore yields at most
``max_points`` points per curve, and the rendered page stays small.

The same pass also feeds the telemetry package's own :class:`RunAccumulator`, so the
numbers on the page are exactly the ones ``monitor`` reports (no re-derivation), and
spikes are found with the shared :class:`SpikeDetector`.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds, SpikeDetector
from ..telemetry.reader import TelemetryIssue, TelemetryReader
from ..telemetry.run_select import resolve_run_id
from ..telemetry.snapshot import RunAccumulator, SignalSnapshot, normalize_split
from ..training.kappa_risk import RISK_LEVELS

__all__ = [
    "DEFAULT_MAX_POINTS",
    "RISK_LEVELS",
    "BucketSeries",
    "Curves",
    "GuardEvent",
    "RunData",
    "collect_run",
]

DEFAULT_MAX_POINTS = 400
MAX_GUARD_EVENTS = 200  # detailed guard decisions kept for the table; counts are exact
MAX_EVAL_METRICS = 6  # per split; the spine (loss, ppl, accuracy) first
_RISK_RANK = {name: i for i, name in enumerate(RISK_LEVELS)}
_SPINE = ("loss", "ppl", "accuracy")
_GAP_KEYS = {"ppl": "ppl_gap", "loss": "loss_gap", "accuracy": "acc_gap"}


def _finite_num(x: Any) -> float | None:
    """A number (finite or not) as float; None for anything else (bools, strings, None)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


@dataclass
class _Bucket:
    lo: float = math.inf
    hi: float = -math.inf
    total: float = 0.0
    n: int = 0  # finite values
    last: float = math.nan
    nonfinite: int = 0
    flags: int = 0  # e.g. loss spikes in this bucket
    level: int = -1  # worst categorical level seen (e.g. spectral risk)

    def merge(self, other: _Bucket) -> None:
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        self.total += other.total
        self.n += other.n
        if other.n or other.nonfinite:
            self.last = other.last
        self.nonfinite += other.nonfinite
        self.flags += other.flags
        self.level = max(self.level, other.level)


class BucketSeries:
    """A curve over training steps in bounded memory.

    Steps ``0 .. max_points·width − 1`` map to ``max_points`` buckets of ``width`` steps;
    when a later step arrives the buckets merge pairwise and ``width`` doubles. Per bucket:
    min, max and mean of the finite values, the last value, the non-finite count, a flag
    count (e.g. spikes) and the worst categorical level. While ``width == 1`` every point
    is exact.
    """

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError("max_points must be >= 2")
        self.max_points = int(max_points) - int(max_points) % 2  # even, so pairs merge cleanly
        self.width = 1
        self.buckets: dict[int, _Bucket] = {}
        self.count = 0  # values added (finite or not)

    def _index(self, step: int) -> int:
        step = max(0, int(step))
        while step // self.width >= self.max_points:
            merged: dict[int, _Bucket] = {}
            for idx in sorted(self.buckets):
                b = self.buckets[idx]
                target = merged.get(idx // 2)
                if target is None:
                    merged[idx // 2] = b
                else:
                    target.merge(b)
            self.buckets = merged
            self.width *= 2
        return step // self.width

    def add(self, step: int, value: float | None, *, flag: bool = False, level: int = -1) -> None:
        """Record ``value`` at ``step``; NaN/Inf count as non-finite (``None``: flag/level only)."""
        idx = self._index(step)
        b = self.buckets.get(idx)
        if b is None:
            b = self.buckets[idx] = _Bucket()
        if value is not None:
            self.count += 1
            if math.isfinite(value):
                b.lo = min(b.lo, value)
                b.hi = max(b.hi, value)
                b.total += value
                b.n += 1
            else:
                b.nonfinite += 1
            b.last = value
        if flag:
            b.flags += 1
        b.level = max(b.level, level)

    def __len__(self) -> int:
        return len(self.buckets)

    def points(self) -> list[dict[str, Any]]:
        """Buckets in step order: ``{step, from, to, n, mean, min, max, last, nonfinite, flags, level}``.

        ``step`` is the bucket's centre (exact step while ``width == 1``), ``from``/``to`` its
        step range, ``n`` its finite-value count; ``mean``/``min``/
        ``max`` are NaN for a bucket that only saw non-finite values.
        """
        out = []
        for idx in sorted(self.buckets):
            b = self.buckets[idx]
            centre = idx * self.width + (self.width - 1) / 2
            out.append({
                "step": int(centre) if self.width == 1 else centre,
                "from": idx * self.width,
                "to": (idx + 1) * self.width - 1,
                "n": b.n,
                # Clamped: a float sum of many equal values can drift just outside [min, max].
                "mean": min(max(b.total / b.n, b.lo), b.hi) if b.n else math.nan,
                "min": b.lo if b.n else math.nan,
                "max": b.hi if b.n else math.nan,
                "last": b.last,
                "nonfinite": b.nonfinite,
                "flags": b.flags,
                "level": b.level,
            })
        return out

    def drop_after(self, step: int) -> None:
        """Forget the values of steps after ``step`` (a resumed run replays them): exact while
        ``width == 1``; a wider bucket that also holds ``step`` is kept whole."""
        for idx in [i for i in self.buckets if i * self.width > step]:
            b = self.buckets.pop(idx)
            self.count -= b.n + b.nonfinite

    def finite_range(self) -> tuple[float, float] | None:
        vals = [v for b in self.buckets.values() if b.n for v in (b.lo, b.hi)]
        return (min(vals), max(vals)) if vals else None


@dataclass
class GuardEvent:
    """One guard decision (from ``metrics(kind="guard")`` or a ``GUARD_*`` alert)."""

    step: int | None
    action: str  # snapshot | rollback | backoff | lockout | abort | trigger | ...
    source: str  # "metrics", "alert" or "both"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Curves:
    """Every display curve of one run, each bounded to ``max_points`` buckets."""

    max_points: int
    loss: BucketSeries
    lr: BucketSeries
    grad_pre: BucketSeries
    grad_post: BucketSeries
    kappa: BucketSeries
    evals: dict[str, dict[str, BucketSeries]] = field(default_factory=dict)  # split -> metric -> series
    gaps: dict[str, BucketSeries] = field(default_factory=dict)  # ppl_gap | loss_gap | acc_gap
    guard_series: dict[str, BucketSeries] = field(default_factory=dict)  # action -> counts over steps
    guard_events: list[GuardEvent] = field(default_factory=list)  # first MAX_GUARD_EVENTS decisions
    guard_counts: Counter[str] = field(default_factory=Counter)
    guard_lr_scale: BucketSeries | None = None
    risk_counts: Counter[str] = field(default_factory=Counter)
    train_steps: int = 0
    lr_groups: int = 1


@dataclass
class RunData:
    """Everything the renderers need about one run in a telemetry file."""

    path: str
    run_id: str
    runs_in_file: list[str]
    snapshot: SignalSnapshot
    curves: Curves
    issues: list[TelemetryIssue]
    file_bytes: int


class _RunCollector:
    def __init__(self, run_id: str, max_points: int, thresholds: GradThresholds) -> None:
        self.acc = RunAccumulator(run_id, thresholds)
        mk = lambda: BucketSeries(max_points)  # noqa: E731
        self._mk = mk
        self.curves = Curves(max_points=max_points, loss=mk(), lr=mk(), grad_pre=mk(), grad_post=mk(), kappa=mk())
        self.spikes = SpikeDetector()
        # Latest eval per split at its step, to pair train/test evals taken at the same step.
        self._last_eval: dict[str, tuple[int | None, dict[str, Any]]] = {}
        self._seq = 0  # fallback x position for events without a step

    def _x(self, step: Any) -> int:
        if isinstance(step, int) and not isinstance(step, bool):
            self._seq = max(self._seq, step)
            return step
        return self._seq

    def add(self, ev: dict[str, Any]) -> None:
        n_resumes = len(self.acc.resumes)
        self.acc.add(ev)
        name = ev.get("event")
        if len(self.acc.resumes) > n_resumes:
            # A resume from step N: the steps after N are replayed, and the newer values count.
            resume = self.acc.resumes[-1]
            c = self.curves
            for series in (c.loss, c.lr, c.grad_pre, c.grad_post):
                series.drop_after(resume["from_step"])
            c.train_steps -= resume["replaced_train_steps"]
        if name == "train_step":
            self._train_step(ev)
        elif name == "eval":
            self._eval(ev)
        elif name == "metrics":
            self._metrics(ev)
        elif name == "alert":
            code = str(ev.get("code", ""))
            if code.startswith("GUARD_"):
                self._guard(ev.get("step"), code[len("GUARD_"):].lower(), "alert",
                            {"message": ev.get("message", ""), **(ev.get("context") or {})})

    def _train_step(self, ev: dict[str, Any]) -> None:
        c = self.curves
        x = self._x(ev.get("step"))
        c.train_steps += 1
        loss = _finite_num(ev.get("loss"))
        if loss is not None:
            c.loss.add(x, loss, flag=self.spikes.update(loss))
        lr = ev.get("lr")
        if isinstance(lr, list):
            c.lr_groups = max(c.lr_groups, len(lr))
            lr = lr[0] if lr else None
        lr_v = _finite_num(lr)
        if lr_v is not None:
            c.lr.add(x, lr_v)
        g = _finite_num(ev.get("grad_norm"))
        if g is not None:
            c.grad_pre.add(x, g)
        gc = _finite_num(ev.get("grad_norm_clipped"))
        if gc is not None:
            c.grad_post.add(x, gc)

    def _eval(self, ev: dict[str, Any]) -> None:
        metrics = ev.get("metrics")
        if not isinstance(metrics, dict):
            return
        step = ev.get("step")
        x = self._x(step)
        split = normalize_split(ev.get("split"))
        per_split = self.curves.evals.setdefault(split, {})
        keys = [k for k in _SPINE if k in metrics] + sorted(k for k in metrics if k not in _SPINE)
        for key in keys:
            v = _finite_num(metrics.get(key))
            if v is None or key in ("n", "epoch", "runtime", "samples_per_second", "steps_per_second"):
                continue
            series = per_split.get(key)
            if series is None:
                if len(per_split) >= MAX_EVAL_METRICS:
                    continue
                series = per_split[key] = self._mk()
            series.add(x, v)
        self._last_eval[split] = (step, metrics)
        self._pair_gaps(split, step, x)

    def _pair_gaps(self, split: str, step: Any, x: int) -> None:
        """Gap points where a train and a held-out eval share a step (definitions: docs/telemetry.md#signalsnapshot)."""
        other = "train" if split != "train" else next((s for s in ("test", "val") if s in self._last_eval), None)
        if other is None or other not in self._last_eval or step is None:
            return
        other_step, other_metrics = self._last_eval[other]
        if other_step != step:
            return
        train = self._last_eval["train"][1]
        held = other_metrics if split == "train" else self._last_eval[split][1]
        for key, gap_name in _GAP_KEYS.items():
            t, r = _finite_num(held.get(key)), _finite_num(train.get(key))
            if t is None or r is None:
                continue
            if key == "accuracy":
                gap = r - t
            elif r > 0:
                gap = t / r
            else:
                continue
            self.curves.gaps.setdefault(gap_name, self._mk()).add(x, gap)

    def _metrics(self, ev: dict[str, Any]) -> None:
        kind = ev.get("kind")
        m = ev.get("metrics")
        if not isinstance(m, dict):
            return
        if kind == "spectral":
            kappa = _finite_num(m.get("kappa_tilde", m.get("kappa")))
            risk = str(m.get("risk_level") or "").upper()
            level = _RISK_RANK.get(risk, -1)
            if risk:
                self.curves.risk_counts[risk] += 1
            self.curves.kappa.add(self._x(ev.get("step")), kappa, level=level)
        elif kind == "guard":
            action = ev.get("action") or m.get("action")
            if action and action != "summary":
                self._guard(ev.get("step"), str(action), "metrics", dict(m))
            scale = _finite_num(m.get("lr_scale"))
            if scale is not None:
                if self.curves.guard_lr_scale is None:
                    self.curves.guard_lr_scale = self._mk()
                self.curves.guard_lr_scale.add(self._x(ev.get("step")), scale)

    def _guard(self, step: Any, action: str, source: str, detail: dict[str, Any]) -> None:
        c = self.curves
        x = self._x(step)
        c.guard_counts[f"{source}:{action}"] += 1
        # One decision is often recorded twice (a GUARD_* alert and a metrics(kind="guard")
        # event at the same step): merge them so it is drawn and counted once.
        for prev in c.guard_events[-3:]:
            if prev.step == step and prev.action == action and prev.source != source:
                prev.source = "both"
                prev.detail = {**prev.detail, **{k: v for k, v in detail.items() if k not in prev.detail}}
                return
        c.guard_series.setdefault(action, self._mk()).add(x, 1.0)
        if len(c.guard_events) < MAX_GUARD_EVENTS:
            c.guard_events.append(GuardEvent(step if isinstance(step, int) else None, action, source, detail))


def collect_run(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    thresholds: GradThresholds = DEFAULT_THRESHOLDS,
    now: float | None = None,
) -> RunData:
    """Read ``path`` once and return the snapshot and bounded curves of one run.

    Args:
        path: a telemetry v1 JSONL file.
        run_id: the run to report; default the run that started last (as ``monitor``).
        max_points: the most buckets any curve keeps (memory and page size are O(this)).
        now: unix seconds (default the current time): a run without ``run_end`` silent for long
            against its own cadence reads as stalled.

    Raises:
        GradienceError: missing file, a directory, an empty file, or an unknown ``run_id``.
    """
    from ..errors import GradienceError

    reader = TelemetryReader(path, thresholds=thresholds)
    collectors: dict[str, _RunCollector] = {}
    for ev in reader.iter_events():
        rid = str(ev["run_id"])
        col = collectors.get(rid)
        if col is None:
            col = collectors[rid] = _RunCollector(rid, max_points, thresholds)
        elif ev["event"] == "run_start":
            collectors[rid] = collectors.pop(rid)  # a resumed run becomes the latest again (as the reader)
        col.add(ev)
    issues = reader.issues
    if not collectors:
        detail = f" ({len(issues)} unreadable lines, first: {issues[0]})" if issues else ""
        raise GradienceError(f"no telemetry events in the file{detail}", path=reader.path,
                             hint="is this a Gradience run.jsonl? a run writes <out_dir>/run.jsonl")
    run_id = resolve_run_id(run_id, list(collectors), reader.path)  # default: the run that started last
    col = collectors[run_id]
    return RunData(
        path=str(reader.path),
        run_id=run_id,
        runs_in_file=list(collectors),
        snapshot=col.acc.snapshot(now=time.time() if now is None else now),
        curves=col.curves,
        issues=issues,
        file_bytes=reader.path.stat().st_size,
    )
