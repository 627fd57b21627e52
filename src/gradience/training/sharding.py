"""Parameters split across processes: what a rank holds, and the global figures behind it.

Under DDP every rank holds every parameter (replicated): a rank's norm, count or byte figure
is the global one. Under FSDP1 (``FullyShardedDataParallel``, ``use_orig_params``) a rank holds
a flat slice of each parameter (possibly empty); under FSDP2 (``fully_shard``) each parameter is
a ``DTensor`` whose local tensor is the rank's shard. There, a global figure is the sum of the
ranks' local ones. These helpers give the local view (``local``) and say which layout is in
effect (``parallelism``); the sums are all-reduced by the caller, which every rank reaches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import require

require("torch", "hf", "gradience.training.sharding")
import torch  # noqa: E402

__all__ = ["all_reduce_sum", "full", "full_adapter_state", "full_parameters", "is_dtensor", "local", "parallelism", "replica_weight"]


def is_dtensor(t: Any) -> bool:
    """A ``torch.distributed.tensor.DTensor`` (FSDP2's sharded parameters and their gradients)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch without distributed support
        return False
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: a DTensor's local shard (sharing its storage), else ``t``."""
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t``: a DTensor gathered from every rank (a collective), else ``t``."""
    return t.full_tensor() if is_dtensor(t) else t  # type: ignore[attr-defined]


def replica_weight(t: torch.Tensor) -> float:
    """1 / the number of ranks holding the same local values of ``t`` (DTensor placements:
    ``Replicate`` mesh dimensions hold copies); 1 for a plain tensor."""
    if not is_dtensor(t):
        return 1.0
    from torch.distributed.tensor import Replicate

    copies = 1
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if isinstance(placement, Replicate):
            copies *= t.device_mesh.size(dim)  # type: ignore[attr-defined]
    return 1.0 / copies


def _fsdp1_sharded(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    except ImportError:  # pragma: no cover
        return False
    for m in model.modules() if hasattr(model, "modules") else ():
        if isinstance(m, FullyShardedDataParallel):
            return m.sharding_strategy != ShardingStrategy.NO_SHARD
    return False


def parallelism(model: Any, world_size: int) -> str:
    """The data parallelism in effect for ``model``: ``fsdp2`` (DTensor parameters), ``fsdp1``
    (a sharding ``FullyShardedDataParallel``), ``ddp`` (several processes, replicated
    parameters) or ``single``. Read from the model, not from the arguments that asked for it."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    if any(is_dtensor(p) for p in params):
        return "fsdp2"
    if world_size > 1 and _fsdp1_sharded(model):
        return "fsdp1"
    return "ddp" if world_size > 1 else "single"


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the default process group (a copy; every rank must call it)."""
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@contextmanager
def full_parameters(model: Any, kind: str) -> Iterator[None]:
    """Inside, an FSDP1 ``model``'s parameters are whole on every rank (``summon_full_params``),
    so κ̃ and ``save_pretrained`` see real matrices. A collective: every rank enters. No-op
    for other layouts (FSDP2: see :func:`full_adapter_state`)."""
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True):
            yield
    else:
        yield


def full_adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable part of an FSDP2 model's state dict, gathered whole (a collective: every
    rank calls it): what ``save_pretrained(state_dict=...)`` needs. FSDP2's ``state_dict()``
    always returns shards, so the gather is explicit; frozen base weights are never gathered."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: full(v).detach() for k, v in model.state_dict().items()
            if k in keep or "lora_" in k or "modules_to_save" in k}
