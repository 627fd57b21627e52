"""``GradienceCallback``: one line in a ``transformers.Trainer`` and a complete flight record.

    trainer = Trainer(..., callbacks=[GradienceCallback(dataset_name="sst2")])

Writes ``<out_dir or args.output_dir>/run.jsonl`` (appending; rank 0 only): ``run_start``
with the ConfigSnapshot, ``train_step`` every ``telemetry_interval`` steps (loss, lr,
pre/post-clip gradient norm, epoch, throughput), ``eval`` per evaluation (held-out split
``test``; pass ``eval_dataset={"test": ..., "train": subset}`` for the train side of the
memorisation gap), and at the end the adapter (``peft/``), ``training/training_args.json``,
``metrics(kind="lora_audit")``, a ``recommendation`` event and a truthful ``run_end``.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path
from typing import Any

from ..errors import GradienceError, require
from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds
from .config_snapshot import build_config_snapshot, build_meta, is_causal_lm, unwrap_model
from .gradnorm import BackwardNormProbe, collect_grads, total_grad_norm
from .recorder import RunRecorder, spine_metrics, split_eval_metrics

require("transformers", "hf", "GradienceCallback")
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

__all__ = ["GradienceCallback"]


def _is_peft(model: Any) -> bool:
    inner = unwrap_model(model)
    return isinstance(getattr(inner, "peft_config", None), dict) and hasattr(inner, "save_pretrained")


def _current_lr(optimizer: Any) -> float | list[float] | None:
    inner = getattr(optimizer, "optimizer", optimizer)
    groups = getattr(inner, "param_groups", None)
    if not groups:
        return None
    lrs = [float(g["lr"]) for g in groups]
    return lrs[0] if len(set(lrs)) == 1 else lrs


class GradienceCallback(TrainerCallback):
    """Telemetry (and, with ``guard_enabled``, training integrity) for ``transformers.Trainer``.

    Args:
        out_dir: where ``run.jsonl``, ``peft/`` and ``training/`` go; default ``args.output_dir``.
        filename: telemetry file name inside ``out_dir``.
        guard_enabled, guard_snapshot_interval, guard_violation_threshold, guard_max_rollbacks,
            guard_lr_backoff: the training guard (see ``docs/guard.md``).
        spectral_enabled, spectral_interval: κ̃ sampling every N steps.
        telemetry_interval: a ``train_step`` event every N optimizer steps (and step 1).
        model_name, dataset_name, task_profile, notes: recorded in the ConfigSnapshot; the
            profile is inferred from ``dataset_name`` when not given.
        test_split: split name written for the held-out evaluation.
        grad_thresholds: gradient-norm levels (vanishing / warning / critical).
        save_adapter: save the PEFT adapter to ``out_dir/peft`` at the end.
        audit: append ``metrics(kind="lora_audit")`` for the saved adapter.
        recommend: append a ``recommendation`` event from the run rules.
        gap_threshold: memorisation-gap threshold passed to the run rules.
        run_id: reuse a run id (a resumed run keeps its id by default).
        guard_config: a full :class:`~gradience.training.guard.GuardConfig` (overrides the
            ``guard_*`` arguments).
        spectral_actions: opt in, with the guard on, to act on κ̃ risk levels (WARNING:
            snapshot + dense telemetry; DANGER: snapshot + LR backoff; INSTABILITY: rollback or
            halt), once a full window of observations exists. Off by default: in our
            measurement (docs/guard.md) κ̃ risk did not lead a loss blow-up and fired during
            healthy early training, so it is recorded as a diagnostic only.
    """

    def __init__(
        self,
        out_dir: str | Path | None = None,
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
        model_name: str | None = None,
        dataset_name: str | None = None,
        task_profile: str | None = None,
        notes: str | None = None,
        test_split: str = "test",
        grad_thresholds: GradThresholds = DEFAULT_THRESHOLDS,
        save_adapter: bool = True,
        audit: bool = True,
        recommend: bool = True,
        gap_threshold: float = 1.5,
        run_id: str | None = None,
        guard_config: Any = None,
        spectral_actions: bool = False,
    ) -> None:
        if telemetry_interval < 1:
            raise ValueError("telemetry_interval must be >= 1")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.filename = filename
        self.guard_enabled = guard_enabled
        if guard_enabled:
            from .guard import GuardConfig

            self.guard_config = guard_config or GuardConfig(
                snapshot_interval=guard_snapshot_interval, violation_threshold=guard_violation_threshold,
                max_rollbacks=guard_max_rollbacks, lr_backoff=guard_lr_backoff)
        else:
            self.guard_config = None
        self.spectral_actions = spectral_actions
        self.spectral_enabled = spectral_enabled
        self.spectral_interval = spectral_interval
        self.telemetry_interval = telemetry_interval
        self.model_name = model_name
        self.dataset_name = dataset_name
        self.task_profile = task_profile
        self.notes = notes
        self.test_split = test_split
        self.grad_thresholds = grad_thresholds
        self.save_adapter = save_adapter
        self.audit = audit
        self.recommend = recommend
        self.gap_threshold = gap_threshold
        self.run_id = run_id

        self.recorder: RunRecorder | None = None
        self.run_dir: Path | None = None
        self._probe: BackwardNormProbe | None = None
        self._hook: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._params: list[torch.Tensor] = []
        self._pending: dict[str, Any] = {}
        self._causal_lm = False
        self._prev_excepthook: Any = None
        self.stop_reason: str | None = None
        self.guard: Any = None
        self.spectral: Any = None
        self.guard_report: dict[str, Any] | None = None
        self._triggers: list[str] = []
        self._model: Any = None

    # -- helpers ---------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / self.filename

    def _on_forward(self, module: Any, _inputs: Any, output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) and output[0].ndim == 0:
            loss = output[0]
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            detached = loss.detach().reshape(()).to(torch.float64)
            self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
            self._loss_n += 1

    def _install_excepthook(self) -> None:
        # A crash inside trainer.train() never reaches on_train_end; record it truthfully.
        prev = sys.excepthook

        def hook(exc_type: Any, exc: Any, tb: Any) -> None:
            if sys.excepthook is hook:
                sys.excepthook = prev
            self._prev_excepthook = None
            if self.recorder is not None and self.recorder.started and not self.recorder.ended:
                status = "aborted" if issubclass(exc_type, KeyboardInterrupt) else "error"
                self.recorder.finish(status, f"{exc_type.__name__}: {exc}", self.recorder.last_step or None)
            prev(exc_type, exc, tb)

        self._prev_excepthook = prev
        sys.excepthook = hook
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if self.recorder is not None and self.recorder.started and not self.recorder.ended:
            self.recorder.finish("error", "process exited before training finished", self.recorder.last_step or None)

    def _cleanup(self) -> None:
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._prev_excepthook is not None:
            sys.excepthook = self._prev_excepthook
            self._prev_excepthook = None
        atexit.unregister(self._at_exit)

    # -- Trainer events ----------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.run_dir = Path(self.out_dir if self.out_dir is not None else args.output_dir)
        is_writer = bool(state.is_world_process_zero)
        resumed = int(state.global_step) if state.global_step else None
        run_id = self.run_id
        path = self.run_dir / self.filename
        if resumed and run_id is None and is_writer and path.exists():
            from ..telemetry.reader import TelemetryReader

            run_id = TelemetryReader(path).last_run_id()
        self.recorder = RunRecorder(path, is_writer=is_writer, telemetry_interval=self.telemetry_interval,
                                    grad_thresholds=self.grad_thresholds, run_id=run_id)
        world = int(getattr(args, "world_size", 1) or 1)
        self.recorder.samples_per_step = (int(args.per_device_train_batch_size)
                                          * int(args.gradient_accumulation_steps) * world)
        config = build_config_snapshot(args, model, optimizer, max_steps=int(state.max_steps) or None,
                                       model_name=self.model_name, dataset_name=self.dataset_name,
                                       task_profile=self.task_profile, notes=self.notes, world_size=world)
        meta = build_meta(framework="transformers.Trainer", world_size=world, resumed_from_step=resumed,
                          model=model, telemetry_interval=self.telemetry_interval,
                          guard_enabled=self.guard_enabled)
        self.recorder.start(config, meta, step=resumed)
        self._causal_lm = self.recorder.causal_lm = is_causal_lm(model)
        self._params = [p for p in unwrap_model(model).parameters() if p.requires_grad]
        self._hook = unwrap_model(model).register_forward_hook(self._on_forward)
        if float(getattr(args, "max_grad_norm", 0) or 0) > 0:
            scaler = getattr(optimizer, "scaler", None)
            scale_fn = scaler.get_scale if scaler is not None and getattr(scaler, "is_enabled", lambda: False)() \
                else None
            self._probe = BackwardNormProbe(self._params, scale_fn=scale_fn)
        self._model = unwrap_model(model)
        if self.guard_enabled:
            from .guard import TrainingGuard

            named = {n: p for n, p in self._model.named_parameters() if p.requires_grad}
            scaler = getattr(optimizer, "scaler", None)
            self.guard = TrainingGuard(self.guard_config, named, optimizer, kwargs.get("lr_scheduler"), scaler)
            # The starting state (step 0, or the checkpoint resumed from) is always the first snapshot.
            self._guard_snapshot(resumed or 0, force=True)
        if self.spectral_enabled:
            from .spectral import SpectralMonitor

            self.spectral = SpectralMonitor(self.spectral_interval)
        self._install_excepthook()

    # -- guard plumbing -----------------------------------------------------------------
    def _guard_event(self, step: int, action: str, metrics: dict[str, Any]) -> None:
        assert self.recorder is not None
        self.recorder.writer.metrics("guard", {"action": action, **metrics}, step=step, action=action)

    def _guard_snapshot(self, step: int, force: bool = False) -> None:
        snap = self.guard.snapshot(step) if force else self.guard.maybe_snapshot(step)
        if snap is not None:
            self._guard_event(step, "snapshot", {"snapshot_step": snap.step, "bytes": snap.nbytes,
                                                 "held": len(self.guard.ring), "ring_bytes": self.guard.ring.nbytes})

    def _guard_respond(self, step: int, triggers: list[str], control: Any) -> None:
        rec = self.recorder
        assert rec is not None
        d = self.guard.respond(step, triggers)
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
            self.stop_reason = d.reason
            control.should_training_stop = True

    def _spectral_step(self, step: int, control: Any) -> None:
        rec = self.recorder
        assert rec is not None and self.spectral is not None
        previous = self.spectral.last_level
        payload = self.spectral.observe(step, self._model)
        if payload is None:
            return
        rec.writer.metrics("spectral", payload, step=step)
        level = payload["risk_level"]
        if level in ("DANGER", "INSTABILITY") and level != previous:
            rec.writer.alert("warning", f"SPECTRAL_{level}", f"κ̃ risk {level} (κ̃ {payload['kappa_tilde']:.4g})",
                             step=step, context=payload)
        full = payload["window"] >= (self.spectral.obs.maxlen or 0)
        if self.guard is None or not self.spectral_actions or not full or self.guard.locked_out:
            return
        if level == "WARNING":
            rec.dense_until = step + self.spectral.interval
            self._guard_snapshot(step, force=True)
        elif level == "DANGER":
            self._guard_snapshot(step, force=True)
            d = self.guard.backoff(step, "spectral_danger")
            self._guard_event(step, "backoff", d.to_dict())
        elif level == "INSTABILITY":
            self._guard_respond(step, ["spectral_instability"], control)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._loss_sum = None
        self._loss_n = 0

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        if self.recorder is None:
            return
        post = total_grad_norm(collect_grads(self._params))
        pre_t = self._probe.take() if self._probe is not None else None
        loss_t = self._loss_sum / self._loss_n if self._loss_sum is not None and self._loss_n else None
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=post.device)
        packed = torch.stack([
            post,
            pre_t.to(post.device) if pre_t is not None else nan,
            loss_t.to(post.device) if loss_t is not None else nan,
        ]).tolist()  # the one host sync of this step
        post_v = packed[0]
        pre_v = packed[1] if pre_t is not None else post_v
        loss_v = packed[2] if loss_t is not None else None
        self._pending = {"grad_norm": pre_v, "grad_norm_clipped": post_v, "loss": loss_v,
                         "lr": _current_lr(optimizer)}
        step = int(state.global_step) + 1
        self.recorder.record_grad(step, pre_v, post_v)
        if self.guard is not None and not self.guard.locked_out:
            self._triggers = self.guard.check(step, loss_v, pre_v)
            if self._triggers:
                # Checked before optimizer.step(): without gradients the step leaves the weights alone.
                self.guard.drop_grads()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is None:
            return
        step = int(state.global_step)
        pending, self._pending = self._pending, {}
        triggers, self._triggers = self._triggers, []
        # The last step is always recorded so the final loss is in the file.
        if (self.recorder.wants_step(step) or triggers or step == int(state.max_steps)) and pending:
            self.recorder.train_step(step, loss=pending["loss"], lr=pending["lr"], epoch=state.epoch,
                                     grad_norm=pending["grad_norm"], grad_norm_clipped=pending["grad_norm_clipped"])
        else:
            self.recorder.last_step = step
            if pending.get("loss") is not None:
                self.recorder.last_loss = pending["loss"]
        if self.guard is not None and not self.guard.locked_out:
            if triggers:
                self._guard_respond(step, triggers, control)
            else:
                self._guard_snapshot(step)
        if self.spectral is not None and self.spectral.due(step) and not triggers:
            self._spectral_step(step, control)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if self.recorder is None or not metrics:
            return
        split, raw = split_eval_metrics(metrics, self.test_split)
        self.recorder.eval(int(state.global_step), split, spine_metrics(raw, causal_lm=self._causal_lm))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or rec.ended:
            self._cleanup()
            return
        step = int(state.global_step)
        status = "aborted" if self.stop_reason else "ok"
        if self.guard is not None:
            self.guard_report = self.guard.summary()
        try:
            if rec.is_writer and self.run_dir is not None:
                self._end_of_run_artifacts(args, model, step)
        finally:
            rec.finish(status, self.stop_reason, step, summary=self._final_summary())
            self._cleanup()

    def _final_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.guard is not None:
            g = self.guard
            out["guard"] = {"total_rollbacks": g.rollbacks, "integrity_status": g.integrity_status,
                            "final_lr_scale": g.lr_scale, "lockout": g.locked_out}
        if self.spectral is not None:
            out["spectral"] = {"final_kappa": self.spectral.last_kappa,
                               "final_risk_level": self.spectral.last_level}
        return out

    def _end_of_run_artifacts(self, args: Any, model: Any, step: int) -> None:
        rec = self.recorder
        assert rec is not None and self.run_dir is not None
        peft_dir = None
        if self.save_adapter and model is not None and _is_peft(model):
            if self.guard is not None and not self.guard.weights_finite():
                # Only reachable when the guard never had a good snapshot to restore: never
                # write (or overwrite an earlier adapter with) non-finite weights.
                rec.writer.alert("critical", "ADAPTER_NOT_SAVED",
                                 "the trainable weights are not finite and the guard had no good snapshot to "
                                 "restore; the adapter was not saved", step=step)
            else:
                peft_dir = self.run_dir / "peft"
                unwrap_model(model).save_pretrained(str(peft_dir))
        rec.save_training_args(self.run_dir, args.to_dict() if hasattr(args, "to_dict") else vars(args))
        rec.write_grad_summary(step)
        if self.guard is not None:
            self._guard_event(step, "summary", self.guard.summary())
        if self.audit and peft_dir is not None:
            try:
                rec.append_audit(peft_dir, step)
            except GradienceError as exc:
                rec.writer.alert("warning", "AUDIT_FAILED", f"adapter audit failed: {exc.one_line()}", step=step)
        if self.recommend:
            rec.append_recommendations(step, gap_threshold=self.gap_threshold)
