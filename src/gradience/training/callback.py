"""``GradienceCallback``: one line in a ``transformers.Trainer`` and a complete flight record.

    trainer = Trainer(..., callbacks=[GradienceCallback(dataset_name="sst2")])

A translation layer: the Trainer's events become the moments of a
:class:`~gradience.training.supervisor.RunSupervisor`, which holds every rule. What only the
Trainer knows is read here: the loss of each micro-batch as the Trainer accumulates it for its
own log (what ``Trainer.training_step`` returns: already divided by the accumulation steps or
normalised by the step's token count, label smoothing and custom ``compute_loss`` included), the
pre-clip gradient norm (the Trainer clips before any callback runs, so it is measured inside backward), the
epoch, the rank, ``TrainingArguments``, and where to ask training to stop.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import require
from .config import GradienceConfig, resolve_config
from .config_snapshot import build_config_snapshot, build_meta, unwrap_model
from .gradnorm import BackwardNormProbe
from .label_stats import dataset_labels, majority_rate
from .recorder import RunRecorder, spine_metrics, split_eval_metrics
from .supervisor import RunSupervisor, optimizer_lr

require("transformers", "hf", "GradienceCallback")
import torch  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402

__all__ = ["GradienceCallback"]

# TRL's training-side metrics recorded on train_step under their own names.
TRL_STEP_METRICS = ("mean_token_accuracy", "entropy", "num_tokens")


def _unscaled_micro_batches(trainer: Any, args: Any) -> int:
    """How many micro-batch losses the Trainer may add up unscaled into one logged loss.

    Under gradient accumulation the Trainer divides each micro-batch loss by the accumulation steps,
    unless it trusts the model (a forward taking ``**kwargs``) or ``compute_loss_func`` to have
    divided by ``num_items_in_batch`` (transformers' ``loss_is_scaled_for_ga``). Models whose loss
    ignores that argument (sequence-classification heads, in transformers 5.24) then log the *sum*
    of the micro-batch means: up to this many times the per-example loss.
    """
    ga = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    if trainer is None or ga <= 1:
        return 1
    trusted = getattr(trainer, "loss_is_scaled_for_ga", None)
    if trusted is None:
        trusted = bool(getattr(trainer, "model_accepts_loss_kwargs", False)) \
            or getattr(trainer, "compute_loss_func", None) is not None
    return ga if trusted else 1


def find_trainer(trainer_type: type = Trainer, depth: int = 16) -> Any:
    """The ``Trainer`` whose event is being handled, found on the call stack (a callback is handed
    the model, optimizer and scheduler but never the Trainer); ``None`` when there is none."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, trainer_type):
            return owner
        frame = frame.f_back
    return None


class GradienceCallback(TrainerCallback):
    """Telemetry (and, with a guard, training integrity) for ``transformers.Trainer``.

    Writes ``<out_dir or args.output_dir>/run.jsonl`` (appending; rank 0 only): ``run_start``
    with the ConfigSnapshot, ``train_step`` every ``telemetry_interval`` steps, ``eval`` per
    evaluation (held-out split ``test``; pass ``eval_dataset={"test": ..., "train": subset}``
    for the train side of the memorisation gap), and at the end the adapter (``peft/``),
    ``training/training_args.json``, ``metrics(kind="lora_audit")``, a ``recommendation``
    event and a truthful ``run_end``.

    Args:
        out_dir: where ``run.jsonl``, ``peft/`` and ``training/`` go; default ``args.output_dir``.
        config: a :class:`~gradience.GradienceConfig` with every setting.
        **settings: shorthand for the config: any ``GradienceConfig`` field (``dataset_name``,
            ``telemetry_interval``, ``audit``, ...) or ``guard_enabled``,
            ``guard_snapshot_interval``, ``guard_violation_threshold``, ``guard_max_rollbacks``,
            ``guard_lr_backoff``, ``guard_config`` (a ``GuardConfig``), ``spectral_enabled``,
            ``spectral_interval``, ``spectral_actions``.

    Raises:
        ValueError: a keyword conflicts with ``config`` (even one given at its default value),
            or a setting is invalid. TypeError: an unknown keyword.
    """

    def __init__(self, out_dir: str | Path | None = None, *, config: GradienceConfig | None = None,
                 **settings: Any) -> None:
        if out_dir is not None:
            settings["out_dir"] = out_dir
        self.config = resolve_config(config, settings, "GradienceCallback")
        self.supervisor: RunSupervisor | None = None
        self._majority: dict[int, float | None] = {}  # eval dataset id -> majority-class rate
        self.run_dir: Path | None = None
        self._probe: BackwardNormProbe | None = None
        self._hook: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._trainer: Any = None  # the Trainer whose training_step is tapped
        self._wrapped_step: Any = None
        self._shadowed: Any = None  # an instance-level training_step the tap replaced
        self._wrapped_log: Any = None
        self._shadowed_log: Any = None
        self._trl_start: dict[str, int] = {}  # lengths of TRL's metric lists when the step began

    # -- what the supervisor owns, for callers and tests --------------------------------------
    @property
    def path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / self.config.filename

    @property
    def recorder(self) -> RunRecorder | None:
        return self.supervisor.recorder if self.supervisor else None

    @property
    def guard(self) -> Any:
        return self.supervisor.guard if self.supervisor else None

    @property
    def spectral(self) -> Any:
        return self.supervisor.spectral if self.supervisor else None

    @property
    def guard_report(self) -> dict[str, Any] | None:
        return self.supervisor.guard_report if self.supervisor else None

    @property
    def stop_reason(self) -> str | None:
        return self.supervisor.stop_reason if self.supervisor else None

    # -- the loss of each training micro-batch ----------------------------------------------
    def _add_loss(self, loss: Any) -> None:
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            detached = loss.detach().reshape(()).to(torch.float64)
            self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
            self._loss_n += 1

    def _tap_training_step(self, trainer: Any) -> None:
        """Read each micro-batch's loss where the Trainer has it: the value ``training_step``
        returns is what the Trainer adds up for its logged ``loss`` (per micro-batch: the
        model's or ``compute_loss``'s loss, divided by the accumulation steps unless already
        normalised by ``num_items_in_batch``), so the step's sum is the logged loss."""
        original = trainer.training_step
        self._shadowed = trainer.__dict__.get("training_step")

        def training_step(*args: Any, **kwargs: Any) -> Any:
            loss = original(*args, **kwargs)
            self._add_loss(loss)
            return loss

        trainer.training_step = training_step
        self._trainer, self._wrapped_step = trainer, training_step
        # The Trainer calls reporting callbacks (TensorBoard, W&B, MLflow, trackio) before user
        # callbacks, so an on_log here would come too late: the signals join the logs dict in
        # Trainer.log itself, before any callback sees it.
        original_log = trainer.log
        self._shadowed_log = trainer.__dict__.get("log")

        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
            if self.supervisor is not None and isinstance(logs, dict) and not any(k.startswith("eval_") for k in logs):
                logs.update(self.supervisor.tracker_signals())
            return original_log(logs, *args, **kwargs)

        trainer.log = log
        self._wrapped_log = log

    def _on_forward(self, module: Any, _inputs: Any, output: Any) -> None:
        """Fallback outside a ``Trainer`` (no training_step to tap): the model's own loss."""
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) and output[0].ndim == 0:
            loss = output[0]
        self._add_loss(loss)

    def _cleanup(self) -> None:
        trainer, self._trainer = self._trainer, None
        if trainer is not None and trainer.__dict__.get("training_step") is self._wrapped_step:
            if self._shadowed is not None:
                trainer.training_step = self._shadowed
            else:
                del trainer.training_step
        if trainer is not None and trainer.__dict__.get("log") is self._wrapped_log:
            if self._shadowed_log is not None:
                trainer.log = self._shadowed_log
            else:
                del trainer.log
        self._wrapped_step = None
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- Trainer events -> supervisor moments ----------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        cfg = self.config
        self.run_dir = Path(cfg.out_dir if cfg.out_dir is not None else args.output_dir)
        resumed = int(state.global_step) if state.global_step else None
        world = int(getattr(args, "world_size", 1) or 1)
        run_config = build_config_snapshot(args, model, optimizer, max_steps=int(state.max_steps) or None,
                                           model_name=cfg.model_name, dataset_name=cfg.dataset_name,
                                           task_profile=cfg.task_profile, notes=cfg.notes, world_size=world)
        meta = build_meta(framework="transformers.Trainer", world_size=world, resumed_from_step=resumed,
                          model=model, telemetry_interval=cfg.telemetry_interval, guard_enabled=cfg.guard_enabled)
        scaler = getattr(optimizer, "scaler", None)
        trainer = find_trainer()
        sup = self.supervisor = RunSupervisor(cfg, self.run_dir)
        sup.start(model, run_config, meta, is_writer=bool(state.is_world_process_zero), optimizer=optimizer,
                  scheduler=kwargs.get("lr_scheduler"), scaler=scaler, resumed_from_step=resumed,
                  max_steps=int(state.max_steps) or None,
                  samples_per_step=int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
                  * world, loss_sum_of=_unscaled_micro_batches(trainer, args))
        if trainer is not None:
            self._tap_training_step(trainer)
        else:
            self._hook = unwrap_model(model).register_forward_hook(self._on_forward)
        if float(getattr(args, "max_grad_norm", 0) or 0) > 0 and sup.parallelism not in ("fsdp1", "fsdp2"):
            # (A sharded model's gradients are written by FSDP outside autograd: the probe's hooks
            # would not fire, or would see one rank's shard. There the recorded pre-clip norm is
            # the global norm measured after clipping.)
            # The Trainer clips before on_pre_optimizer_step: the pre-clip norm is taken in backward.
            scale_fn = scaler.get_scale if scaler is not None and getattr(scaler, "is_enabled", lambda: False)() \
                else None
            self._probe = BackwardNormProbe(sup.params, scale_fn=scale_fn)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._loss_sum = None
        self._loss_n = 0
        self._trl_start = {k: len(v) for k, v in self._trl_metrics().items()}

    def _trl_metrics(self) -> dict[str, list[Any]]:
        """TRL trainers collect their per-micro-batch training metrics in ``_metrics["train"]``
        (averaged and cleared when they log); empty for other trainers."""
        metrics = getattr(self._trainer, "_metrics", None)
        train = metrics.get("train") if isinstance(metrics, dict) else None
        return {k: v for k, v in train.items() if k in TRL_STEP_METRICS and isinstance(v, list)} \
            if isinstance(train, dict) else {}

    def _trl_step_metrics(self) -> dict[str, float]:
        """This step's TRL metrics as TRL would log them with ``logging_steps=1``: the mean of the
        step's micro-batch values; ``num_tokens`` is TRL's running total (cumulative)."""
        out: dict[str, float] = {}
        for key, values in self._trl_metrics().items():
            new = values[self._trl_start.get(key, 0):] if key != "num_tokens" else values[-1:]
            nums = [float(v) for v in new if isinstance(v, (int, float))]
            if nums:
                out[key] = nums[-1] if key == "num_tokens" else sum(nums) / len(nums)
        return out

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        sup = self.supervisor
        if sup is None:
            return
        pre = self._probe.take() if self._probe is not None else None
        loss = self._loss_sum
        if loss is not None and self._trainer is None:
            loss = loss / self._loss_n  # the model's own losses: their mean
        sup.before_optimizer(int(state.global_step) + 1, sup.measure(pre, loss), lr=optimizer_lr(optimizer))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sup = self.supervisor
        if sup is None:
            return
        sup.after_optimizer(int(state.global_step), epoch=state.epoch, extra=self._trl_step_metrics())
        sup.after_update()
        if sup.stop_reason is not None:  # a guard lockout
            control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        sup = self.supervisor
        if sup is None or sup.recorder is None or not metrics:
            return
        split, raw = split_eval_metrics(metrics, self.config.test_split)
        spine = spine_metrics(raw, causal_lm=sup.recorder.causal_lm)
        if "majority_rate" not in spine and not sup.recorder.causal_lm:
            rate = self._majority_rate(kwargs.get("eval_dataloader"))
            if rate is not None:
                spine["majority_rate"] = rate  # the chance level of this eval set (docs/telemetry.md#eval)
        sup.eval(int(state.global_step), split, spine)

    def _majority_rate(self, dataloader: Any) -> float | None:
        """The majority-class rate of the evaluated set's labels (cached per dataset); None when its
        labels cannot be read cheaply or are not class ids."""
        dataset = getattr(dataloader, "dataset", None)
        if dataset is None:
            return None
        key = id(dataset)
        if key not in self._majority:
            try:
                labels = dataset_labels(dataset)
                self._majority[key] = majority_rate(labels) if labels is not None else None
            except Exception:  # telemetry never breaks training
                self._majority[key] = None
        return self._majority[key]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.supervisor is not None:
            self.supervisor.save()

    def _stopped_by(self, state: Any) -> str | None:
        """What ended training before ``max_steps``: an ``EarlyStoppingCallback`` whose patience
        ran out, else another callback (``control.should_training_stop``)."""
        if not state.max_steps or state.global_step >= state.max_steps:
            return None
        handler = getattr(self._trainer, "callback_handler", None)
        for cb in getattr(handler, "callbacks", []):
            patience = getattr(cb, "early_stopping_patience", None)
            if patience is not None and getattr(cb, "early_stopping_patience_counter", 0) >= patience:
                return "early_stopping"
        return "callback"

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        try:
            if self.supervisor is not None:
                best = getattr(state, "best_model_checkpoint", None) if getattr(args, "load_best_model_at_end",
                                                                                False) else None
                best_step = getattr(state, "best_global_step", None) if best else None
                if best and best_step is None:
                    tail = Path(best).name.rpartition("-")[2]
                    best_step = int(tail) if tail.isdigit() else None
                self.supervisor.end(int(state.global_step), model=model,
                                    training_args=args.to_dict() if hasattr(args, "to_dict") else vars(args),
                                    stopped_by=self._stopped_by(state), adapter_step=best_step,
                                    adapter_checkpoint=str(best) if best else None)
        finally:
            self._cleanup()
