"""``RunSupervisor``: everything Gradience does around one training run, framework-neutral.

It owns the components of a monitored run — the :class:`~gradience.training.recorder.RunRecorder`
(telemetry writer and gradient-norm health), the :class:`~gradience.training.guard.TrainingGuard`
(snapshot ring, triggers, rollback, backoff, lockout) and the
:class:`~gradience.training.spectral.SpectralMonitor` — and every rule that connects them. A
training loop drives it through the few moments every loop has:

=====================  ==============================================================================
``start``              once, before the first step: ``run_start``, the guard and its first snapshot
``measure``            after backward: the pre/post-clip gradient norms and the loss, one host sync
``before_optimizer``   after backward (and clipping), before ``optimizer.step()``: gradient health,
                       guard checks; on a trigger the gradients are dropped so the step is a no-op
``after_optimizer``    after ``optimizer.step()`` (or where it would be): ``train_step`` telemetry,
                       the guard's rollback / lockout; returns ``True`` when training must stop
``after_update``       when the weights are the result of that step: snapshot, κ̃ sample and its
                       alerts and (opt-in) actions
``eval``               an evaluation result (``split``: train / test / ...)
``save``               a checkpoint was written: flush the telemetry so the file matches it
``end``                the adapter, ``training_args.json``, summaries, audit, recommendations,
                       ``run_end``
``exception``          training died: ``run_end(status="error" | "aborted")``
=====================  ==============================================================================

:class:`~gradience.GradienceCallback` (HF ``Trainer``) and
:class:`~gradience.GradienceController` (plain PyTorch) are thin adapters that translate their
framework's moments into these; neither holds policy. The rules are documented in
``docs/training.md#the-run-supervisor`` and ``docs/guard.md``.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradienceError, require
from ..telemetry.schema import ConfigSnapshot
from ..trackers.export import guard_marks, live_step_signals
from .config import GradienceConfig
from .config_snapshot import is_causal_lm, unwrap_model
from .detect import model_loss_prior
from .gradnorm import collect_grads, total_grad_norm
from .kappa_risk import neutral_word
from .recorder import RunRecorder
from .sharding import (
    all_reduce_sum,
    full,
    full_adapter_state,
    full_parameters,
    is_dtensor,
    local,
    parallelism,
    replica_weight,
)

require("torch", "hf", "RunSupervisor")
import torch  # noqa: E402

__all__ = ["RunSupervisor", "StepValues", "is_peft_model"]


def is_peft_model(model: Any) -> bool:
    """A PEFT model (it has ``peft_config`` and ``save_pretrained``), DDP/FSDP wrappers unwrapped."""
    inner = unwrap_model(model)
    return isinstance(getattr(inner, "peft_config", None), dict) and hasattr(inner, "save_pretrained")


def optimizer_lr(optimizer: Any) -> float | list[float] | None:
    """The learning rate in use: one float, or one per param group when they differ."""
    inner = getattr(optimizer, "optimizer", optimizer)
    groups = getattr(inner, "param_groups", None)
    if not groups:
        return None
    lrs = [float(g["lr"]) for g in groups]
    return lrs[0] if len(set(lrs)) == 1 else lrs


@dataclass(frozen=True)
class StepValues:
    """One optimizer step's measured values, on the host.

    Attributes:
        grad_norm: total L2 norm of the trainable gradients before clipping.
        grad_norm_clipped: the same after clipping (what the optimizer applies).
        loss: the step's training loss as the training loop reports it (the HF Trainer: the
            sum of its micro-batch contributions; under several processes the mean over
            ranks); None when unknown.
    """

    grad_norm: float
    grad_norm_clipped: float
    loss: float | None


def world_size() -> int:
    """The number of processes in the default process group (1 outside ``torch.distributed``)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _as_scalar(value: Any, device: torch.device) -> torch.Tensor:
    if is_dtensor(value):  # FSDP2's clip_grad_norm_ returns the total norm as a DTensor
        value = full(value)
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.tensor(math.nan if value is None else float(value), dtype=torch.float64, device=device)


