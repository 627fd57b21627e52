"""Worker for the 2-process torchrun tests (CPU, gloo): a tiny BERT + LoRA trained with the
real Trainer and GradienceCallback. Usage: ddp_worker.py OUT_DIR [STEPS] [extra JSON options]."""

from __future__ import annotations

import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from gradience import GradienceCallback


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 60, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 32).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i]}


def main() -> None:
    out = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    fault = options.pop("fault", None)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = get_peft_model(BertForSequenceClassification(cfg),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
                             disable_tqdm=True, use_cpu=True, ddp_backend="gloo", seed=0)
    callbacks = [GradienceCallback(out, telemetry_interval=1, **options)]
    if fault is not None:
        from gradience.training.faults import FaultInjector

        rank = int(os.environ.get("RANK", "0"))
        if rank == fault.pop("rank", 1):
            callbacks.append(FaultInjector(**fault).callback())
    trainer = Trainer(model=model, args=args, train_dataset=Rows(64, 0), callbacks=callbacks)
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    report: dict = {"global_step": trainer.state.global_step, "guard": getattr(callbacks[0], "guard_report", None),
                    "log_history": trainer.state.log_history}
    import torch.distributed as dist

    if dist.is_initialized():
        # Trigger-flag reduction on its own: only rank 1 sees a non-finite loss.
        from gradience.training.guard import GuardConfig, TrainingGuard

        guard = TrainingGuard(GuardConfig(), {"p": torch.nn.Parameter(torch.ones(3))})
        report["check"] = guard.check(1, float("nan") if rank == 1 else 0.5, 1.0)
        report["check_healthy"] = guard.check(2, 0.5, 1.0)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh)
    # Leave without tearing torch down. Destroying a gloo group while its worker thread is
    # still releasing the last collective's tensors either aborts at interpreter exit
    # ("terminate called without an active exception", ~1 run in 15) or, with an explicit
    # destroy_process_group(), deadlocks on the GIL (the DDP reducer's destructor joins the
    # thread while holding it). Both are torch teardown, not what this test checks; every
    # file this worker writes is closed by now and both ranks finished the same collectives.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
