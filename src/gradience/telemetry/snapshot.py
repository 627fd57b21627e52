"""SignalSnapshot: what policy and every view (monitor, watch, report) consume.

A :class:`RunAccumulator` folds events of one run in O(1) memory per event (bounded
histories only); :meth:`RunAccumulator.snapshot` derives the gaps and levels.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from math import isfinite
from typing import Any

from .health import DEFAULT_THRESHOLDS, GradThresholds, SpikeDetector, grad_level, sparkline, trend
from .profiles import resolve_profile
from .record import plain
from .schema import HELD_OUT_SPLITS, ConfigSnapshot, TaskProfile, real_number, whole_number
from .sections import AuditSummary, GradNormSummary, GuardSummary, LossSummary, LrSummary, SpectralSummary

GRAD_HISTORY = 10
MAX_KEPT_ALERTS = 200
MAX_KEPT_SPIKES = 50


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


def _first_lr(lr: Any) -> float | None:
    if isinstance(lr, list):
        return _num(lr[0]) if lr else None
    return _num(lr)


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
    n_events: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    last_step: int | None = None
    max_steps: int | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> {step, metrics}
    gaps: dict[str, float | None] = field(default_factory=dict)
    gap_missing: list[str] = field(default_factory=list)
    loss: LossSummary = field(default_factory=LossSummary.empty)
    lr: LrSummary = field(default_factory=LrSummary.empty)
    grad_norm: GradNormSummary = field(default_factory=GradNormSummary.empty)
    guard: GuardSummary = field(default_factory=GuardSummary.empty)
    spectral: SpectralSummary = field(default_factory=SpectralSummary.empty)
    lora_audit: AuditSummary | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_counts: dict[str, int] = field(default_factory=dict)
    recommendations: list[dict[str, Any]] = field(default_factory=list)

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
        if self.first_ts is None or self.last_ts is None:
            return None
        d = self.last_ts - self.first_ts
        return d if isfinite(d) else None

    def eval_metric(self, split: str, key: str) -> float | None:
        entry = self.evals.get(split)
        if not entry:
            return None
        return _num(entry["metrics"].get(key))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        d["duration_s"] = self.duration_s
        return d


class RunAccumulator:
    """Folds the events of one run. Memory is bounded regardless of run length."""

    def __init__(self, run_id: str, thresholds: GradThresholds = DEFAULT_THRESHOLDS) -> None:
        self.run_id = run_id
        self.thresholds = thresholds
        self.config: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.status = "running"
        self.reason: str | None = None
        self.n_events = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.last_step: int | None = None
        self.evals: dict[str, dict[str, Any]] = {}
        self.loss_first: float | None = None
        self.loss_last: float | None = None
        self.loss_min: float | None = None
        self.loss_min_step: int | None = None
        self.loss_n = 0
        self.loss_nonfinite = 0
        self.loss_nonfinite_steps: deque[int | None] = deque(maxlen=MAX_KEPT_SPIKES)
        self.spikes = 0
        self.spike_steps: deque[int | None] = deque(maxlen=MAX_KEPT_SPIKES)
        self._spike = SpikeDetector()
        self.lr_first: float | None = None
        self.lr_last: float | None = None
        self.grad_hist: deque[float] = deque(maxlen=GRAD_HISTORY)
        self.grad_last: float | None = None
        self.grad_max: float | None = None
        self.grad_nonfinite = 0
        self.grad_clipped_last: float | None = None
        self.grad_summary: dict[str, Any] | None = None
        self.guard_counts: Counter[str] = Counter()
        self.guard_last: dict[str, Any] | None = None
        self.guard_summary: dict[str, Any] | None = None
        self.spectral_last: dict[str, Any] | None = None
        self.spectral_n = 0
        self.lora_audit: AuditSummary | None = None
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_ALERTS)
        self.alert_counts: Counter[str] = Counter()
        self.recommendations: list[dict[str, Any]] = []

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
        step = ev.get("step")
        if type(step) is int:
            if self.last_step is None or step > self.last_step:
                self.last_step = step
        else:
            step = None
        name = ev.get("event")
        if name == "train_step":
            self._train_step(ev, step)
        elif name == "eval":
            metrics = ev.get("metrics")
            if isinstance(metrics, dict):
                split = normalize_split(ev.get("split"))
                self.evals[split] = {"step": step, "metrics": metrics, "split_raw": ev.get("split")}
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
            # A resumed run restarts; its end is not known yet.
            self.status = "running"
            self.reason = None
        elif name == "run_end":
            status = ev.get("status")
            self.status = status if status in ("ok", "aborted", "error") else "error"
            self.reason = _text(ev.get("reason"))

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
            self.grad_last = g
            self.grad_hist.append(g)
            if isfinite(g):
                if self.grad_max is None or g > self.grad_max:
                    self.grad_max = g
            else:
                self.grad_nonfinite += 1
        gc = ev.get("grad_norm_clipped")
        if gc is not None:
            gcv = _num(gc)
            if gcv is not None:
                self.grad_clipped_last = gcv

    def _metrics(self, ev: dict[str, Any], step: int | None) -> None:
        kind = ev.get("kind")
        m = ev.get("metrics")
        if not isinstance(m, dict):
            return
        if kind == "lora_audit":
            self.lora_audit = AuditSummary.from_dict(m)
        elif kind == "spectral":
            self.spectral_last = {**m, "step": step}
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

    # ------------------------------------------------------------------------------
    def snapshot(self) -> SignalSnapshot:
        # Typed (ill-typed values read as missing, kept under extras["_invalid"]) so views and
        # rules never meet odd types.
        cfg = ConfigSnapshot.from_dict(self.config).typed() if self.config else ConfigSnapshot()
        profile, _ = resolve_profile(cfg)
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
            n_events=self.n_events,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            last_step=self.last_step,
            max_steps=cfg.training.max_steps,
        )
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
        hist = list(self.grad_hist)
        snap.grad_norm = GradNormSummary(
            last=self.grad_last,
            max=self.grad_max,
            last_clipped=self.grad_clipped_last,
            history=hist,
            level=grad_level(self.grad_last, self.thresholds),
            trend=trend(hist) if hist else None,
            sparkline=sparkline(hist) if hist else "",
            nonfinite_count=self.grad_nonfinite,
            summary=self.grad_summary,
        )
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
