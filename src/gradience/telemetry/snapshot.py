"""SignalSnapshot: what policy and every view (monitor, watch, report) consume.

A :class:`RunAccumulator` folds events of one run in O(1) memory per event (bounded
histories only); :meth:`RunAccumulator.snapshot` derives the gaps and levels.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from math import isfinite
from typing import Any, NamedTuple

from .health import DEFAULT_THRESHOLDS, GradThresholds, LossSpikeRule, sparkline, sustained_level, trend
from .profiles import resolve_profile
from .record import plain
from .schema import HELD_OUT_SPLITS, ConfigSnapshot, TaskProfile, real_number, whole_number
from .sections import AuditSummary, GradNormSummary, GuardSummary, LossSummary, LrSummary, SpectralSummary

GRAD_HISTORY = 10
MAX_KEPT_ALERTS = 200
MAX_EVAL_HISTORY = 50  # evals kept per split (the held-out trend and the chance level)
MAX_KEPT_SPIKES = 50
# A resumed run replays the steps after its checkpoint. To drop the replaced values exactly, the
# fold keeps the last REPLAY_WINDOW train_step events and a copy of its train_step state every
# CHECKPOINT_EVERY of them (bounded memory); a resume further back than that is not deduplicated.
CHECKPOINT_EVERY = 32
REPLAY_WINDOW = 4096
MAX_KEPT_RECORDS = 64
# Stalled: a running run silent for longer than STALL_FACTOR × the median interval between its
# train_step events, and at least STALL_MIN_S; STALL_NO_CADENCE_S without two train_step events.
STALL_FACTOR = 10.0
STALL_MIN_S = 300.0
STALL_NO_CADENCE_S = 1800.0
MAX_KEPT_INTERVALS = 256


def normalize_split(split: Any) -> str:
    """Map split names onto the spine: ``eval``/``validation``/``dev`` (earlier releases) → ``test``."""
    s = str(split or "test").strip().lower()
    if s in ("eval", "validation", "dev", "heldout", "held_out"):
        return "test"
    return s


# Payload values come from any writer: a number read where a number is expected may be of any
# type (a string, a list, an integer past the float range). Such a value reads as missing.
_num = real_number


def _count(x: Any) -> int | None:
    """A recorded counter: a non-negative whole number, else None (missing)."""
    n = whole_number(x)
    return n if n is not None and n >= 0 else None


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _summary_spike_rule(prior: float | None) -> LossSpikeRule:
    """The loss-spike rule over a run's logged losses (``loss.spikes``): the guard's rule
    (:class:`~gradience.telemetry.health.LossSpikeRule`: floor and limit against the task's untrained
    loss) with a baseline suited to sampled losses (ratio 2, k 6, after 10 logged values)."""
    return LossSpikeRule(ratio=2.0, k=6.0, warmup=10, prior=prior)


def _first_lr(lr: Any) -> float | None:
    if isinstance(lr, list):
        return _num(lr[0]) if lr else None
    return _num(lr)


def stall_threshold_s(median_interval_s: float | None) -> float:
    """Silence after which a running run reads as stalled (docs/telemetry.md#signalsnapshot)."""
    if median_interval_s is None:
        return STALL_NO_CADENCE_S
    return max(STALL_FACTOR * median_interval_s, STALL_MIN_S)


def resume_text(resumes: list[dict[str, Any]], resumed_from_step: int | None) -> str:
    """``resumed from step 8 (4 replayed steps counted once)`` for people; ``""`` for a fresh run."""
    if resumed_from_step is None:
        return ""
    times = f" (the last of {len(resumes)} resumes)" if len(resumes) > 1 else ""
    last = resumes[-1] if resumes else {}
    replaced = _count(last.get("replaced_train_steps")) or 0
    note = ""
    if last.get("exact") is False:
        note = "; steps replayed before the kept window may be counted twice"
    elif replaced:
        note = f"; {replaced} replayed step{'s' if replaced != 1 else ''} counted once, the newer values"
    return f"resumed from step {resumed_from_step}{times}{note}"


def merge_grad_records(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One full-run gradient record from the record of the steps up to a resume (``before``) and
    the record the resumed process wrote (``after``): counts add up, extremes combine, the newest
    values (``last``, ``history``, ``level``, ``trend``, ``sparkline``) are ``after``'s."""
    if not before:
        return dict(after) if after else None
    if not after:
        return dict(before)
    out = dict(after)
    for key in ("n", "nonfinite_count", "clipped_steps", "alerts_suppressed"):
        a, b = _count(before.get(key)), _count(after.get(key))
        if a is not None and b is not None:
            out[key] = a + b
    hi = [v for v in (_num(before.get("max")), _num(after.get("max"))) if v is not None]
    lo = [v for v in (_num(before.get("min")), _num(after.get("min"))) if v is not None]
    out["max"] = max(hi) if hi else None
    out["min"] = min(lo) if lo else None
    na, nb = _count(before.get("n")), _count(after.get("n"))
    fa, fb = _count(before.get("nonfinite_count")) or 0, _count(after.get("nonfinite_count")) or 0
    ma, mb = _num(before.get("mean")), _num(after.get("mean"))
    if na is not None and nb is not None and ma is not None and mb is not None:
        wa, wb = max(na - fa, 0), max(nb - fb, 0)
        out["mean"] = (ma * wa + mb * wb) / (wa + wb) if wa + wb else None
    ca, cb = before.get("level_counts"), after.get("level_counts")
    if isinstance(ca, dict) and isinstance(cb, dict):
        merged: dict[str, int] = {}
        for src in (ca, cb):
            for k, v in src.items():
                c = _count(v)
                if c is not None:
                    merged[k] = merged.get(k, 0) + c
        out["level_counts"] = merged
    return out


class _Record(NamedTuple):
    step: int | None
    metrics: dict[str, Any]


class _Checkpoint(NamedTuple):
    n_folded: int  # train_step events folded so far
    max_step: int | None  # the highest step among them
    state: tuple[Any, ...]


# The typed sections of a snapshot, by field name (a plain dict given for one is read leniently).
_SECTIONS: dict[str, type[LossSummary | LrSummary | GradNormSummary | GuardSummary | SpectralSummary]] = {
    "loss": LossSummary, "lr": LrSummary, "grad_norm": GradNormSummary, "guard": GuardSummary,
    "spectral": SpectralSummary,
}


@dataclass
class SignalSnapshot:
    """Summary of one run (docs/telemetry.md#signalsnapshot). Every field is JSON-ready via :meth:`to_dict`.

    The sections ``loss``, ``lr``, ``grad_norm``, ``guard``, ``spectral`` and ``lora_audit`` are
    typed records (:mod:`gradience.telemetry.sections`, which documents each field and its unit);
    a snapshot with no events has them empty (they serialise to ``{}``; ``lora_audit`` to ``None``
    until the run logs a ``metrics(kind="lora_audit")`` event).
    """

    run_id: str | None = None
    model_name: str | None = None
    dataset_name: str | None = None
    task_profile: str = "unknown"
    r: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "running"  # running | ok | aborted | error
    reason: str | None = None
    stop_reason: str | None = None  # run_end.summary.stop_reason (max_steps, early_stopping, guard, ...)
    adapter: dict[str, Any] | None = None  # run_end.summary.adapter: which step's weights were saved
    n_events: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    last_step: int | None = None
    max_steps: int | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> {step, metrics}
    gaps: dict[str, float | None] = field(default_factory=dict)
    gap_missing: list[str] = field(default_factory=list)
    # split -> {n (evals of the split), steps, accuracy, loss, majority_rate}: the last 50 evals, oldest
    # first (None where an eval lacks the metric); policy reads the held-out trend and chance level here.
    eval_history: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss: LossSummary = field(default_factory=LossSummary.empty)
    lr: LrSummary = field(default_factory=LrSummary.empty)
    grad_norm: GradNormSummary = field(default_factory=GradNormSummary.empty)
    guard: GuardSummary = field(default_factory=GuardSummary.empty)
    spectral: SpectralSummary = field(default_factory=SpectralSummary.empty)
    lora_audit: AuditSummary | None = None
    injected_faults: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_counts: dict[str, int] = field(default_factory=dict)
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    stalled: bool | None = None
    silence_s: float | None = None
    stall_after_s: float | None = None
    duration_source: str | None = None
    measured_duration_s: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # A section given as a plain dict (a recorded snapshot, code written against the earlier
        # dict sections) is read into its record, leniently.
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                setattr(self, name, cls.from_dict(value if isinstance(value, Mapping) else None))
        if self.lora_audit is not None and not isinstance(self.lora_audit, AuditSummary):
            self.lora_audit = AuditSummary.from_dict(self.lora_audit)

    @property
    def duration_s(self) -> float | None:
        """The run's duration from its own start and end events (see :class:`RunAccumulator`);
        for a snapshot built by hand, ``last_ts − first_ts`` (never negative)."""
        if self.measured_duration_s is not None:
            return self.measured_duration_s
        if self.first_ts is None or self.last_ts is None:
            return None
        d = self.last_ts - self.first_ts
        return max(d, 0.0) if isfinite(d) else None

    def eval_metric(self, split: str, key: str) -> float | None:
        entry = self.evals.get(split)
        if not entry:
            return None
        return _num(entry["metrics"].get(key))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "measured_duration_s"}
        d["duration_s"] = self.duration_s
        return d


class RunAccumulator:
    """Folds the events of one run. Memory is bounded regardless of run length.

    Beyond the counters, it keeps what makes the snapshot the run's own account:

    - a resumed run (a ``run_start`` whose ``meta.resumed_from_step`` is N) replays the steps
      after N: the ``train_step`` values of steps > N recorded before the resume are dropped
      (the newer values win), and so are alerts and spectral samples of those steps;
    - the newest full-run gradient record (``metrics(kind="grad_norm")``), merged across resumes;
    - the run's duration per segment (``run_start`` to its ``run_end``, else its last
      ``train_step``/``eval``): the monotonic clock when both ends carry one, else
      ``run_end.summary.duration_s``, else the wall clock, never negative;
    - the cadence of its ``train_step`` events, to tell a stalled run from a slow one.
    """

    def __init__(self, run_id: str, thresholds: GradThresholds = DEFAULT_THRESHOLDS) -> None:
        self.run_id = run_id
        self.thresholds = thresholds
        self.config: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.status = "running"
        self.reason: str | None = None
        self.stop_reason: str | None = None
        self.adapter: dict[str, Any] | None = None
        self.n_events = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.last_step: int | None = None
        self.evals: dict[str, dict[str, Any]] = {}
        self._eval_hist: dict[str, deque[tuple[int | None, float | None, float | None, float | None]]] = {}
        self._reset_train_state()
        self.grad_summary: dict[str, Any] | None = None
        self._grad_records: deque[_Record] = deque(maxlen=MAX_KEPT_RECORDS)
        self._grad_base: dict[str, Any] | None = None
        self.guard_counts: Counter[str] = Counter()
        self.guard_last: dict[str, Any] | None = None
        self.guard_summary: dict[str, Any] | None = None
        self.spectral_last: dict[str, Any] | None = None
        self.spectral_n = 0
        self._spectral: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_RECORDS)
        self.lora_audit: AuditSummary | None = None
        self.injected: deque[dict[str, Any]] = deque(maxlen=50)  # the last 50 injected faults
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_ALERTS)
        self.alert_counts: Counter[str] = Counter()
        self.recommendations: list[dict[str, Any]] = []
        # resumes and replay
        self.resumed_from_step: int | None = None
        self.resumes: list[dict[str, Any]] = []
        self._n_train = 0
        # (step, loss, lr, grad_norm, grad_norm_clipped) as recorded, of the last folded train_step events
        self._replay: deque[tuple[Any, ...]] = deque(maxlen=REPLAY_WINDOW)
        self._checkpoints: deque[_Checkpoint] = deque(maxlen=REPLAY_WINDOW // CHECKPOINT_EVERY)
        self._checkpoints.append(_Checkpoint(0, None, self._train_state()))
        # cadence: the wall-clock times of the last train_step events (None marks a resume)
        self._train_ts: deque[float | None] = deque(maxlen=MAX_KEPT_INTERVALS + 1)
        # duration: finished segments, and the current one's first and last training events
        self._done_s = 0.0
        self._done_sources: set[str] = set()
        self._seg_start: dict[str, Any] | None = None
        self._seg_end: dict[str, Any] | None = None
        self._seg_closed = False

    # -- the train_step state (restored when a resume replays steps) ---------------------
    def _reset_train_state(self) -> None:
        self.loss_first: float | None = None
        self.loss_last: float | None = None
        self.loss_min: float | None = None
        self.loss_min_step: int | None = None
        self.loss_n = 0
        self.loss_nonfinite = 0
        self.loss_nonfinite_steps: deque[int | None] = deque(maxlen=MAX_KEPT_SPIKES)
        self.spikes = 0
        self.spike_steps: deque[int | None] = deque(maxlen=MAX_KEPT_SPIKES)
        self._spike = _summary_spike_rule(None)
        self.lr_first: float | None = None
        self.lr_last: float | None = None
        self.grad_hist: deque[float] = deque(maxlen=GRAD_HISTORY)
        self.grad_last: float | None = None
        self.grad_last_step: int | None = None
        self.grad_max: float | None = None
        self.grad_nonfinite = 0
        self.grad_clipped_last: float | None = None
        self.grad_n = 0
        self.grad_clip_n = 0
        self.grad_clip_hits = 0
        self._train_max_step: int | None = None

    def _train_state(self) -> tuple[Any, ...]:
        sp = self._spike.detector
        return (self.loss_first, self.loss_last, self.loss_min, self.loss_min_step, self.loss_n,
                self.loss_nonfinite, tuple(self.loss_nonfinite_steps), self.spikes, tuple(self.spike_steps),
                sp.baseline, sp.deviation, sp.seen, tuple(self._spike.first), self._spike.prior, self.lr_first, self.lr_last, tuple(self.grad_hist),
                self.grad_last, self.grad_last_step, self.grad_max, self.grad_nonfinite, self.grad_clipped_last,
                self.grad_n, self.grad_clip_n, self.grad_clip_hits, self._train_max_step)

    def _set_train_state(self, st: tuple[Any, ...]) -> None:
        (self.loss_first, self.loss_last, self.loss_min, self.loss_min_step, self.loss_n, self.loss_nonfinite,
         nonfinite_steps, self.spikes, spike_steps, baseline, deviation, seen, first, prior, self.lr_first,
         self.lr_last,
         grad_hist, self.grad_last, self.grad_last_step, self.grad_max, self.grad_nonfinite,
         self.grad_clipped_last, self.grad_n, self.grad_clip_n, self.grad_clip_hits, self._train_max_step) = st
        self.loss_nonfinite_steps = deque(nonfinite_steps, maxlen=MAX_KEPT_SPIKES)
        self.spike_steps = deque(spike_steps, maxlen=MAX_KEPT_SPIKES)
        self.grad_hist = deque(grad_hist, maxlen=GRAD_HISTORY)
        self._spike = _summary_spike_rule(prior)
        self._spike.first = list(first)
        sp = self._spike.detector
        sp.baseline, sp.deviation, sp.seen = baseline, deviation, seen

    # ------------------------------------------------------------------------------
    def add(self, ev: dict[str, Any]) -> None:
        self.n_events += 1
        ts = ev.get("ts")
        if type(ts) is not float:
            ts = _num(ts)
        if ts is not None and isfinite(ts):
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts
        else:
            ts = None
        step = ev.get("step")
        if type(step) is int:
            if self.last_step is None or step > self.last_step:
                self.last_step = step
        else:
            step = None
        name = ev.get("event")
        if name == "train_step":
            # Hot path: the duration and cadence bookkeeping only keeps references here.
            if not self._seg_closed:
                if self._seg_start is None:
                    self._seg_start = ev
                self._seg_end = ev
            self._train_ts.append(ts)
            self._train_step(ev, step)
        elif name == "eval":
            if not self._seg_closed:
                if self._seg_start is None:
                    self._seg_start = ev
                self._seg_end = ev
            metrics = ev.get("metrics")
            if isinstance(metrics, dict):
                split = normalize_split(ev.get("split"))
                self.evals[split] = {"step": step, "metrics": metrics, "split_raw": ev.get("split")}
                hist = self._eval_hist.setdefault(split, deque(maxlen=MAX_EVAL_HISTORY))
                while step is not None and hist and hist[-1][0] is not None and hist[-1][0] >= step:
                    hist.pop()  # a resumed run evaluates those steps again: the newest counts
                hist.append((step, _num(metrics.get("accuracy")), _num(metrics.get("loss")),
                             _num(metrics.get("majority_rate"))))
        elif name == "metrics":
            self._metrics(ev, step)
        elif name == "alert":
            code = _text(ev.get("code")) or "ALERT"
            context = ev.get("context")
            self.alert_counts[code] += 1
            self.alerts.append(
                {
                    "step": step,
                    "severity": _text(ev.get("severity")) or "info",
                    "code": code,
                    "message": _text(ev.get("message")) or "",
                    "context": context if isinstance(context, dict) else {},
                }
            )
            if code.startswith("GUARD_"):
                self.guard_counts[code] += 1
        elif name == "recommendation":
            recs = ev.get("recommendations")
            if isinstance(recs, list):
                self.recommendations = [r for r in recs if isinstance(r, dict)]
        elif name == "run_start":
            cfg = ev.get("config")
            if isinstance(cfg, dict):
                self.config = cfg
            meta = ev.get("meta")
            if isinstance(meta, dict):
                self.meta = meta
                # The task's untrained loss, recorded by the integrations: the spike rule's reference
                # (times the micro-batch losses the Trainer may sum unscaled, as the guard judged it).
                prior = _num(meta.get("loss_prior"))
                sum_of = _num(meta.get("loss_prior_sum_of"))
                if prior is not None and sum_of is not None and sum_of >= 1:
                    prior *= sum_of
                if prior is not None and prior != self._spike.prior:
                    self._spike.prior = prior if isfinite(prior) and prior > 0 else None
            # A resumed run restarts; its end is not known yet.
            self.status = "running"
            self.reason = None
            self.stop_reason, self.adapter = None, None
            self._close_segment()
            self._seg_start = self._seg_end = ev
            self._train_ts.append(None)  # the gap before a resume is not the run's cadence
            resumed = _count(meta.get("resumed_from_step")) if isinstance(meta, dict) else None
            if resumed is not None:
                self._resume(resumed)
        elif name == "run_end":
            status = ev.get("status")
            self.status = status if status in ("ok", "aborted", "error") else "error"
            self.reason = _text(ev.get("reason"))
            summary = ev.get("summary")
            if isinstance(summary, dict):
                self.stop_reason = _text(summary.get("stop_reason"))
                adapter = summary.get("adapter")
                self.adapter = dict(adapter) if isinstance(adapter, dict) else None
            if not self._seg_closed:
                if self._seg_start is None:
                    self._seg_start = ev
                self._seg_end = ev
                self._seg_closed = True

    # -- duration ----------------------------------------------------------------------
    # A segment runs from a run_start to its run_end, else to its last train_step or eval: events
    # only a training process writes, so an event appended later (`gradience audit --append`)
    # never moves a run's duration.
    def _segment_duration(self) -> tuple[float, str] | None:
        if self._seg_start is None or self._seg_end is None:
            return None
        first, last = self._seg_start, self._seg_end
        t0, t1 = _num(first.get("ts")), _num(last.get("ts"))
        m0, m1 = _num(first.get("mono")), _num(last.get("mono"))
        if m0 is not None and m1 is not None and isfinite(m1 - m0) and m1 >= m0:
            return m1 - m0, "monotonic"
        summary = last.get("summary") if last.get("event") == "run_end" else None
        recorded = _num(summary.get("duration_s")) if isinstance(summary, dict) else None
        if recorded is not None and isfinite(recorded) and recorded >= 0:
            return recorded, "run_end"
        if t0 is not None and t1 is not None and isfinite(t1 - t0):
            return max(t1 - t0, 0.0), "wall_clock"
        return None

    def _close_segment(self) -> None:
        seg = self._segment_duration()
        if seg is not None:
            self._done_s += seg[0]
            self._done_sources.add(seg[1])
        self._seg_start = self._seg_end = None
        self._seg_closed = False

    def duration(self) -> tuple[float | None, str | None]:
        """``(seconds, source)``: the sum over the run's segments (a resumed run's downtime is not
        counted); source ``monotonic``, ``run_end``, ``wall_clock`` or ``mixed``."""
        sources = set(self._done_sources)
        total = self._done_s
        seg = self._segment_duration()
        if seg is not None:
            total += seg[0]
            sources.add(seg[1])
        if not sources:
            return None, None
        return total, sources.pop() if len(sources) == 1 else "mixed"

    # -- resume -----------------------------------------------------------------------
    def _resume(self, n: int) -> None:
        """A ``run_start`` resuming from step ``n``: drop what was recorded for steps > n."""
        self.resumed_from_step = n
        info: dict[str, Any] = {"from_step": n, "replaced_train_steps": 0, "exact": True}
        # train_step values: back to the newest checkpoint at or before n, then replay up to n.
        ck = next((c for c in reversed(self._checkpoints) if c.max_step is None or c.max_step <= n), None)
        oldest_kept = self._n_train - len(self._replay) + 1  # the fold's count of the oldest kept event
        since = ck.n_folded if ck else 0
        later = list(self._replay)[max(since - oldest_kept + 1, 0):]
        stale = sum(1 for t in later if t[0] is not None and t[0] > n)
        if stale and (ck is None or oldest_kept > ck.n_folded + 1):
            info["exact"] = False  # the replayed steps lie beyond what the fold keeps
        elif stale and ck is not None:
            self._set_train_state(ck.state)
            for _ in range(len(later)):
                self._replay.pop()
            while self._checkpoints and self._checkpoints[-1].n_folded > ck.n_folded:
                self._checkpoints.pop()
            self._n_train = ck.n_folded
            for s, loss, lr, g, gc in later:
                if s is None or s <= n:
                    self._train_step({"loss": loss, "lr": lr, "grad_norm": g, "grad_norm_clipped": gc}, s)
            info["replaced_train_steps"] = stale
        # alerts and spectral samples of the replayed steps
        kept = [a for a in self.alerts if a["step"] is None or a["step"] <= n]
        for a in self.alerts:
            if a["step"] is not None and a["step"] > n:
                self.alert_counts[a["code"]] -= 1
                if self.alert_counts[a["code"]] <= 0:
                    del self.alert_counts[a["code"]]
                if a["code"].startswith("GUARD_"):
                    self.guard_counts[a["code"]] -= 1
                    if self.guard_counts[a["code"]] <= 0:
                        del self.guard_counts[a["code"]]
        self.alerts = deque(kept, maxlen=MAX_KEPT_ALERTS)
        spectral = [m for m in self._spectral if m["step"] is None or m["step"] <= n]
        self.spectral_n -= len(self._spectral) - len(spectral)
        self._spectral = deque(spectral, maxlen=MAX_KEPT_RECORDS)
        self.spectral_last = spectral[-1] if spectral else None
        # the gradient record: what the earlier process measured up to n, merged with what the
        # resumed process will write
        upto = next((r for r in reversed(self._grad_records) if r.step is None or r.step <= n), None)
        self._grad_base = merge_grad_records(self._grad_base, upto.metrics if upto else None)
        self._grad_records.clear()
        if self.last_step is not None and self.last_step > n:
            self.last_step = n
        self.resumes.append(info)

    def _train_step(self, ev: dict[str, Any], step: int | None) -> None:
        # Hot path (one call per logged step): exact type checks instead of isinstance.
        loss = ev.get("loss")
        if type(loss) is not float:
            loss = _num(loss)
        if loss is not None:
            if isfinite(loss):
                self.loss_n += 1
                if self.loss_first is None:
                    self.loss_first = loss
                self.loss_last = loss
                if self.loss_min is None or loss < self.loss_min:
                    self.loss_min = loss
                    self.loss_min_step = step
                if self._spike.update(loss):
                    self.spikes += 1
                    self.spike_steps.append(step)
            else:
                self.loss_nonfinite += 1
                self.loss_nonfinite_steps.append(step)
                self.loss_last = loss
        lr = ev.get("lr")
        if type(lr) is not float:
            lr = _first_lr(lr)
        if lr is not None:
            if self.lr_first is None:
                self.lr_first = lr
            self.lr_last = lr
        g = ev.get("grad_norm")
        if type(g) is not float:
            g = _num(g)
        if g is not None:
            self.grad_n += 1
            self.grad_last = g
            self.grad_last_step = step
            self.grad_hist.append(g)
            if isfinite(g):
                if self.grad_max is None or g > self.grad_max:
                    self.grad_max = g
            else:
                self.grad_nonfinite += 1
        gc = ev.get("grad_norm_clipped")
        if gc is not None:
            gcv = gc if type(gc) is float else _num(gc)
            if gcv is not None:
                self.grad_clipped_last = gcv
                if g is not None and isfinite(g) and isfinite(gcv):
                    self.grad_clip_n += 1
                    if gcv < g * (1 - 1e-6):
                        self.grad_clip_hits += 1
        if step is not None and (self._train_max_step is None or step > self._train_max_step):
            self._train_max_step = step
        self._n_train += 1
        # The values read above (a tuple of them: the cyclic GC soon stops tracking it, where
        # keeping thousands of event dicts alive would slow the whole fold down).
        self._replay.append((step, ev.get("loss"), ev.get("lr"), ev.get("grad_norm"), gc))
        if self._n_train % CHECKPOINT_EVERY == 0:
            self._checkpoints.append(_Checkpoint(self._n_train, self._train_max_step, self._train_state()))

    def _metrics(self, ev: dict[str, Any], step: int | None) -> None:
        kind = ev.get("kind")
        m = ev.get("metrics")
        if not isinstance(m, dict):
            return
        if kind == "lora_audit":
            self.lora_audit = AuditSummary.from_dict(m)
        elif kind == "fault_injection":
            self.injected.append({**m, "step": step})
        elif kind == "spectral":
            self.spectral_last = {**m, "step": step}
            self._spectral.append(self.spectral_last)
            self.spectral_n += 1
        elif kind == "guard":
            action = _text(ev.get("action")) or _text(m.get("action"))
            if action == "summary":
                self.guard_summary = m
            elif action:
                self.guard_counts[f"action:{action}"] += 1
            self.guard_last = {**m, "step": step, "action": action}
        elif kind == "grad_norm":
            self.grad_summary = m
            self._grad_records.append(_Record(step, m))

    # ------------------------------------------------------------------------------
    def grad_record(self) -> tuple[dict[str, Any] | None, int | None]:
        """The run's full-run gradient record (merged across resumes) and the step it was written at."""
        newest = self._grad_records[-1] if self._grad_records else None
        merged = merge_grad_records(self._grad_base, newest.metrics if newest else None)
        return merged, newest.step if newest else None

    def _grad_section(self) -> GradNormSummary:
        record, record_step = self.grad_record()
        n_record = _count(record.get("n")) if record else None
        if record and n_record:
            recorded_hist = record.get("history")
            hist = [v for v in map(_num, recorded_hist) if v is not None] if isinstance(recorded_hist, list) else []
            last, last_clipped = _num(record.get("last")), _num(record.get("last_clipped"))
            newer = (self.grad_last is not None and self.grad_last_step is not None
                     and (record_step is None or self.grad_last_step > record_step))
            if newer or last is None:
                last, last_clipped = self.grad_last, self.grad_clipped_last
            mx = _num(record.get("max"))
            if self.grad_max is not None and (mx is None or self.grad_max > mx):
                mx = self.grad_max
            nonfinite = max(_count(record.get("nonfinite_count")) or 0, self.grad_nonfinite)
            return GradNormSummary(
                last=last, max=mx, last_clipped=last_clipped, history=hist,
                level=sustained_level([*hist, last] if newer or not hist else hist, self.thresholds),
                trend=trend(hist) if hist else None,
                sparkline=sparkline(hist) if hist else "", nonfinite_count=nonfinite, summary=record,
                source="full_run", n_steps=n_record, clipped_steps=_count(record.get("clipped_steps")),
                record_step=record_step,
            )
        hist = list(self.grad_hist)
        return GradNormSummary(
            last=self.grad_last,
            max=self.grad_max,
            last_clipped=self.grad_clipped_last,
            history=hist,
            level=sustained_level(hist if hist else [self.grad_last], self.thresholds),
            trend=trend(hist) if hist else None,
            sparkline=sparkline(hist) if hist else "",
            nonfinite_count=self.grad_nonfinite,
            summary=record,
            source="sampled" if self.grad_n else None,
            n_steps=self.grad_n if self.grad_n else None,
            clipped_steps=self.grad_clip_hits if self.grad_n and self.grad_clip_n == self.grad_n else None,
            record_step=record_step if record else None,
        )

    def median_interval_s(self) -> float | None:
        """Median wall-clock seconds between consecutive ``train_step`` events (the last 256)."""
        times = list(self._train_ts)
        gaps = [b - a for a, b in itertools.pairwise(times) if a is not None and b is not None and b > a]
        return statistics.median(gaps) if gaps else None

    def snapshot(self, now: float | None = None) -> SignalSnapshot:
        """The run so far. With ``now`` (unix seconds), a running run silent for longer than
        :func:`stall_threshold_s` of its cadence reads as ``stalled``."""
        # Typed (ill-typed values read as missing, kept under extras["_invalid"]) so views and
        # rules never meet odd types.
        cfg = ConfigSnapshot.from_dict(self.config).typed() if self.config else ConfigSnapshot()
        profile, _ = resolve_profile(cfg)
        duration, duration_source = self.duration()
        snap = SignalSnapshot(
            run_id=self.run_id,
            model_name=cfg.model_name,
            dataset_name=cfg.dataset_name,
            task_profile=profile.value,
            r=cfg.lora.r,
            config=cfg.to_dict() if self.config else {},
            meta=self.meta,
            status=self.status,
            reason=self.reason,
            stop_reason=self.stop_reason,
            adapter=self.adapter,
            n_events=self.n_events,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            last_step=self.last_step,
            max_steps=cfg.training.max_steps,
            resumed_from_step=self.resumed_from_step,
            resumes=[dict(r) for r in self.resumes],
            duration_source=duration_source,
            measured_duration_s=duration,
        )
        if now is not None:
            snap.stalled = False
        if now is not None and self.status == "running" and self.last_ts is not None:
            silence = max(now - self.last_ts, 0.0)
            snap.silence_s = silence
            snap.stall_after_s = stall_threshold_s(self.median_interval_s())
            snap.stalled = silence > snap.stall_after_s
        evals = {k: {"step": v["step"], "metrics": dict(v["metrics"]), "split_raw": v["split_raw"]}
                 for k, v in self.evals.items()}
        if profile.is_language_modelling:
            for entry in evals.values():
                m = entry["metrics"]
                loss = _num(m.get("loss"))
                if _num(m.get("ppl")) is None and loss is not None and math.isfinite(loss) and loss < 700:
                    m["ppl"] = math.exp(loss)
                    m["ppl_derived"] = True
        snap.evals = evals
        snap.eval_history = {split: {"n": len(h), "steps": [e[0] for e in h], "accuracy": [e[1] for e in h],
                                     "loss": [e[2] for e in h], "majority_rate": [e[3] for e in h]}
                             for split, h in self._eval_hist.items()}
        snap.gaps, snap.gap_missing = _gaps(evals, profile)
        snap.loss = LossSummary(
            first=self.loss_first,
            last=self.loss_last,
            min=self.loss_min,
            min_step=self.loss_min_step,
            n=self.loss_n,
            nonfinite_count=self.loss_nonfinite,
            nonfinite_steps=list(self.loss_nonfinite_steps),
            spikes=self.spikes,
            spike_steps=list(self.spike_steps),
        )
        snap.lr = LrSummary(first=self.lr_first, last=self.lr_last)
        snap.grad_norm = self._grad_section()
        g = self.guard_counts
        summary = self.guard_summary or {}

        def counted(*keys: str, fallback: int) -> int:
            # The guard's own summary wins; a missing or ill-typed count falls back to what the events show.
            for key in keys:
                n = _count(summary.get(key))
                if n is not None:
                    return n
            return fallback

        snap.guard = GuardSummary(
            enabled=bool(g or self.guard_summary or self.guard_last),
            snapshots=counted("snapshots", fallback=g["action:snapshot"]),
            rollbacks=counted("rollbacks", fallback=g["GUARD_ROLLBACK"]),
            lr_backoffs=counted("lr_backoffs", "backoffs", fallback=g["action:backoff"]),
            aborts=g["GUARD_LOCKOUT"] + g["GUARD_ABORT"],
            lockout=bool(g["GUARD_LOCKOUT"]),
            final_lr_scale=_num(summary.get("final_lr_scale")),
            integrity_status=_text(summary.get("integrity_status")),
            last=self.guard_last,
            amp_overflows=_count(summary.get("amp_overflows")),
        )
        last_sp = self.spectral_last or {}
        kappa = _num(last_sp.get("kappa_tilde"))
        sp_step = last_sp.get("step")
        snap.spectral = SpectralSummary(
            kappa=kappa if kappa is not None else _num(last_sp.get("kappa")),
            risk_level=_text(last_sp.get("risk_level")),
            step=sp_step if type(sp_step) is int else None,
            n=self.spectral_n,
        )
        snap.lora_audit = self.lora_audit
        snap.injected_faults = [dict(f) for f in self.injected]
        snap.alerts = list(self.alerts)
        snap.alert_counts = dict(self.alert_counts)
        snap.recommendations = list(self.recommendations)
        return snap


def held_out_split(evals: dict[str, Any]) -> str | None:
    for s in ("test", "val"):
        if s in evals:
            return s
    for s in HELD_OUT_SPLITS:
        if s in evals:
            return s
    return None


def _gaps(evals: dict[str, dict[str, Any]], profile: TaskProfile) -> tuple[dict[str, float | None], list[str]]:
    """``ppl_gap = test/train``, ``loss_gap = test/train``, ``acc_gap = train − test`` (docs/telemetry.md#signalsnapshot)."""
    gaps: dict[str, float | None] = {"ppl_gap": None, "loss_gap": None, "acc_gap": None}
    missing: list[str] = []
    test = held_out_split(evals)
    train = "train" if "train" in evals else None
    if test is None:
        missing.append("no held-out eval (split test/val)")
    if train is None:
        missing.append("no train-split eval")
    if test is None or train is None:
        return gaps, missing
    tm, rm = evals[test]["metrics"], evals[train]["metrics"]

    def pair(key: str) -> tuple[float | None, float | None]:
        return _num(tm.get(key)), _num(rm.get(key))

    t, r = pair("ppl")
    if t is not None and r is not None and r > 0:
        gaps["ppl_gap"] = t / r
    elif profile.is_language_modelling:
        missing.append("ppl (or loss) missing on one side")
    t, r = pair("loss")
    if t is not None and r is not None and r > 0:
        gaps["loss_gap"] = t / r
    t, r = pair("accuracy")
    if t is not None and r is not None:
        gaps["acc_gap"] = r - t
    if all(v is None for v in gaps.values()):
        missing.append("no metric present on both splits (ppl, loss, accuracy)")
    gaps["held_out_split"] = test  # type: ignore[assignment]
    return gaps, missing
