"""Resize an SDXL-sized kohya LoRA three ways, side by side in one run: time, peak memory, error.

- ``exact``: ``gradience compress --rank K`` (factored SVD, ΔW never formed; Eckart–Young per module).
- ``dense``: kohya sd-scripts' original route: merge ΔW = up·down per module in float32, full (thin)
  SVD with ``torch.linalg.svd``, keep the top K (the baseline is given ``full_matrices=False``, which
  is faster than the ``torch.linalg.svd(W)`` default).
- ``lowrank``: what sd-scripts switched to for large matrices: ``torch.svd_lowrank(W, q=2K, niter=2)``
  on the merged ΔW (applied here to every module, to show its error on every shape).

The file is generated: the linear modules of SDXL's UNet transformer blocks (attn1/attn2 q/k/v/out,
GEGLU ff, proj_in/out: 70 blocks, 722 modules) plus 3×3 LoCon resnet convs, rank 32, fp16, with a
decaying spectrum (σ_i ∝ 0.85^i, as trained LoRAs show) so that truncation is meaningful. Each route
runs in its own process (peak RSS from ``getrusage``); errors are measured against the exact route's
output in factored form (‖B₁A₁ − B₂A₂‖_F from r×r Gram matrices, float64), relative to ‖ΔW_K‖_F.

    python benchmarks/resize_bench.py                 # everything (the dense route is the slow one)
    python benchmarks/resize_bench.py --every 10      # baselines on every 10th module, times extrapolated

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def sdxl_shapes(n_convs: int = 36) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(kohya name, down shape without r, up shape without r) for an SDXL UNet LoRA/LoCon."""
    mods: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    # (block prefix, channels, attentions, transformer blocks per attention)
    stages = [("input_blocks_4", 640, 1, 2), ("input_blocks_5", 640, 1, 2), ("input_blocks_7", 1280, 1, 10),
              ("input_blocks_8", 1280, 1, 10), ("middle_block", 1280, 1, 10), ("output_blocks_0", 1280, 1, 10),
              ("output_blocks_1", 1280, 1, 10), ("output_blocks_2", 1280, 1, 10), ("output_blocks_3", 640, 1, 2),
              ("output_blocks_4", 640, 1, 2), ("output_blocks_5", 640, 1, 2)]
    for stage, c, _, nb in stages:
        p = f"lora_unet_{stage}_1"
        mods.append((f"{p}_proj_in", (c,), (c,)))
        mods.append((f"{p}_proj_out", (c,), (c,)))
        for b in range(nb):
            t = f"{p}_transformer_blocks_{b}"
            for w in ("to_q", "to_k", "to_v", "to_out_0"):
                mods.append((f"{t}_attn1_{w}", (c,), (c,)))
            mods.append((f"{t}_attn2_to_q", (c,), (c,)))
            mods.append((f"{t}_attn2_to_k", (2048,), (c,)))
            mods.append((f"{t}_attn2_to_v", (2048,), (c,)))
            mods.append((f"{t}_attn2_to_out_0", (c,), (c,)))
            mods.append((f"{t}_ff_net_0_proj", (c,), (8 * c,)))
            mods.append((f"{t}_ff_net_2", (4 * c,), (c,)))
    chans = [320] * 8 + [640] * 12 + [1280] * 16
    for i, c in enumerate(chans[:n_convs]):
        mods.append((f"lora_unet_resnet_{i}_conv{1 + i % 2}", (c, 3, 3), (c, 1, 1)))
    return mods