class RunSupervisor:
    """Drives the recorder, guard and spectral monitor of one run (see the module docstring).

    Args:
        config: the run's :class:`~gradience.training.config.GradienceConfig`.
        out_dir: where ``config.filename`` and the end-of-run artefacts go (the adapters
            resolve ``config.out_dir`` against their framework's default).
    """

    def __init__(self, config: GradienceConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.recorder: RunRecorder | None = None
        self.guard: Any = None  # TrainingGuard when the guard is on
        self.spectral: Any = None  # SpectralMonitor when sampling is on
        self._scaler: Any = None  # the enabled AMP grad scaler handed to start(), if any
        self.guard_report: dict[str, Any] | None = None
        self.stop_reason: str | None = None
        self.max_steps: int | None = None
        self.final_loss: float | None = None  # the last loss of a step the guard did not act on
        self.total_steps = 0
        self._model: Any = None
        self._params: list[torch.Tensor] = []
        self._triggers: list[str] = []
        self._values: StepValues | None = None
        self._lr: Any = None
        self._pending_update: int | None = None
        self._initial_snapshot: Any = None
        self._prev_excepthook: Any = None
        self.parallelism = "single"  # what run_start.meta.parallelism says: single, ddp, fsdp1, fsdp2
        self._sharded = False  # parameters split across ranks (fsdp1, fsdp2): global figures are sums
        self._root: Any = None  # the model as handed over (its FSDP wrapper, if any)
        self._live: dict[str, float] = {}  # signals for the framework's own log (tracker_signals)
        self.stopped: str | None = None  # run_end.summary.stop_reason, set when the run ends
        self.adapter: dict[str, Any] | None = None  # which step's weights the saved adapter holds

    @property
    def path(self) -> Path:
        return self.out_dir / self.config.filename

    @property
    def params(self) -> list[torch.Tensor]:
        """The trainable parameters (those whose gradients are measured)."""
        return self._params

    def _rec(self, moment: str) -> RunRecorder:
        if self.recorder is None:
            raise GradienceError(f"the run was not started: call start() before {moment}()")
        return self.recorder

    # -- start ----------------------------------------------------------------------------
    def start(self, model: Any, run_config: ConfigSnapshot, meta: dict[str, Any], *, is_writer: bool = True,
              optimizer: Any = None, scheduler: Any = None, scaler: Any = None,
              resumed_from_step: int | None = None, max_steps: int | None = None,
              samples_per_step: int | None = None, save_fn: Any = None, load_fn: Any = None,
              get_lr: Any = None, set_lr: Any = None, loss_sum_of: int = 1) -> None:
        """Write ``run_start`` and set up the guard (with a first snapshot) and κ̃ sampling.

        Args:
            model: the model (DDP/FSDP wrappers are unwrapped).
            run_config: the ConfigSnapshot to record; meta: ``run_start.meta``.
            is_writer: only global rank 0 writes.
            optimizer, scheduler, scaler: what the guard snapshots, restores and backs off
                (a scheduler with ``base_lrs`` keeps the backoff across its steps).
            resumed_from_step: a resumed run's starting step; a resumed run without a run id
                continues the file's last run id.
            max_steps: planned optimizer steps (the last step is always recorded).
            samples_per_step: samples per optimizer step (for ``samples_per_second``).
            save_fn, load_fn, get_lr, set_lr: custom state capture/restore and LR access
                for the guard (plain loops).
            loss_sum_of: the recorded loss may be a sum of up to this many per-example mean losses
                (the HF Trainer under gradient accumulation when it trusts the model to scale and the
                model does not). The derived loss prior is multiplied by it, so the guard's absolute
                loss floor and limit do not fire on a healthy run's summed loss.
        """
        if self.recorder is not None:
            raise GradienceError("this run was already started")
        cfg = self.config
        run_id = cfg.run_id
        if resumed_from_step and run_id is None and is_writer and self.path.exists():
            from ..telemetry.reader import TelemetryReader

            run_id = TelemetryReader(self.path).last_run_id()
        rec = RunRecorder(self.path, is_writer=is_writer, telemetry_interval=cfg.telemetry_interval,
                          grad_thresholds=cfg.grad_thresholds, run_id=run_id)
        rec.samples_per_step = samples_per_step
        self.recorder = rec
        self.max_steps = max_steps
        causal_lm = is_causal_lm(model)
        # The task's untrained loss (ln of the label or vocabulary count): the reference of the
        # guard's loss-spike floor and limit, recorded so a run can be replayed offline.
        prior = cfg.guard.loss_prior if cfg.guard is not None and cfg.guard.loss_prior is not None else None
        spike_prior = prior
        if prior is None:
            derived = model_loss_prior(unwrap_model(model), causal_lm=causal_lm)
            prior = spike_prior = derived[0] if derived is not None else None
            if prior is not None and loss_sum_of > 1:
                # The Trainer may log a sum of loss_sum_of micro-batch means (see the argument): judge
                # it against the same sum of untrained losses. Recorded beside the prior (which stays
                # ln K: the chance level reads it), so monitor's spike rule applies the same reference.
                spike_prior = prior * loss_sum_of
                meta = {**meta, "loss_prior_sum_of": loss_sum_of}
        if prior is not None:
            meta = {**meta, "loss_prior": prior}
        world = world_size()
        self.parallelism = parallelism(model, world)
        self._sharded = self.parallelism in ("fsdp1", "fsdp2")
        self._root = model
        meta = {**meta, "parallelism": self.parallelism}
        if self._sharded:
            meta.update(self._global_counts(unwrap_model(model)))
        self._scaler = scaler if scaler is not None and getattr(scaler, "is_enabled", lambda: True)() else None
        if self._scaler is not None:
            # An enabled AMP grad scaler: non-finite gradients with a finite loss are fp16 overflows it
            # skips, which monitor reports as information (docs/policy.md#core-rules).
            amp = meta.get("amp")
            meta = {**meta, "amp": {**(amp if isinstance(amp, dict) else {}), "grad_scaler": True}}
        rec.start(run_config, meta, step=resumed_from_step)
        if is_writer:  # say once where the run goes, so nobody has to guess (stderr: stdout stays the user's)
            verb = "continuing" if resumed_from_step else "recording"
            print(f"gradience: {verb} this run in {self.path} (adapter and training arguments under "
                  f"{self.out_dir}/ at the end; summarise with: gradience monitor {self.path})", file=sys.stderr,
                  flush=True)
        rec.causal_lm = causal_lm
        self._model = unwrap_model(model)
        named = {n: p for n, p in self._model.named_parameters() if p.requires_grad}
        self._params = list(named.values())
        self.total_steps = resumed_from_step or 0
        if cfg.guard is not None:
            from .guard import TrainingGuard

            guard_cfg = cfg.guard if spike_prior is None else dataclasses.replace(cfg.guard, loss_prior=spike_prior)
            self.guard = TrainingGuard(guard_cfg, named, optimizer, scheduler, scaler, save_fn=save_fn,
                                       load_fn=load_fn, get_lr=get_lr, set_lr=set_lr)
            # The state handed over is the first good snapshot, taken before anything can touch
            # the weights; it is labelled (and recorded) at the first step as "step before it".
            self._initial_snapshot = self.guard.snapshot(resumed_from_step or 0)
        if cfg.spectral is not None:
            from .spectral import SpectralMonitor

            s = cfg.spectral
            self.spectral = SpectralMonitor(s.interval, window=s.window, thresholds=s.thresholds)
        self._install_exit_hooks()

    # -- one step ---------------------------------------------------------------------------
    def measure(self, pre_clip: Any = None, loss: Any = None) -> StepValues:
        """Gradient norms and loss with one host sync.

        Under ``torch.distributed`` (more than one process) the recorded loss is the mean of
        the ranks' losses, as the HF Trainer logs it (one all-reduce per step; every rank calls
        ``measure``), so a fault on any rank shows in the one file rank 0 writes.

        Args:
            pre_clip: the pre-clip total norm (tensor or float) when the loop clipped, else
                ``None`` (the current gradients are unclipped: pre = post).
            loss: this rank's loss for the step (tensor or float) or ``None``.
        """
        world = world_size()
        grads = collect_grads(self._params)
        if self._sharded:
            # Each rank holds a shard of every gradient: the global norm is the root of the sum of
            # the ranks' squared local norms, reduced with the loss in one all-reduce.
            sq = total_grad_norm([local(g) * replica_weight(g) ** 0.5 for g in grads]) ** 2
            loss_t = _as_scalar(loss, sq.device)
            summed = all_reduce_sum(torch.stack([sq, loss_t]))
            post, loss_t = summed[0].sqrt(), summed[1] / world
        else:
            post = total_grad_norm(grads)
            loss_t = _as_scalar(loss, post.device)
            if world > 1:  # DDP: gradients are identical on every rank, losses are not
                loss_t = all_reduce_sum(loss_t) / world
        post_v, pre_v, loss_v = torch.stack([post, _as_scalar(pre_clip, post.device), loss_t]).tolist()
        return StepValues(grad_norm=post_v if pre_clip is None else pre_v, grad_norm_clipped=post_v,
                          loss=None if loss is None else loss_v)

    def before_optimizer(self, step: int, values: StepValues, lr: Any = None) -> list[str]:
        """Gradient health and the guard's checks for ``step`` (1-based), before the optimizer.

        Returns the guard's triggers (empty: healthy, or no guard). On a trigger the
        gradients are dropped, so ``optimizer.step()`` leaves the weights alone.
        """
        rec = self._rec("before_optimizer")
        guard = self.guard
        if self._initial_snapshot is not None:
            snap, self._initial_snapshot = self._initial_snapshot, None
            snap.step = step - 1
            self._snapshot_event(step - 1, snap)
        self._values, self._lr = values, lr
        g, loss = values.grad_norm, values.loss
        amp_overflow = (self._scaler is not None and g is not None and not math.isfinite(g)
                        and loss is not None and math.isfinite(loss))
        rec.record_lr(step, lr)
        rec.record_grad(step, g, values.grad_norm_clipped, amp_overflow=amp_overflow)
        self._triggers = []
        if guard is not None and not guard.locked_out:
            self._triggers = guard.check(step, values.loss, values.grad_norm)
            if self._triggers:
                guard.drop_grads()
        return list(self._triggers)

    def after_optimizer(self, step: int, *, epoch: float | None = None,
                        extra: dict[str, Any] | None = None) -> bool:
        """Record ``step`` and answer the guard's triggers; ``True`` when training must stop.

        A ``train_step`` event is written every ``telemetry_interval`` steps, at step 1, at the
        last planned step, at every step the guard acts on and densely after a rollback.
        ``extra``: the framework's own per-step metrics to record with it (TRL's
        ``mean_token_accuracy``, ``entropy``, ``num_tokens``).
        """
        rec = self._rec("after_optimizer")
        values, self._values = self._values, None
        triggers, self._triggers = self._triggers, []
        self.total_steps = max(self.total_steps, step)
        if values is None:  # no before_optimizer for this step (e.g. a skipped step)
            rec.last_step = max(rec.last_step, step)
            return self.stop_reason is not None
        self._live.update(live_step_signals(values.loss, values.grad_norm, rec.grad.level))
        if rec.wants_step(step) or triggers or step == self.max_steps:
            rec.train_step(step, loss=values.loss, lr=self._lr, epoch=epoch, grad_norm=values.grad_norm,
                           grad_norm_clipped=values.grad_norm_clipped, **(extra or {}))
        else:
            rec.last_step = max(rec.last_step, step)
            if values.loss is not None:
                rec.last_loss = values.loss
        if triggers:
            self._respond(step, triggers)
            self._pending_update = None
        else:
            if values.loss is not None:
                self.final_loss = values.loss
            self._pending_update = step
        return self.stop_reason is not None

    def after_update(self) -> None:
        """The weights are now the result of the last healthy step: snapshot, κ̃ sample."""
        step, self._pending_update = self._pending_update, None
        if step is None:
            return
        if self.guard is not None and not self.guard.locked_out:
            snap = self.guard.maybe_snapshot(step)
            if snap is not None:
                self._snapshot_event(step, snap)
        if self.spectral is not None and self.spectral.due(step):
            self._spectral_step(step)

    # -- guard and spectral rules -------------------------------------------------------------
    def _guard_event(self, step: int, action: str, payload: dict[str, Any]) -> None:
        assert self.recorder is not None
        self.recorder.writer.metrics("guard", {"action": action, **payload}, step=step, action=action)

    def _global_bytes(self, *values: int) -> list[int]:
        """Byte figures summed over ranks when the parameters are sharded (every rank calls this
        at the same moments: snapshots happen in lockstep)."""
        if not self._sharded:
            return list(values)
        summed = all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self._device()))
        return [int(v) for v in summed.tolist()]

    def _device(self) -> torch.device:
        return local(self._params[0]).device if self._params else torch.device("cpu")

    def _global_counts(self, model: Any) -> dict[str, int]:
        """``n_params`` / ``n_trainable_params`` of the whole model (the sum of the ranks' shards)."""
        params = list(model.parameters())
        total = sum(local(p).numel() * replica_weight(p) for p in params)
        trainable = sum(local(p).numel() * replica_weight(p) for p in params if p.requires_grad)
        device = local(params[0]).device if params else torch.device("cpu")
        counts = all_reduce_sum(torch.tensor([total, trainable], dtype=torch.float64, device=device)).tolist()
        return {"n_params": round(counts[0]), "n_trainable_params": round(counts[1])}

    def _snapshot_event(self, step: int, snap: Any) -> None:
        snap_bytes, ring_bytes = self._global_bytes(snap.nbytes, self.guard.ring.nbytes)
        self._guard_event(step, "snapshot", {"snapshot_step": snap.step, "bytes": snap_bytes,
                                             "held": len(self.guard.ring), "ring_bytes": ring_bytes})

    def _force_snapshot(self, step: int) -> None:
        snap = self.guard.snapshot(step)
        if snap is not None:
            self._snapshot_event(step, snap)

    def _respond(self, step: int, triggers: list[str]) -> None:
        rec = self.recorder
        assert rec is not None and self.guard is not None
        d = self.guard.respond(step, triggers)
        self._live.update({**guard_marks(d.action, d.lr_scale), "gradience/guard/rollbacks": float(self.guard.rollbacks)})
        if d.action == "rollback":
            rec.writer.alert("error", "GUARD_ROLLBACK",
                             f"{', '.join(triggers)} at step {step}: restored the step-{d.restored_step} snapshot, "
                             f"LR scale now {d.lr_scale:g}", step=step, context=d.to_dict())
            self._guard_event(step, "rollback", d.to_dict())
            rec.dense_until = step + self.guard.config.cooldown
            if self.spectral is not None:
                self.spectral.reset()
        else:
            # The guard restored the newest good snapshot (if any) before training stops.
            rec.writer.alert("critical", "GUARD_LOCKOUT", d.reason or "guard lockout", step=step,
                             context=d.to_dict())
            self._guard_event(step, "lockout", d.to_dict())
            self.stop_reason = d.reason or "guard lockout"

    def _spectral_step(self, step: int) -> None:
        rec = self.recorder
        spec = self.config.spectral
        assert rec is not None and self.spectral is not None and spec is not None
        previous = self.spectral.last_level
        if self.parallelism == "fsdp1":
            # FSDP1 keeps flat shards outside forward: gather the full LoRA factors to measure κ̃
            # (FSDP2's DTensor factors are gathered by the κ̃ code itself).
            with full_parameters(self._root, "fsdp1"):
                payload = self.spectral.observe(step, self._model)
        else:
            payload = self.spectral.observe(step, self._model)
        if payload is None:
            return
        rec.writer.metrics("spectral", payload, step=step)
        self._live["gradience/spectral/kappa_tilde"] = float(payload["kappa_tilde"])
        level = payload["risk_level"]
        if level in ("DANGER", "INSTABILITY") and level != previous:
            # Information, not a warning: κ̃ levels fire in healthy early training and did not lead
            # a loss blow-up (docs/guard.md#why-the-levels-are-a-neutral-diagnostic); kappa_risk.ALARM_LEVELS is empty.
            rec.writer.alert("info", f"SPECTRAL_{level}",
                             f"κ̃ {payload['kappa_tilde']:.4g}: {neutral_word(level)} (level {level}; a diagnostic, "
                             "not an alarm)", step=step, context=payload)
        full = payload["window"] >= (self.spectral.obs.maxlen or 0)
        if self.guard is None or not spec.actions or not full or self.guard.locked_out:
            return
        if level == "WARNING":
            rec.dense_until = step + self.spectral.interval
            self._force_snapshot(step)
        elif level == "DANGER":
            self._force_snapshot(step)
            d = self.guard.backoff(step, "spectral_danger")
            self._live.update(guard_marks(d.action, d.lr_scale))
            self._guard_event(step, "backoff", d.to_dict())
        elif level == "INSTABILITY":
            self._respond(step, ["spectral_instability"])

    def tracker_signals(self) -> dict[str, float]:
        """Gradience's signals since the last call, for the framework's own log (so every tracker it
        reports to shows them): the recorded loss, gradient norm and its level, κ̃, and a mark at a
        guard action (``gradience/guard/action``, the LR scale) — keys in docs/trackers.md#live."""
        out, self._live = self._live, {}
        return out

    # -- evaluation, checkpoints ---------------------------------------------------------------
    def eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        """Record an evaluation (spine keys ``loss``, ``ppl``, ``accuracy``, ``n``; others kept)."""
        self._rec("eval").eval(step, split, dict(metrics))

    def save(self) -> None:
        """A checkpoint was written: flush the telemetry, so a resume finds every event up to it."""
        if self.recorder is not None and not self.recorder.ended:
            self.recorder.writer.flush()

    # -- end ------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return "aborted" if self.stop_reason else "ok"

    def end(self, step: int | None = None, *, status: str | None = None, reason: str | None = None,
            model: Any = None, training_args: dict[str, Any] | None = None,
            recommend: bool | None = None, stopped_by: str | None = None,
            adapter_step: int | None = None, adapter_checkpoint: str | None = None) -> None:
        """End the run (idempotent).

        Writes, on rank 0: the PEFT adapter to ``out_dir/peft`` (``save_adapter``; never
        non-finite weights), ``out_dir/training/training_args.json`` (when given), the
        gradient-norm summary, the guard summary, the adapter audit (``audit``), the run
        recommendations (``recommend``) and ``run_end`` with the guard/spectral summary.

        Args:
            step: the last optimizer step (default: the last one seen).
            status, reason: override the status (default ``ok``, or ``aborted`` after a lockout).
            model: the model whose adapter to save (default: the one given to :meth:`start`).
            training_args: the framework's arguments as a JSON-ready dict.
            recommend: override ``config.recommend`` for this call.
            stopped_by: what the framework says stopped training before its planned steps
                (``early_stopping``, ``callback``); see :meth:`stop_reason_for`.
            adapter_step, adapter_checkpoint: the step (and checkpoint directory) whose weights
                the model holds now, when not the last step's (``load_best_model_at_end``); the
                saved adapter and its audit are attributed to that step.
        """
        rec = self.recorder
        if rec is None or rec.ended:
            self._remove_exit_hooks()
            return
        self.after_update()
        step = self.total_steps if step is None else step
        if status is None:
            status, reason = self.status, self.stop_reason
        if self.guard is not None:
            self.guard_report = self.guard.summary()
            if self._sharded and "snapshot_bytes" in self.guard_report:  # every rank ends: a collective is safe
                self.guard_report["snapshot_bytes"] = self._global_bytes(int(self.guard_report["snapshot_bytes"]))[0]
        self.stopped = self.stop_reason_for(step, stopped_by)
        source = "final" if adapter_step is None else "best_checkpoint"
        restored = self.guard.lockout_restored_step if self.guard is not None else None
        if adapter_step is None and restored is not None:
            adapter_step, source = restored, "guard_snapshot"  # a lockout restored the newest good snapshot
        self.adapter = {"step": step if adapter_step is None else adapter_step, "checkpoint": adapter_checkpoint,
                        "source": source, "saved": False}
        try:
            # A sharded model is gathered on every rank (a collective) so rank 0 saves whole matrices.
            target = model if model is not None else self._model
            state = full_adapter_state(unwrap_model(target)) if self.parallelism == "fsdp2" and \
                self.config.save_adapter and is_peft_model(target) else None
            with full_parameters(self._root, self.parallelism):
                if rec.is_writer:
                    self._end_of_run_artifacts(step, target, training_args,
                                               self.config.recommend if recommend is None else recommend,
                                               adapter_state=state)
        finally:
            rec.finish(status, reason, step, summary=self.final_summary())
            self._remove_exit_hooks()

    def stop_reason_for(self, step: int, stopped_by: str | None = None) -> str:
        """Why training stopped (``run_end.summary.stop_reason``): ``guard`` (a lockout),
        ``max_steps`` (the planned steps ran), what the framework reported (``early_stopping``,
        ``callback``), else ``loop_ended`` (a plain loop finished without a planned length or
        before it)."""
        if self.stop_reason is not None:
            return "guard"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        return stopped_by or "loop_ended"

    def exception(self, exc: BaseException | type[BaseException] | None = None, message: str | None = None) -> None:
        """Training died: write ``run_end`` (``aborted`` for a KeyboardInterrupt, else ``error``)."""
        rec = self.recorder
        if rec is None or not rec.started or rec.ended:
            return
        exc_type = exc if isinstance(exc, type) else type(exc) if exc is not None else None
        status = "aborted" if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) else "error"
        if message is None:
            if exc_type is None:
                message = "process exited before training finished"
            elif isinstance(exc, BaseException):
                message = f"{exc_type.__name__}: {exc}"
            else:
                message = exc_type.__name__
        self.stopped = "interrupt" if status == "aborted" else "error"
        rec.finish(status, message, rec.last_step or None, summary=self.final_summary())
        self._remove_exit_hooks()

    def final_summary(self) -> dict[str, Any]:
        """The stop reason, the saved adapter's origin and the guard and spectral part of
        ``run_end.summary``."""
        out: dict[str, Any] = {}
        if self.stopped is not None:
            out["stop_reason"] = self.stopped
        if self.adapter is not None:
            out["adapter"] = dict(self.adapter)
        if self.guard is not None:
            g = self.guard
            out["guard"] = {"total_rollbacks": g.rollbacks, "integrity_status": g.integrity_status,
                            "final_lr_scale": g.lr_scale, "lockout": g.locked_out}
        if self.spectral is not None:
            out["spectral"] = {"final_kappa": self.spectral.last_kappa,
                               "final_risk_level": self.spectral.last_level}
        return out

    def _end_of_run_artifacts(self, step: int, model: Any, training_args: dict[str, Any] | None,
                              recommend: bool, adapter_state: dict[str, Any] | None = None) -> None:
        rec = self.recorder
        assert rec is not None
        cfg = self.config
        peft_dir = None
        if cfg.save_adapter and model is not None and is_peft_model(model):
            if self.guard is not None and not self.guard.weights_finite():
                # Only reachable when the guard never had a good snapshot to restore: never
                # write (or overwrite an earlier adapter with) non-finite weights.
                rec.writer.alert("critical", "ADAPTER_NOT_SAVED",
                                 "the trainable weights are not finite and the guard had no good snapshot to "
                                 "restore; the adapter was not saved", step=step)
            else:
                peft_dir = self.out_dir / "peft"
                unwrap_model(model).save_pretrained(str(peft_dir), state_dict=adapter_state)
                if self.adapter is not None:
                    self.adapter["saved"] = True
        if training_args is not None:
            # What the arguments asked for (e.g. "fsdp") can differ from what ran (accelerate falls back
            # to DDP on CPU): the layout read from the model is recorded beside them.
            rec.save_training_args(self.out_dir, {**training_args, "parallelism_in_effect": self.parallelism})
        rec.write_grad_summary(step)
        if self.guard is not None:
            self._guard_event(step, "summary", self.guard_report or self.guard.summary())
        if cfg.audit and peft_dir is not None:
            try:
                # The audit describes the saved weights: those of the best checkpoint when the
                # framework loaded it at the end, not the last step's.
                rec.append_audit(peft_dir, self.adapter["step"] if self.adapter else step)
            except GradienceError as exc:
                rec.writer.alert("warning", "AUDIT_FAILED", f"adapter audit failed: {exc.one_line()}", step=step)
        if recommend:
            rec.append_recommendations(step, gap_threshold=cfg.gap_threshold)

    # -- a crash never reaches end(): record it truthfully ----------------------------------------
    def _install_exit_hooks(self) -> None:
        prev = sys.excepthook

        def hook(exc_type: Any, exc: Any, tb: Any) -> None:
            if sys.excepthook is hook:
                sys.excepthook = prev
            self._prev_excepthook = None
            self.exception(exc_type, f"{exc_type.__name__}: {exc}")
            prev(exc_type, exc, tb)

        self._prev_excepthook = prev
        sys.excepthook = hook
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        self.exception(None)

    def _remove_exit_hooks(self) -> None:
        if self._prev_excepthook is not None:
            sys.excepthook = self._prev_excepthook
            self._prev_excepthook = None
        atexit.unregister(self._at_exit)
