"""Does κ̃ DANGER precede a loss blow-up? MiniLM + LoRA on SST-2 with an induced instability.

    python benchmarks/kappa_lead_time.py [--seeds 0 1 2] [--steps 120] [--boost-step 40] [--boost 100]

Each seed trains normally (lr 5e-4) until ``--boost-step``, then the LR is multiplied by
``--boost`` (x100 by default). κ̃ is sampled every ``--interval`` steps (5 here, finer than the
default 50, so the lead time has step resolution); the loss is recorded every step.

* blow-up step: the first step ≥ boost-step whose loss is non-finite or above
  ``--blowup-factor`` (3) × the median loss of the 10 steps before the boost;
* DANGER step: the first κ̃ sample ≥ boost-step with risk DANGER or INSTABILITY;
* false alarms: DANGER/INSTABILITY samples before the boost.

Lead = blow-up step − DANGER step (positive: κ̃ warned first). Prints one row per seed and
the summary. No guard: this only observes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from callback_overhead import build


def run_seed(seed: int, a: argparse.Namespace) -> dict[str, Any]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from gradience.training.spectral import SpectralMonitor

    model, rows, collator = build(a.batch, a.seq, a.rows, seed=seed)
    monitor = SpectralMonitor(interval=a.interval)
    losses: dict[int, float] = {}
    risks: list[tuple[int, str, float]] = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                          lr_scheduler: Any = None, **kw: Any) -> None:
            if state.global_step + 1 == a.boost_step:
                lr_scheduler.base_lrs = [b * a.boost for b in lr_scheduler.base_lrs]
                for g in optimizer.param_groups:
                    g["lr"] *= a.boost

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            step = int(state.global_step)
            if monitor.due(step):
                payload = monitor.observe(step, model)
                if payload is not None:
                    risks.append((step, payload["risk_level"], payload["kappa_tilde"]))

    class LossHook:
        def __init__(self, m: Any) -> None:
            self.step = 0
            m.register_forward_hook(self)

        def __call__(self, module: Any, inputs: Any, out: Any) -> None:
            if module.training and getattr(out, "loss", None) is not None:
                self.step += 1
                losses[self.step] = float(out.loss.detach())

    LossHook(model)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=str(Path(tmp)), max_steps=a.steps, per_device_train_batch_size=a.batch,
                                 learning_rate=5e-4, warmup_steps=5, lr_scheduler_type="constant_with_warmup",
                                 max_grad_norm=a.max_grad_norm, logging_strategy="no", save_strategy="no", eval_strategy="no",
                                 report_to=[], disable_tqdm=True, use_cpu=True, seed=seed)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Probe()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    before = [losses[s] for s in range(a.boost_step - 10, a.boost_step) if s in losses]
    ref = statistics.median(before)
    blowup = next((s for s in sorted(losses) if s >= a.boost_step
                   and (not math.isfinite(losses[s]) or losses[s] > a.blowup_factor * ref)), None)
    danger = next((s for s, lvl, _ in risks if s >= a.boost_step and lvl in ("DANGER", "INSTABILITY")), None)
    false_alarms = [s for s, lvl, _ in risks if s < a.boost_step and lvl in ("DANGER", "INSTABILITY")]
    return {"seed": seed, "ref_loss": ref, "blowup": blowup, "danger": danger,
            "lead": None if blowup is None or danger is None else blowup - danger,
            "false_alarms": false_alarms, "max_loss_after": max(losses[s] for s in losses if s >= a.boost_step),
            "risks": risks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--boost-step", type=int, default=40)
    p.add_argument("--boost", type=float, default=100.0)
    p.add_argument("--interval", type=int, default=5)
    p.add_argument("--blowup-factor", type=float, default=3.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--verbose", action="store_true", help="print every κ̃ sample")
    a = p.parse_args()
    rows = [run_seed(s, a) for s in a.seeds]
    print(f"MiniLM-L6 + LoRA r=8, SST-2, batch {a.batch}, lr 5e-4 -> x{a.boost:g} at step {a.boost_step}, "
          f"max_grad_norm {a.max_grad_norm:g}, "
          f"kappa every {a.interval} steps, blow-up = loss > {a.blowup_factor:g} x pre-boost median or non-finite")
    print(f"  {'seed':>4} {'ref loss':>9} {'blow-up':>8} {'DANGER':>7} {'lead':>5} {'max loss':>9}  false alarms")
    for r in rows:
        print(f"  {r['seed']:>4} {r['ref_loss']:9.3f} {r['blowup']!s:>8} {r['danger']!s:>7} {r['lead']!s:>5} "
              f"{r['max_loss_after']:9.3f}  {r['false_alarms']}")
        if a.verbose:
            print("       " + " ".join(f"{s}:{lvl[:4]}:{k:.3g}" for s, lvl, k in r["risks"]))
    leads = [r["lead"] for r in rows if r["lead"] is not None]
    blew = sum(r["blowup"] is not None for r in rows)
    warned_first = sum(1 for x in leads if x > 0)
    print(f"  blow-ups: {blew}/{len(rows)} seeds; DANGER before blow-up: {warned_first}/{blew}; "
          f"leads: {leads}; seeds with false alarms before the boost: "
          f"{sum(bool(r['false_alarms']) for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
