"""Peak memory and time of the UDR base-norm pass on one large base matrix.

Generates (in a temporary directory, never committed) a base model with a single
11008 × 4096 float32 matrix (a LLaMA-7B MLP projection, 180 MB) and an r=8 adapter on it,
then runs, each in a fresh subprocess, and prints peak RSS (``VmHWM``, Linux) and wall time:

  * ``read``: only reading the base matrix as float32 (the floor any UDR pass pays);
  * ``no_udr``: the audit with ``udr=False``;
  * ``udr``: the audit with UDR (σ₁ and the Frobenius norm of the base matrix, no cache).

Usage: python benchmarks/udr_memory_bench.py [--rows 11008] [--cols 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "model.layers.0.mlp.gate_proj"

CHILD = r"""
import json, sys, time
from pathlib import Path
mode, root = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter()
if mode == "read":
    from gradience.audit.base_model import BaseWeights
    b = BaseWeights(root / "base", "bench")
    w = b.read2d(NAME + ".weight")
    out = {"shape": list(w.shape)}
    b.close()
else:
    from gradience.audit import audit_adapter
    res = audit_adapter(root / "adapter", base_model=root / "base", udr=(mode == "udr"))
    row = res.layers[0]
    out = {"udr": row.get("udr"), "base_sigma_max": row.get("base_sigma_max"), "base_fro_norm": row.get("base_fro_norm")}
out["wall_s"] = time.perf_counter() - t0
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
out["peak_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
""".replace("NAME", repr(NAME))


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    import struct

    header, off = {}, 0
    for name, x in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(x.shape), "data_offsets": [off, off + x.nbytes]}
        off += x.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for x in tensors.values():
            f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())


def build(root: Path, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    (root / "base").mkdir(parents=True, exist_ok=True)
    (root / "adapter").mkdir(parents=True, exist_ok=True)
    w = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
    _write_safetensors(root / "base" / "model.safetensors", {f"{NAME}.weight": w})
    del w
    r = 8
    _write_safetensors(root / "adapter" / "adapter_model.safetensors", {
        f"base_model.model.{NAME}.lora_A.weight": rng.standard_normal((r, cols), dtype=np.float32) * 0.01,
        f"base_model.model.{NAME}.lora_B.weight": rng.standard_normal((rows, r), dtype=np.float32) * 0.01,
    })
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["gate_proj"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=11008)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--keep", type=Path, default=None, help="build into (and keep) this directory")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t = time.perf_counter()
        build(root, args.rows, args.cols)
        print(f"base matrix {args.rows} x {args.cols} float32 ({args.rows * args.cols * 4 / 2**20:.0f} MiB), "
              f"built in {time.perf_counter() - t:.1f} s")
        for mode in ("read", "no_udr", "udr"):
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(root)], capture_output=True, text=True,
                                  check=True)
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = {k: v for k, v in out.items() if k not in ("wall_s", "peak_rss_mb")}
            print(f"{mode:7s} peak RSS {out['peak_rss_mb']:7.0f} MB   wall {out['wall_s']:6.2f} s   {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
