"""Tiny real models for training tests: a 2-layer BERT (hidden 32) built from a config and a
word-level tokenizer written here, trained with the real ``Trainer`` + PEFT LoRA."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from intra-op threads, and on a shared machine OpenMP spin-waits
# across busy cores make each tiny step hundreds of times slower.
torch.set_num_threads(1)

from gradience.training import demo_data  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from transformers import BertTokenizerFast

    # vocab= (a dict), not vocab_file=: transformers 5 ignores a vocab_file given to the fast
    # tokenizer's constructor and falls back to a 5-token vocabulary (every word [UNK]).
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(demo_data.vocabulary())}, do_lower_case=True)
    assert len(tok) == len(demo_data.vocabulary()) and tok.unk_token_id not in tok("brilliant film")["input_ids"]
    return tok


def tiny_model(tokenizer: Any, *, seed: int = 0, rank: int = 4, lora: bool = True) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(cfg)
    if not lora:
        return model
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"],
                                            lora_dropout=0.0, task_type="SEQ_CLS"))


class Rows:
    def __init__(self, examples: list[Any], tokenizer: Any) -> None:
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=32)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(examples)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def accuracy(eval_pred: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def make_trainer(tmp_path: Path, tokenizer: Any, callbacks: list[Any], *, steps: int = 6, seed: int = 0,
                 lr: float = 5e-3, eval_steps: int | None = 3, max_grad_norm: float = 1.0, model: Any = None,
                 **arg_overrides: Any) -> Any:
    """A real Trainer on the tiny BERT with generated sentiment data (train + test + train subset)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    train, test = demo_data.generate_sentiment(n_train=128, n_test=32, seed=seed)
    args = TrainingArguments(**{
        "output_dir": str(tmp_path / "out"), "max_steps": steps, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 32, "learning_rate": lr, "max_grad_norm": max_grad_norm,
        "eval_strategy": "steps" if eval_steps else "no", "eval_steps": eval_steps, "logging_strategy": "no",
        "save_strategy": "no", "report_to": [], "disable_tqdm": True, "seed": seed, "use_cpu": True,
        **arg_overrides,
    })
    model = model if model is not None else tiny_model(tokenizer, seed=seed)
    return Trainer(model=model, args=args, train_dataset=Rows(train, tokenizer),
                   eval_dataset={"test": Rows(test, tokenizer), "train": Rows(train[:32], tokenizer)},
                   data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                   callbacks=callbacks)


def read_events(path: Path) -> list[dict[str, Any]]:
    from gradience.telemetry.reader import TelemetryReader

    reader = TelemetryReader(path)
    events = list(reader.iter_events())
    assert reader.issues == [], reader.issues
    return events
