"""Worker for the sharded-training tests: a tiny BERT + LoRA trained by a plain loop with
``GradienceController`` under ``single`` (one process, the whole global batch), ``ddp``,
``fsdp1`` (``FullyShardedDataParallel``, ``use_orig_params``) or ``fsdp2`` (``fully_shard`` on a
CPU gloo mesh). Each rank trains on its half of the same global batch of 8 rows.

Usage: fsdp_worker.py OUT_DIR MODE [JSON options: steps, fault {kind, step, rank}, spectral]
Writes OUT_DIR/run.jsonl (rank 0) and OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from gradience import GradienceController

GLOBAL_BATCH = 8


def local_of(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    steps = int(options.get("steps", 4))
    torch.set_num_threads(1)
    rank, world = 0, 1
    if mode != "single":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2, attn_implementation="eager",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = get_peft_model(BertForSequenceClassification(cfg),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0,
                                      task_type="SEQ_CLS"))
    # LoRA B starts at zero; a seeded non-zero start makes every gradient and κ̃ non-trivial.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    n_params_full = sum(p.numel() for p in model.parameters())
    n_trainable_full = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
    elif mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.base_model.model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (steps, GLOBAL_BATCH, 12), generator=g)
    labels = (ids[:, :, 0] > 32).long()
    per_rank = GLOBAL_BATCH // world

    ctl = GradienceController(out, telemetry_interval=1, guard_enabled=bool(options.get("guard", True)),
                              guard_snapshot_interval=2, spectral_enabled=bool(options.get("spectral", True)),
                              spectral_interval=2, audit=False, recommend=False)
    ctl.initialize(model, optimizer=opt, max_steps=steps)
    fault = options.get("fault")
    injector = None
    if fault is not None and rank == fault.get("rank", 1):
        from gradience.training.faults import FaultInjector

        injector = FaultInjector(kind=fault["kind"], step=fault["step"])
        injector.attach(model)
    report: dict = {"rank": rank, "n_params_full": n_params_full, "n_trainable_full": n_trainable_full}
    if fault is not None:
        # A gradient fault cannot reach a sharded model's gradients: refused, never silently a no-op.
        from gradience.training.faults import FaultInjector

        try:
            FaultInjector(kind="nan_grad", step=1).attach(model)
            report["grad_fault"] = "attached"
        except ValueError as exc:
            report["grad_fault"] = str(exc)
    from gradience.training.config_snapshot import unwrap_model

    named = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    for step in range(1, steps + 1):
        if injector is not None:
            injector.begin_step(step)
        lo = rank * per_rank
        batch = {"input_ids": ids[step - 1, lo:lo + per_rank],
                 "attention_mask": torch.ones(per_rank, 12, dtype=torch.long),
                 "labels": labels[step - 1, lo:lo + per_rank]}
        loss = model(**batch).loss
        loss.backward()
        if mode == "fsdp1":
            pre = model.clip_grad_norm_(1.0)
        else:
            pre = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        keep_going = ctl.step(step, loss, model, grad_norm=pre)
        if fault is not None and step == fault["step"]:
            # The rollback restored a snapshot: every shard equal to it bit for bit, on every rank.
            restored = ctl.guard.decisions[-1].restored_step if ctl.guard.decisions else None
            snap = next((sn for sn in ctl.guard.ring._ring if sn.step == restored), None)
            report["restored_step"] = restored
            report["restored_bit_identical"] = snap is not None and all(
                torch.equal(local_of(p).detach(), snap.params[n]) for n, p in named)
        opt.step()
        opt.zero_grad()
        if not keep_going:
            break
    ctl.finalize()
    report["guard"] = ctl.guard.summary() if ctl.guard is not None else None
    report["local_numel"] = sum(local_of(p).numel() for p in model.parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see ddp_worker.py: leave without tearing gloo down


if __name__ == "__main__":
    main()
