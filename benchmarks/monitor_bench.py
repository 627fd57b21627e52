"""`gradience monitor` on a 1,000,000-event run: wall time and peak RSS.

Generates a telemetry v1 file in a temp dir (``train_step`` every step, a train and a
test ``eval`` every 1,000 steps), then times:

1. ``monitor`` in-process (``build_monitor_json`` + text rendering),
2. ``monitor`` as a subprocess (``python -m gradience monitor FILE``), with its peak RSS,
3. the same subprocess on a file 10× smaller, to show memory does not grow with the file,
4. the naive baseline in the same run: ``json.loads`` of every line into a list,

and compares against the earlier public release's published 51 s / 386 MB for such a file.

    python benchmarks/monitor_bench.py [--events 1000000] [--keep DIR] [--skip-naive]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PUBLISHED_S, PUBLISHED_MB = 51.0, 386.0

_HEAD = '{"schema":"gradience.vnext.telemetry/v1","ts":%.3f,"run_id":"bench","event":'
_STEP = _HEAD + '"train_step","step":%d,"loss":%r,"lr":%r,"grad_norm":%r,"grad_norm_clipped":%r,"epoch":%r}\n'
_EVAL = _HEAD + '"eval","step":%d,"split":"%s","metrics":{"loss":%r,"accuracy":%r,"n":872}}\n'


def generate(path: Path, n_events: int) -> int:
    """Write exactly ``n_events`` lines the way the writer would (byte-compatible envelope)."""
    from gradience.telemetry import TelemetryWriter

    with TelemetryWriter(path, run_id="bench") as w:  # the real writer for run_start (config encoding)
        w.run_start({"model_name": "bench-model", "dataset_name": "sst2", "task_profile": "easy_classification",
                     "optimizer": {"lr": 1e-4}, "lora": {"r": 16, "alpha": 32}, "training": {"max_steps": n_events}})
        w._ended = True  # run_end is appended below, after the bulk lines
    written, step, ts = 1, 0, 1.7e9
    with open(path, "a", encoding="utf-8") as f:
        buf: list[str] = []
        while written < n_events - 1:
            step += 1
            ts += 0.01
            g = 0.8 + (step % 7) * 0.05
            buf.append(_STEP % (ts, step, round(1.0 / (1 + step * 1e-4), 6), 1e-4, g, min(g, 1.0), step / 10000))
            written += 1
            if step % 1000 == 0:
                for split, loss in (("train", 0.30), ("test", 0.36)):
                    if written < n_events - 1:
                        buf.append(_EVAL % (ts, step, split, loss, 0.9))
                        written += 1
            if len(buf) >= 8192:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
        f.write(_HEAD % ts + f'"run_end","step":{step},"status":"ok"}}\n')
    return written + 1


_MEASURE = """
import resource, runpy, sys, time
sys.argv = {argv!r}
t0 = time.perf_counter()
try:
    {body}
except SystemExit:
    pass
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
sys.stderr.write(f"\\nBENCH {{dt}} {{ru.ru_maxrss}} {{ru.ru_utime + ru.ru_stime}}\\n")
"""


def run_measured(argv: list[str], body: str) -> tuple[float, float, float, float]:
    """(wall s of the whole process, inner wall s, peak RSS MB, CPU s) of a child Python process."""
    code = _MEASURE.format(argv=argv, body=body)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("BENCH ")]
    if res.returncode != 0 or not line:
        raise SystemExit(f"child failed ({res.returncode}): {res.stderr[-2000:]}")
    _, inner, rss_kb, cpu = line[-1].split()
    return wall, float(inner), int(rss_kb) / 1024, float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    ap.add_argument("--skip-naive", action="store_true", help="skip the json.loads-into-a-list baseline")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    root = Path(tmp.name) if tmp else args.keep
    root.mkdir(parents=True, exist_ok=True)
    big, small = root / "big.jsonl", root / "small.jsonl"
    t0 = time.perf_counter()
    n_big = generate(big, args.events)
    n_small = generate(small, max(1000, args.events // 10))
    print(f"generated {n_big:,} events ({big.stat().st_size / 1e6:.0f} MB) and {n_small:,} events "
          f"in {time.perf_counter() - t0:.1f} s under {root}")

    # 1. in-process
    from rich.console import Console

    from gradience.cli.monitor import build_monitor_json, render_monitor_text

    t0, c0 = time.perf_counter(), time.process_time()
    obj = build_monitor_json(big)
    render_monitor_text(Console(file=io.StringIO(), width=100, color_system=None), obj)
    t_in, cpu_in = time.perf_counter() - t0, time.process_time() - c0
    assert obj["signals"]["n_events"] == n_big, obj["signals"]["n_events"]
    rss_in = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # 2./3. subprocess CLI (runpy = exactly `python -m gradience monitor FILE`)
    cli_body = "runpy.run_module('gradience', run_name='__main__')"
    wall_big, inner_big, rss_big, cpu_big = run_measured(["gradience", "monitor", str(big)], cli_body)
    wall_small, _, rss_small, cpu_small = run_measured(["gradience", "monitor", str(small)], cli_body)

    # 4. naive baseline
    naive_body = ("import json\n    events = [json.loads(line) for line in open(sys.argv[1], encoding='utf-8')]\n"
                  "    assert len(events) > 0")
    naive = None if args.skip_naive else run_measured(["naive", str(big)], naive_body)

    ev_s = n_big / inner_big
    # The published figure is for 1,000,000 events; scale it linearly for other sizes.
    base_s = PUBLISHED_S * n_big / 1_000_000
    print()
    print(f"{'':38}{'wall s':>8}{'CPU s':>8}{'peak RSS MB':>13}{'baseline/wall':>15}")
    print(f"{'monitor in-process (read+rules+text)':38}{t_in:8.2f}{cpu_in:8.2f}{rss_in:13.0f}{base_s / t_in:14.1f}×")
    print(f"{'monitor subprocess (whole process)':38}{wall_big:8.2f}{cpu_big:8.2f}{rss_big:13.0f}"
          f"{base_s / wall_big:14.1f}×  ({ev_s:,.0f} events/s inside)")
    print(f"{f'monitor subprocess, {n_small:,} events':38}{wall_small:8.2f}{cpu_small:8.2f}{rss_small:13.0f}")
    if naive is not None:
        print(f"{'naive json.loads into a list':38}{naive[1]:8.2f}{naive[3]:8.2f}{naive[2]:13.0f}"
              f"{base_s / naive[1]:14.1f}×")
        print(f"\nmonitor vs naive in this run: {naive[1] / wall_big:.1f}× faster, {naive[2] / rss_big:.1f}× less memory"
              " (and the naive list has not summarised anything yet)")
    scaled = "" if n_big == 1_000_000 else f" (scaled to {n_big:,} events: {base_s:.1f} s)"
    print(f"published baseline: {PUBLISHED_S:.0f} s, {PUBLISHED_MB:.0f} MB for 1,000,000 events{scaled} → speed-up "
          f"{base_s / wall_big:.1f}× wall, {base_s / cpu_big:.1f}× CPU (target ≥ 10×), memory "
          f"{PUBLISHED_MB / rss_big:.1f}× lower")
    print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(wall time on a shared machine inflates; CPU time does not)")
    print(f"memory vs file size: {rss_small:.0f} MB at {n_small:,} events, {rss_big:.0f} MB at {n_big:,} events")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
