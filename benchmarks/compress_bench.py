"""Benchmark `gradience compress` to rank 16 on the synthetic 7B-shaped r=64 bf16 adapter of
benchmarks/audit_bench.py, next to the audit of the same file (fresh subprocesses).

Usage: python benchmarks/compress_bench.py [--layers 32] [--rank 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import _CHILD, make_adapter

_COMPRESS = r"""
import resource, sys, time, json
from gradience.audit.compress import compress_adapter
t0 = time.perf_counter()  # after the import, like the audit timing it is compared with
rep = compress_adapter(sys.argv[1], sys.argv[2], rank=int(sys.argv[3]), force=True)
print(json.dumps({"wall_s": time.perf_counter() - t0,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bytes_before": rep["summary"]["bytes_before"], "bytes_after": rep["summary"]["bytes_after"],
                  "retained_min": rep["summary"]["retained_energy_min"]}))
"""


def _run(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradience-compress-bench-") as tmp:
        src = args.keep if args.keep is not None else Path(tmp) / "in"
        if not (src / "adapter_model.safetensors").exists():
            make_adapter(src, args.layers, 64)
        out = Path(tmp) / "out"
        audits = [_run([_CHILD, str(src)]) for _ in range(args.repeat)]
        comps = [_run([_COMPRESS, str(src), str(out), str(args.rank)]) for _ in range(args.repeat)]
        a = min(x["wall_s"] for x in audits)
        c = min(x["wall_s"] for x in comps)
        print(f"audit (no UDR):      best {a:.3f}s, peak RSS {max(x['maxrss_mb'] for x in audits):.0f} MB")
        print(f"compress to r={args.rank}:  best {c:.3f}s, peak RSS {max(x['maxrss_mb'] for x in comps):.0f} MB, "
              f"{comps[0]['bytes_before'] / 1e6:.0f} MB -> {comps[0]['bytes_after'] / 1e6:.0f} MB, "
              f"min retained energy {100 * comps[0]['retained_min']:.1f}%")
        print(f"compress / audit: {c / a:.2f}x (target: the same order)")


if __name__ == "__main__":
    main()
