"""``GradienceController``: the same flight record (and guard) for a plain PyTorch loop.

    ctl = GradienceController("runs/mine", dataset_name="sst2")
    ctl.initialize(model, optimizer=opt, scheduler=sched)   # scheduler/scaler: optional
    for step in range(1, n + 1):
        loss = model(**batch).loss
        loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # optional
        if not ctl.step(step, loss, model, grad_norm=pre):   # before optimizer.step()
            break                                            # guard gave up: stop
        opt.step(); opt.zero_grad(); sched.step()
    summary = ctl.finalize()

Call :meth:`step` after ``backward`` (and clipping) and *before* ``optimizer.step()``: that is
where a guard can keep a poisoned update from reaching the weights. Components are the
ones the HF callback uses (``recorder``, ``gradnorm``, ``config_snapshot``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GradienceError, require
from ..telemetry.encoding import sanitize
from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds
from ..telemetry.schema import ConfigSnapshot
from .config_snapshot import build_config_snapshot, build_meta, is_causal_lm, unwrap_model
from .gradnorm import collect_grads, total_grad_norm
from .recorder import RunRecorder

require("torch", "hf", "GradienceController")
import torch  # noqa: E402

__all__ = ["GradienceController"]


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    from ..telemetry.writer import global_rank

    return global_rank(), 1


class GradienceController:
    """Telemetry and guard for a hand-written training loop (SPEC §5).

    Args:
        out_dir: directory for ``run.jsonl`` and ``summary.json``.
        filename: telemetry file name.
        guard_*: the training guard (see ``docs/guard.md``).
        spectral_enabled, spectral_interval: κ̃ sampling every N steps.
        telemetry_interval: a ``train_step`` event every N steps (and step 1).
        config: a ConfigSnapshot (or dict) to record instead of the one inferred from the
            model and optimizer; model_name/dataset_name/task_profile fill it otherwise.
        grad_thresholds: gradient-norm level boundaries.
        run_id: reuse to resume a run.
    """

    def __init__(
        self,
        out_dir: str | Path,
        filename: str = "run.jsonl",
        *,
        guard_enabled: bool = False,
        guard_snapshot_interval: int = 100,
        guard_violation_threshold: float = 1e6,
        guard_max_rollbacks: int = 3,
        guard_lr_backoff: float = 0.5,
        spectral_enabled: bool = True,
        spectral_interval: int = 50,
        telemetry_interval: int = 10,
        config: ConfigSnapshot | dict[str, Any] | None = None,
        model_name: str | None = None,
        dataset_name: str | None = None,
        task_profile: str | None = None,
        grad_thresholds: GradThresholds = DEFAULT_THRESHOLDS,
        run_id: str | None = None,
        guard_config: Any = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.filename = filename
        self.guard_enabled = guard_enabled
        self.spectral_enabled = spectral_enabled
        self.spectral_interval = spectral_interval
        self.telemetry_interval = telemetry_interval
        self.config = ConfigSnapshot.from_dict(config) if config is not None else None
        self.model_name = model_name
        self.dataset_name = dataset_name
        self.task_profile = task_profile
        self.grad_thresholds = grad_thresholds
        self.run_id = run_id
        self.recorder: RunRecorder | None = None
        self.model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.save_fn: Callable[[], Any] | None = None
        self.load_fn: Callable[[Any], None] | None = None
        self.get_lr: Callable[[], Any] | None = None
        self.set_lr: Callable[[float], None] | None = None
        self.total_steps = 0
        self.final_loss: float | None = None
        self.status = "ok"
        self.reason: str | None = None
        self._params: list[torch.Tensor] = []
        self._summary: dict[str, Any] | None = None
        self.guard: Any = None
        self.spectral: Any = None
        self._initial_snapshot: Any = None
        self._stepped = False
        if guard_enabled:
            from .guard import GuardConfig

            self.guard_config = guard_config or GuardConfig(
                snapshot_interval=guard_snapshot_interval, violation_threshold=guard_violation_threshold,
                max_rollbacks=guard_max_rollbacks, lr_backoff=guard_lr_backoff)

    @property
    def path(self) -> Path:
        return self.out_dir / self.filename

    def initialize(self, model: Any, save_fn: Callable[[], Any] | None = None,
                   load_fn: Callable[[Any], None] | None = None, get_lr: Callable[[], Any] | None = None,
                   set_lr: Callable[[float], None] | None = None, *, optimizer: Any = None,
                   scheduler: Any = None, scaler: Any = None, max_steps: int | None = None,
                   meta: dict[str, Any] | None = None) -> None:
        """Start the run: write ``run_start``.

        Args:
            model: the model being trained (PEFT or not; DDP wrappers are unwrapped).
            save_fn / load_fn: optional custom state capture and restore for the guard
                (``save_fn() -> state``; ``load_fn(state)``); default: trainable
                parameters plus ``optimizer`` state.
            get_lr / set_lr: read and set the learning rate; default: the optimizer's
                first param group.
            optimizer: the optimizer (recorded in the ConfigSnapshot; used by the guard).
            scheduler: your LR scheduler, if any (as the Trainer's ``lr_scheduler`` is for the
                callback): snapshotted, and an LR backoff scales its ``base_lrs`` too, so the
                backoff survives ``scheduler.step()`` (LambdaLR & co.). Without it a schedule
                that recomputes the LR from its base LRs undoes the backoff at its next step.
            scaler: your AMP ``GradScaler``, if any: its state is snapshotted and restored on
                rollback. Call ``scaler.unscale_(optimizer)`` before :meth:`step` (as before
                clipping) so the guard sees true gradient norms.
            max_steps: planned number of steps (recorded).
            meta: extra ``run_start.meta`` entries.
        """
        if self.recorder is not None:
            raise GradienceError("GradienceController.initialize() was already called for this run")
        rank, world = _world()
        self.model, self.optimizer = model, optimizer
        self.scheduler, self.scaler = scheduler, scaler
        self.save_fn, self.load_fn, self.get_lr, self.set_lr = save_fn, load_fn, get_lr, set_lr
        self.recorder = RunRecorder(self.path, is_writer=rank == 0, telemetry_interval=self.telemetry_interval,
                                    grad_thresholds=self.grad_thresholds, run_id=self.run_id)
        config = self.config or build_config_snapshot(None, model, optimizer, max_steps=max_steps,
                                                      model_name=self.model_name, dataset_name=self.dataset_name,
                                                      task_profile=self.task_profile, world_size=world)
        if max_steps is not None and config.training.max_steps is None:
            config.training.max_steps = max_steps
        self.recorder.start(config, build_meta(framework="pytorch", world_size=world, model=model,
                                               telemetry_interval=self.telemetry_interval,
                                               guard_enabled=self.guard_enabled, **(meta or {})))
        self.recorder.causal_lm = is_causal_lm(model)
        inner = unwrap_model(model)
        self._params = [p for p in inner.parameters() if p.requires_grad]
        if self.guard_enabled:
            from .guard import TrainingGuard

            named = {n: p for n, p in inner.named_parameters() if p.requires_grad}
            self.guard = TrainingGuard(self.guard_config, named, optimizer, scheduler, scaler, save_fn=save_fn,
                                       load_fn=load_fn, get_lr=get_lr, set_lr=set_lr)
            # The state handed over here is the first good snapshot (taken now, before anything can
            # touch the weights; labelled with the step before the first step() call).
            self._initial_snapshot = self.guard.snapshot(0)
        if self.spectral_enabled:
            from .spectral import SpectralMonitor

            self.spectral = SpectralMonitor(self.spectral_interval)

    def _guard_event(self, step: int, action: str, metrics: dict[str, Any]) -> None:
        assert self.recorder is not None
        self.recorder.writer.metrics("guard", {"action": action, **metrics}, step=step, action=action)

    def _lr(self) -> Any:
        if self.get_lr is not None:
            return self.get_lr()
        groups = getattr(self.optimizer, "param_groups", None)
        if groups:
            lrs = [float(g["lr"]) for g in groups]
            return lrs[0] if len(set(lrs)) == 1 else lrs
        return None

    def step(self, step: int, loss: Any, model: Any = None, *, grad_norm: Any = None) -> bool:
        """Record one optimizer step; returns ``False`` when training should stop.

        Args:
            step: the 1-based optimizer step about to be applied.
            loss: the step's loss (tensor or float).
            model: the model (default: the one given to :meth:`initialize`).
            grad_norm: the pre-clip total norm if you clipped (``clip_grad_norm_``'s return);
                otherwise the norm of the current gradients is measured here.
        """
        rec = self.recorder
        if rec is None:
            raise GradienceError("call GradienceController.initialize(model, ...) before step()")
        params = self._params if model is None or model is self.model else \
            [p for p in unwrap_model(model).parameters() if p.requires_grad]
        post = total_grad_norm(collect_grads(params))
        values = [post]
        for extra in (grad_norm, loss):
            if isinstance(extra, torch.Tensor):
                values.append(extra.detach().reshape(()).to(device=post.device, dtype=torch.float64))
            else:
                values.append(torch.tensor(math.nan if extra is None else float(extra), dtype=torch.float64,
                                           device=post.device))
        post_v, pre_v, loss_v = torch.stack(values).tolist()  # one host sync
        if grad_norm is None:
            pre_v = post_v
        loss_f = None if loss is None else loss_v
        guard = self.guard
        if guard is not None and not guard.locked_out:
            if not self._stepped:
                snap, self._initial_snapshot = self._initial_snapshot, None
                if snap is not None:
                    snap.step = step - 1
            else:
                # The state now is the result of step - 1: snapshot it while it is known good.
                snap = guard.maybe_snapshot(step - 1)
            if snap is not None:
                self._guard_event(step - 1, "snapshot", {"snapshot_step": snap.step, "bytes": snap.nbytes,
                                                         "held": len(guard.ring)})
        self._stepped = True
        rec.record_grad(step, pre_v, post_v)
        triggers = guard.check(step, loss_f, pre_v) if guard is not None and not guard.locked_out else []
        if rec.wants_step(step) or triggers:
            rec.train_step(step, loss=loss_f, lr=self._lr(), grad_norm=pre_v, grad_norm_clipped=post_v)
        else:
            rec.last_step = max(rec.last_step, step)
            rec.last_loss = loss_f
        self.total_steps = max(self.total_steps, step)
        if loss_f is not None and not triggers:
            self.final_loss = loss_f
        if triggers:
            assert guard is not None
            guard.drop_grads()  # the caller's optimizer.step() now leaves the weights alone
            d = guard.respond(step, triggers)
            if d.action == "rollback":
                rec.writer.alert("error", "GUARD_ROLLBACK",
                                 f"{', '.join(triggers)} at step {step}: restored the step-{d.restored_step} "
                                 f"snapshot, LR scale now {d.lr_scale:g}", step=step, context=d.to_dict())
                self._guard_event(step, "rollback", d.to_dict())
                if self.spectral is not None:
                    self.spectral.reset()
            else:
                # The guard restored the newest good snapshot (if any) before asking to stop.
                rec.writer.alert("critical", "GUARD_LOCKOUT", d.reason or "guard lockout", step=step,
                                 context=d.to_dict())
                self._guard_event(step, "lockout", d.to_dict())
                self.status, self.reason = "aborted", d.reason
                return False
        elif self.spectral is not None and self.spectral.due(step - 1):
            payload = self.spectral.observe(step - 1, unwrap_model(model if model is not None else self.model))
            if payload is not None:
                rec.writer.metrics("spectral", payload, step=step - 1)
        return True

    def log_eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        """Record an evaluation (``split``: ``train`` / ``test`` / ``val``; spine keys loss, ppl, accuracy, n)."""
        if self.recorder is None:
            raise GradienceError("call GradienceController.initialize(model, ...) before log_eval()")
        self.recorder.eval(step, split, dict(metrics))

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.recorder.run_id if self.recorder else None,
            "status": self.status,
            "reason": self.reason,
            "total_steps": self.total_steps,
            "final_loss": self.final_loss,
            "grad_norm": self.recorder.grad.summary() if self.recorder else None,
            "guard": {"enabled": self.guard_enabled,
                      "total_rollbacks": self.guard.rollbacks if self.guard else 0,
                      "integrity_status": self.guard.integrity_status if self.guard else "OK",
                      "final_lr_scale": self.guard.lr_scale if self.guard else 1.0},
            "spectral": {"enabled": self.spectral_enabled,
                         "final_kappa": self.spectral.last_kappa if self.spectral else None,
                         "final_risk_level": self.spectral.last_level if self.spectral else None},
        }

    def finalize(self, status: str | None = None, reason: str | None = None,
                 recommend: bool = True) -> dict[str, Any]:
        """End the run: grad-norm summary, recommendations, ``run_end``; writes ``summary.json``.

        Returns the summary dict (also written to ``out_dir/summary.json`` on rank 0).
        Calling it twice returns the same summary.
        """
        if self._summary is not None:
            return self._summary
        rec = self.recorder
        if rec is None:
            raise GradienceError("call GradienceController.initialize(model, ...) before finalize()")
        if status is not None:
            self.status, self.reason = status, reason
        rec.write_grad_summary(self.total_steps)
        if self.guard is not None:
            self._guard_event(self.total_steps, "summary", self.guard.summary())
        if recommend:
            rec.append_recommendations(self.total_steps)
        summary = self.summary()
        rec.finish(self.status, self.reason, self.total_steps, summary={"guard": summary["guard"],
                                                                        "spectral": summary["spectral"]})
        if rec.is_writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean = sanitize(summary, max_str_len=None)  # NaN/Inf as strings: strict JSON
            (self.out_dir / "summary.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
        self._summary = summary
        return summary
