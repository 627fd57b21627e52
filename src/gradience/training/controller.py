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
where a guard can keep a poisoned update from reaching the weights. A translation layer like
the HF callback: every rule lives in :class:`~gradience.training.supervisor.RunSupervisor`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import GradienceError, require
from ..telemetry.encoding import sanitize
from ..telemetry.schema import ConfigSnapshot
from .config import GradienceConfig, resolve_config
from .config_snapshot import build_config_snapshot, build_meta, unwrap_model
from .supervisor import RunSupervisor, optimizer_lr

require("torch", "hf", "GradienceController")

__all__ = ["GradienceController"]


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    from ..telemetry.writer import global_rank

    return global_rank(), 1


class GradienceController:
    """Telemetry and guard for a hand-written training loop (``docs/training.md``).

    Usable as a context manager: an exception inside ``with`` ends the run with
    ``run_end(status="error")`` (``"aborted"`` for Ctrl-C); leaving it normally finalizes.

    Args:
        out_dir: directory for ``run.jsonl``, ``peft/`` and ``summary.json`` (or ``config.out_dir``).
        config: a :class:`~gradience.GradienceConfig` with every setting.
        run_config: a ConfigSnapshot (or its dict) to record instead of the one inferred from
            the model and optimizer.
        **settings: shorthand for the config, as for :class:`~gradience.GradienceCallback`
            (``dataset_name``, ``telemetry_interval``, ``guard_enabled``, ``guard_config``,
            ``spectral_interval``, ...).

    Raises:
        ValueError: a keyword conflicts with ``config``, a setting is invalid, or there is no
            output directory. TypeError: an unknown keyword.
    """

    def __init__(self, out_dir: str | Path | None = None, *, config: GradienceConfig | None = None,
                 run_config: ConfigSnapshot | dict[str, Any] | None = None, **settings: Any) -> None:
        if isinstance(config, (ConfigSnapshot, dict)):
            raise ValueError("GradienceController: config= takes a GradienceConfig; pass the ConfigSnapshot to "
                             "record as run_config=")
        if out_dir is not None:
            settings["out_dir"] = out_dir
        self.config = resolve_config(config, settings, "GradienceController")
        if self.config.out_dir is None:
            raise ValueError("GradienceController: give an output directory (out_dir, or config.out_dir)")
        self.out_dir = Path(self.config.out_dir)
        self.run_config = ConfigSnapshot.from_dict(run_config) if run_config is not None else None
        self.supervisor = RunSupervisor(self.config, self.out_dir)
        self.model: Any = None
        self.optimizer: Any = None
        self.get_lr: Any = None
        self._summary: dict[str, Any] | None = None
        self._status: str | None = None
        self._reason: str | None = None

    # -- what the supervisor owns, for callers and tests ----------------------------------------
    @property
    def path(self) -> Path:
        return self.supervisor.path

    @property
    def recorder(self) -> Any:
        return self.supervisor.recorder

    @property
    def guard(self) -> Any:
        return self.supervisor.guard

    @property
    def spectral(self) -> Any:
        return self.supervisor.spectral

    @property
    def status(self) -> str:
        return self._status or self.supervisor.status

    @property
    def reason(self) -> str | None:
        return self._reason if self._status else self.supervisor.stop_reason

    def initialize(self, model: Any, save_fn: Any = None, load_fn: Any = None, get_lr: Any = None,
                   set_lr: Any = None, *, optimizer: Any = None, scheduler: Any = None, scaler: Any = None,
                   max_steps: int | None = None, resumed_from_step: int | None = None,
                   meta: dict[str, Any] | None = None) -> None:
        """Start the run: write ``run_start``.

        Args:
            model: the model being trained (PEFT or not; DDP/FSDP wrappers are unwrapped).
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
                rollback, and non-finite gradients with a finite loss are left to it (the AMP
                rule, ``docs/guard.md``). Call ``scaler.unscale_(optimizer)`` before
                :meth:`step` (as before clipping) so the guard sees true gradient norms.
            max_steps: planned number of steps (recorded; the last step is always recorded).
            resumed_from_step: resuming from a checkpoint at this step: ``run_start`` says so
                and, without ``run_id``, the run continues the file's last run id.
            meta: extra ``run_start.meta`` entries.

        Raises:
            GradienceError: called twice.
        """
        if self.supervisor.recorder is not None:
            raise GradienceError("GradienceController.initialize() was already called for this run")
        cfg = self.config
        rank, world = _world()
        self.model, self.optimizer, self.get_lr = model, optimizer, get_lr
        run_config = self.run_config or build_config_snapshot(
            None, model, optimizer, max_steps=max_steps, model_name=cfg.model_name, dataset_name=cfg.dataset_name,
            task_profile=cfg.task_profile, notes=cfg.notes, world_size=world)
        if max_steps is not None and run_config.training.max_steps is None:
            run_config.training.max_steps = max_steps
        meta_all = build_meta(framework="pytorch", world_size=world, resumed_from_step=resumed_from_step,
                              model=model, telemetry_interval=cfg.telemetry_interval,
                              guard_enabled=cfg.guard_enabled, **(meta or {}))
        self.supervisor.start(model, run_config, meta_all, is_writer=rank == 0, optimizer=optimizer,
                              scheduler=scheduler, scaler=scaler, resumed_from_step=resumed_from_step,
                              max_steps=max_steps, save_fn=save_fn, load_fn=load_fn, get_lr=get_lr,
                              set_lr=set_lr)

    def _started(self, what: str) -> RunSupervisor:
        if self.supervisor.recorder is None:
            raise GradienceError(f"call GradienceController.initialize(model, ...) before {what}()")
        return self.supervisor

    def step(self, step: int, loss: Any, model: Any = None, *, grad_norm: Any = None,
             epoch: float | None = None) -> bool:
        """Record one optimizer step; returns ``False`` when training should stop.

        Args:
            step: the 1-based optimizer step about to be applied.
            loss: the step's loss (tensor or float).
            model: unused unless it differs from the one given to :meth:`initialize` (then
                an error: one controller watches one model).
            grad_norm: the pre-clip total norm if you clipped (``clip_grad_norm_``'s return);
                otherwise the norm of the current gradients is measured here.
            epoch: the fractional epoch, recorded in ``train_step``.
        """
        sup = self._started("step")
        if model is not None and unwrap_model(model) is not unwrap_model(self.model):
            raise GradienceError("GradienceController.step() got another model than initialize(); one controller "
                                 "watches one model")
        # The previous step's optimizer.step() has run: the weights are its result.
        sup.after_update()
        lr = self.get_lr() if self.get_lr is not None else optimizer_lr(self.optimizer)
        sup.before_optimizer(step, sup.measure(grad_norm, loss), lr=lr)
        # On a trigger the gradients are gone (the caller's optimizer.step() is a no-op), so the
        # guard answers now, before the next forward pass.
        return not sup.after_optimizer(step, epoch=epoch)

    def log_eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        """Record an evaluation, after ``optimizer.step()`` (``split``: ``train`` / ``test`` / ``val``;
        spine keys loss, ppl, accuracy, n)."""
        sup = self._started("log_eval")
        sup.after_update()
        sup.eval(step, split, metrics)

    def save(self) -> None:
        """Tell Gradience a checkpoint was written: the telemetry is flushed to match it."""
        self._started("save").save()

    def summary(self) -> dict[str, Any]:
        sup = self.supervisor
        rec = sup.recorder
        return {
            "run_id": rec.run_id if rec else None,
            "status": self.status,
            "reason": self.reason,
            "total_steps": sup.total_steps,
            "final_loss": sup.final_loss,
            "grad_norm": rec.grad.summary() if rec else None,
            "guard": {"enabled": self.config.guard_enabled,
                      "total_rollbacks": sup.guard.rollbacks if sup.guard else 0,
                      "integrity_status": sup.guard.integrity_status if sup.guard else "OK",
                      "final_lr_scale": sup.guard.lr_scale if sup.guard else 1.0},
            "spectral": {"enabled": self.config.spectral_enabled,
                         "final_kappa": sup.spectral.last_kappa if sup.spectral else None,
                         "final_risk_level": sup.spectral.last_level if sup.spectral else None},
        }

    def finalize(self, status: str | None = None, reason: str | None = None,
                 recommend: bool | None = None) -> dict[str, Any]:
        """End the run: adapter (a PEFT model), summaries, audit, recommendations, ``run_end``.

        Returns the summary dict (also written to ``out_dir/summary.json`` on rank 0).
        Calling it twice returns the same summary.
        """
        if self._summary is not None:
            return self._summary
        sup = self._started("finalize")
        if status is not None:
            self._status, self._reason = status, reason
        sup.end(status=status, reason=reason, recommend=recommend)
        summary = self.summary()
        rec = sup.recorder
        if rec is not None and rec.is_writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean = sanitize(summary, max_str_len=None)  # NaN/Inf as strings: strict JSON
            (self.out_dir / "summary.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
        self._summary = summary
        return summary

    def __enter__(self) -> GradienceController:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.supervisor.exception(exc)
        elif self.supervisor.recorder is not None:
            self.finalize()
