"""RunRecorder: the flight-recorder side of a training run, shared by the HF callback and
the plain-PyTorch controller.

It owns the :class:`~gradience.telemetry.TelemetryWriter` (rank 0 only), the gradient-norm
monitor, the mapping of framework eval metrics onto the spine, and the end-of-run steps
(grad-norm summary, adapter audit, run recommendations, ``run_end``). Framework code calls
it; it never calls framework code except to save a PEFT adapter.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds
from ..telemetry.schema import ConfigSnapshot
from ..telemetry.writer import TelemetryWriter
from .gradnorm import GradNormMonitor, alert_fields

__all__ = ["GRAD_SUMMARY_INTERVAL", "LR_JUMP_FACTOR", "RunRecorder", "spine_metrics"]

# A learning rate that rises this many times in one optimizer step is an LR_JUMP alert: no
# schedule does that (linear warm-up doubles it from step 1 to 2 at most); a wrong scheduler,
# a resume with another LR or a manual change does, and it precedes a divergence.
LR_JUMP_FACTOR = 10.0

# Optimizer steps between two running gradient-norm summaries (docs/telemetry.md#metrics).
GRAD_SUMMARY_INTERVAL = 50

# Framework metric names → spine names (docs/telemetry.md#eval: loss, ppl, accuracy, n).
_SPINE_ALIASES = {"loss": "loss", "accuracy": "accuracy", "acc": "accuracy", "perplexity": "ppl", "ppl": "ppl"}
_HELD_OUT_NAMES = ("test", "eval", "validation", "val", "dev", "heldout", "held_out")


def spine_metrics(metrics: dict[str, Any], *, causal_lm: bool = False) -> dict[str, Any]:
    """Map already-unprefixed metric names onto the spine and keep the rest as extras.

    ``ppl = exp(loss)`` is added only for causal language models (it is meaningless for a
    classifier's cross-entropy). ``n`` is derived from ``runtime × samples_per_second``
    when the framework reports throughput but not the sample count.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        out[_SPINE_ALIASES.get(key, key)] = value
    if "accuracy" not in out and isinstance(out.get("mean_token_accuracy"), (int, float)):
        # TRL's token accuracy is the run's accuracy when nothing else is logged (kept under its own name too).
        out["accuracy"] = out["mean_token_accuracy"]
    loss = out.get("loss")
    if causal_lm and "ppl" not in out and isinstance(loss, (int, float)) and math.isfinite(loss) and loss < 700:
        out["ppl"] = math.exp(loss)
    if "n" not in out:
        rt, sps = out.get("runtime"), out.get("samples_per_second")
        if isinstance(rt, (int, float)) and isinstance(sps, (int, float)) and rt > 0 and sps > 0:
            out["n"] = round(rt * sps)
    return out


def split_eval_metrics(metrics: dict[str, Any], test_split: str = "test") -> tuple[str, dict[str, Any]]:
    """Split an HF ``evaluate`` result (``eval_loss`` or ``eval_<name>_loss``) into (split, metrics).

    ``eval_dataset={"test": ..., "train": ...}`` gives prefixes ``eval_test_``/``eval_train_``;
    a single eval dataset gives ``eval_``. One call describes one eval set, so keys with only
    ``eval_`` (TRL adds ``eval_mean_token_accuracy``, ``eval_entropy``, ``eval_num_tokens`` so
    under a dict of eval sets) belong to it too; a dataset-prefixed key wins a clash. ``train`` stays ``train``; held-out names
    (test, eval, validation, val, dev) become ``test_split``; anything else is kept as is.
    """
    prefix = "eval_"
    for key in metrics:
        for suffix in ("_runtime", "_loss"):
            if key.startswith("eval_") and key.endswith(suffix):
                prefix = key[: -len(suffix) + 1]
                break
        else:
            continue
        break
    name = prefix[len("eval_"):-1] if len(prefix) > len("eval_") else ""
    if name == "train":
        split = "train"
    elif name in ("", *_HELD_OUT_NAMES):
        split = test_split
    else:
        split = name
    stripped = {k[len("eval_"):]: v for k, v in metrics.items() if k.startswith("eval_") and not k.startswith(prefix)}
    stripped.update({k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)})
    return split, stripped


