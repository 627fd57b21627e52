"""Telemetry throughput: write and summarise a 1,000,000-event run.

Prints events/s for writing (buffered and per-event flush) and for ``summarize()``, the
peak RSS of the summarising process, and, as an in-run baseline, the naive approach of
``json.loads`` on every line into a list (what the earlier public release effectively did;
it needed 51 s and 386 MB for such a file).

    python benchmarks/telemetry_bench.py [--events 1000000] [--keep DIR]

Target (issue 2): summarise >= 200,000 events/s with memory that does not grow with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from gradience.telemetry import TelemetryWriter


def write_run(path: Path, n_events: int, flush_every: int) -> float:
    t0 = time.perf_counter()
    with TelemetryWriter(path, run_id="bench", flush_every=flush_every) as w:
        w.run_start({"model_name": "bench-model", "task_profile": "easy_classification",
                     "lora": {"r": 16, "alpha": 32}, "training": {"max_steps": n_events}})
        written, step = 1, 0
        while written < n_events - 1:
            step += 1
            w.train_step(step, loss=1.0 / (1 + step * 1e-4), lr=1e-4, grad_norm=0.8 + (step % 7) * 0.01,
                         grad_norm_clipped=0.8, epoch=step / 10000)
            written += 1
            if step % 1000 == 0 and written < n_events - 1:
                w.eval(step, split="test", metrics={"loss": 0.5, "accuracy": 0.9, "n": 872})
                written += 1
    return time.perf_counter() - t0


SUMMARIZE_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from gradience.telemetry import TelemetryReader
    t0 = time.perf_counter()
    snap = TelemetryReader(sys.argv[1]).summarize()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "peak_rss_mb": rss, "n_events": snap.n_events, "last_step": snap.last_step}))
    """
)

NAIVE_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    with open(sys.argv[1]) as f:
        events = [json.loads(line) for line in f]
    losses = [e["loss"] for e in events if e.get("event") == "train_step" and "loss" in e]
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "peak_rss_mb": rss, "n_events": len(events)}))
    """
)

BASELINE_CHILD = "import resource, gradience.telemetry; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the file here instead of a temp dir")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="gradience-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    big = tmp / "run_1m.jsonl"
    small = tmp / "run_small.jsonl"
    for p in (big, small):
        p.unlink(missing_ok=True)

    n = args.events
    t_buf = write_run(big, n, flush_every=256)
    n_flush = max(10_000, n // 20)
    t_flush = write_run(small, n_flush, flush_every=1)
    size_mb = big.stat().st_size / 1e6
    print(f"file: {n:,} events, {size_mb:.1f} MB")
    print(f"write (buffered, flush_every=256): {n / t_buf:>12,.0f} events/s  ({t_buf:.2f} s)")
    print(f"write (flush every event):         {n_flush / t_flush:>12,.0f} events/s  ({n_flush:,} events)")

    base_rss = float(subprocess.run([sys.executable, "-c", BASELINE_CHILD], capture_output=True, text=True,
                                    check=True).stdout)
    ours = child(SUMMARIZE_CHILD, str(big))
    ours_small = child(SUMMARIZE_CHILD, str(small))
    naive = child(NAIVE_CHILD, str(big))
    eps = n / ours["seconds"]
    print(f"summarize():       {eps:>12,.0f} events/s  ({ours['seconds']:.2f} s), peak RSS {ours['peak_rss_mb']:.0f} MB"
          f" (import-only baseline {base_rss:.0f} MB; {n_flush:,}-event file: {ours_small['peak_rss_mb']:.0f} MB)")
    print(f"naive json.loads:  {n / naive['seconds']:>12,.0f} events/s  ({naive['seconds']:.2f} s), "
          f"peak RSS {naive['peak_rss_mb']:.0f} MB")
    print(f"earlier release (published): {n / 51:>8,.0f} events/s  (51 s), peak RSS 386 MB")
    print(f"speed-up vs naive: {naive['seconds'] / ours['seconds']:.1f}x; vs earlier release: {51 / ours['seconds']:.1f}x")
    growth = ours["peak_rss_mb"] - ours_small["peak_rss_mb"]
    print(f"memory growth from {n_flush:,} to {n:,} events: {growth:+.1f} MB")
    target = "MET" if eps >= 200_000 else "MISSED"
    print(f"target summarize >= 200,000 events/s: {target}")
    if args.keep is None:
        for p in (big, small):
            p.unlink(missing_ok=True)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
