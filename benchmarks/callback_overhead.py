"""Step-time overhead of GradienceCallback (telemetry only) on MiniLM + LoRA, SST-2 rows.

    python benchmarks/callback_overhead.py [--rounds 6] [--steps 15] [--batch 32] [--seq 64]

Blocks of ``--steps`` optimizer steps with and without the callback alternate (ABAB...) in
one process on one model, so drift (thermal, other load) hits both arms alike. Step time is
taken per optimizer step from ``on_step_begin`` to ``on_step_end`` by a timing callback that
runs after Gradience's, so the callback's own work (forward/backward hooks, norms, one sync,
event writes) is inside the measurement; Trainer start-up and end-of-run work are not.
Prints median and trimmed-mean step times per arm and the overhead ratio, then the direct
cost: the time spent inside the callback's own code per step (hooks timed in place), which
resolves far below the few-percent noise of the A/B comparison on a shared machine.
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


class HookClock:
    """Wall time spent inside Gradience's own per-step code: the callback's step hooks, its
    forward hook and the backward-pass norm probe (its grad hook and the two end-of-backward
    callbacks). Outermost entries only, so nested calls are not counted twice. This is the
    callback's direct cost, free of the run-to-run noise an A/B comparison of whole steps has."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn: Any) -> Any:
        clock = self

        def timed(*a: Any, **k: Any) -> Any:
            if clock._depth:
                return fn(*a, **k)
            clock._depth += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock.seconds += time.perf_counter() - t
                clock._depth -= 1

        return timed


def direct_cost(steps: int, batch: int, seq: int, n_rows: int) -> dict[str, float]:
    """One block with the callback, its own code timed by :class:`HookClock`."""
    from gradience import GradienceCallback
    from gradience.training import gradnorm

    model, rows, collator = build(batch, seq, n_rows)
    clock = HookClock()
    probe = gradnorm.BackwardNormProbe
    saved = {name: getattr(probe, name) for name in ("_on_grad", "_end_of_pass", "_measure")}
    try:
        for name, fn in saved.items():  # looked up on the instance when the hooks are queued
            setattr(probe, name, clock.wrap(fn))
        with tempfile.TemporaryDirectory() as tmp:
            run_block(model, rows, collator, 3, batch, [], tmp)  # warm-up
            cb = GradienceCallback(Path(tmp) / "cb", telemetry_interval=10, spectral_enabled=False, audit=False,
                                   recommend=False)
            cb._on_forward = clock.wrap(cb._on_forward)  # type: ignore[method-assign]
            for name in ("on_step_begin", "on_pre_optimizer_step", "on_step_end"):
                setattr(cb, name, clock.wrap(getattr(cb, name)))
            timer = StepTimer()
            run_block(model, rows, collator, steps, batch, [cb, timer.callback], str(Path(tmp) / "cb"))
    finally:
        for name, fn in saved.items():
            setattr(probe, name, fn)
    step_s = sum(timer.times[1:])
    return {"hook_ms_per_step": 1e3 * clock.seconds / steps, "step_ms": 1e3 * step_s / max(1, steps - 1),
            "share": clock.seconds * (steps - 1) / steps / step_s if step_s else float("nan")}


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
    d = direct_cost(a.steps, a.batch, a.seq, a.rows)
    print(f"  direct cost: {d['hook_ms_per_step']:.2f} ms/step inside the callback's own code = "
          f"{100 * d['share']:.2f} % of a {d['step_ms']:.0f} ms step (target: <= 1 %)")


if __name__ == "__main__":
    main()
