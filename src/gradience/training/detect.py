"""The guard's detection rules, torch-free: what counts as a fault at one optimizer step.

:class:`GuardDetector` holds every rule of :meth:`TrainingGuard.check
<gradience.training.guard.TrainingGuard.check>` that needs only the step's loss and pre-clip
gradient norm — non-finite loss, non-finite gradients (with the AMP-overflow tolerance), loss
violation, loss spike, gradient explosion. The guard adds the torch-side checks (non-finite
weights, the distributed all-reduce) and the response. :func:`replay_guard` runs the same
detector over a recorded ``(step, loss, grad_norm)`` series, so a rule change is re-scored
offline on recorded runs with exactly the product's rules.

    det = GuardDetector(GuardConfig())
    found = det.detect(step, loss, grad_norm)   # trigger names; state of the AMP streak moves
    if not found:
        det.accept(loss)                        # a healthy step feeds the loss baseline

The rules are documented in ``docs/guard.md#triggers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..telemetry.health import REFERENCE_STEPS, LossSpikeRule
from .config import GuardConfig

__all__ = ["DETECTED", "REFERENCE_STEPS", "GuardDetector", "loss_prior", "model_loss_prior", "replay_guard"]

# The trigger names a GuardDetector can return, in the guard's trigger order.
DETECTED = ("nonfinite_loss", "nonfinite_grad", "loss_violation", "loss_spike", "grad_explosion")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForImageClassification",
                        "ForAudioClassification", "ForMultipleChoice")
_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration", "ForPreTraining")


def loss_prior(*, n_labels: int | None = None, vocab_size: int | None = None,
               multi_label: bool = False) -> float | None:
    """The cross-entropy of a uniform guess: ln(vocab_size) for a language model, ln(n_labels)
    for a classifier (ln 2 per label for a multi-label one); None when neither applies
    (regression: fewer than 2 labels)."""
    if vocab_size is not None and vocab_size >= 2:
        return math.log(vocab_size)
    if multi_label:
        return math.log(2)
    if n_labels is not None and n_labels >= 2:
        return math.log(n_labels)
    return None


def model_loss_prior(model: Any, *, causal_lm: bool = False) -> tuple[float, str] | None:
    """``(prior, how)`` for a Hugging Face model (PEFT-wrapped or not), from its config; None
    when the task's untrained loss cannot be told (regression, a custom model or loss).

    ``causal_lm``: the caller already knows the model is a causal LM
    (:func:`~gradience.training.config_snapshot.is_causal_lm`). Torch-free: reads attributes only.
    """
    base = model
    for _ in range(4):  # DDP/FSDP .module, PEFT .get_base_model()
        inner = getattr(base, "module", None)
        if inner is not None and inner is not base:
            base = inner
            continue
        get_base = getattr(base, "get_base_model", None)
        if callable(get_base):
            nxt = get_base()
            if nxt is not base:
                base = nxt
                continue
        break
    config = getattr(base, "config", None)
    if config is None:
        return None
    names = [type(base).__name__, *(str(a) for a in (getattr(config, "architectures", None) or []))]
    vocab = getattr(config, "vocab_size", None)
    if causal_lm or any(n.endswith(_LM_SUFFIXES) for n in names):
        prior = loss_prior(vocab_size=vocab if isinstance(vocab, int) else None)
        return None if prior is None else (prior, f"ln(vocab_size={vocab})")
    if any(n.endswith(_CLASSIFIER_SUFFIXES) for n in names):
        problem = getattr(config, "problem_type", None)
        if problem == "regression":
            return None
        if problem == "multi_label_classification":
            return (math.log(2), "ln(2) per label (multi-label)")
        n = getattr(config, "num_labels", None)
        prior = loss_prior(n_labels=n if isinstance(n, int) else None)
        return None if prior is None else (prior, f"ln(num_labels={n})")
    return None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class GuardDetector:
    """Stateful per-step fault detection from the loss and the pre-clip gradient norm.

    Args:
        config: the :class:`GuardConfig` whose thresholds apply.

    State: the loss baseline (fed only by :meth:`accept`, i.e. by healthy steps, so a spike
    never hides the next one) and the current streak of AMP overflows.
    """

    def __init__(self, config: GuardConfig, *, loss_prior: float | None = None) -> None:
        self.config = config
        self.loss_prior = loss_prior if loss_prior is not None else config.loss_prior
        self.spike_rule = LossSpikeRule(ratio=config.spike_ratio, k=config.spike_k, warmup=config.spike_warmup,
                                        floor=config.spike_floor, limit=config.spike_limit, prior=self.loss_prior)
        self.amp_overflows = 0  # steps left to the AMP scaler (non-finite grads, finite loss)
        self._amp_streak = 0

    @property
    def reference(self) -> float | None:
        """The reference loss of ``spike_floor`` / ``spike_limit`` (:class:`LossSpikeRule`)."""
        return self.spike_rule.reference

    def detect(self, step: int, loss: float | None, grad_norm: float | None, *, amp: bool = False) -> list[str]:
        """The triggers for ``step`` (names from :data:`DETECTED`; empty = healthy).

        ``amp``: an enabled AMP grad scaler handles this step's overflows. Moves the AMP
        overflow streak; does not feed the loss baseline (call :meth:`accept` for a step
        that is healthy after every check).
        """
        cfg = self.config
        found: set[str] = set()
        if loss is not None and not math.isfinite(loss):
            found.add("nonfinite_loss")
        if grad_norm is not None and not math.isfinite(grad_norm):
            overflow = True
            if amp and _finite(loss):
                # An fp16 overflow: the scaler skips this step and lowers its scale. The
                # gradients stay as they are (the scaler must see the Inf), nothing is rolled
                # back; only a streak longer than the tolerance is a fault.
                self._amp_streak += 1
                overflow = self._amp_streak > cfg.amp_overflow_tolerance
                self.amp_overflows += not overflow
            if overflow:
                found.add("nonfinite_grad")
        elif grad_norm is not None:
            self._amp_streak = 0
        if loss is not None and math.isfinite(loss):
            if loss > cfg.violation_threshold:
                found.add("loss_violation")
            elif self.is_spike(loss):
                found.add("loss_spike")
        if grad_norm is not None and math.isfinite(grad_norm) and grad_norm > cfg.grad_explosion_threshold:
            found.add("grad_explosion")
        return [name for name in DETECTED if name in found]

    def is_spike(self, loss: float) -> bool:
        """Is this finite loss a spike? (No state change; the rule: :class:`LossSpikeRule`.)"""
        return self.spike_rule.is_spike(loss)

    def accept(self, loss: float | None) -> None:
        """A healthy step (no trigger after every check): its loss feeds the baseline."""
        if loss is not None:
            self.spike_rule.accept(loss)

    def check(self, step: int, loss: float | None, grad_norm: float | None, *, amp: bool = False) -> list[str]:
        """:meth:`detect`, then :meth:`accept` when nothing fired (what a replay does per step)."""
        found = self.detect(step, loss, grad_norm, amp=amp)
        if not found:
            self.accept(loss)
        return found


def _value(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def replay_guard(series: Iterable[tuple[int, float | None, float | None]], config: GuardConfig | None = None, *,
                 amp: bool = False, loss_prior: float | None = None) -> list[tuple[int, list[str]]]:
    """Replay the guard's detection over a recorded run.

    Args:
        series: ``(step, loss, grad_norm)`` per optimizer step in step order (the pre-clip
            gradient norm, as ``train_step.grad_norm`` records it; ``None`` where unknown).
            Recorded with ``telemetry_interval=1`` for an exact replay: with gaps, the
            baseline sees only the recorded steps.
        config: the :class:`GuardConfig` (default: the defaults).
        amp: the run had an enabled AMP grad scaler (overflows within the tolerance are not
            faults).
        loss_prior: the task's untrained loss (overrides ``config.loss_prior``); a run records
            the one it derived as ``run_start.meta.loss_prior``, and :func:`loss_prior` computes
            it from a label or vocabulary count. Without one, the first healthy losses stand in.

    Returns:
        ``(step, triggers)`` for every step where a rule fired, in step order. The run is
        replayed as recorded (no rollback changes what follows), so a persistent fault fires
        at each of its steps; the weight check (which needs the weights) is not replayed.
    """
    det = GuardDetector(config or GuardConfig(), loss_prior=loss_prior)
    out: list[tuple[int, list[str]]] = []
    for step, loss, grad_norm in series:
        found = det.check(int(step), _value(loss), _value(grad_norm), amp=amp)
        if found:
            out.append((int(step), found))
    return out
