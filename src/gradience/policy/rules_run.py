"""Run rules (``gradience monitor``): small pure functions over a SignalSnapshot.

Each rule takes a :class:`RunContext` and returns zero or more Recommendations. They
read only what the SignalSnapshot already derived (gaps, eval history, curve stats, grad-norm
level, guard and spectral summaries, the latest ``lora_audit`` block). Units: perplexity and
loss gaps are ratios test/train; the accuracy gap is train − test in accuracy units
(0–1); learning rates are peak optimizer LRs.

The generalisation signal depends on the task: a classifier (accuracy on both splits) is judged
by the accuracy gap, a causal LM by the perplexity ratio; the loss ratio alone is information only
(it grows without bound as the training loss approaches 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..telemetry.schema import ConfigSnapshot, Recommendation, TaskProfile
from ..telemetry.sections import AuditSummary
from ..telemetry.snapshot import SignalSnapshot
from .config_parse import coerce_numbers
from .profiles import resolve_profile

__all__ = ["RUN_RULES", "RunContext", "amp_overflows_handled", "generalisation_summary"]

DEFAULT_GAP_THRESHOLD = 1.5
ACC_GAP_THRESHOLD = 0.10  # train accuracy ≥ 10 points above held-out
CHANCE_MARGIN = 0.01  # held-out accuracy at most 1 point above the chance level: not learning
NOT_LEARNING_MIN_EVALS = 2  # held-out evals with an accuracy before not_learning can fire
MEMO_LR_SAFE = 5e-5
UNDERFIT_MIN_DROP = 0.05  # the training loss fell by less than 5 % ...
UNDERFIT_MIN_POINTS = 10  # ... over at least this many logged steps
LOW_UTIL = 0.25
LOW_UTIL_MIN_R = 16
MLP_UTIL_LOW = 0.10
SPIKES_WARN = 3
UDR_HIGH = 1.0


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:  # an integer beyond the float range
        return None


@dataclass
class RunContext:
    """What a run rule reads: the snapshot, its config and the resolved profile."""

    snap: SignalSnapshot
    cfg: ConfigSnapshot
    profile: TaskProfile
    gap_threshold: float

    @classmethod
    def build(cls, snap: SignalSnapshot, *, gap_threshold: float = DEFAULT_GAP_THRESHOLD,
              config: ConfigSnapshot | None = None) -> RunContext:
        # Work on a copy: filling gaps from the snapshot must not mutate the caller's config.
        cfg = coerce_numbers(ConfigSnapshot.from_dict(config.to_dict() if config is not None else (snap.config or None)))
        if cfg.dataset_name is None and snap.dataset_name:
            cfg.dataset_name = snap.dataset_name
        if TaskProfile.parse(cfg.task_profile) is TaskProfile.UNKNOWN:
            cfg.task_profile = snap.task_profile
        profile, _ = resolve_profile(cfg)
        return cls(snap=snap, cfg=cfg, profile=profile, gap_threshold=float(gap_threshold))

    @property
    def lr(self) -> float | None:
        return self.cfg.optimizer.lr

    @property
    def rank(self) -> int | None:
        """The rank the audit-based rules compare against: the audited adapter's own (most
        common) r when the audit block has one (it describes the adapter actually measured),
        else the configured r."""
        audit = self.snap.lora_audit or AuditSummary.empty()
        for value in (audit.r, audit.extras.get("current_r")):  # current_r: written by earlier releases
            v = _num(value)
            if v and math.isfinite(v) and v >= 1:
                return int(v)
        return int(self.cfg.lora.r) if self.cfg.lora.r else None

    def generalisation_signal(self) -> tuple[str, float, float] | None:
        """(gap name, value, threshold) of the gap that judges memorisation for this task: the
        perplexity ratio ``ppl_gap`` when measured (causal LMs), else the accuracy gap ``acc_gap``
        (classifiers); None when neither is there (the loss ratio alone is information only)."""
        gaps = self.snap.gaps or {}
        for name, thr in (("ppl_gap", self.gap_threshold), ("acc_gap", ACC_GAP_THRESHOLD)):
            v = _num(gaps.get(name))
            if v is not None and math.isfinite(v):
                return name, v, thr
        return None

    def memorising(self) -> tuple[str, float, float] | None:
        """(gap name, value, threshold) when the task's generalisation gap is at or over its
        threshold (:meth:`generalisation_signal`), else None."""
        signal = self.generalisation_signal()
        return signal if signal is not None and signal[1] >= signal[2] else None

    @property
    def held_out(self) -> str | None:
        split = (self.snap.gaps or {}).get("held_out_split")
        if isinstance(split, str) and split in self.snap.eval_history:
            return split
        return next((s for s in ("test", "val") if s in self.snap.eval_history), None)

    def held_out_accuracy(self) -> list[tuple[int | None, float]]:
        """(step, accuracy) of the held-out evals that recorded an accuracy, oldest first."""
        hist = self.snap.eval_history.get(self.held_out or "") or {}
        steps, accs = hist.get("steps") or [], hist.get("accuracy") or []
        return [(st if type(st) is int else None, float(a)) for st, a in zip(steps, accs, strict=False)
                if _num(a) is not None and math.isfinite(a)]

    def chance_level(self) -> tuple[float, str] | None:
        """(held-out chance accuracy, where it comes from): the held-out set's recorded majority-class
        rate, else 1/n_labels of the configured classifier, else 1/K from the run's recorded untrained
        loss ``meta.loss_prior`` = ln K (K labels; files written before n_labels); None when none of
        them is known."""
        hist = self.snap.eval_history.get(self.held_out or "") or {}
        rates = [r for r in hist.get("majority_rate") or [] if _num(r) is not None and 0 < r <= 1]
        if rates:
            return float(rates[-1]), "majority-class rate of the held-out set"
        n = self.cfg.n_labels
        if isinstance(n, int) and n >= 2:
            return 1.0 / n, f"1/{n} labels"
        prior = _num((self.snap.meta or {}).get("loss_prior"))
        if prior is not None and 0 < prior < 20:
            k = math.exp(prior)
            if k >= 2 and abs(k - round(k)) < 1e-6 * k:
                return 1.0 / round(k), f"1/{round(k)}, from the untrained loss ln {round(k)}"
        return None

    def held_out_trend(self) -> dict[str, Any] | None:
        """The held-out accuracy's course: last, best (and its step), previous, and a word
        (``rising``, ``falling``, ``flat``); None before one held-out accuracy."""
        accs = self.held_out_accuracy()
        if not accs:
            return None
        last_step, last = accs[-1]
        best_step, best = max(accs, key=lambda t: t[1])
        prev = accs[-2][1] if len(accs) > 1 else None
        if prev is None:
            word = None
        elif last < best - CHANCE_MARGIN:
            word = "falling"
        elif last > prev + CHANCE_MARGIN:
            word = "rising"
        else:
            word = "flat"
        return {"last": last, "last_step": last_step, "best": best, "best_step": best_step, "previous": prev,
                "n": len(accs), "trend": word}


Rule = Callable[[RunContext], Iterable[Recommendation]]


def amp_overflows_handled(snap: SignalSnapshot) -> bool:
    """Are the snapshot's non-finite gradient norms all overflows an AMP grad scaler handled
    (:func:`scaler_handled_overflows`)? The views then show them as information."""
    return scaler_handled_overflows(RunContext.build(snap)) is not None


def generalisation_summary(snap: SignalSnapshot, *, gap_threshold: float = DEFAULT_GAP_THRESHOLD) -> dict[str, Any]:
    """What the views show about generalisation, by the rules' own definitions.

    Keys: ``signal`` (``acc_gap`` for a classifier, ``ppl_gap`` for a language model, None when
    neither is measured), ``value``, ``threshold``, ``memorising`` (value ≥ threshold),
    ``loss_gap`` (information only), ``held_out_trend`` (see :meth:`RunContext.held_out_trend`),
    ``chance_level`` and ``chance_source`` (the held-out majority-class rate or 1/n_labels),
    ``not_learning`` (held-out accuracy within 1 point of the chance level after ≥ 2 evals).
    """
    ctx = RunContext.build(snap, gap_threshold=gap_threshold)
    signal = ctx.generalisation_signal()
    chance = ctx.chance_level()
    return {
        "signal": signal[0] if signal else None,
        "value": signal[1] if signal else None,
        "threshold": signal[2] if signal else None,
        "memorising": bool(signal and signal[1] >= signal[2]),
        "loss_gap": _num((snap.gaps or {}).get("loss_gap")),
        "held_out_trend": ctx.held_out_trend(),
        "chance_level": chance[0] if chance else None,
        "chance_source": chance[1] if chance else None,
        "not_learning": any(True for _ in not_learning(ctx)),
    }


def _rec(severity: str, action: str, message: str, why: str, confidence: float,
         evidence: dict[str, Any], scope: str = "run") -> Recommendation:
    return Recommendation(severity=severity, action=action, message=message, rationale=why,
                          confidence=confidence, scope=scope, evidence=dict(evidence))


# -- generalisation gap ----------------------------------------------------------------
def gap_missing(ctx: RunContext) -> Iterable[Recommendation]:
    gaps = ctx.snap.gaps or {}
    if any(_num(gaps.get(k)) is not None for k in ("ppl_gap", "loss_gap", "acc_gap")):
        return
    missing = ctx.snap.gap_missing or ["no metric on both train and held-out splits"]
    what = "ppl (or loss)" if ctx.profile.is_language_modelling else "loss and/or accuracy"
    yield _rec("info", "log_train_test_ppl",
               f"Log {what} on both the train split and a held-out split so the generalisation gap can be "
               f"computed (missing: {'; '.join(missing)}).",
               "Without train and held-out numbers from the same step, memorisation cannot be told apart from "
               "learning.", 0.6, {"missing": missing, "splits": sorted(ctx.snap.evals)})


def _trend_text(trend: dict[str, Any] | None) -> str:
    if not trend or trend.get("trend") is None:
        return ""
    if trend["trend"] == "falling":
        at = f" at step {trend['best_step']}" if trend.get("best_step") is not None else ""
        return (f" Held-out accuracy is falling ({trend['last'] * 100:.1f}% now, best {trend['best'] * 100:.1f}%{at}):"
                " keep the best checkpoint.")
    if trend["trend"] == "rising":
        return f" Held-out accuracy is still rising ({trend['last'] * 100:.1f}%)."
    return f" Held-out accuracy is flat ({trend['last'] * 100:.1f}%)."


def memorization(ctx: RunContext) -> Iterable[Recommendation]:
    """The task's generalisation gap over its threshold at the final held-out eval (mid-run, the
    training split is often learned first: a transient gap while held-out accuracy catches up)."""
    hit = ctx.memorising()
    if hit is None:
        return
    split = (ctx.snap.gaps or {}).get("held_out_split")
    held = ctx.snap.evals.get(ctx.held_out or (split if isinstance(split, str) else "test")) or {}
    step = held.get("step")
    if not _final_eval(ctx, step if type(step) is int else None):
        return
    name, value, thr = hit
    gaps = ctx.snap.gaps or {}
    trend = ctx.held_out_trend() if name == "acc_gap" else None
    if name == "acc_gap":
        train_acc, test_acc = ctx.snap.eval_metric("train", "accuracy"), ctx.snap.eval_metric(
            ctx.held_out or "test", "accuracy")
        both = (f" ({train_acc * 100:.1f}% train vs {test_acc * 100:.1f}% held-out)"
                if train_acc is not None and test_acc is not None else "")
        msg = (f"Training accuracy is {value * 100:.1f} points above held-out accuracy{both}, threshold "
               f"{thr * 100:g} points: the adapter is fitting the training set more than the task."
               + _trend_text(trend) + " Stop earlier, lower the LR or rank, and re-check the held-out split.")
    else:
        msg = (f"The test/train perplexity ratio is {value:.3f} (threshold {thr:g}): the adapter is fitting the "
               "training set more than the task. Stop earlier, lower the LR or rank, and re-check the held-out split.")
    evidence: dict[str, Any] = {name: value, "threshold": thr, "held_out_split": gaps.get("held_out_split")}
    if name == "acc_gap":
        evidence["loss_gap"] = gaps.get("loss_gap")  # information only
        evidence["held_out_trend"] = trend
    yield _rec("warning", "memorization_detected", msg,
               "A held-out metric much worse than the same metric on training data is the direct signature of "
               "memorisation (accuracy for a classifier, perplexity for a language model); spectral metrics cannot "
               "replace this check.", 0.8 if name == "ppl_gap" or (trend or {}).get("trend") == "falling" else 0.7,
               evidence)
    lr = ctx.lr
    if lr is None or lr > MEMO_LR_SAFE:
        yield _rec("warning", "lower_lr",
                   f"Lower the learning rate to {MEMO_LR_SAFE:g}" + (f" (now {lr:g})" if lr is not None else
                                                                      " (the run's LR is not recorded)")
                   + " and compare the gap.",
                   "Memorisation with a high LR is the most common cause; one run at 5e-5 separates LR from "
                   "data size as the culprit.", 0.8 if lr is not None else 0.7,
                   {"lr": lr, "suggested_lr": MEMO_LR_SAFE, name: value})


def loss_gap_note(ctx: RunContext) -> Iterable[Recommendation]:
    """The test/train loss ratio is information only: it grows without bound as the training loss
    approaches 0 (97.8 on a memorising run, 2.8 on a healthy one at 88 % test accuracy)."""
    gaps = ctx.snap.gaps or {}
    v = _num(gaps.get("loss_gap"))
    if v is None or not math.isfinite(v) or v < ctx.gap_threshold or ctx.memorising() is not None:
        return
    signal = ctx.generalisation_signal()
    judged = ""
    if signal is not None:
        name, value, thr = signal
        judged = (f"; the accuracy gap, {value * 100:+.1f} points, is below its {thr * 100:g}-point threshold"
                  if name == "acc_gap" else f"; the perplexity ratio, {value:.3f}, is below its threshold {thr:g}")
    yield _rec("info", "note_loss_gap",
               f"The test/train loss ratio is {v:.3f}: information only, not a memorisation signal{judged}.",
               "As the training loss approaches 0 the ratio grows without bound even on a run that generalises; "
               "a classifier is judged by its accuracy gap, a language model by its perplexity ratio.", 0.4,
               {"loss_gap": v, "threshold": ctx.gap_threshold, "signal": signal[0] if signal else None})


def _final_eval(ctx: RunContext, step: int | None) -> bool:
    """Is the held-out eval at ``step`` the run's last word: the run has ended, or the eval is at
    (or past) the planned last step?"""
    snap = ctx.snap
    if snap.status not in ("running", "empty"):
        return True
    return step is not None and snap.max_steps is not None and step >= snap.max_steps


def not_learning(ctx: RunContext) -> Iterable[Recommendation]:
    """Held-out accuracy at the chance level (the held-out majority-class rate, else 1/n_labels,
    + 1 point) at the final eval, after at least two held-out evals.

    Only the final eval is judged: healthy runs often sit at the majority class for most of their
    steps before they learn (the calibration corpus' SST-2 batch-4 runs until step 105 of 120), so a
    mid-run verdict would be a false alarm."""
    accs = ctx.held_out_accuracy()
    if len(accs) < NOT_LEARNING_MIN_EVALS or not _final_eval(ctx, accs[-1][0]):
        return
    chance = ctx.chance_level()
    if chance is None:
        return
    level, source = chance
    step, last = accs[-1]
    if last > level + CHANCE_MARGIN:
        return
    best = max(a for _, a in accs)
    history = ("it never rose above it" if best <= level + CHANCE_MARGIN else
               f"it fell back from {best * 100:.1f}%")
    at = f" at step {step}" if step is not None else ""
    yield _rec("warning", "not_learning",
               f"Held-out accuracy is {last * 100:.1f}%{at}, at the chance level ({level * 100:.1f}%, the "
               f"{source}) after {len(accs)} evals; {history}: the adapter predicts no better than always "
               "answering the most frequent class. Check the labels and the data pipeline, then the LR (too high "
               "collapses to one class, too low never leaves it) and the batch size.",
               "Accuracy within a point of the majority-class rate means the classifier has not learned the task, "
               "whatever its loss curve looks like.", 0.8,
               {"accuracy": last, "step": step, "chance_level": level, "chance_source": source,
                "margin": CHANCE_MARGIN, "held_out_evals": len(accs), "best_accuracy": best,
                "held_out_split": ctx.held_out})


def underfitting(ctx: RunContext) -> Iterable[Recommendation]:
    loss = ctx.snap.loss
    first, low, n = _num(loss.first), _num(loss.min), loss.n
    if first is None or low is None or n < UNDERFIT_MIN_POINTS or first <= 0:
        return
    drop = (first - low) / first
    if drop >= UNDERFIT_MIN_DROP or ctx.memorising() is not None:
        return
    yield _rec("info", "possible_underfitting",
               f"The training loss barely moved ({first:.4g} → best {low:.4g}, {drop * 100:.1f}% lower over "
               f"{n} logged steps). Check that the adapter is trainable, then try a higher LR or more steps.",
               "A flat training loss means the adapter is not learning the task yet; eval numbers from such a "
               "run say little about the configuration.", 0.4,
               {"loss_first": first, "loss_min": low, "relative_drop": drop, "n": n,
                "threshold": UNDERFIT_MIN_DROP})


# -- numerical health ------------------------------------------------------------------
def _amp_scaler(ctx: RunContext) -> bool:
    """Whether the run trained with an AMP grad scaler (fp16): recorded in ``run_start.meta``
    (``amp.grad_scaler``, written by the integrations when an enabled scaler is handed over), an
    fp16 dtype in the config, or overflows counted by the guard."""
    meta = ctx.snap.meta or {}
    amp = meta.get("amp")
    if (isinstance(amp, dict) and amp.get("grad_scaler") is True) or meta.get("grad_scaler") is True:
        return True
    dtype = ctx.cfg.training.dtype
    if isinstance(dtype, str) and dtype.lower() in ("fp16", "float16", "half"):
        return True
    return bool(ctx.snap.guard.amp_overflows)


def scaler_handled_overflows(ctx: RunContext) -> int | None:
    """The number of non-finite gradient norms that were fp16 overflows the AMP grad scaler
    handled (it skips the step and lowers its scale), or None when they are not all that.

    They are, when the run used a grad scaler and every loss is finite, and either the guard
    counted them as overflows and rolled nothing back (it checks every step), or, without the
    guard, the run is still running or its last gradient norm is finite again (the scaler
    recovered)."""
    loss, grad, gd = ctx.snap.loss, ctx.snap.grad_norm, ctx.snap.guard
    if not grad.nonfinite_count or loss.nonfinite_count or not _amp_scaler(ctx):
        return None
    if gd.enabled:
        if gd.rollbacks or gd.aborts or gd.lockout or not gd.amp_overflows:
            return None  # the guard treated some of them as faults
        return max(gd.amp_overflows, grad.nonfinite_count)
    last = _num(grad.last)
    if ctx.snap.status != "running" and (last is None or not math.isfinite(last)):
        return None  # ended still overflowing: the scaler did not recover
    return grad.nonfinite_count


def nonfinite(ctx: RunContext) -> Iterable[Recommendation]:
    loss, grad = ctx.snap.loss, ctx.snap.grad_norm
    n_loss, n_grad = loss.nonfinite_count, grad.nonfinite_count
    if not (n_loss or n_grad):
        return
    handled = scaler_handled_overflows(ctx)
    if handled is not None:
        # AMP overflows the grad scaler handled are how fp16 training works: information, not an error.
        yield _rec("info", "note_amp_overflows",
                   f"The AMP grad scaler skipped {handled} overflow step{'s' if handled != 1 else ''} (non-finite "
                   "fp16 gradients with a finite loss) and recovered; nothing to fix unless it happens often.",
                   "With fp16 the grad scaler starts at a large scale and halves it when gradients overflow, "
                   "skipping that update: the weights are never touched by the non-finite gradients.", 0.7,
                   {"amp_overflows": handled, "nonfinite_grad_norm": n_grad,
                    "guard_amp_overflows": ctx.snap.guard.amp_overflows, "guard_enabled": ctx.snap.guard.enabled})
        return
    steps = [s for s in loss.nonfinite_steps if s is not None]
    attributed = _injected_nonfinite(ctx, steps)
    if attributed is not None:
        yield attributed
        return
    where = f" (first at step {steps[0]})" if steps else ""
    parts = [f"{n_loss} non-finite loss value{'s' if n_loss != 1 else ''}{where}"] if n_loss else []
    if n_grad:
        parts.append(f"{n_grad} non-finite gradient norm{'s' if n_grad != 1 else ''}")
    guard_on = ctx.snap.guard.enabled
    fix = "lower the LR, keep max_grad_norm=1.0, prefer bf16 over fp16"
    if not guard_on:
        fix += ", and enable the guard (guard_enabled=True) so bad steps roll back"
    yield _rec("error", "investigate_nonfinite", f"The run produced {' and '.join(parts)}: {fix}.",
               "NaN/Inf means the optimiser state or weights may be corrupted from that step on; later metrics "
               "are unreliable.", 0.9,
               {"nonfinite_loss": n_loss, "nonfinite_grad_norm": n_grad, "nonfinite_steps": steps[:10],
                "guard_enabled": guard_on})


def loss_spikes(ctx: RunContext) -> Iterable[Recommendation]:
    loss = ctx.snap.loss
    n = loss.spikes
    if n == 0:
        return
    steps = [s for s in loss.spike_steps if s is not None]
    injected = _injected_steps(ctx)
    if injected:  # spikes at steps where a fault was injected are the injection's, not the LR's
        n -= sum(s in injected for s in steps)
        steps = [s for s in steps if s not in injected]
        if n <= 0:
            return
    many = n >= SPIKES_WARN
    yield _rec("warning" if many else "info", "investigate_loss_spikes",
               f"{n} loss spike{'s' if n != 1 else ''} (steps {', '.join(map(str, steps[:5]))}"
               f"{', …' if len(steps) > 5 else ''}): lower the LR or add warmup, and check those batches.",
               "A spike is a loss above twice a robust running baseline; repeated spikes usually mean the LR is "
               "at the edge of stability.", 0.6 if many else 0.4,
               {"spikes": n, "spike_steps": steps[:10], "threshold_warning": SPIKES_WARN})


def grad_health(ctx: RunContext) -> Iterable[Recommendation]:
    g = ctx.snap.grad_norm
    counts = ctx.snap.alert_counts or {}
    level = g.level
    evidence = {"level": level, "last": g.last, "max": g.max, "trend": g.trend,
                "sparkline": g.sparkline,
                "alerts": {k: v for k, v in counts.items() if k.startswith("GRAD_NORM_")}}
    critical = level == "critical" or counts.get("GRAD_NORM_CRITICAL", 0) > 0
    warning = level == "warning" or counts.get("GRAD_NORM_WARNING", 0) > 0
    if _alerts_only_at_injections(ctx, "GRAD_NORM_") and (
            level not in ("critical", "warning") or ctx.snap.last_step in _injected_steps(ctx)):
        return  # the large norms were an injected gradient explosion's
    if critical or warning:
        where = "ended" if level in ("critical", "warning") else "reached"
        yield _rec("warning" if critical else "info", "stabilize_gradients",
                   f"Gradient norms {where} the {'critical (> 10)' if critical else 'warning (> 5)'} level "
                   f"(last {_fmt(g.last)}, max {_fmt(g.max)}): lower the LR or set max_grad_norm=1.0.",
                   "Large pre-clip gradient norms precede loss spikes and NaNs; clipping bounds each step and a "
                   "lower LR removes the cause.", 0.7 if critical else 0.5, evidence)
    if level == "vanishing":
        yield _rec("info", "check_vanishing_gradients",
                   f"The last gradient norm is {_fmt(g.last)} (< 0.1): check that the LoRA parameters "
                   "require grad and the LR schedule has not decayed to zero; if the loss has converged this is "
                   "expected.", "Vanishing gradients mean the adapter has stopped learning.", 0.5, evidence)


# -- injected faults (gradience.training.faults) --------------------------------------------
def _injected(ctx: RunContext) -> list[dict[str, Any]]:
    """The run's recorded ``metrics(kind="fault_injection")`` firings (each with its ``step``)."""
    return [f for f in getattr(ctx.snap, "injected_faults", None) or [] if isinstance(f, dict)]


def _injected_steps(ctx: RunContext) -> set[int]:
    return {f["step"] for f in _injected(ctx) if isinstance(f.get("step"), int)}


def _describe_injected(faults: list[dict[str, Any]]) -> str:
    steps = sorted({f["step"] for f in faults if isinstance(f.get("step"), int)})
    kinds = ", ".join(sorted({str(f.get("kind")) for f in faults}))
    target = next((str(f["target"]) for f in faults if f.get("target")), None)
    where = f"step {steps[0]}" if len(steps) == 1 else f"steps {', '.join(map(str, steps[:5]))}" + (
        ", …" if len(steps) > 5 else "")
    return f"{kinds}{f' into {target}' if target else ''} at {where}"


def _alerts_only_at_injections(ctx: RunContext, prefix: str) -> bool:
    """Faults were injected and every recorded alert whose code starts with ``prefix`` is at a step
    where one fired (at least one such alert)."""
    injected = _injected_steps(ctx)
    steps = [a.get("step") for a in ctx.snap.alerts if str(a.get("code", "")).startswith(prefix)]
    return bool(injected and steps) and all(s in injected for s in steps)


def _injected_nonfinite(ctx: RunContext, steps: list[int]) -> Recommendation | None:
    """The non-finite values attributed to injected faults, when a fault was injected at or before
    the first recorded non-finite loss (or, with finite losses, when any was injected)."""
    faults = _injected(ctx)
    injected = _injected_steps(ctx)
    if not injected or (steps and min(injected) > min(steps)):
        return None
    loss, grad, gd = ctx.snap.loss, ctx.snap.grad_norm, ctx.snap.guard
    recovered = gd.enabled and not (gd.aborts or gd.lockout) and gd.integrity_status in (None, "OK")
    parts = [f"{loss.nonfinite_count} non-finite loss value{'s' if loss.nonfinite_count != 1 else ''}"] \
        if loss.nonfinite_count else []
    if grad.nonfinite_count:
        parts.append(f"{grad.nonfinite_count} non-finite gradient norm{'s' if grad.nonfinite_count != 1 else ''}")
    if recovered:
        after = "the guard rolled each one back and the run recovered"
    elif gd.enabled:
        after = "the guard locked out and restored the last good snapshot"
    else:
        after = "without the guard the weights are non-finite from there on"
    return _rec("warning" if recovered else "error", "review_injected_faults",
                f"The run's {' and '.join(parts)} came from injected faults ({_describe_injected(faults)}); {after}.",
                "A FaultInjector wrote these values on purpose (metrics kind fault_injection): neither fp16, the LR "
                "nor the data produced them.", 0.9,
                {"nonfinite_loss": loss.nonfinite_count, "nonfinite_grad_norm": grad.nonfinite_count,
                 "nonfinite_steps": steps[:10], "injected_faults": faults[:10], "guard_enabled": gd.enabled})


def _fmt_g(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.4g}"


def _fmt(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.3f}"


# -- guard and spectral ----------------------------------------------------------------
def guard(ctx: RunContext) -> Iterable[Recommendation]:
    gd = ctx.snap.guard
    rollbacks, aborts = gd.rollbacks, gd.aborts
    scale = _num(gd.final_lr_scale)
    lr = ctx.lr
    suggested = lr * scale if (lr is not None and scale is not None and 0 < scale < 1) else None
    evidence = {"rollbacks": rollbacks, "aborts": aborts, "lr_backoffs": gd.lr_backoffs,
                "final_lr_scale": scale, "lr": lr, "suggested_lr": suggested}
    if (rollbacks or aborts or gd.lockout) and _alerts_only_at_injections(ctx, "GUARD_"):
        faults = _injected(ctx)
        yield _rec("error" if aborts or gd.lockout else "warning", "review_injected_faults",
                   f"The guard acted only where faults were injected ({_describe_injected(faults)}): "
                   + (f"it locked out after {rollbacks} rollback{'s' if rollbacks != 1 else ''} (a persistent "
                      "fault) and restored the last good snapshot." if aborts or gd.lockout else
                      f"{rollbacks} rollback{'s' if rollbacks != 1 else ''}, and the run went on."),
                   "A FaultInjector corrupted these steps on purpose (metrics kind fault_injection); the training "
                   "configuration did not produce them, so there is no LR to lower.", 0.9,
                   {**evidence, "injected_faults": faults[:10]})
        return
    if aborts or gd.lockout:
        yield _rec("error", "guard_aborted_run",
                   f"The guard stopped the run after {rollbacks} rollback{'s' if rollbacks != 1 else ''} "
                   "(faults kept recurring). Restart from the last good checkpoint with a lower LR"
                   + (f" (e.g. {suggested:g})" if suggested else "") + ".",
                   "Lockout means rolling back and backing off the LR did not stop the faults; the configuration "
                   "itself is unstable.", 0.9, evidence)
    elif rollbacks:
        yield _rec("warning", "review_guard_rollbacks",
                   f"The guard rolled back {rollbacks} time{'s' if rollbacks != 1 else ''}"
                   + (f" and left the LR at ×{scale:g}" if scale is not None and scale < 1 else "")
                   + "; start the next run with the backed-off LR" + (f" ({suggested:g})" if suggested else "") + ".",
                   "Each rollback discards work after a NaN, spike or gradient explosion; the backed-off LR is the "
                   "one the run could actually sustain.", 0.7, evidence)


def spectral_risk(ctx: RunContext) -> Iterable[Recommendation]:
    """κ̃ as a neutral diagnostic: information only, never a warning (docs/policy.md#core-rules).

    Measured, κ̃ levels fire during healthy early training and did not lead a loss blow-up
    (docs/guard.md#why-the-levels-are-a-neutral-diagnostic), so none of them is an alarm
    (``gradience.training.kappa_risk.ALARM_LEVELS`` is empty)."""
    sp = ctx.snap.spectral
    risk = (sp.risk_level or "").upper()
    if risk not in ("DANGER", "INSTABILITY"):
        return
    word = "changing fast" if risk == "DANGER" else "volatile"
    yield _rec("info", "review_spectral_risk",
               f"κ̃ was {word} at the last sample (κ̃={_fmt_g(sp.kappa)} at step {sp.step}, recorded level {risk}); "
               "a diagnostic only: look at the loss curve and eval if they also degraded.",
               "κ̃ tracks the conditioning of the adapter's update; its levels fire in healthy early training and "
               "did not lead a loss blow-up when measured, so they are information, not an alarm.", 0.3,
               {"risk_level": risk, "kappa": sp.kappa, "step": sp.step})


def run_status(ctx: RunContext) -> Iterable[Recommendation]:
    snap = ctx.snap
    if snap.status == "error":
        yield _rec("error", "investigate_run_error", f"The run ended with an error: {snap.reason or 'no reason recorded'}.",
                   "Metrics of a crashed run describe only the part before the crash.", 0.8,
                   {"status": snap.status, "reason": snap.reason})


# -- LoRA audit --------------------------------------------------------------------------
def _audit(ctx: RunContext) -> AuditSummary:
    return ctx.snap.lora_audit or AuditSummary.empty()


def low_utilization(ctx: RunContext) -> Iterable[Recommendation]:
    util, r = _num(_audit(ctx).utilization_mean), ctx.rank
    if util is None or r is None or not (util < LOW_UTIL and r >= LOW_UTIL_MIN_R):
        return
    yield _rec("info", "low_utilization",
               f"The adapter uses {util * 100:.0f}% of its rank on average (stable rank / r, r={r}).",
               "Low utilisation at high rank means most of the adapter's directions carry little energy; a "
               "smaller rank usually trains to the same accuracy.", 0.5,
               {"utilization_mean": util, "r": r, "threshold": LOW_UTIL, "min_r": LOW_UTIL_MIN_R})


def compress_rank(ctx: RunContext) -> Iterable[Recommendation]:
    audit, r = _audit(ctx), ctx.rank
    med, p90 = _num(audit.suggested_r_global_median), _num(audit.suggested_r_global_90)
    if r is None or med is None or med >= r:
        return
    med_params, total = _num(audit.suggested_params_global_median), _num(audit.total_lora_params)
    if (p90 is not None and p90 >= r) and med_params is not None and med_params == total:
        return  # a smaller median rank that saves no parameters (every module already at or below it)
    # The p90 suggestion is the conservative one; when even it is below r, say so with more confidence.
    if p90 is not None and p90 < r:
        target, conf, basis = int(p90), 0.7, "p90"
    else:
        target, conf, basis = int(med), 0.6, "median"
    params = total
    # The audit's exact parameter count at the suggested rank when it has one; else LoRA
    # parameters scale linearly with r for a uniform rank.
    after = _num(audit.suggested_params_global_90 if basis == "p90" else audit.suggested_params_global_median)
    saved = (int(params - after) if after is not None else int(params * (1 - target / r))) if params else None
    msg = f"Retrain at r={target} instead of r={r}"
    if saved is not None and params and saved > 0:
        msg += f" (about {saved:,} fewer LoRA parameters, {saved / params * 100:.0f}%)"
    msg += "; verify accuracy with `gradience bench` or an eval run."
    share = "90% of" if basis == "p90" else "half of"
    yield _rec("info", "compress_rank", msg,
               f"In {share} the audited modules, the top {target} singular directions already hold ≥ 90% of the "
               "update energy (energy rank at 90%, rounded up to an allowed rank); the rest of the rank adds "
               "parameters, not signal. Only an eval can confirm that accuracy holds.", conf,
               {"r": r, "suggested_r": target, "suggested_r_global_median": med, "suggested_r_global_90": p90,
                "energy_rank_90_p50": audit.energy_rank_90_p50, "total_lora_params": audit.total_lora_params,
                "lora_params_saved": saved})


def compress_mlp(ctx: RunContext) -> Iterable[Recommendation]:
    audit = _audit(ctx)
    attn, mlp = audit.type_utilization("attn"), audit.type_utilization("mlp")
    if attn is None or mlp is None or not (mlp < MLP_UTIL_LOW and attn >= 2 * mlp):
        return
    yield _rec("info", "compress_mlp_targets",
               f"MLP adapters use {mlp * 100:.0f}% of their rank vs {attn * 100:.0f}% for attention: try dropping "
               "the MLP targets (or giving them a lower rank via rank_pattern).",
               "MLP modules that barely use their rank add parameters without adding update energy.", 0.5,
               {"mlp_utilization_mean": mlp, "attn_utilization_mean": attn, "threshold": MLP_UTIL_LOW})


def high_udr(ctx: RunContext) -> Iterable[Recommendation]:
    audit = _audit(ctx)
    p90, mx = _num(audit.udr_p90), _num(audit.udr_max)
    if p90 is None or p90 < UDR_HIGH:
        return
    yield _rec("info", "note_high_udr",
               f"For 10% of modules the adapter's update is at least {p90:.2f}× the base weight's top singular "
               f"value (max {_fmt(mx)}). This is not a pass/fail signal; if forgetting matters, compare base-task "
               "eval or lower α.",
               "UDR ≈ 1 means the update is as large as the base weight in its strongest direction; > 3 means it "
               "dominates. Large updates are sometimes needed, so this is information only.", 0.4,
               {"udr_p90": p90, "udr_max": mx, "fraction_udr_gt_0_3": audit.fraction_udr_gt_0_3})


RUN_RULES: tuple[Rule, ...] = (
    gap_missing, memorization, loss_gap_note, not_learning, underfitting,
    nonfinite, loss_spikes, grad_health,
    guard, spectral_risk, run_status,
    low_utilization, compress_rank, compress_mlp, high_udr,
)