def generate(path: Path, r: int, seed: int = 0, dtype: str = "F16", decay_rate: float = 0.85) -> int:
    """Write the SDXL-shaped kohya file; returns its module count."""
    from gradience.audit.compress import _encode

    rng = np.random.default_rng(seed)
    decay = decay_rate ** np.arange(r)
    header: dict[str, object] = {"__metadata__": {"ss_network_dim": str(r), "ss_network_alpha": str(r / 2),
                                                  "ss_network_module": "networks.lora"}}
    blobs = []
    off = 0
    shapes = sdxl_shapes()
    for name, down_rest, up_rest in shapes:
        n_in = int(np.prod(down_rest))
        down = (decay[:, None] * rng.standard_normal((r, n_in)) / np.sqrt(n_in)).reshape(r, *down_rest)
        up = rng.standard_normal((up_rest[0], r)).reshape(up_rest[0], r, *up_rest[1:]) * 0.01
        for key, x, dt in ((f"{name}.lora_down.weight", down, dtype), (f"{name}.lora_up.weight", up, dtype),
                           (f"{name}.alpha", np.asarray(r / 2.0), dtype)):
            b = _encode(x, dt)
            header[key] = {"dtype": dt, "shape": list(np.shape(x)), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for b in blobs:
            f.write(b)
    return len(shapes)


def _modules(path: Path, every: int) -> list[str]:
    from gradience.audit.weights import SafetensorsFile

    with SafetensorsFile(path) as f:
        mods = sorted(n[: -len(".lora_down.weight")] for n in f.names() if n.endswith(".lora_down.weight"))
    return mods[::every]


def run_route(route: str, src: Path, out: Path, k: int, every: int) -> dict[str, object]:
    """One route in this process; prints {seconds, modules}. Output: a kohya file at ``out``."""
    t0 = time.perf_counter()
    if route == "exact":
        from gradience.audit.compress import compress_adapter

        rep = compress_adapter(src, out, rank=k, force=True)
        n = rep["summary"]["n_modules"]
    else:
        import torch
        from safetensors.torch import load_file, save_file

        sd = load_file(str(src))
        mods = _modules(src, every)
        res: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for m in mods:
                down, up = sd[f"{m}.lora_down.weight"].float(), sd[f"{m}.lora_up.weight"].float()
                r = down.shape[0]
                s = float(sd[f"{m}.alpha"]) / r
                w = up.reshape(up.shape[0], r) @ down.reshape(r, -1)  # the merged ΔW (without s)
                if route == "dense":
                    u, sig, vh = torch.linalg.svd(w, full_matrices=False)
                else:
                    u, sig, v = torch.svd_lowrank(w, q=min(2 * k, *w.shape), niter=2)
                    vh = v.T
                kk = min(k, r)
                dt = sd[f"{m}.lora_down.weight"].dtype  # written back in the input's dtype
                res[f"{m}.lora_up.weight"] = (u[:, :kk] * sig[:kk]).reshape(up.shape[0], kk, *up.shape[2:]).contiguous().to(dt)
                res[f"{m}.lora_down.weight"] = vh[:kk].reshape(kk, *down.shape[1:]).contiguous().to(dt)
                res[f"{m}.alpha"] = torch.tensor(s * kk).float()
                del w, u, sig, vh
        save_file(res, str(out))
        n = len(mods)
    dt = time.perf_counter() - t0
    return {"route": route, "seconds": dt, "modules": n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def truncation_errors(src: Path, other: Path, modules: list[str], k: int) -> np.ndarray:
    """Per module ‖ΔW_route − (ΔW)_K‖_F / ‖(ΔW)_K‖_F against the float64 Eckart–Young truncation of the
    input, in factored form (Gram matrices; ΔW is never formed)."""
    from gradience.audit.spectrum import truncated_factors
    from gradience.audit.weights import SafetensorsFile

    def fac(f: SafetensorsFile, m: str) -> tuple[np.ndarray, np.ndarray, float]:
        a = f.read(f"{m}.lora_down.weight").astype(np.float64)
        b = f.read(f"{m}.lora_up.weight").astype(np.float64)
        r = a.shape[0]
        return a.reshape(r, -1), b.reshape(b.shape[0], r), float(f.read(f"{m}.alpha").reshape(-1)[0]) / r

    out = []
    with SafetensorsFile(src) as f0, SafetensorsFile(other) as f2:
        for m in modules:
            a0, b0, s0 = fac(f0, m)
            a1, b1, _ = truncated_factors(a0[None], b0[None], [min(k, a0.shape[0])])[0]
            b1 = s0 * b1
            a2, b2, s2 = fac(f2, m)
            bb = np.hstack([b1, -s2 * b2])
            aa = np.vstack([a1, a2])
            diff = float(np.sum((bb.T @ bb) * (aa @ aa.T)))
            ref_n = float(np.sum((b1.T @ b1) * (a1 @ a1.T)))
            out.append(np.sqrt(max(diff, 0.0) / ref_n))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=32, help="rank of the generated LoRA")
    ap.add_argument("--to", type=int, default=8, help="rank to resize to")
    ap.add_argument("--every", type=int, default=1, help="baselines on every N-th module (times extrapolated)")
    ap.add_argument("--routes", default="exact,dense,lowrank")
    ap.add_argument("--dtype", default="F16", choices=["F16", "F32"], help="dtype of the generated file")
    ap.add_argument("--decay", type=float, default=0.85, help="σ_i ∝ decay^i in every generated module")
    ap.add_argument("--route", help=argparse.SUPPRESS)  # internal: run one route in this process
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # internal: write the file in this process
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.route:
        print(json.dumps(run_route(args.route, Path(args.src), Path(args.dst), args.to, args.every)))
        return
    if args.generate:
        print(generate(Path(args.generate), args.rank, dtype=args.dtype, decay_rate=args.decay))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "sdxl_r32.safetensors"
        # Generated in a child process: a route's peak RSS counts from its fork of this process (Linux
        # carries the high-water mark across exec), so this process must stay small.
        gen = subprocess.run([sys.executable, __file__, "--generate", str(src), "--rank", str(args.rank),
                              "--dtype", args.dtype, "--decay", str(args.decay)], capture_output=True, text=True,
                             check=True)
        n = int(gen.stdout.strip().splitlines()[-1])
        print(f"generated {n} modules (r={args.rank}, {args.dtype}, σ_i ∝ {args.decay}^i): "
              f"{src.stat().st_size / 1e6:.0f} MB; resize to r={args.to}"
              f"{f'; baselines on every {args.every}th module' if args.every > 1 else ''}", flush=True)
        results = {}
        for route in args.routes.split(","):
            dst = Path(tmp) / f"{route}.safetensors"
            cmd = [sys.executable, __file__, "--route", route, "--src", str(src), "--dst", str(dst),
                   "--to", str(args.to), "--every", str(args.every)]
            env = dict(os.environ)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode:
                print(p.stderr[-2000:])
                raise SystemExit(f"{route} failed")
            res = json.loads(p.stdout.strip().splitlines()[-1])
            res["dst"] = str(dst)
            results[route] = res
            scale = n / res["modules"]
            print(f"  {route:8s} {res['seconds']:8.1f} s on {res['modules']} modules"
                  + (f" (≈ {res['seconds'] * scale:.0f} s for all {n})" if scale > 1 else "")
                  + f", peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
        mods = _modules(src, args.every)
        for route in results:
            err = truncation_errors(src, Path(results[route]["dst"]), mods, args.to)
            results[route]["rel_error_vs_eckart_young"] = {"median": float(np.median(err)), "max": float(err.max())}
            print(f"  {route:8s} error vs the float64 best rank-{args.to} ({args.dtype} output): median {np.median(err):.2e}, "
                  f"max {err.max():.2e}", flush=True)
        if "exact" in results:
            ex = results["exact"]
            for route in results:
                if route == "exact":
                    continue
                full_t = results[route]["seconds"] * n / results[route]["modules"]
                print(f"  exact is {full_t / ex['seconds']:.1f}× faster than {route}")
        print(json.dumps({"modules": n, "rank": args.rank, "to": args.to, "every": args.every, "dtype": args.dtype,
                          "decay": args.decay,
                          "results": {k: {kk: vv for kk, vv in v.items() if kk != "dst"} for k, v in results.items()}}))


if __name__ == "__main__":
    main()
