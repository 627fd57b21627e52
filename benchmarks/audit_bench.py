"""Benchmark `gradience audit` on a synthetic LLaMA-7B-shaped LoRA adapter.

32 layers × {q,k,v,o,gate,up,down}, hidden 4096, MLP 11008, r=64, bf16 (~320 MB),
generated into a temporary directory (never committed). Prints, in one run:

  * the full audit (fresh subprocess): wall time and peak RSS, and the same audit held
    to one thread (how it ran before the spectrum pass was threaded);
  * baseline (a): merely loading the same tensors into float32, one at a time;
  * baseline (b): a straightforward per-module dense SVD of B·A on a few modules,
    extrapolated to all 224 modules;
  * baseline (c): the float64 Gram products alone (the arithmetic an exact audit cannot
    skip), on all cores, extrapolated;
  * the targets: audit ≤ 0.9 s, ≤ 2× the bare load, peak RSS ≤ 400 MB.

Usage: python benchmarks/audit_bench.py [--layers 32] [--rank 64] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, MLP = 4096, 11008
SHAPES = {  # module -> (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (MLP, HIDDEN), "mlp.up_proj": (MLP, HIDDEN), "mlp.down_proj": (HIDDEN, MLP),
}


def _bf16_bytes(x: np.ndarray) -> bytes:
    u = x.astype(np.float32).view(np.uint32)
    # round to nearest even on the dropped 16 bits
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def make_adapter(out_dir: Path, layers: int, rank: int, seed: int = 0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(layers):
        for mod, (o, n) in SHAPES.items():
            pre = f"base_model.model.model.layers.{i}.{mod}"
            entries.append((f"{pre}.lora_A.weight", (rank, n)))
            entries.append((f"{pre}.lora_B.weight", (o, rank)))
    header, off = {}, 0
    for name, shape in entries:
        nbytes = 2 * shape[0] * shape[1]
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(out_dir / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in entries:
            # A ~ Kaiming-like, B trained-like with a decaying spectrum (not just noise)
            if ".lora_A." in name:
                x = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])
            else:
                decay = np.exp(-np.arange(rank, dtype=np.float32) / 8.0)
                x = rng.standard_normal(shape, dtype=np.float32) * decay * 0.01
            f.write(_bf16_bytes(x))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": [m.split(".")[1] for m in SHAPES],
           "base_model_name_or_path": None, "use_rslora": False}
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg))
    return out_dir


_CHILD = r"""
import resource, sys, time, json
t0 = time.perf_counter()
from gradience.audit import audit_adapter
if len(sys.argv) > 2:  # the same audit on N threads (1 = how it ran before the threaded pass)
    import gradience.audit.core as core
    core.audit_workers = lambda: int(sys.argv[2])
t1 = time.perf_counter()
res = audit_adapter(sys.argv[1], udr=False)
t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t1, "import_s": t1 - t0,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n": res.summary["n_layers"], "k90_p50": res.summary["energy_rank_90_p50"]}))
"""

_BASELINE_LOAD = r"""
import resource, sys, time, json
from gradience.audit.weights import SafetensorsFile
t0 = time.perf_counter()
f = SafetensorsFile(sys.argv[1] + "/adapter_model.safetensors")
tot = 0.0
for name in f.names():
    x = f.read(name)  # float32
    tot += float(x[0, 0])