class RunRecorder:
    """Writes one run's telemetry. Only the process with ``is_writer`` writes anything.

    Args:
        path: the ``run.jsonl`` (appended to; never truncated).
        is_writer: ``True`` on global rank 0.
        telemetry_interval: a ``train_step`` event every N optimizer steps (and at step 1).
        grad_thresholds: gradient-norm level boundaries.
        run_id: reuse to resume a run.
        grad_summary_interval: write the running gradient-norm summary (``metrics(kind="grad_norm")``
            over every step so far, ``final: false``) every N optimizer steps; 0 writes it only at
            the end (``final: true``).
    """

    def __init__(self, path: str | os.PathLike[str], *, is_writer: bool = True, telemetry_interval: int = 10,
                 grad_thresholds: GradThresholds = DEFAULT_THRESHOLDS, alert_cooldown: int = 50,
                 run_id: str | None = None, grad_summary_interval: int = GRAD_SUMMARY_INTERVAL) -> None:
        if telemetry_interval < 1:
            raise ValueError("telemetry_interval must be >= 1")
        if grad_summary_interval < 0:
            raise ValueError("grad_summary_interval must be >= 0")
        self.grad_summary_interval = int(grad_summary_interval)
        self.path = Path(path)
        self.is_writer = bool(is_writer)
        self.telemetry_interval = int(telemetry_interval)
        self.grad = GradNormMonitor(grad_thresholds, alert_cooldown=alert_cooldown)
        self.writer = TelemetryWriter(self.path, run_id=run_id, enabled=self.is_writer)
        self.started = False
        self.ended = False
        self.last_step = 0
        self.last_loss: float | None = None
        self._t_last: float | None = None
        self._step_last: int | None = None
        self._t_start: float | None = None
        self.samples_per_step: int | None = None
        # Optimizer steps whose telemetry interval is temporarily shortened (guard WARNING).
        self.dense_until: int | None = None
        # A causal LM: train_step also carries ppl = exp(loss).
        self.causal_lm = False
        self._grad_summary_written = False
        self._lr_prev: float | None = None

    @property
    def run_id(self) -> str:
        return self.writer.run_id

    def start(self, config: ConfigSnapshot, meta: dict[str, Any], step: int | None = None) -> None:
        self.writer.run_start(config, meta, step=step)
        self.started = True
        self._t_start = self._t_last = time.perf_counter()
        self._step_last = step or 0

    def wants_step(self, step: int) -> bool:
        """Is ``step`` a telemetry step?"""
        if self.dense_until is not None and step <= self.dense_until:
            return True
        return step == 1 or step % self.telemetry_interval == 0

    def record_grad(self, step: int, pre_clip: float | None, post_clip: float | None, *,
                    amp_overflow: bool = False) -> None:
        """Feed the gradient-norm monitor (every optimizer step); alerts level changes.

        ``amp_overflow``: this step's non-finite norm is an fp16 overflow an enabled AMP grad
        scaler handles (finite loss; the scaler skips the step): its alert is ``AMP_OVERFLOW``
        at severity info instead of the critical ``GRAD_NORM_NONFINITE``."""
        if pre_clip is None:
            return
        change = self.grad.update(step, pre_clip, post_clip)
        if change is not None:
            severity, code, message = alert_fields(change, amp_overflow=amp_overflow)
            self.writer.alert(severity, code, message, step=step, context=change.context())
        if self.grad_summary_interval and step % self.grad_summary_interval == 0:
            # The full-run record while the run is live (and if it never reaches its end).
            self.writer.metrics("grad_norm", {**self.grad.summary(), "final": False}, step=step)

    def record_lr(self, step: int, lr: Any) -> None:
        """Feed the learning rate about to be applied at ``step`` (every optimizer step); a rise of
        at least :data:`LR_JUMP_FACTOR` × in one step is an ``LR_JUMP`` warning. With several
        param groups the largest LR counts."""
        values = lr if isinstance(lr, (list, tuple)) else [lr]
        finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if not finite:
            return
        now, prev = max(finite), self._lr_prev
        self._lr_prev = now
        if prev is not None and prev > 0 and now >= LR_JUMP_FACTOR * prev:
            self.writer.alert("warning", "LR_JUMP",
                              f"the learning rate rose ×{now / prev:.3g} in one step ({prev:.3g} → {now:.3g}) at "
                              f"step {step}: no schedule does that; check the scheduler, a resume or a manual change",
                              step=step, context={"previous_lr": prev, "lr": now, "factor": now / prev})

    def train_step(self, step: int, *, loss: float | None, lr: Any, epoch: float | None = None,
                   grad_norm: float | None = None, grad_norm_clipped: float | None = None,
                   **extra: Any) -> None:
        """Emit a ``train_step`` event with throughput since the previous one (and, for a causal
        LM, ``ppl = exp(loss)``)."""
        now = time.perf_counter()
        payload: dict[str, Any] = {}
        if self._t_last is not None and self._step_last is not None and step > self._step_last:
            dt = now - self._t_last
            if dt > 0:
                sps = (step - self._step_last) / dt
                payload["steps_per_second"] = sps
                if self.samples_per_step:
                    payload["samples_per_second"] = sps * self.samples_per_step
        self._t_last, self._step_last = now, step
        if loss is not None:
            self.last_loss = loss
            if self.causal_lm and math.isfinite(loss) and loss < 700:
                payload["ppl"] = math.exp(loss)
        self.last_step = max(self.last_step, step)
        self.writer.train_step(step, loss=loss, lr=lr, grad_norm=grad_norm, grad_norm_clipped=grad_norm_clipped,
                               epoch=epoch, **payload, **extra)

    def eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        self.writer.eval(step, split=split, metrics=metrics)

    # -- end of run ------------------------------------------------------------------
    def save_training_args(self, out_dir: Path, args_dict: dict[str, Any]) -> Path | None:
        if not self.is_writer:
            return None
        target = out_dir / "training"
        target.mkdir(parents=True, exist_ok=True)
        path = target / "training_args.json"
        path.write_text(json.dumps(args_dict, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def write_grad_summary(self, step: int | None) -> None:
        """The final ``metrics(kind="grad_norm")`` (``final: true``), once per run (before
        recommendations read it)."""
        if self.grad.n and not self._grad_summary_written:
            self.writer.metrics("grad_norm", {**self.grad.summary(), "final": True}, step=step)
            self._grad_summary_written = True

    def append_audit(self, peft_dir: Path, step: int | None) -> dict[str, Any] | None:
        """Audit the saved adapter and append ``metrics(kind="lora_audit")``."""
        if not self.is_writer:
            return None
        from ..audit import audit_adapter

        result = audit_adapter(peft_dir)
        summary = result.summary.to_dict()
        self.writer.metrics("lora_audit", summary, step=step, peft_dir=str(peft_dir))
        return summary

    def append_recommendations(self, step: int | None, gap_threshold: float = 1.5) -> list[Any]:
        """Run the ``monitor`` rules on what this run recorded so far; write a ``recommendation`` event."""
        if not self.is_writer:
            return []
        from ..policy import run_recommendations
        from ..telemetry.reader import TelemetryReader

        self.writer.flush()
        snap = TelemetryReader(self.path).summarize(self.run_id)
        recs = list(run_recommendations(snap, gap_threshold=gap_threshold))
        self.writer.recommendation(recs, step=step)
        return recs

    def finish(self, status: str, reason: str | None, step: int | None,
               summary: dict[str, Any] | None = None) -> None:
        """``metrics(kind="grad_norm")`` then ``run_end``; closes the file. Idempotent."""
        if self.ended:
            return
        self.ended = True
        if self.writer.enabled and not self.writer.closed:
            self.write_grad_summary(step)
            duration = time.perf_counter() - self._t_start if self._t_start is not None else None
            final = {"total_steps": self.last_step, "final_loss": self.last_loss, "duration_s": duration}
            final.update(summary or {})
            self.writer.run_end(status=status, reason=reason, summary=final, step=step)
        self.writer.close()
