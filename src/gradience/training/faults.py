"""Fault injection for testing the guard (tests, benchmarks, ``gradience demo --inject-*``).

Kinds:

* ``nan_param`` / ``inf_param`` — write NaN/Inf into one element of a named trainable
  parameter at the start of the step (the forward pass then produces a NaN/Inf loss);
* ``nan_grad`` / ``inf_grad`` — the parameter's gradient becomes NaN/Inf during backward;
* ``nan_loss`` / ``inf_loss`` — the model's loss output becomes NaN/Inf;
* ``loss_spike`` — the loss is multiplied by ``factor`` (gradients scale with it);
* ``grad_explosion`` — every trainable gradient (or the named parameter's) is multiplied by ``factor``.

``persistent=True`` repeats the fault at every step from ``step`` on. Steps are 1-based
optimizer steps (the step being computed). Use :meth:`FaultInjector.callback` with the HF
Trainer, or :meth:`attach` + :meth:`begin_step` in a plain loop.

Inside a monitored run, hand the injector the monitor (``callback(monitor=cb)`` with the
:class:`~gradience.GradienceCallback`, or ``FaultInjector(..., monitor=ctl)`` with a
:class:`~gradience.GradienceController`, a ``RunSupervisor``, a ``RunRecorder`` or a
``TelemetryWriter``): every firing is then recorded as
``metrics(kind="fault_injection", metrics={"kind", "target", "factor", "persistent"})`` at its
step, so ``monitor`` attributes what follows to the injection (docs/telemetry.md#metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .sharding import is_dtensor, local

__all__ = ["FAULT_CASES", "FAULT_KINDS", "FaultInjector"]

FAULT_KINDS = ("nan_param", "inf_param", "nan_grad", "inf_grad", "nan_loss", "inf_loss", "loss_spike",
               "grad_explosion")

# The fault matrix (tests and benchmarks/guard_fault_matrix.py): case → (injected kind, factor, the
# exact triggers the guard must name) when the weight check runs every step. A ×100 loss spike
# stays below the explosion threshold (as in `gradience demo --inject-spike`); ×1e8 is a violation.
FAULT_CASES: dict[str, tuple[str, float, frozenset[str]]] = {
    "nan_param": ("nan_param", 1e6, frozenset({"nonfinite_loss", "nonfinite_grad", "nonfinite_weights"})),
    "inf_param": ("inf_param", 1e6, frozenset({"nonfinite_loss", "nonfinite_grad", "nonfinite_weights"})),
    "nan_grad": ("nan_grad", 1e6, frozenset({"nonfinite_grad"})),
    "inf_grad": ("inf_grad", 1e6, frozenset({"nonfinite_grad"})),
    "nan_loss": ("nan_loss", 1e6, frozenset({"nonfinite_loss"})),
    "inf_loss": ("inf_loss", 1e6, frozenset({"nonfinite_loss"})),
    "loss_spike": ("loss_spike", 100.0, frozenset({"loss_spike"})),
    "loss_violation": ("loss_spike", 1e8, frozenset({"loss_violation", "grad_explosion"})),
    "grad_explosion": ("grad_explosion", 1e6, frozenset({"grad_explosion"})),
}


@dataclass
class FaultInjector:
    """Inject one fault kind at ``step`` (and after, when ``persistent``).

    Args:
        kind: one of :data:`FAULT_KINDS`.
        step: the 1-based optimizer step to corrupt.
        param: substring of the parameter name to corrupt (default: the first trainable
            LoRA ``lora_B`` weight, else the first trainable parameter).
        factor: multiplier for ``loss_spike`` and ``grad_explosion``.
        persistent: repeat at every step from ``step`` on.
    """

    kind: str
    step: int
    param: str | None = None
    factor: float = 1e4
    persistent: bool = False
    injected_steps: list[int] = field(default_factory=list)
    target_name: str | None = None
    notify: Any = None  # called as notify(step, injector) when a fault fires (demo output)
    monitor: Any = None  # records each firing: a GradienceCallback/-Controller, RunSupervisor, RunRecorder or writer

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose from {', '.join(FAULT_KINDS)}")
        if self.step < 1:
            raise ValueError("fault step must be >= 1")
        self._active = False
        self._model: Any = None
        self._target: torch.Tensor | None = None
        self._handles: list[Any] = []

    @property
    def value(self) -> float:
        return float("inf") if self.kind.startswith("inf") else float("nan")

    def fires_at(self, step: int) -> bool:
        return step == self.step or (self.persistent and step > self.step)

    def attach(self, model: Any) -> None:
        """Pick the target parameter and install the loss/grad hooks (inactive until a fault step)."""
        self._model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters to corrupt")
        sharded = any(is_dtensor(p) for _, p in named) or any(
            type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
        if sharded and self.kind in ("nan_grad", "inf_grad", "grad_explosion"):
            # FSDP reduces gradients outside autograd into the shards: a tensor hook never fires.
            raise ValueError(f"{self.kind} cannot be injected into a sharded (FSDP) model: its gradients bypass "
                             "tensor hooks; use nan_param / inf_param or a loss fault")
        if self.kind in ("nan_param", "inf_param"):
            # A rank may hold an empty shard of a parameter (FSDP1): corrupt one it holds part of.
            named = [(n, p) for n, p in named if local(p).numel() > 0]
            if not named:
                raise ValueError("this rank holds no part of any trainable parameter to corrupt")
        if self.param:
            match = [(n, p) for n, p in named if self.param in n]
            if not match:
                raise ValueError(f"no trainable parameter name contains {self.param!r}")
        else:
            # lora_B: at init lora_A receives zero gradient (B = 0), so a scaled gradient would be zero.
            match = [(n, p) for n, p in named if "lora_B" in n] or named
        self.target_name, self._target = match[0]
        if self.kind == "grad_explosion" and not self.param:
            # An explosion scales the whole gradient, not one (possibly tiny) tensor.
            self.target_name = "all trainable parameters"
            self._handles.extend(p.register_hook(self._on_grad) for _, p in named)
        elif self.kind in ("nan_grad", "inf_grad", "grad_explosion"):
            self._handles.append(self._target.register_hook(self._on_grad))
        if self.kind in ("nan_loss", "inf_loss", "loss_spike"):
            # prepend: the corrupted loss is what every later hook (the recorder's) sees.
            self._handles.append(model.register_forward_hook(self._on_forward, prepend=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def begin_step(self, step: int) -> bool:
        """Arm the fault for ``step``; corrupts the parameter now for ``*_param``. True if it fires."""
        self._active = self.fires_at(step)
        if not self._active:
            return False
        self.injected_steps.append(step)
        if self.kind in ("nan_param", "inf_param") and self._target is not None:
            with torch.no_grad():
                local(self._target).view(-1)[0] = self.value  # this rank's shard (FSDP2: a DTensor's)
        self._record(step)
        if self.notify is not None:
            self.notify(step, self)
        return True

    def record(self) -> dict[str, Any]:
        """The ``metrics(kind="fault_injection")`` payload of one firing."""
        scaled = self.kind in ("loss_spike", "grad_explosion")
        return {"kind": self.kind, "target": "loss" if self.kind.endswith("_loss") or self.kind == "loss_spike"
                else self.target_name, "factor": self.factor if scaled else None, "persistent": self.persistent}

    def _record(self, step: int) -> None:
        """Write the firing through the monitor's telemetry writer (nothing without one, or before
        the monitored run has started)."""
        writer = self.monitor
        for attr in ("supervisor", "recorder", "writer"):
            if writer is not None and not callable(getattr(writer, "metrics", None)) and hasattr(writer, attr):
                writer = getattr(writer, attr)
        metrics = getattr(writer, "metrics", None)
        if callable(metrics):
            metrics("fault_injection", self.record(), step=step)

    def _on_grad(self, grad: torch.Tensor) -> torch.Tensor | None:
        if not self._active or not self._model.training:
            return None
        if self.kind == "grad_explosion":
            return grad * self.factor
        return torch.full_like(grad, self.value)

    def _on_forward(self, module: Any, _inputs: Any, output: Any) -> Any:
        if not self._active or not module.training:
            return None
        loss = getattr(output, "loss", None)
        if not isinstance(loss, torch.Tensor):
            return None
        output.loss = loss * self.factor if self.kind == "loss_spike" else loss + self.value
        return output

    def callback(self, monitor: Any = None) -> Any:
        """A ``transformers.TrainerCallback`` that drives this injector.

        ``monitor``: the run's :class:`~gradience.GradienceCallback` (list it before this
        callback), through which each firing is recorded; sets :attr:`monitor`.
        """
        from transformers import TrainerCallback

        if monitor is not None:
            self.monitor = monitor
        injector = self

        class _FaultCallback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                injector.attach(model)

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                injector.begin_step(int(state.global_step) + 1)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                injector.detach()

        return _FaultCallback()
