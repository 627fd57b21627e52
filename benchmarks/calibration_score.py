"""Score every alarm source of Gradience against the calibration corpus's ground truth.

    python -m benchmarks.calibration_score                 # the confusion table (fit, test, all)
    python -m benchmarks.calibration_score --split test    # the table on the held-back seeds only
    python -m benchmarks.calibration_score --runs          # plus one line per run and source
    python -m benchmarks.calibration_score --json          # everything, for scripts

The corpus (``tests/data/calibration``: ``manifest.json`` plus one telemetry file per run,
recorded with ``telemetry_interval=1``, κ̃ every 5 steps and the guard off) is re-scored offline
with the rules the code holds *now*: nothing recorded by a rule at recording time is trusted.

Ground truth (``docs/calibration.md#ground-truth``), from the telemetry and the manifest only:

* a run **diverges** at the first step whose loss is non-finite, or is >= 10x the median of the
  losses of all the steps before it *and stays there* (the median of the losses of that step and
  the next four is also >= 10x that median); step 1 diverges only by being non-finite;
* every step at which the manifest says a fault was **injected** is a real failure;
* a run that does not diverge and whose last held-out accuracy is <= the held-out majority-class
  rate + 1 point has **collapsed / not learned**; train accuracy - test accuracy >= 0.10 at the
  last eval (classification) or test/train perplexity >= 1.5 (causal LM) is **memorisation**;
  both are "worth saying";
* anything else is **healthy**.

Alarm sources, each counted when it says warning-or-worse:

* ``guard``: the guard's detection replayed over the per-step (step, loss, grad_norm) series;
* ``kappa``: κ̃ risk levels replayed from the recorded κ̃ samples through the run supervisor's
  own κ̃ step (the levels the product presents as alarms, and the alerts it writes);
* ``grad``: the gradient-norm monitor's level-change alerts, replayed from the per-step norms;
* ``monitor``: ``gradience monitor``'s recommendations at warning/error/critical and the run's
  alerts at warning or above;
* ``watch``: the health word of ``gradience watch``'s banner (anything but OK/GOOD);
* ``report``: the report's run status, its recommendations at warning or above and the gradient
  health it shows.

``monitor``, ``watch`` and ``report`` read a *derived* copy of each run in a temporary folder:
the recorded ``alert`` events of the replayed sources, the recorded κ̃ risk levels and the
recorded end-of-run recommendations are replaced by what the current code derives, so a rule
change anywhere is re-scored without re-recording. ``monitor`` and ``watch`` are also replayed
live (the view after every step), which gives their first alarm step.
"""

from __future__ import annotations

import argparse
import bisect
import io
import itertools
import json
import math
import re
import statistics
import sys
import tempfile
import textwrap
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / "tests" / "data" / "calibration"

# -- ground truth constants (docs/calibration.md#ground-truth) ----------------------------------------
DIVERGENCE_FACTOR = 10.0  # loss >= 10x the median of all earlier losses ...
SUSTAIN_STEPS = 5  # ... and the median of this step and the next four is too
COLLAPSE_MARGIN = 0.01  # held-out accuracy <= majority-class rate + 1 point: collapsed / not learned
MEMO_ACC_GAP = 0.10  # train accuracy - test accuracy (classification)
MEMO_PPL_RATIO = 1.5  # test ppl / train ppl (causal LM)

HEALTHY, WORTH, INJECTED, DIVERGED = "healthy", "worth_saying", "injected", "diverged"
CATEGORIES = (HEALTHY, WORTH, INJECTED, DIVERGED)
COLLAPSED, MEMORISATION = "collapsed", "memorisation"

SOURCES = ("guard", "kappa", "grad", "monitor", "watch", "report")
# Sources that speak in words (recommendations, health words): only they can *say* what a worth-saying
# run needs said. The others can only raise an alarm, which on such a run is off-topic.
CAN_SAY = ("monitor", "watch", "report")
# Sources observed step by step (the first alarm step is known); the report is read once, at the end.
STEPWISE = ("guard", "kappa", "grad", "monitor", "watch")

_SEV_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
# Re-derived from the replays; the recorded ones were produced by the rules of recording time.
_REDERIVED_ALERT_PREFIXES = ("GRAD_NORM_", "SPECTRAL_", "GUARD_", "AMP_OVERFLOW", "LR_JUMP")
# The gradient-health source: the gradient-norm monitor's level alerts (the recorder's other alerts,
# such as LR_JUMP, reach the views through the derived copy and count there).
_GRAD_HEALTH_PREFIX = "GRAD_NORM_"
# Words of the watch banner that are not an alarm.
_QUIET_WORDS = {"OK", "GOOD", "—", "-", ""}
# What a warning must be about to *say* a worth-saying case (matched on its code/action and text).
TOPICS = {
    COLLAPSED: re.compile(r"not[ _-]?learn|no[ _-]?learn|underfit|chance|collaps|majority", re.I),
    MEMORISATION: re.compile(r"memori[sz]|overfit|generali[sz]", re.I),
}


def _warn_or_worse(severity: Any) -> bool:
    return _SEV_RANK.get(str(severity or "").lower(), 0) >= 1


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


