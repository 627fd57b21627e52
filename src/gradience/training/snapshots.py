"""Bounded CPU-memory ring of training-state snapshots for the guard.

A snapshot holds what a rollback must restore: the trainable parameters (by name), the
optimizer state, the LR scheduler state and the AMP grad scaler state, all copied to
host memory (non-blocking device→host copies where the device allows; one synchronize
per snapshot). Frozen base weights are never copied — for LoRA a snapshot is small.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from .sharding import local

__all__ = ["Snapshot", "SnapshotRing", "clone_to_host", "nbytes"]


def clone_to_host(obj: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor copied to CPU memory."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type == "cpu":
            return t.clone()
        return t.to("cpu", non_blocking=True)
    if isinstance(obj, dict):
        return {k: clone_to_host(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_to_host(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_to_host(v) for v in obj)
    return obj


def nbytes(obj: Any) -> int:
    """Bytes held by this rank for the tensors inside ``obj`` (a DTensor: its local shard)."""
    if isinstance(obj, torch.Tensor):
        t = local(obj)
        return t.numel() * t.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


@dataclass
class Snapshot:
    """Training state after optimizer step ``step`` (0 = before training)."""

    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    custom: Any = None  # what a user-supplied save_fn returned
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return nbytes(self.params) + nbytes(self.optimizer) + nbytes(self.scaler)


class SnapshotRing:
    """The newest ``capacity`` snapshots (default 5); the oldest is dropped first."""

    def __init__(self, capacity: int = 5) -> None:
        if capacity < 1:
            raise ValueError("snapshot capacity must be >= 1")
        self.capacity = capacity
        self._ring: deque[Snapshot] = deque(maxlen=capacity)
        self.taken = 0

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._ring)

    def take(self, step: int, params: dict[str, torch.Tensor], optimizer: Any = None, scheduler: Any = None,
             scaler: Any = None, custom: Any = None) -> Snapshot:
        snap = Snapshot(
            step=step,
            params={n: clone_to_host(local(p)) for n, p in params.items()},
            optimizer=clone_to_host(optimizer.state_dict()) if optimizer is not None else None,
            scheduler=clone_to_host(scheduler.state_dict()) if scheduler is not None else None,
            scaler=clone_to_host(scaler.state_dict()) if scaler is not None else None,
            custom=custom,
        )
        if any(p.device.type == "cuda" for p in params.values()):
            torch.cuda.synchronize()  # the non-blocking copies must land before the ring owns them
        self._ring.append(snap)
        self.taken += 1
        return snap

    def newest(self, before_step: int | None = None) -> Snapshot | None:
        """The newest snapshot with ``step < before_step`` (any when ``None``)."""
        for snap in reversed(self._ring):
            if before_step is None or snap.step < before_step:
                return snap
        return None

    def steps(self) -> list[int]:
        return [s.step for s in self._ring]

    @staticmethod
    def restore(snap: Snapshot, params: dict[str, torch.Tensor], optimizer: Any = None, scaler: Any = None) -> None:
        """Copy the snapshot back into live parameters and optimizer/scaler state.

        The optimizer receives a fresh copy (``load_state_dict`` may alias CPU tensors,
        and later in-place updates must never modify the ring).
        """
        with torch.no_grad():
            for name, p in params.items():
                # A sharded parameter gets its own shard back (the local tensor shares its storage).
                local(p).copy_(snap.params[name].to(local(p).device, non_blocking=True))
        if optimizer is not None and snap.optimizer is not None:
            optimizer.load_state_dict(clone_to_host(snap.optimizer))
        if scaler is not None and snap.scaler is not None:
            scaler.load_state_dict(clone_to_host(snap.scaler))
