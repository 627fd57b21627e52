"""Step-time overhead of the training guard on MiniLM + LoRA (SST-2 rows), and the κ̃ cost.

    python benchmarks/guard_overhead.py [--rounds 6] [--steps 15] [--batch 32] [--seq 64]

Arms, interleaved in blocks in one process on one model (see callback_overhead.py):
``telemetry`` — GradienceCallback with the guard off; ``guard`` — the same with the guard on
(snapshot interval 100). Both have spectral sampling off so the guard's cost is isolated.
Blocks are shorter than the snapshot interval, so the periodic snapshot is timed
separately and amortised (snapshot ms / interval); the per-step work (trigger checks, the
weight check every 10 steps, dropped-gradient bookkeeping) is inside the block timings.
κ̃ at interval 50: one ``kappa_tilde(model)`` call timed over repetitions, divided by 50.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from callback_overhead import build, compare


def time_call(fn: Any, reps: int) -> float:
    """Median wall time of ``fn()`` in ms."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rows", type=int, default=2000)
    a = p.parse_args()

    import torch

    from gradience import GradienceCallback
    from gradience.training.guard import GuardConfig, TrainingGuard
    from gradience.training.spectral import kappa_tilde

    def arm(guard: bool) -> Any:
        def make(out: Path) -> list[Any]:
            return [GradienceCallback(out, telemetry_interval=10, spectral_enabled=False, audit=False,
                                      recommend=False, guard_enabled=guard, guard_snapshot_interval=100)]
        return make

    res = compare({"telemetry": arm(False), "guard": arm(True)}, a.rounds, a.steps, a.batch, a.seq, a.rows)
    tel, grd = res["telemetry"], res["guard"]

    model, _, _ = build(a.batch, a.seq, 8)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(named.values(), lr=1e-4)
    for p_ in named.values():  # populate Adam moments so the snapshot is full-size
        p_.grad = torch.randn_like(p_)
    opt.step()
    g = TrainingGuard(GuardConfig(), named, opt)
    snap_ms = time_call(lambda: g.snapshot(1), 20)

    def checks() -> None:  # the guard's own per-step work, weight check every 10 steps included
        for step in range(1, 101):
            g.check(step, 0.5, 1.0)

    check_ms = time_call(checks, 5) / 100
    kappa_ms = time_call(lambda: kappa_tilde(model), 20)
    snap_bytes = g.ring.newest().nbytes
    _, n_modules, method = kappa_tilde(model)

    print(f"MiniLM-L6 + LoRA r=8 (query,value), SST-2, batch {a.batch} x seq {a.seq}, CPU, "
          f"{a.rounds} rounds x {a.steps} steps per arm, interleaved")
    for name, r in res.items():
        print(f"  {name:<10} n={r['n']:<4} median {r['median_ms']:8.1f} ms/step   trimmed mean "
              f"{r['trimmed_mean_ms']:8.1f} ms/step")
    per_step = 100 * (grd["median_ms"] / tel["median_ms"] - 1)
    print(f"  guard per-step overhead (median)        {per_step:+.2f} %")
    print(f"  guard per-step overhead (trimmed mean)  {100 * (grd['trimmed_mean_ms'] / tel['trimmed_mean_ms'] - 1):+.2f} %")
    print(f"  guard.check per step (direct): {1e3 * check_ms:.1f} us = {100 * check_ms / tel['median_ms']:.3f} % of a step")
    print(f"  snapshot: {snap_ms:.2f} ms, {snap_bytes / 1e6:.2f} MB  -> amortised at interval 100: "
          f"{100 * snap_ms / 100 / tel['median_ms']:.3f} % of a step")
    print(f"  kappa-tilde ({n_modules} LoRA modules, {method}): {kappa_ms:.2f} ms -> at interval 50: "
          f"{100 * kappa_ms / 50 / tel['median_ms']:.3f} % of a step")


if __name__ == "__main__":
    main()
