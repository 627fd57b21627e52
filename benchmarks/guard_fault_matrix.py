"""The guard's fault matrix: every fault kind, at several steps, transient and persistent, through
both integrations (the HF ``Trainer`` callback and ``GradienceController``), on a tiny 2-layer
BERT + LoRA built from a config (offline, CPU, seconds per scenario).

    python benchmarks/guard_fault_matrix.py [--steps 1,5,10] [--only callback|controller]

Per scenario it injects one fault (``gradience.training.faults``) and counts:

* injected — fault firings (a persistent fault fires at every step until training stops);
* detected — firings the guard flagged at the same step, with the expected trigger names;
* recovered — transient scenarios that rolled back once, had a healthy step after, ended ``ok``;
* locked out — persistent scenarios that ended in a lockout (status ``aborted``);
* poisoned — optimizer steps after which a trainable weight was non-finite, plus runs whose
  final weights or saved adapter are non-finite (must be 0).

Guard settings: snapshot every 2 steps, cooldown 2, at most 3 rollbacks, weight check every
step, loss-spike warm-up 2 steps (``gradience demo`` keeps the default warm-up of 20); the
spike floor and limit keep their defaults, against the reference loss the run derives from the
model (ln 2 for this binary classifier), so a spike at step 1, before any baseline, is caught by
the limit. The ×100 spike's losses are printed against that reference (the margin).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPIKE_WARMUP = 2


def _tokenizer(tmp: Path) -> Any:
    from transformers import BertTokenizerFast

    from gradience.training.demo_data import vocabulary

    # vocab= (a dict): transformers 5 ignores vocab_file= here and every word would be [UNK].
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocabulary())}, do_lower_case=True)


def _model(tok: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return get_peft_model(BertForSequenceClassification(cfg),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))


def _guard_config() -> Any:
    from gradience.training.guard import GuardConfig

    return GuardConfig(snapshot_interval=2, cooldown=2, max_rollbacks=3, weight_check_interval=1,
                       spike_warmup=SPIKE_WARMUP)


def _recorded(path: Path, steps: list[int]) -> tuple[list[float], float | None]:
    """The recorded losses at ``steps`` and the run's reference loss (run_start.meta.loss_prior)."""
    from gradience.telemetry.reader import TelemetryReader

    events = list(TelemetryReader(path).iter_events())
    prior = next((e.get("meta", {}).get("loss_prior") for e in events if e.get("event") == "run_start"), None)
    losses = [e["loss"] for e in events if e.get("event") == "train_step" and e.get("step") in steps
              and isinstance(e.get("loss"), (int, float))]
    return losses, prior


