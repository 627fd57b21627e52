"""The training guard: detect, roll back, back off, give up cleanly.

Framework-neutral; the HF callback and the plain-PyTorch controller drive it:

1. ``guard.maybe_snapshot(step)`` after a healthy optimizer step (every
   ``snapshot_interval`` steps and at step 0, never inside a cooldown, never of
   non-finite weights) into a :class:`~gradience.training.snapshots.SnapshotRing`.
2. ``guard.check(step, loss, grad_norm)`` *before* the optimizer step, on values already
   fetched to the host: non-finite loss, non-finite gradients (the total norm is NaN/Inf
   iff one gradient is), loss above ``violation_threshold``, a loss spike against a robust
   running baseline, or a gradient-norm explosion (these rules live torch-free in
   :mod:`gradience.training.detect`, replayable offline). Under DDP/FSDP the trigger bits are
   all-reduced (MAX) so every rank takes the same decision at the same step.
3. On a trigger the caller drops the gradients (``guard.drop_grads()``: the optimizer skips
   parameters without a gradient, so the poisoned update is never applied) and calls
   ``guard.respond(step, triggers)``: restore the newest good snapshot, multiply the LR by
   ``lr_backoff`` (scheduler-aware), or — beyond ``max_rollbacks`` inside ``window`` steps —
   lock out and ask the caller to stop.

Every decision is returned as events for the caller's telemetry writer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .config import GuardConfig
from .detect import GuardDetector
from .gradnorm import total_grad_norm
from .sharding import local
from .snapshots import Snapshot, SnapshotRing

__all__ = ["TRIGGERS", "GuardConfig", "GuardDecision", "TrainingGuard"]

TRIGGERS = ("nonfinite_loss", "nonfinite_grad", "nonfinite_weights", "loss_violation", "loss_spike",
            "grad_explosion", "spectral_instability")


@dataclass
class GuardDecision:
    """What the guard did at one step (``action``: rollback | lockout | backoff | snapshot)."""

    step: int
    action: str
    triggers: list[str]
    restored_step: int | None = None
    lr_scale: float = 1.0
    rollbacks: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class TrainingGuard:
    """Snapshots + triggers + rollback/backoff + anti-thrash lockout for one run.

    Args:
        config: :class:`GuardConfig`.
        params: trainable parameters by name (restored in place).
        optimizer: the optimizer (state restored; LR backed off in its param groups).
        scheduler: an LR scheduler with ``base_lrs`` (LambdaLR & co.); the backoff is
            applied to its base LRs so it survives the schedule.
        scaler: AMP grad scaler (state restored).
        save_fn / load_fn: user state capture/restore (plain loops); called in addition.
        get_lr / set_lr: LR accessors when there is no optimizer to edit.
    """

    def __init__(self, config: GuardConfig, params: dict[str, torch.Tensor], optimizer: Any = None,
                 scheduler: Any = None, scaler: Any = None, *, save_fn: Callable[[], Any] | None = None,
                 load_fn: Callable[[Any], None] | None = None, get_lr: Callable[[], Any] | None = None,
                 set_lr: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.params = params
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.save_fn, self.load_fn, self.get_lr, self.set_lr = save_fn, load_fn, get_lr, set_lr
        self.ring = SnapshotRing(config.ring_size)
        self.detector = GuardDetector(config)
        self.base_lrs = list(getattr(scheduler, "base_lrs", []) or [])
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.backoffs = 0
        self.detections = 0
        self.recoveries = 0
        self.locked_out = False
        self.lockout_reason: str | None = None
        self.lockout_restored_step: int | None = None
        self.last_rollback_step: int | None = None
        self._rollback_steps: deque[int] = deque()
        self._awaiting_recovery = False
        self.trigger_counts: dict[str, int] = {}
        self.decisions: list[GuardDecision] = []

    @property
    def amp_overflows(self) -> int:
        """Steps left to the AMP scaler (non-finite gradients, finite loss; not faults)."""
        return self.detector.amp_overflows

    # -- snapshots -----------------------------------------------------------------------
    def weights_finite(self) -> bool:
        """One fused check of all trainable weights (one host sync)."""
        # This rank's shards under FSDP (a local check: it is also called by rank 0 alone at the end).
        return bool(torch.isfinite(total_grad_norm([local(p) for p in self.params.values()])).item())

    def in_cooldown(self, step: int) -> bool:
        return self.last_rollback_step is not None and step - self.last_rollback_step < self.config.cooldown

    def snapshot(self, step: int) -> Snapshot | None:
        """Take a snapshot now (skipped if the weights are not finite on any rank: every rank
        takes the same snapshots, so a rollback restores the same step everywhere)."""
        finite = self.weights_finite()
        if _distributed():
            import torch.distributed as dist

            device = local(next(iter(self.params.values()))).device if self.params else torch.device("cpu")
            t = torch.tensor([float(finite)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            finite = bool(t.item())
        if not finite:
            return None
        custom = self.save_fn() if self.save_fn is not None else None
        return self.ring.take(step, self.params, self.optimizer, self.scheduler, self.scaler, custom)

    def maybe_snapshot(self, step: int) -> Snapshot | None:
        """Snapshot at step 0 and every ``snapshot_interval`` steps, outside cooldowns."""
        if self.locked_out or self.in_cooldown(step):
            return None
        if step == 0 or step % self.config.snapshot_interval == 0:
            return self.snapshot(step)
        return None

    # -- detection --------------------------------------------------------------------------
    def check(self, step: int, loss: float | None, grad_norm: float | None) -> list[str]:
        """Trigger names for this step (empty = healthy). Same answer on every rank.

        The loss/gradient-norm rules are :class:`~gradience.training.detect.GuardDetector`'s
        (replayable offline); the guard adds the weight check and the all-reduce.
        """
        cfg = self.config
        found = self.detector.detect(step, loss, grad_norm, amp=self._amp_scaler_enabled())
        flags = [name in found for name in TRIGGERS]
        if cfg.weight_check_interval and step % cfg.weight_check_interval == 0 and not self.weights_finite():
            flags[TRIGGERS.index("nonfinite_weights")] = True
        if _distributed():
            import torch.distributed as dist

            device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
            t = torch.tensor([float(f) for f in flags], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in t.tolist()]
        triggers = [name for name, f in zip(TRIGGERS, flags, strict=True) if f]
        if triggers:
            self.detections += 1
            for t_name in triggers:
                self.trigger_counts[t_name] = self.trigger_counts.get(t_name, 0) + 1
        else:
            self.detector.accept(loss)
            if self._awaiting_recovery:  # the first healthy step after a rollback
                self.recoveries += 1
                self._awaiting_recovery = False
        return triggers

    def _amp_scaler_enabled(self) -> bool:
        is_enabled = getattr(self.scaler, "is_enabled", None)
        return bool(is_enabled()) if callable(is_enabled) else False

    def drop_grads(self) -> None:
        """Discard the current gradients so the next optimizer step leaves parameters alone."""
        for p in self.params.values():
            p.grad = None

    # -- response ---------------------------------------------------------------------------
    def _apply_lr_scale(self, factor: float) -> None:
        self.lr_scale *= factor
        if self.scheduler is not None and self.base_lrs:
            self.scheduler.base_lrs = [b * self.lr_scale for b in self.base_lrs]
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        groups = getattr(inner, "param_groups", None)
        if groups:
            for g in groups:
                g["lr"] = g["lr"] * factor
        elif self.set_lr is not None and self.get_lr is not None:
            self.set_lr(float(self.get_lr()) * factor)

    def backoff(self, step: int, reason: str) -> GuardDecision:
        """LR backoff without a rollback (spectral DANGER)."""
        self._apply_lr_scale(self.config.lr_backoff)
        self.backoffs += 1
        d = GuardDecision(step, "backoff", [reason], lr_scale=self.lr_scale, rollbacks=self.rollbacks)
        self.decisions.append(d)
        return d

    def _current_lrs(self) -> list[float]:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        return [float(g["lr"]) for g in getattr(inner, "param_groups", [])]

    def _restore_group_lrs(self, before: list[float], factor: float) -> None:
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for g, lr in zip(getattr(inner, "param_groups", []), before, strict=False):
            g["lr"] = lr * factor

    def _restore(self, snap: Snapshot) -> None:
        """Put the snapshot back (parameters, optimizer, scaler, user state); keep the LR in use
        and the scheduler's position (the step counter does not rewind)."""
        lrs_before = self._current_lrs()
        last_epoch = getattr(self.scheduler, "last_epoch", None)
        SnapshotRing.restore(snap, self.params, self.optimizer, self.scaler)
        if self.load_fn is not None and snap.custom is not None:
            self.load_fn(snap.custom)
        if self.scheduler is not None and last_epoch is not None:
            self.scheduler.last_epoch = last_epoch
        # Restoring the optimizer also restored its param-group LRs; keep the LR in use.
        self._restore_group_lrs(lrs_before, 1.0)

    def respond(self, step: int, triggers: list[str]) -> GuardDecision:
        """Roll back to the newest good snapshot and back off, or lock out.

        A lockout also restores the newest good snapshot (without an LR backoff) before the
        caller stops, so the final weights and the saved adapter are the last known-good
        state, never the poisoned one. Without any good snapshot nothing can be restored;
        the reason says so and whether the weights are finite.
        """
        cfg = self.config
        while self._rollback_steps and step - self._rollback_steps[0] >= cfg.window:
            self._rollback_steps.popleft()
        snap = self.ring.newest(before_step=step)
        if len(self._rollback_steps) >= cfg.max_rollbacks or snap is None:
            self.locked_out = True
            if snap is None:
                why = "no good snapshot to restore; " + (
                    "weights left as they are" if self.weights_finite() else "the weights are NOT finite")
            else:
                self._restore(snap)
                self.lockout_restored_step = snap.step
                why = (f"{len(self._rollback_steps)} rollbacks within {cfg.window} steps (max {cfg.max_rollbacks}); "
                       f"restored the step-{snap.step} snapshot")
            self.lockout_reason = f"guard lockout at step {step}: {', '.join(triggers)}; {why}"
            d = GuardDecision(step, "lockout", triggers, restored_step=None if snap is None else snap.step,
                              lr_scale=self.lr_scale, rollbacks=self.rollbacks, reason=self.lockout_reason)
            self.decisions.append(d)
            return d
        self._restore(snap)
        self._apply_lr_scale(cfg.lr_backoff)
        self.rollbacks += 1
        self.backoffs += 1
        self._rollback_steps.append(step)
        self.last_rollback_step = step
        self._awaiting_recovery = True
        d = GuardDecision(step, "rollback", triggers, restored_step=snap.step, lr_scale=self.lr_scale,
                          rollbacks=self.rollbacks)
        self.decisions.append(d)
        return d

    # -- reporting ----------------------------------------------------------------------------
    @property
    def integrity_status(self) -> str:
        if self.locked_out:
            return "LOCKED_OUT"
        if self._awaiting_recovery:
            return "RECOVERING"
        return "OK"

    def summary(self) -> dict[str, Any]:
        """``metrics(kind="guard", action="summary")`` payload."""
        return {
            "action": "summary",
            "snapshots": self.ring.taken,
            "snapshots_held": len(self.ring),
            "snapshot_steps": self.ring.steps(),
            "snapshot_bytes": self.ring.nbytes,
            "detections": self.detections,
            "rollbacks": self.rollbacks,
            "recoveries": self.recoveries,
            "lr_backoffs": self.backoffs,
            "final_lr_scale": self.lr_scale,
            "lockout": self.locked_out,
            "lockout_reason": self.lockout_reason,
            "lockout_restored_step": self.lockout_restored_step,
            "weights_finite": self.weights_finite(),
            "integrity_status": self.integrity_status,
            "trigger_counts": dict(self.trigger_counts),
            "amp_overflows": self.amp_overflows,
            "config": asdict(self.config),
        }