# =====================================================================================================
# ground truth
# =====================================================================================================
def divergence_step(losses: Iterable[tuple[int, float | None]], factor: float = DIVERGENCE_FACTOR,
                    sustain: int = SUSTAIN_STEPS) -> int | None:
    """The blow-up step of a per-step loss series (step order, one value per step), or None.

    The first step whose loss is non-finite, or >= ``factor`` x the median M of the losses of all
    the steps before it while the median of the losses of that step and the next ``sustain - 1``
    steps (those that exist; a non-finite one counts as infinitely large) is also >= ``factor`` x M.
    Steps without a loss are skipped. The first step has no steps before it: it diverges only by
    being non-finite.
    """
    pts = [(int(s), float(v)) for s, v in losses if v is not None]
    before: list[float] = []  # sorted finite losses of the earlier steps
    for i, (step, loss) in enumerate(pts):
        if not math.isfinite(loss):
            return step
        if before:
            n = len(before)
            m = before[n // 2] if n % 2 else (before[n // 2 - 1] + before[n // 2]) / 2
            if m > 0 and loss >= factor * m:
                ahead = [v if math.isfinite(v) else math.inf for _, v in pts[i:i + sustain]]
                if statistics.median(ahead) >= factor * m:
                    return step
        bisect.insort(before, loss)
    return None


def worth_saying(evals: dict[str, dict[str, Any]], labels: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """What a non-diverging run needs said, from its last eval per split: ``collapsed`` and/or
    ``memorisation``, with the numbers behind it.

    ``evals``: split (``train``/``test``) -> the metrics of the last eval of that split.
    ``labels``: ``{"n_labels", "majority_rate"}`` of the held-out set (None for a causal LM).
    """
    out: list[str] = []
    facts: dict[str, Any] = {}
    test, train = evals.get("test") or {}, evals.get("train") or {}
    test_acc, train_acc = _num(test.get("accuracy")), _num(train.get("accuracy"))
    if test_acc is not None:
        majority = _num((labels or {}).get("majority_rate"))
        if majority is None and _num((labels or {}).get("n_labels")):
            majority = 1.0 / float(labels["n_labels"])  # type: ignore[index]
        facts["test_accuracy"] = test_acc
        if majority is not None:
            facts["majority_rate"] = majority
            if test_acc <= majority + COLLAPSE_MARGIN + 1e-12:
                out.append(COLLAPSED)
        if train_acc is not None:
            facts["acc_gap"] = train_acc - test_acc
            if train_acc - test_acc >= MEMO_ACC_GAP - 1e-12:
                out.append(MEMORISATION)
    else:
        def ppl(m: dict[str, Any]) -> float | None:
            p = _num(m.get("ppl"))
            if p is None:
                loss = _num(m.get("loss"))
                p = math.exp(loss) if loss is not None and math.isfinite(loss) and loss < 700 else None
            return p

        tp, rp = ppl(test), ppl(train)
        if tp is not None and rp is not None and rp > 0:
            facts["ppl_ratio"] = tp / rp
            if tp / rp >= MEMO_PPL_RATIO - 1e-12:
                out.append(MEMORISATION)
    return out, facts


@dataclass
class Truth:
    """The ground truth of one run."""

    category: str
    divergence_step: int | None
    injected: list[dict[str, Any]]
    worth: list[str]
    facts: dict[str, Any]
    cause_step: int | None = None  # a diverged run: the step its cause began (an LR raised), when known

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "divergence_step": self.divergence_step, "injected": self.injected,
                "worth": self.worth, "facts": self.facts, "cause_step": self.cause_step}


def ground_truth(losses: Sequence[tuple[int, float | None]], evals: dict[str, dict[str, Any]],
                 labels: dict[str, Any] | None, injected: Sequence[dict[str, Any]] = (),
                 cause_step: int | None = None) -> Truth:
    """Category of a run: ``injected`` (the manifest lists fault steps) > ``diverged`` >
    ``worth_saying`` > ``healthy``. ``cause_step``: where the manifest says a diverging run's cause
    began (alarms before it were raised on a healthy stretch and lead nothing)."""
    div = divergence_step(losses)
    worth, facts = worth_saying(evals, labels) if div is None else ([], {})
    inj = [dict(i) for i in injected]
    if inj:
        cat = INJECTED
    elif div is not None:
        cat = DIVERGED
    elif worth:
        cat = WORTH
    else:
        cat = HEALTHY
    return Truth(cat, div, inj, worth if cat == WORTH else [], facts, cause_step if cat == DIVERGED else None)


# =====================================================================================================
# reading a run
# =====================================================================================================
@dataclass
class Run:
    """One corpus run: its manifest entry and its events (one run id)."""

    name: str
    path: Path
    entry: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def split(self) -> str:
        return str(self.entry.get("split") or "fit")

    @property
    def profile(self) -> str:
        return str(self.entry.get("profile") or "?")

    def segments(self) -> list[list[dict[str, Any]]]:
        """The ``train_step`` events of each process: segment k starts at the (k+1)-th ``run_start``
        (a resumed run has one per process); events before the first belong to the first."""
        segs: list[list[dict[str, Any]]] = [[]]
        for k, ev in with_segments(self.events):
            while len(segs) <= k:
                segs.append([])
            if ev["event"] == "train_step" and type(ev.get("step")) is int:
                segs[k].append(ev)
        return segs

    def losses(self) -> list[tuple[int, float | None]]:
        """(step, loss) once per step, in step order; a step recorded twice (a resume replays the
        steps after its checkpoint) keeps its last value."""
        by_step: dict[int, float | None] = {}
        for seg in self.segments():
            for ev in seg:
                by_step[ev["step"]] = _num(ev.get("loss"))
        return sorted(by_step.items())

    def last_evals(self) -> dict[str, dict[str, Any]]:
        from gradience.telemetry.snapshot import normalize_split

        out: dict[str, dict[str, Any]] = {}
        for ev in self.events:
            if ev["event"] == "eval" and isinstance(ev.get("metrics"), dict):
                out[normalize_split(ev.get("split"))] = ev["metrics"]
        return out

    def amp_scaler(self) -> bool:
        """Was an AMP grad scaler enabled (its overflow steps are the scaler's business)?"""
        for ev in self.events:
            if ev["event"] == "run_start":
                amp = (ev.get("meta") or {}).get("amp")
                if isinstance(amp, dict) and amp.get("grad_scaler"):
                    return True
        return bool(self.entry.get("amp"))

    def cause_step(self) -> int | None:
        """Where the manifest says the cause of a divergence began (``lr_boost.step``, ``cause_step``)."""
        boost = self.entry.get("lr_boost")
        step = boost.get("step") if isinstance(boost, dict) else self.entry.get("cause_step")
        return step if isinstance(step, int) else None

    def truth(self) -> Truth:
        return ground_truth(self.losses(), self.last_evals(), self.entry.get("labels"), self.entry.get("injected") or [],
                            self.cause_step())


def with_segments(events: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(segment, event): the segment is the number of ``run_start`` events seen so far, minus one
    (at least 0) — one segment per process of a resumed run."""
    starts = 0
    for ev in events:
        if ev["event"] == "run_start":
            starts += 1
        yield max(starts - 1, 0), ev


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event of the last run id in ``path`` (non-finite values restored)."""
    from gradience.telemetry.reader import TelemetryReader

    events = list(TelemetryReader(path).iter_events())
    if not events:
        return []
    rid = events[-1]["run_id"]
    # A resumed run keeps its run id; another id in the same file is another run.
    return [e for e in events if e["run_id"] == rid]


def load_corpus(corpus: Path) -> tuple[dict[str, Any], list[Run]]:
    manifest_path = corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    runs = []
    for entry in manifest.get("runs", []):
        path = corpus / entry["file"]
        runs.append(Run(Path(entry["file"]).stem, path, entry, read_events(path)))
    return manifest, runs


# =====================================================================================================
# replays of the product's rules
# =====================================================================================================
def replay_guard(series: Sequence[tuple[int, float | None, float | None]], *, amp: bool,
                 loss_prior: float | None = None) -> list[tuple[int, list[str]]]:
    """The guard's detection over one process's (step, loss, pre-clip grad norm) series: (step, triggers)
    for every step where a rule fired (the guard module's own replay: the same detector as the guard)."""
    from gradience.training.detect import replay_guard as replay

    return replay(series, amp=amp, loss_prior=loss_prior)


def run_loss_prior(run: Run) -> float | None:
    """The task's untrained loss the guard uses: as the run recorded it (``run_start.meta.loss_prior``),
    else what the guard derives from the held-out set's label count (the manifest's ``n_labels``)."""
    for ev in run.events:
        if ev["event"] == "run_start":
            prior = _num((ev.get("meta") or {}).get("loss_prior"))
            if prior is not None:
                return prior
    n = (run.entry.get("labels") or {}).get("n_labels")
    if isinstance(n, int) and n >= 2:
        from gradience.training.detect import loss_prior

        return loss_prior(n_labels=n)
    return None


class _CaptureWriter:
    """Stands in for a TelemetryWriter: keeps what the product would have written."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.enabled = True
        self.closed = False

    def alert(self, severity: Any = "warning", code: str = "ALERT", message: str = "", step: int | None = None,
              context: dict[str, Any] | None = None) -> None:
        self.calls.append(("alert", {"severity": str(getattr(severity, "value", severity)), "code": str(code),
                                     "message": message, "step": step, "context": dict(context or {})}))

    def metrics(self, kind: str, metrics: dict[str, Any] | None = None, step: int | None = None, **extra: Any) -> None:
        self.calls.append(("metrics", {"kind": kind, "metrics": dict(metrics or {}), "step": step, **extra}))

    def flush(self) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, {"args": args, **kwargs}))

        return record


def _recorder(tmp: Path) -> Any:
    """A RunRecorder whose writes are captured (never touches a file)."""
    from gradience.training.recorder import RunRecorder

    rec = RunRecorder(tmp / "unused.jsonl", is_writer=False)
    rec.writer = _CaptureWriter()
    return rec


@dataclass
class GradReplay:
    """What the recorder's gradient-norm health writes when fed a run's steps: per (segment, step) the
    calls before that step's ``train_step`` (level-change alerts, running summaries), and per segment
    the final summary."""

    at: dict[tuple[int, int], list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    final: dict[int, dict[str, Any]] = field(default_factory=dict)

    def alerts(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for (_, step), calls in sorted(self.at.items()):
            for kind, c in calls:
                if kind == "alert":
                    yield step, c


def replay_grad(segments: Sequence[Sequence[dict[str, Any]]], tmp: Path, *, amp: bool) -> GradReplay:
    """The recorder's ``record_lr`` and ``record_grad`` fed every recorded step (a fresh recorder per
    process), as the run supervisor calls them (an enabled AMP scaler's overflow: a non-finite norm with a finite loss)."""
    out = GradReplay()
    for k, seg in enumerate(segments):
        rec = _recorder(tmp)
        last = None
        for ev in seg:
            pre = _num(ev.get("grad_norm"))
            if pre is None:
                continue
            loss = _num(ev.get("loss"))
            overflow = amp and not math.isfinite(pre) and loss is not None and math.isfinite(loss)
            rec.writer.calls.clear()
            rec.record_lr(ev["step"], ev.get("lr"))  # as the supervisor does before record_grad
            rec.record_grad(ev["step"], pre, _num(ev.get("grad_norm_clipped")), amp_overflow=overflow)
            calls = [(kind, c) for kind, c in rec.writer.calls if kind in ("alert", "metrics")]
            if calls:
                out.at[(k, ev["step"])] = calls
            last = ev["step"]
        rec.writer.calls.clear()
        rec.write_grad_summary(last)
        final = [c for kind, c in rec.writer.calls if kind == "metrics" and c.get("kind") == "grad_norm"]
        if final:
            out.final[k] = final[0]
    return out


@contextmanager
def _recorded_kappa(value: dict[str, Any]) -> Iterator[None]:
    """Make the κ̃ measurement return the recorded sample (the model is not needed to replay levels)."""
    from gradience.training import spectral

    real = spectral.kappa_tilde
    spectral.kappa_tilde = lambda model: (value["kappa"], value["n_modules"], value["method"])  # type: ignore[assignment]
    try:
        yield
    finally:
        spectral.kappa_tilde = real  # type: ignore[assignment]


def kappa_samples(run: Run) -> list[tuple[int, int, dict[str, Any]]]:
    """(segment, step, recorded payload) of every κ̃ sample."""
    out = []
    for seg, ev in with_segments(run.events):
        if ev["event"] == "metrics" and ev.get("kind") == "spectral" and isinstance(ev.get("metrics"), dict):
            k = _num(ev["metrics"].get("kappa_tilde"))
            if k is not None and type(ev.get("step")) is int:
                out.append((seg, ev["step"], ev["metrics"]))
    return out


def replay_kappa(run: Run, tmp: Path) -> dict[tuple[int, int], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The run supervisor's κ̃ step (current levels, alerts) fed the recorded κ̃ samples:
    ``(segment, step) -> (spectral payload, alerts)``. A fresh monitor per process."""
    from gradience.training.config import GradienceConfig, SpectralConfig
    from gradience.training.spectral import SpectralMonitor
    from gradience.training.supervisor import RunSupervisor

    samples = kappa_samples(run)
    steps = sorted({s for _, s, _ in samples})
    gaps = [b - a for a, b in itertools.pairwise(steps) if b > a]
    interval = min(gaps) if gaps else SpectralConfig().interval
    spec = SpectralConfig(interval=interval)
    out: dict[tuple[int, int], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    sup: Any = None
    current = -1
    for seg, step, payload in samples:
        if seg != current:
            sup = RunSupervisor(GradienceConfig(guard=None, spectral=spec), tmp)
            sup.recorder = _recorder(tmp)
            sup.spectral = SpectralMonitor(spec.interval, window=spec.window, thresholds=spec.thresholds)
            current = seg
        sup.recorder.writer.calls.clear()
        value = {"kappa": float(payload["kappa_tilde"]), "n_modules": payload.get("n_modules") or 1,
                 "method": payload.get("method") or "lora_exact"}
        with _recorded_kappa(value):
            sup._spectral_step(step)
        calls = sup.recorder.writer.calls
        new = next((c["metrics"] for kind, c in calls if kind == "metrics" and c.get("kind") == "spectral"), None)
        alerts = [c for kind, c in calls if kind == "alert"]
        if new is not None:
            out[(seg, step)] = (new, alerts)
    return out


def kappa_alarm_levels() -> tuple[frozenset[str], bool]:
    """(the κ̃ levels the product presents as warning-or-worse, demoted?)."""
    from gradience.training import kappa_risk

    levels = frozenset(kappa_risk.ALARM_LEVELS)
    return levels, not levels


RAW_KAPPA_ALARM = frozenset({"WARNING", "DANGER", "INSTABILITY"})


# =====================================================================================================
# the derived copy and the views
# =====================================================================================================
def _event(template: dict[str, Any], name: str, step: int | None, **payload: Any) -> dict[str, Any]:
    return {"schema": template["schema"], "ts": template.get("ts"), "run_id": template["run_id"], "event": name,
            "step": step, **payload}


def _write(path: Path, events: Iterable[dict[str, Any]]) -> None:
    from gradience.telemetry.encoding import encode_line, sanitize

    with open(path, "wb") as f:
        for ev in events:
            f.write(encode_line(sanitize(ev, max_str_len=None)))


def backfill(run: Run) -> Iterator[dict[str, Any]]:
    """The run's events with the label facts the integrations record filled in from the manifest where
    the recording lacks them: ``config.n_labels`` (the classifier's label count) and the held-out
    evals' ``majority_rate`` (the chance level of the eval set). Sets ``run.entry["_backfilled"]``."""
    from gradience.telemetry.snapshot import normalize_split

    labels = run.entry.get("labels") or {}
    n_labels, rate = labels.get("n_labels"), _num(labels.get("majority_rate"))
    filled: set[str] = set()
    for ev in run.events:
        name = ev["event"]
        if name == "run_start" and isinstance(n_labels, int) and isinstance(ev.get("config"), dict) \
                and ev["config"].get("n_labels") is None:
            ev = {**ev, "config": {**ev["config"], "n_labels": n_labels}}
            filled.add("n_labels")
        elif name == "eval" and rate is not None and isinstance(ev.get("metrics"), dict) \
                and normalize_split(ev.get("split")) == "test" and ev["metrics"].get("majority_rate") is None:
            ev = {**ev, "metrics": {**ev["metrics"], "majority_rate": rate}}
            filled.add("majority_rate")
        yield ev
    run.entry["_backfilled"] = sorted(filled)


def derive_events(run: Run, grad: GradReplay,
                  kappa: dict[tuple[int, int], tuple[dict[str, Any], list[dict[str, Any]]]],
                  tmp: Path) -> list[dict[str, Any]]:
    """The run's events as the current code would have written them: re-derived gradient-health and
    κ̃ alerts in place of the recorded ones, the gradient-norm summaries of the current recorder,
    current κ̃ levels in the spectral payloads, and the end-of-run recommendations of the current
    rules. Facts the integrations record and a recording may predate are filled in from the manifest
    where missing (:func:`backfill`). The fault injector's records (``metrics(kind="fault_injection")``)
    are left out: a view that only repeats them has detected nothing."""
    from gradience.policy import run_recommendations
    from gradience.telemetry.reader import TelemetryReader

    out: list[dict[str, Any]] = []
    for seg, ev in with_segments(backfill(run)):
        name = ev["event"]
        step = ev.get("step")
        if name == "alert" and str(ev.get("code", "")).startswith(_REDERIVED_ALERT_PREFIXES):
            continue
        elif name == "metrics" and ev.get("kind") == "fault_injection":
            # The injector's own record of a firing: a view that repeats it has not detected anything.
            # The scorer measures detection from the run's signals, so the views never see it.
            continue
        elif name == "train_step":
            for kind, c in grad.at.get((seg, step), []) if type(step) is int else []:
                if kind == "alert":
                    out.append(_event(ev, "alert", c["step"], severity=c["severity"], code=c["code"],
                                      message=c["message"], context=c["context"]))
                else:
                    extra = {k: v for k, v in c.items() if k not in ("kind", "metrics", "step")}
                    out.append(_event(ev, "metrics", c["step"], kind=c["kind"], metrics=c["metrics"], **extra))
            out.append(ev)
        elif name == "metrics" and ev.get("kind") == "grad_norm":
            # A recorded running summary is replaced by the replayed ones; the final one by the replay's.
            m = ev.get("metrics")
            if isinstance(m, dict) and m.get("final", True) is not False and seg in grad.final:
                out.append({**ev, "metrics": grad.final[seg]["metrics"]})
        elif name == "metrics" and ev.get("kind") == "spectral" and type(step) is int:
            found = kappa.get((seg, step))
            if found is None:
                out.append(ev)
                continue
            payload, alerts = found
            out.append({**ev, "metrics": payload})
            for a in alerts:
                out.append(_event(ev, "alert", a["step"], severity=a["severity"], code=a["code"],
                                  message=a["message"], context=a["context"]))
        elif name == "recommendation":
            part = tmp / "partial.jsonl"
            _write(part, out)
            snap = TelemetryReader(part).summarize(ev["run_id"])
            recs = [r.to_dict() for r in run_recommendations(snap)]
            out.append({**ev, "recommendations": recs})
        else:
            out.append(ev)
    return out


def _alarm_items(recs: Iterable[Any], alerts: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Warning-or-worse recommendations and alerts as ``key -> text``; the key names the item (a
    recommendation's action, an alert's code and step) so a message whose numbers move is the same item."""
    items: dict[str, str] = {}
    for r in recs:
        d = r if isinstance(r, dict) else r.to_dict()
        if _warn_or_worse(d.get("severity")):
            items.setdefault(f"rec:{d.get('action')}",
                             f"{d.get('severity')} {d.get('action')}: {d.get('message', '')} {d.get('rationale', '')}")
    for a in alerts:
        if _warn_or_worse(a.get("severity")):
            items.setdefault(f"alert:{a.get('code')}@{a.get('step')}",
                             f"alert {a.get('severity')} {a.get('code')}: {a.get('message', '')}")
    return items


def monitor_final(path: Path, now: float) -> dict[str, str]:
    """``gradience monitor``'s warning-or-worse items for the file (recommendations, alerts), read at
    ``now`` (just after the run's last event)."""
    from gradience.cli.monitor import build_monitor_json

    obj = build_monitor_json(path, now=now)
    return _alarm_items(obj["recommendations"], obj["alerts"])


def _render_text(renderable: Any, width: int = 100) -> str:
    from rich.console import Console

    con = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, soft_wrap=False)
    con.print(renderable)
    return con.file.getvalue()  # type: ignore[attr-defined]


_HEALTH_RE = re.compile(r"\bhealth\s+(\S+)")


def watch_word(view: Any) -> str:
    """The health word of the watch banner for a view."""
    from gradience.watch.render import banner

    b = banner(view, 100)
    parts = getattr(b, "renderables", None)
    if parts is not None and all(hasattr(x, "plain") for x in parts):
        text = "\n".join(x.plain for x in parts)  # a Group of Text lines: no layout needed
    else:
        text = _render_text(b)
    m = _HEALTH_RE.search(text)
    return m.group(1) if m else ""


def watch_final(path: Path, clock: float) -> str:
    """The health word ``gradience watch --once`` prints for the file."""
    from gradience.watch.tail import WatchState

    state = WatchState(path, clock=lambda: clock)
    state.poll(budget_s=None)
    state.finish()
    return watch_word(state.view())


def report_final(path: Path) -> dict[str, str]:
    """What the report's status says at warning-or-worse: a run status other than ok, its
    recommendations at warning or above, a gradient health at a warning level."""
    from gradience.report.build import build_report
    from gradience.training.gradnorm import _LEVEL_SEVERITY

    rep = build_report(path)
    snap = rep.snapshot
    items = {}
    if snap.status not in ("ok", "running"):
        items["status"] = f"status {snap.status}: {snap.reason or ''}"
    elif getattr(snap, "stalled", False):
        items["status"] = "status stalled"
    items.update(_alarm_items(rep.recommendations, []))
    level = snap.grad_norm.level
    if level and _warn_or_worse(_LEVEL_SEVERITY.get(level)):
        items["grad"] = f"grad health {level}"
    return items


def live_views(path: Path, events: Sequence[dict[str, Any]], stride: int) -> Iterator[tuple[int, dict[str, str], str]]:
    """(step, monitor's warning-or-worse items, watch's health word) after every ``stride``-th step of a
    live replay (and after every step where anything but a train_step arrived), as a user running
    ``monitor`` or ``watch`` at that moment would see it."""
    from gradience.policy import run_recommendations
    from gradience.watch.tail import WatchState

    now = [0.0]
    state = WatchState(path, clock=lambda: now[0])
    last_step: int | None = None
    dirty = False
    n_steps = 0

    def look() -> tuple[int, dict[str, str], str]:
        view = state.view()
        snap = view.snapshot
        items = _alarm_items(run_recommendations(snap), snap.alerts) if snap is not None else {}
        return last_step or 0, items, watch_word(view)

    for ev in events:
        step = ev.get("step")
        if type(step) is int and last_step is not None and step > last_step:
            n_steps += 1
            if dirty or n_steps % stride == 0:
                yield look()
            dirty = False
        ts = _num(ev.get("ts"))
        if ts is not None:
            now[0] = ts
        state.add_event(ev)
        if ev["event"] != "train_step":
            dirty = True
        if type(step) is int:
            last_step = step if last_step is None else max(last_step, step)
    yield look()


# =====================================================================================================
# scoring
# =====================================================================================================
@dataclass
class Firing:
    """What one source said about one run.

    ``steps`` are alarm *onsets*: the steps at which the source raised an alarm it had not raised
    the step before (a replayed trigger or alert; a monitor item or watch word that appears), so a
    source that has been alarming since step 8 does not "detect" a fault injected at step 10.
    """

    steps: list[int] = field(default_factory=list)
    final: bool = False  # an alarm at the end of the run (monitor, watch, report)
    items: dict[str, str] = field(default_factory=dict)  # what fired: key -> text
    raw_steps: list[int] = field(default_factory=list)  # κ̃: steps whose raw level is >= WARNING
    final_items: dict[str, str] = field(default_factory=dict)  # what fired at the end of the run

    @property
    def fired(self) -> bool:
        return bool(self.steps) or self.final

    @property
    def first_step(self) -> int | None:
        return min(self.steps) if self.steps else None

    def first_from(self, step: int | None) -> int | None:
        """The first alarm onset at or after ``step`` (None: from the start)."""
        found = [s for s in self.steps if step is None or s >= step]
        return min(found) if found else None

    def add(self, key: str, text: str) -> None:
        if key not in self.items and len(self.items) < 60:
            self.items[key] = text

    def topics(self) -> set[str]:
        return {t for t, rx in TOPICS.items() if any(rx.search(f"{k} {v}") for k, v in self.items.items())}

    def off_topic(self, topics: Iterable[str], *, at_end: bool = False) -> list[str]:
        """The alarms that are not about ``topics`` (all of them when there is nothing to say)."""
        want = [TOPICS[t] for t in topics]
        items = self.final_items if at_end else self.items
        return [v for k, v in items.items() if not any(rx.search(f"{k} {v}") for rx in want)]

    def to_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "first_step": self.first_step, "steps": self.steps[:50], "final": self.final,
                "items": list(self.items.values())[:12], "raw_steps": self.raw_steps[:50]}


@dataclass
class RunScore:
    run: Run
    truth: Truth
    sources: dict[str, Firing]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.run.name, "file": self.run.path.name, "profile": self.run.profile, "split": self.run.split,
                "seed": self.run.entry.get("seed"), "truth": self.truth.to_dict(),
                "sources": {k: v.to_dict() for k, v in self.sources.items()}}


def score_run(run: Run, tmp: Path, *, live_stride: int = 5) -> RunScore:
    """Replay every alarm source over one run."""
    truth = run.truth()
    fire = {s: Firing() for s in SOURCES}
    segments = run.segments()
    amp = run.amp_scaler()
    prior = run_loss_prior(run)

    # guard: one detector per process
    for seg in segments:
        series = [(ev["step"], _num(ev.get("loss")), _num(ev.get("grad_norm"))) for ev in seg]
        for step, triggers in replay_guard(series, amp=amp, loss_prior=prior):
            fire["guard"].steps.append(step)
            fire["guard"].add(",".join(triggers), f"{','.join(triggers)} (first at step {step})")

    # gradient health
    grad = replay_grad(segments, tmp, amp=amp)
    for step, a in grad.alerts():
        if _warn_or_worse(a["severity"]) and str(a["code"]).startswith(_GRAD_HEALTH_PREFIX):
            fire["grad"].steps.append(step)
            fire["grad"].add(a["code"], f"{a['severity']} {a['code']} (first at step {step}): {a['message']}")

    # κ̃
    alarm_levels, _ = kappa_alarm_levels()
    kappa = replay_kappa(run, tmp)
    for (_, step), (payload, alerts) in sorted(kappa.items()):
        level = str(payload.get("risk_level") or "")
        if level in RAW_KAPPA_ALARM:
            fire["kappa"].raw_steps.append(step)
        loud = [a for a in alerts if _warn_or_worse(a["severity"])]
        if level in alarm_levels or loud:
            fire["kappa"].steps.append(step)
            key = level if level in alarm_levels else loud[0]["code"]
            fire["kappa"].add(key, f"{key} (first at step {step})")

    # the views, on the derived copy
    events = derive_events(run, grad, kappa, tmp)
    derived = tmp / f"{run.name}.jsonl"
    _write(derived, events)
    stride = 1 if truth.category in (INJECTED, DIVERGED) else live_stride
    seen: set[str] = set()
    last_word = ""
    for step, items, word in live_views(derived, events, stride):
        if set(items) - seen:
            fire["monitor"].steps.append(step)
        seen = set(items)
        for k, v in items.items():
            fire["monitor"].add(k, v)
        if word not in _QUIET_WORDS and word != last_word:
            fire["watch"].steps.append(step)
            fire["watch"].add(word, f"health {word} (first at step {step})")
        last_word = word
    last_ts = max((t for t in (_num(e.get("ts")) for e in events) if t is not None), default=time.time())
    word = watch_final(derived, last_ts + 1.0)
    finals = {"monitor": monitor_final(derived, last_ts + 1.0), "report": report_final(derived),
              "watch": {word: f"health {word} (end of run)"} if word not in _QUIET_WORDS else {}}
    for src, items in finals.items():
        fire[src].final = bool(items)
        fire[src].final_items = items
        for k, v in items.items():
            fire[src].add(k, v)
    for f in fire.values():
        f.steps = sorted(set(f.steps))
    return RunScore(run, truth, fire)


# -- aggregation --------------------------------------------------------------------------------------
def loss_jumps(losses: Sequence[tuple[int, float | None]], lookback: int = 10, lookahead: int = 5) -> dict[int, tuple[float, float]]:
    """step -> (absolute jump, ratio) of each finite loss over a reference level: the median of the
    previous ``lookback`` finite losses, or (for the first step) of the next ``lookahead``."""
    pts = [(s, v) for s, v in losses if v is not None and math.isfinite(v)]
    out: dict[int, tuple[float, float]] = {}
    for i, (s, v) in enumerate(pts):
        ref_vals = [x for _, x in pts[max(0, i - lookback):i]] or [x for _, x in pts[i + 1:i + 1 + lookahead]]
        if not ref_vals:
            continue
        ref = statistics.median(ref_vals)
        out[s] = (v - ref, v / ref if ref > 0 else math.inf)
    return out


def spike_margin(scores: Sequence[RunScore]) -> dict[str, Any]:
    """The injected loss spikes' size against the largest loss jump of any non-failing run."""
    healthy_max: tuple[float, float, str, int] | None = None
    strict_max: tuple[float, float, str, int] | None = None  # healthy runs only
    for rs in scores:
        if rs.truth.category not in (HEALTHY, WORTH):
            continue
        for step, (jump, ratio) in loss_jumps(rs.run.losses()).items():
            if healthy_max is None or jump > healthy_max[0]:
                healthy_max = (jump, ratio, rs.run.name, step)
            if rs.truth.category == HEALTHY and (strict_max is None or jump > strict_max[0]):
                strict_max = (jump, ratio, rs.run.name, step)
    spikes = []
    for rs in scores:
        jumps = None
        for inj in rs.truth.injected:
            if inj.get("kind") != "loss_spike":
                continue
            jumps = jumps if jumps is not None else loss_jumps(rs.run.losses())
            j = jumps.get(int(inj["step"]))
            spikes.append({"run": rs.run.name, "step": int(inj["step"]), "case": inj.get("case"),
                           "jump": None if j is None else j[0], "ratio": None if j is None else j[1]})
    finite = [s for s in spikes if s["jump"] is not None and math.isfinite(s["jump"])]
    smallest = min(finite, key=lambda s: s["jump"]) if finite else None
    out: dict[str, Any] = {"healthy_max_jump": None, "injected": spikes, "smallest_injected": smallest,
                           "margin_ratio": None, "healthy_only_max_jump": None}
    if strict_max is not None:
        out["healthy_only_max_jump"] = {"jump": strict_max[0], "ratio": strict_max[1], "run": strict_max[2],
                                        "step": strict_max[3]}
    if healthy_max is not None:
        out["healthy_max_jump"] = {"jump": healthy_max[0], "ratio": healthy_max[1], "run": healthy_max[2],
                                   "step": healthy_max[3]}
        if smallest is not None and healthy_max[0] > 0:
            out["margin_ratio"] = smallest["jump"] / healthy_max[0]
    return out


def _cell(n: int, d: int) -> str:
    return f"{n}/{d}" if d else "–"


def summarize(scores: Sequence[RunScore], demoted: Iterable[str] = ()) -> dict[str, Any]:
    """Per source: false alarms, worth-saying said, injected faults caught at their step, divergences
    flagged in time, lead times, recall."""
    demoted = set(demoted)
    healthy = [rs for rs in scores if rs.truth.category == HEALTHY]
    worth = [rs for rs in scores if rs.truth.category == WORTH]
    injected = [rs for rs in scores if rs.truth.category == INJECTED]
    diverged = [rs for rs in scores if rs.truth.category == DIVERGED]
    faults = [(rs, int(i["step"])) for rs in injected for i in rs.truth.injected]
    per: dict[str, Any] = {}
    for src in SOURCES:
        fa_h = [rs.run.name for rs in healthy if rs.sources[src].fired]
        fa_w = [rs.run.name for rs in worth if rs.sources[src].off_topic(rs.truth.worth)]
        # the same, counting only what the run's final view says (monitor, watch, report)
        fa_end = [rs.run.name for rs in healthy if rs.sources[src].final]
        said = [rs.run.name for rs in worth
                if src in CAN_SAY and set(rs.truth.worth) <= rs.sources[src].topics()]
        caught = [f"{rs.run.name}@{s}" for rs, s in faults if s in rs.sources[src].steps]
        pre = [rs.run.name for rs, s in faults
               if rs.sources[src].first_step is not None and rs.sources[src].first_step < s]
        leads: dict[str, int | None] = {}
        before_cause = []
        for rs in diverged:
            f = rs.sources[src]
            assert rs.truth.divergence_step is not None
            first = f.first_from(rs.truth.cause_step)
            leads[rs.run.name] = None if first is None else rs.truth.divergence_step - first
            if rs.truth.cause_step is not None and f.first_step is not None and f.first_step < rs.truth.cause_step:
                before_cause.append(rs.run.name)
        in_time = [n for n, lead in leads.items() if lead is not None and lead >= 0]
        flagged = [n for rs in diverged for n in [rs.run.name] if rs.sources[src].fired]
        n_pos = len(faults) + len(diverged) + (len(worth) if src in CAN_SAY else 0)
        tp = len(caught) + (len(in_time) if src in STEPWISE else len(flagged)) + len(said)
        known = [v for v in leads.values() if v is not None]
        per[src] = {
            "demoted": src in demoted,
            "false_alarms": {"healthy": len(fa_h), "healthy_total": len(healthy), "runs": fa_h,
                             "at_end": len(fa_end) if src in CAN_SAY else None},
            "worth_off_topic": {"runs": fa_w, "n": len(fa_w), "total": len(worth)},
            "worth_said": {"said": len(said), "total": len(worth) if src in CAN_SAY else 0, "runs": said},
            "injected": {"at_step": len(caught), "total": len(faults), "before_fault": len(pre)},
            "diverged": {"in_time": len(in_time), "flagged": len(flagged), "total": len(diverged), "leads": leads,
                         "before_cause": len(before_cause),
                         "median_lead": statistics.median(known) if known else None,
                         "min_lead": min(known) if known else None},
            "recall": tp / n_pos if n_pos else None,
        }
    return {"counts": {c: sum(rs.truth.category == c for rs in scores) for c in CATEGORIES},
            "faults": len(faults), "sources": per}


def kappa_raw(scores: Sequence[RunScore]) -> dict[str, Any]:
    """κ̃'s raw levels (>= WARNING) whatever the product presents: on non-failing runs, and before blow-ups."""
    ok = [rs for rs in scores if rs.truth.category in (HEALTHY, WORTH)]
    div = [rs for rs in scores if rs.truth.category == DIVERGED]
    n_samples = sum(len(kappa_samples(rs.run)) for rs in ok)
    raw_samples = sum(len(rs.sources["kappa"].raw_steps) for rs in ok)
    leads: dict[str, int] = {}
    for rs in div:
        # raw onsets from the cause on (the LR raise): raised on the healthy stretch before it, they lead nothing
        cause = rs.truth.cause_step or 0
        raw = [s for s in rs.sources["kappa"].raw_steps if s >= cause]
        if raw:
            leads[rs.run.name] = (rs.truth.divergence_step or 0) - min(raw)
    led = [n for n, lead in leads.items() if lead >= 0]
    return {"healthy_runs_raw": sum(bool(rs.sources["kappa"].raw_steps) for rs in ok), "healthy_runs": len(ok),
            "healthy_samples_raw": raw_samples, "healthy_samples": n_samples,
            "diverged_led": len(led), "diverged": len(div), "diverged_leads": leads}


def targets(scores: Sequence[RunScore], demoted: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The issue's four targets, each with ``ok`` and what misses it."""
    demoted = set(demoted)
    live = [s for s in SOURCES if s not in demoted]
    fa = {src: [rs.run.name for rs in scores if rs.truth.category == HEALTHY and rs.sources[src].fired]
          for src in SOURCES}
    missed_faults = [f"{rs.run.name}@{i['step']}" for rs in scores if rs.truth.category == INJECTED
                     for i in rs.truth.injected if not any(int(i["step"]) in rs.sources[s].steps for s in live)]
    late = []
    first_by: dict[str, str] = {}
    for rs in scores:
        if rs.truth.category != DIVERGED:
            continue
        firsts = {s: rs.sources[s].first_from(rs.truth.cause_step) for s in live if s in STEPWISE}
        known = {s: f for s, f in firsts.items() if f is not None}
        if known:
            step = min(known.values())
            first_by[rs.run.name] = f"{'+'.join(s for s, f in known.items() if f == step)}@{step}"
        if not known or min(known.values()) > (rs.truth.divergence_step or 0):
            late.append(f"{rs.run.name} (blow-up {rs.truth.divergence_step}, first alarm "
                        f"{min(known.values()) if known else 'never'})")
    unsaid = [rs.run.name for rs in scores if rs.truth.category == WORTH
              and not any(set(rs.truth.worth) <= rs.sources[s].topics() for s in CAN_SAY)]
    n_faults = sum(len(rs.truth.injected) for rs in scores if rs.truth.category == INJECTED)
    n_div = sum(rs.truth.category == DIVERGED for rs in scores)
    n_worth = sum(rs.truth.category == WORTH for rs in scores)
    return {
        "no_false_alarms": {"ok": not any(fa.values()), "by_source": {k: v for k, v in fa.items() if v}},
        "injected_detected": {"ok": not missed_faults, "missed": missed_faults, "total": n_faults},
        "divergences_in_time": {"ok": not late, "late": late, "total": n_div, "first_alarm": first_by},
        "worth_saying_said": {"ok": not unsaid, "unsaid": unsaid, "total": n_worth},
    }


@dataclass
class Result:
    corpus: Path
    scores: list[RunScore]
    demoted: list[str]
    seconds: float

    def select(self, split: str | None) -> list[RunScore]:
        return [rs for rs in self.scores if split is None or rs.run.split == split]

    def to_dict(self, split: str | None = None) -> dict[str, Any]:
        sel = self.select(split)
        splits = [split] if split else ["fit", "test", None]
        return {
            "corpus": str(self.corpus), "split": split or "all", "seconds": round(self.seconds, 2),
            "demoted": self.demoted,
            "summary": {s or "all": summarize(self.select(s), self.demoted) for s in splits},
            "kappa_raw": kappa_raw(sel), "spike_margin": spike_margin(sel),
            "targets": targets(sel, self.demoted), "runs": [rs.to_dict() for rs in sel],
        }


def score_corpus(corpus: Path = DEFAULT_CORPUS, *, live_stride: int = 5,
                 only: Callable[[Run], bool] | None = None) -> Result:
    """Score every run of the corpus with the current rules."""
    t0 = time.perf_counter()
    _, runs = load_corpus(corpus)
    if only is not None:
        runs = [r for r in runs if only(r)]
    _, kappa_demoted = kappa_alarm_levels()
    scores = []
    with tempfile.TemporaryDirectory(prefix="gradience-calibration-") as tmp:
        for run in runs:
            scores.append(score_run(run, Path(tmp), live_stride=live_stride))
    return Result(corpus, scores, ["kappa"] if kappa_demoted else [], time.perf_counter() - t0)


# =====================================================================================================
# the table
# =====================================================================================================
_LABELS = {"guard": "guard triggers", "kappa": "κ̃ levels", "grad": "gradient health", "monitor": "monitor",
           "watch": "watch health", "report": "report status"}


def _fmt_lead(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0f}" if x != int(x) or True else str(x)


def _ljust(text: str, width: int) -> str:
    """Left-justify by display columns (a combining mark such as the tilde of κ̃ takes none)."""
    shown = sum(not unicodedata.combining(ch) for ch in text)
    return text + " " * max(0, width - shown)


LEGEND = ("false alarms: healthy runs with any warning-or-worse alarm, at any step; worth said: "
          "worth-saying runs (collapsed / not learned, memorisation) where the source says so (only sources "
          "that speak in words can); off-topic: worth-saying runs with an alarm about something else "
          "(information, not a target); faults @step: injected faults with an alarm onset at the injected "
          "step; div in time: divergences whose first alarm from the cause on (the LR raise) is no later than "
          "the blow-up step (report: read at the end, flagged at all); lead: blow-up step − that first alarm "
          "step (negative = late); recall: all of these hits over their totals; (d): demoted, never "
          "presented as an alarm.")


def render_table(result: Result, split: str | None = None, runs: bool = False) -> str:
    """The plain-text table (fits 100 columns)."""
    lines: list[str] = []

    def w(text: str) -> None:
        lines.extend(textwrap.wrap(text, 100, subsequent_indent="  ", break_on_hyphens=False) or [""])
    splits = [split] if split else ["fit", "test", None]
    for s in splits:
        sel = result.select(s)
        summ = summarize(sel, result.demoted)
        c = summ["counts"]
        w(f"split {s or 'all'}: {len(sel)} runs — healthy {c[HEALTHY]}, worth saying {c[WORTH]}, "
          f"injected {c[INJECTED]} ({summ['faults']} faults), diverged {c[DIVERGED]}")
        w(f"{'source':<18}{'false alarms':>13}{'worth said':>11}{'off-topic':>10}{'faults @step':>13}"
          f"{'div in time':>12}{'lead med/min':>13}{'recall':>8}")
        for src in SOURCES:
            p = summ["sources"][src]
            fa, ws, inj, dv = p["false_alarms"], p["worth_said"], p["injected"], p["diverged"]
            name = _LABELS[src] + (" (d)" if p["demoted"] else "")
            lead = "–" if dv["median_lead"] is None else f"{dv['median_lead']:+g}/{dv['min_lead']:+d}"
            in_time = _cell(dv["in_time"] if src in STEPWISE else dv["flagged"], dv["total"])
            recall = "–" if p["recall"] is None else f"{100 * p['recall']:.0f}%"
            w(f"{_ljust(name, 18)}{_cell(fa['healthy'], fa['healthy_total']):>13}{_cell(ws['said'], ws['total']):>11}"
              f"{_cell(p['worth_off_topic']['n'], p['worth_off_topic']['total']):>10}{_cell(inj['at_step'], inj['total']):>13}"
              f"{in_time:>12}{lead:>13}{recall:>8}")
        w("")
    w(LEGEND)
    w("")
    sel = result.select(split)
    summ = summarize(sel, result.demoted)["sources"]
    w("false alarms on healthy runs counting only the end-of-run view: "
      + ", ".join(f"{_LABELS[src]} {summ[src]['false_alarms']['at_end']}" for src in CAN_SAY))
    w("alarms before an injected fault (its run was healthy until then): "
      + ", ".join(f"{_LABELS[src]} {summ[src]['injected']['before_fault']}" for src in SOURCES))
    w("alarms before the cause of a divergence (the LR raise; not counted as leads): "
      + ", ".join(f"{_LABELS[src]} {summ[src]['diverged']['before_cause']}" for src in SOURCES))
    kr = kappa_raw(sel)
    w(f"κ̃ raw levels >= WARNING (whatever is shown): {kr['healthy_runs_raw']}/{kr['healthy_runs']} non-failing runs, "
      f"{kr['healthy_samples_raw']}/{kr['healthy_samples']} of their samples;")
    w(f"  before/at the blow-up of {kr['diverged_led']}/{kr['diverged']} divergences"
      + (f" (leads {', '.join(f'{v:+d}' for v in kr['diverged_leads'].values())})" if kr["diverged_leads"] else ""))
    m = spike_margin(sel)
    hm, sm = m["healthy_max_jump"], m["smallest_injected"]
    if hm:
        w(f"largest loss jump of a non-failing run: +{hm['jump']:.3g} (x{hm['ratio']:.3g}) at step {hm['step']} "
          f"of {hm['run']}")
    ho = m["healthy_only_max_jump"]
    if ho and ho != hm:
        w(f"  of a healthy run: +{ho['jump']:.3g} (x{ho['ratio']:.3g}) at step {ho['step']} of {ho['run']}")
    if sm:
        w(f"smallest injected loss spike: +{sm['jump']:.3g} (x{sm['ratio']:.3g}) at step {sm['step']} of {sm['run']}"
          + (f"; margin x{m['margin_ratio']:.3g}" if m["margin_ratio"] is not None else ""))
    if result.demoted:
        w(f"demoted (never an alarm; raw evidence above): {', '.join(_LABELS[d] for d in result.demoted)}")
    filled = [rs for rs in sel if rs.run.entry.get("_backfilled")]
    if filled:
        what = sorted({k for rs in filled for k in rs.run.entry["_backfilled"]})
        w(f"label facts filled in from the manifest (recorded before the integrations logged them): "
          f"{', '.join(what)} in {len(filled)}/{len(sel)} runs")
    w("")
    tg = targets(sel, result.demoted)
    for name, t in tg.items():
        detail = ""
        if name == "no_false_alarms" and not t["ok"]:
            detail = "; ".join(f"{_LABELS[k]}: {len(v)} ({', '.join(v[:6])}{', …' if len(v) > 6 else ''})"
                               for k, v in t["by_source"].items())
        elif name == "injected_detected":
            detail = f"{t['total'] - len(t['missed'])}/{t['total']}" + (
                f"; missed {', '.join(t['missed'][:12])}{', …' if len(t['missed']) > 12 else ''}" if t["missed"] else "")
        elif name == "divergences_in_time":
            detail = f"{t['total'] - len(t['late'])}/{t['total']}" + (f"; late: {'; '.join(t['late'])}" if t["late"] else "")
            detail += "; first alarms (blow-up step): " + ", ".join(
                f"{name} {first} ({next(rs.truth.divergence_step for rs in sel if rs.run.name == name)})"
                for name, first in t["first_alarm"].items())
        elif name == "worth_saying_said":
            detail = f"{t['total'] - len(t['unsaid'])}/{t['total']}" + (
                f"; unsaid: {', '.join(t['unsaid'])}" if t["unsaid"] else "")
        text = f"target {name:<20} {'OK  ' if t['ok'] else 'MISS'} {detail}"
        lines += textwrap.wrap(text, 100, subsequent_indent=" " * 32, break_on_hyphens=False)
    if runs:
        w("")
        w(f"{'run (first alarm step)':<30}{'split':<6}{'truth':<20}" + "".join(f"{s[:6]:>7}" for s in SOURCES))
        for rs in sel:
            t = rs.truth
            truth = t.category if t.category != DIVERGED else f"diverged@{t.divergence_step}"
            if t.category == INJECTED:
                truth = "inj@" + ",".join(str(i["step"]) for i in t.injected)
            elif t.category == WORTH:
                truth = "+".join(t.worth)
            cells = []
            for src in SOURCES:
                f = rs.sources[src]
                cells.append("·" if not f.fired else (str(f.first_step) if f.first_step is not None else "end"))
            w(f"{rs.run.name[:29]:<30}{rs.run.split:<6}{truth[:19]:<20}" + "".join(f"{c:>7}" for c in cells))
    w(f"({len(result.scores)} runs scored in {result.seconds:.1f}s)")
    return "\n".join(lines)


def explain(result: Result, name: str) -> str:
    """Every source's alarms on one run, with the ground truth."""
    found = [rs for rs in result.scores if rs.run.name == name]
    if not found:
        return f"no run {name!r} in the corpus"
    rs = found[0]
    lines = [f"{rs.run.name} ({rs.run.profile}, split {rs.run.split}): {json.dumps(rs.truth.to_dict(), default=str)}"]
    for src in SOURCES:
        f = rs.sources[src]
        when = [f"from step {f.first_step} (onsets {f.steps[:10]})"] if f.steps else []
        when += ["at the end"] if f.final else []
        head = f"  {_LABELS[src]}: " + (", ".join(when) or "silent")
        lines.append(head + (f"; raw κ̃ >= WARNING at {f.raw_steps[:12]}" if f.raw_steps else ""))
        lines += [f"      {v[:150]}" for v in f.items.values()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default tests/data/calibration)")
    p.add_argument("--split", choices=("fit", "test"), help="only the runs of this split")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--runs", action="store_true", help="also one line per run: the first alarm step of each source")
    p.add_argument("--explain", metavar="RUN", action="append", default=[],
                   help="print what each source said about this run (name without .jsonl; repeatable)")
    p.add_argument("--stride", type=int, default=5,
                   help="live views of non-failing runs every N steps and wherever anything but a train_step "
                        "arrives (default 5; failing runs: every step)")
    a = p.parse_args(argv)
    if not (a.corpus / "manifest.json").exists():
        p.error(f"no manifest.json in {a.corpus}")
    result = score_corpus(a.corpus, live_stride=max(1, a.stride))
    if a.json:
        print(json.dumps(result.to_dict(a.split), indent=1, default=str))
    else:
        print(render_table(result, a.split, runs=a.runs))
        for name in a.explain:
            print(explain(result, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