def _finite(model: Any) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def run_callback(tok: Any, tmp: Path, kind: str, factor: float, step: int, persistent: bool) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from gradience import GradienceCallback
    from gradience.training.demo_data import generate_sentiment
    from gradience.training.faults import FaultInjector

    poisoned: list[int] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if not _finite(model):
                poisoned.append(int(state.global_step))

    train, _ = generate_sentiment(n_train=256, n_test=8, seed=0)
    enc = tok([e.text for e in train], truncation=True, max_length=32)
    rows = [{**{k: v[i] for k, v in enc.items()}, "labels": e.label} for i, e in enumerate(train)]
    cb = GradienceCallback(tmp / "run", guard_enabled=True, guard_config=_guard_config(), telemetry_interval=1,
                           spectral_enabled=False, audit=False, recommend=False)
    inj = FaultInjector(kind, step, persistent=persistent, factor=factor)
    model = _model(tok)
    args = TrainingArguments(output_dir=str(tmp / "out"), max_steps=step + 6, per_device_train_batch_size=8,
                             learning_rate=1e-3, max_grad_norm=1.0, eval_strategy="no", logging_strategy="no",
                             save_strategy="no", report_to=[], disable_tqdm=True, seed=0, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[cb, inj.callback(cb), Watch()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    adapter = tmp / "run" / "peft" / "adapter_model.safetensors"
    adapter_ok = adapter.exists() and all(bool(torch.isfinite(t).all()) for t in load_file(str(adapter)).values())
    assert cb.path is not None
    return {"injected": list(inj.injected_steps), "decisions": cb.guard.decisions, "report": cb.guard_report,
            "status": "aborted" if cb.stop_reason else "ok", "poisoned": len(poisoned),
            "final_ok": _finite(model) and adapter_ok, "recorded": _recorded(cb.path, list(inj.injected_steps))}


def run_controller(tok: Any, tmp: Path, kind: str, factor: float, step: int, persistent: bool) -> dict[str, Any]:
    import torch

    from gradience import GradienceController
    from gradience.training.demo_data import generate_sentiment
    from gradience.training.faults import FaultInjector

    model = _model(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ctl = GradienceController(tmp, guard_enabled=True, guard_config=_guard_config(), telemetry_interval=1,
                              spectral_enabled=False)
    ctl.initialize(model, optimizer=opt)
    inj = FaultInjector(kind, step, persistent=persistent, factor=factor, monitor=ctl)
    inj.attach(model)
    train, _ = generate_sentiment(n_train=8 * (step + 6), n_test=8, seed=0)
    poisoned = 0
    for s in range(1, step + 7):
        chunk = train[8 * (s - 1): 8 * s]
        batch = tok([e.text for e in chunk], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([e.label for e in chunk])
        inj.begin_step(s)
        loss = model(**batch).loss
        loss.backward()
        go_on = ctl.step(s, loss, model)
        if not go_on:
            break
        opt.step()
        opt.zero_grad()
        poisoned += not _finite(model)
    summary = ctl.finalize(recommend=False)
    return {"injected": list(inj.injected_steps), "decisions": ctl.guard.decisions, "report": ctl.guard.summary(),
            "status": summary["status"], "poisoned": poisoned, "final_ok": _finite(model),
            "recorded": _recorded(ctl.path, list(inj.injected_steps))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="1,5,10", help="comma-separated injection steps (default 1,5,10)")
    p.add_argument("--only", choices=["callback", "controller"], help="one integration only")
    a = p.parse_args()
    steps = [int(s) for s in a.steps.split(",")]

    import torch

    torch.set_num_threads(1)
    import transformers

    from gradience.training.faults import FAULT_CASES

    transformers.logging.set_verbosity_error()
    runners = {"callback": run_callback, "controller": run_controller}
    if a.only:
        runners = {a.only: runners[a.only]}
    root = Path(tempfile.mkdtemp(prefix="guard_matrix_"))
    tok = _tokenizer(root)
    t0 = time.perf_counter()
    misses: list[str] = []
    spiked: list[float] = []  # the losses of the ×100 loss-spike firings
    reference: float | None = None
    print(f"{'integration':<11} {'mode':<10} {'scenarios':>9} {'injected':>8} {'detected':>8} {'recovered':>9} "
          f"{'locked out':>10} {'poisoned':>8}")
    for name, runner in runners.items():
        for persistent in (False, True):
            n = injected = detected = recovered = locked = poisoned = 0
            for case, (kind, factor, expected) in FAULT_CASES.items():
                for step in steps:
                    tmp = Path(tempfile.mkdtemp(dir=root))
                    r = runner(tok, tmp, kind, factor, step, persistent)
                    n += 1
                    by_step = {d.step: d for d in r["decisions"] if d.action in ("rollback", "lockout")}
                    hits = [s for s in r["injected"] if s in by_step and set(by_step[s].triggers) == expected]
                    injected += len(r["injected"])
                    detected += len(hits)
                    rep = r["report"]
                    if not persistent and r["status"] == "ok" and rep["rollbacks"] == 1 and rep["recoveries"] == 1:
                        recovered += 1
                    if persistent and r["status"] == "aborted" and rep["lockout"]:
                        locked += 1
                    poisoned += r["poisoned"] + (not r["final_ok"])
                    if case == "loss_spike":
                        losses, prior = r["recorded"]
                        spiked += losses
                        reference = prior if prior is not None else reference
                    if len(hits) != len(r["injected"]):
                        label = f"{name} {'persistent' if persistent else 'transient'} {case}@{step}"
                        misses.append(f"{label}: {len(r['injected']) - len(hits)} of {len(r['injected'])} "
                                      f"firings not flagged as {sorted(expected)}")
            print(f"{name:<11} {'persistent' if persistent else 'transient':<10} {n:>9} {injected:>8} "
                  f"{detected:>8} {recovered if not persistent else '-':>9} {locked if persistent else '-':>10} "
                  f"{poisoned:>8}")
    print(f"\n{len(FAULT_CASES)} fault cases × steps {steps}; {time.perf_counter() - t0:.0f} s on "
          f"{torch.get_num_threads()} thread(s)")
    if spiked and reference:
        from gradience.training.guard import GuardConfig

        cfg = GuardConfig()
        print(f"×100 loss-spike firings: loss {min(spiked):.3g}–{max(spiked):.3g} = "
              f"{min(spiked) / reference:.0f}–{max(spiked) / reference:.0f} × the reference loss "
              f"{reference:.3g} (spike_limit {cfg.spike_limit:g} ×, spike_floor {cfg.spike_floor:g} ×)")
    for m in misses:
        print("  not detected:", m)


if __name__ == "__main__":
    main()