t1 = time.perf_counter()
print(json.dumps({"wall_s": t1 - t0, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, path: Path, *extra: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, str(path), *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def dense_svd_estimate(path: Path, layers: int) -> float:
    """Seconds for a dense SVD of B·A (float32 data, float64 SVD as an exact tool would),
    timed on one module of each distinct shape and extrapolated to all modules."""
    from gradience.audit.weights import SafetensorsFile

    f = SafetensorsFile(path / "adapter_model.safetensors")
    total = 0.0
    for mod in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
        pre = f"base_model.model.model.layers.0.{mod}"
        a = f.read(f"{pre}.lora_A.weight").astype(np.float64)
        b = f.read(f"{pre}.lora_B.weight").astype(np.float64)
        t = time.perf_counter()
        np.linalg.svd(b @ a, compute_uv=False)
        dt = time.perf_counter() - t
        n_like = 4 if "self_attn" in mod else (2 if mod != "mlp.down_proj" else 1)
        total += dt * n_like * layers
    f.close()
    return total


def gram_floor_estimate(layers: int, rank: int) -> float:
    """Seconds for only the float64 Gram products (A·Aᵀ and BᵀB of every module) on all
    cores, one GEMM per thread, timed on 8 modules of each shape and extrapolated: the
    arithmetic an exact audit cannot avoid, with no reading or decoding."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from gradience.audit.core import audit_workers

    workers = audit_workers()
    rng = np.random.default_rng(0)
    per_layer: dict[tuple[int, int], int] = {}
    for o, n in SHAPES.values():
        per_layer[(o, n)] = per_layer.get((o, n), 0) + 1
    total = 0.0
    with ThreadPoolExecutor(workers) as pool, threadpool_limits(1, "blas"):
        for (o, n), count in per_layer.items():
            a = rng.standard_normal((8, rank, n))
            b = rng.standard_normal((8, o, rank))

            def one(i: int, a: np.ndarray = a, b: np.ndarray = b) -> None:
                a[i] @ a[i].T
                b[i].T @ b[i]

            list(pool.map(one, range(8)))  # warm-up
            t = time.perf_counter()
            list(pool.map(one, range(8)))
            total += (time.perf_counter() - t) / 8 * count * layers
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="write the adapter here and keep it")
    ap.add_argument("--skip-dense", action="store_true", help="skip the dense-SVD baseline (slow)")
    args = ap.parse_args()

    tmp = None
    if args.keep is not None:
        path = args.keep
        if not (path / "adapter_model.safetensors").exists():
            make_adapter(path, args.layers, args.rank)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gradience-audit-bench-")
        path = Path(tmp.name)
        t = time.perf_counter()
        make_adapter(path, args.layers, args.rank)
        print(f"generated synthetic adapter in {time.perf_counter() - t:.1f}s")
    size = (path / "adapter_model.safetensors").stat().st_size
    print(f"adapter: {args.layers} layers × 7 modules, r={args.rank}, bf16, {size / 1e6:.0f} MB  (cpu count {os.cpu_count()})")

    loads = [_child(_BASELINE_LOAD, path) for _ in range(args.repeat)]
    audits = [_child(_CHILD, path) for _ in range(args.repeat)]
    single = [_child(_CHILD, path, "1") for _ in range(args.repeat)]
    load_s = min(x["wall_s"] for x in loads)
    audit_s = min(x["wall_s"] for x in audits)
    rss = max(x["maxrss_mb"] for x in audits)
    all_s = ", ".join(f"{x['wall_s']:.3f}" for x in audits)
    print(f"baseline (a) load tensors to float32: best {load_s:.3f}s of {args.repeat}, peak RSS "
          f"{max(x['maxrss_mb'] for x in loads):.0f} MB")
    imp = min(x["import_s"] for x in audits)
    print(f"gradience audit (no UDR):            best {audit_s:.3f}s of {args.repeat} "
          f"(all: {all_s}), peak RSS {rss:.0f} MB, "
          f"{int(audits[0]['n'])} modules; importing gradience.audit adds {imp:.3f}s "
          "(both timings start after their imports)")
    one_s = min(x["wall_s"] for x in single)
    print(f"the same audit on one thread:        best {one_s:.3f}s ({one_s / audit_s:.2f}× the threaded audit), "
          f"peak RSS {max(x['maxrss_mb'] for x in single):.0f} MB")
    floor = gram_floor_estimate(args.layers, args.rank)
    print(f"baseline (c) float64 Gram products alone, all cores:  {floor:.3f}s "
          f"({floor / load_s:.2f}× the bare load; the audit is {audit_s / floor:.2f}× this floor)")
    if not args.skip_dense:
        dense = dense_svd_estimate(path, args.layers)
        print(f"baseline (b) dense SVD of B·A per module, extrapolated: {dense:.1f}s "
              f"({dense / audit_s:.0f}× the audit)")
    print(f"targets: audit ≤ 0.9s [{'ok' if audit_s <= 0.9 else 'MISSED'}], ≤ 2× load ({audit_s / load_s:.2f}×) "
          f"[{'ok' if audit_s <= 2 * load_s else 'MISSED'}], RSS ≤ 400 MB [{'ok' if rss <= 400 else 'MISSED'}]; "
          "earlier public release: ~9 s, ~730 MB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
