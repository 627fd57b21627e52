"""Step-time overhead of GradienceCallback (telemetry only) on MiniLM + LoRA, SST-2 rows.

    python benchmarks/callback_overhead.py [--rounds 6] [--steps 15] [--batch 32] [--seq 64]

Blocks of ``--steps`` optimizer steps with and without the callback alternate (ABAB...) in
one process on one model, so drift (thermal, other load) hits both arms alike. Step time is
taken per optimizer step from ``on_step_begin`` to ``on_step_end`` by a timing callback that
runs after Gradience's, so the callback's own work (forward/backward hooks, norms, one sync,
event writes) is inside the measurement; Trainer start-up and end-of-run work are not.
Prints median and trimmed-mean step times per arm and the overhead ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"


class StepTimer:
    """TrainerCallback recording wall time per optimizer step (seconds)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer._t0 = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer.times.append(time.perf_counter() - timer._t0)

        self.times: list[float] = []
        self._t0 = 0.0
        self.callback = _CB()


def build(batch: int, seq: int, n_rows: int, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers.utils import logging as hf_logging

    from gradience.training.demo import resolve_model_path
    from gradience.training.demo_data import load_tsv_dir

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    path = resolve_model_path(None)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                             task_type="SEQ_CLS"))
    train, _ = load_tsv_dir(SST2, n_train=n_rows, n_test=1, seed=seed)
    enc = tok([e.text for e in train], truncation=True, max_length=seq, padding="max_length")
    rows = [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(train)]
    return model, rows, DataCollatorWithPadding(tok)


def run_block(model: Any, rows: Any, collator: Any, steps: int, batch: int, callbacks: list[Any],
              out: str) -> None:
    from transformers import PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=1e-4, logging_strategy="no", save_strategy="no", eval_strategy="no",
                             report_to=[], disable_tqdm=True, use_cpu=True, max_grad_norm=1.0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def summarize(times: list[float], warmup: int) -> dict[str, float]:
    t = sorted(times[warmup:]) if len(times) > warmup else sorted(times)
    k = len(t) // 10
    trimmed = t[k: len(t) - k] if len(t) > 2 * k else t
    return {"n": len(t), "median_ms": 1e3 * statistics.median(t), "trimmed_mean_ms": 1e3 * statistics.fmean(trimmed)}


def compare(arms: dict[str, Any], rounds: int, steps: int, batch: int, seq: int, n_rows: int) -> dict[str, Any]:
    """Interleave blocks of each arm; ``arms`` maps a name to a factory of extra callbacks."""
    model, rows, collator = build(batch, seq, n_rows)
    times: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        run_block(model, rows, collator, 3, batch, [], tmp)  # warm-up: allocator, kernels
        for r in range(rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                timer = StepTimer()
                run_block(model, rows, collator, steps, batch, [*arms[name](Path(tmp) / name), timer.callback],
                          str(Path(tmp) / name))
                times[name].extend(timer.times[1:])  # first step of a block pays Trainer set-up
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return {name: summarize(ts, 0) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rows", type=int, default=2000)
    a = p.parse_args()

    from gradience import GradienceCallback

    def with_cb(out: Path) -> list[Any]:
        return [GradienceCallback(out, telemetry_interval=10, spectral_enabled=False, audit=False, recommend=False)]

    res = compare({"baseline": lambda out: [], "gradience": with_cb}, a.rounds, a.steps, a.batch, a.seq, a.rows)
    base, cb = res["baseline"], res["gradience"]
    print(f"MiniLM-L6 + LoRA r=8 (query,value), SST-2, batch {a.batch} x seq {a.seq}, CPU, "
          f"{a.rounds} rounds x {a.steps} steps per arm, interleaved")
    for name, r in res.items():
        print(f"  {name:<10} n={r['n']:<4} median {r['median_ms']:8.1f} ms/step   trimmed mean "
              f"{r['trimmed_mean_ms']:8.1f} ms/step")
    print(f"  overhead (median)       {100 * (cb['median_ms'] / base['median_ms'] - 1):+.2f} %")
    print(f"  overhead (trimmed mean) {100 * (cb['trimmed_mean_ms'] / base['trimmed_mean_ms'] - 1):+.2f} %")


if __name__ == "__main__":
    main()
