"""Where a bench training step's time goes, before and after the padding/batching changes.

One process, one model, the same optimizer steps measured three ways on MiniLM / SST-2 (the
full bench config's batch size, max length and thread count):

* ``pad to max_length``: every batch padded to ``model.max_length`` (the naive collator);
* ``before``: random batches padded to the batch's longest sentence (the bench until now);
* ``after``: length-bucketed batches (each batch drawn from a window of similar lengths, batch
  order shuffled) padded to the batch's longest sentence (the bench now).

Each step is split into tokenisation, forward, backward and optimizer time. Evaluation of the
dev set is timed in file order and sorted by length. Prints a table; asserts nothing.

    python benchmarks/bench_step_time.py [--steps 30] [--threads 1] [--config configs/bench_minilm_sst2.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "bench_minilm_sst2.yaml"))
    ap.add_argument("--steps", type=int, default=30, help="timed optimizer steps per mode (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    a = ap.parse_args()

    import torch

    from gradience.bench.config import load_config
    from gradience.bench.data import length_bucketed_batches, load_task_data, sorted_by_length
    from gradience.bench.strategies import VariantPlan
    from gradience.bench.train import _load_tokenizer, _quiet_transformers, build_model, resolve_model

    cfg = load_config(a.config)
    threads = a.threads or cfg.runtime.threads
    if threads:
        torch.set_num_threads(threads)
    _quiet_transformers()
    tr = cfg.train
    data = load_task_data(cfg.task, tr.train_samples, None)
    path = resolve_model(cfg.model.name)
    tok = _load_tokenizer(path, False)
    t0 = time.perf_counter()
    lengths = [len(x) for x in tok([e.text for e in data.train], truncation=True,
                                   max_length=cfg.model.max_length)["input_ids"]]
    len_seconds = time.perf_counter() - t0
    model = build_model(cfg, VariantPlan("probe", r=cfg.lora.probe_r, alpha=cfg.lora.alpha), 42, path)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tr.lr)
    bs, n = tr.batch_size, a.steps + 3

    import random

    rng = random.Random(0)
    random_batches = [rng.sample(range(len(data.train)), bs) for _ in range(n)]
    bucketed = length_bucketed_batches(lengths, bs, n, seed=0)

    def run(batches: list[list[int]], padding: str) -> dict[str, float]:
        parts: dict[str, list[float]] = {"tokenise": [], "forward": [], "backward": [], "optimizer": [],
                                         "step": [], "width": []}
        for i, idx in enumerate(batches):
            rows = [data.train[j] for j in idx]
            t = time.perf_counter()
            enc = tok([e.text for e in rows], padding=padding, truncation=True, max_length=cfg.model.max_length,
                      return_tensors="pt")
            enc["labels"] = torch.tensor([int(e.label or 0) for e in rows])
            t1 = time.perf_counter()
            out = model(**enc)
            t2 = time.perf_counter()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.max_grad_norm)
            t3 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            if i >= 3:  # warm-up steps excluded
                for k, v in (("tokenise", t1 - t), ("forward", t2 - t1), ("backward", t3 - t2),
                             ("optimizer", t4 - t3), ("step", t4 - t), ("width", enc["input_ids"].shape[1])):
                    parts[k].append(v)
        return {k: statistics.fmean(v) for k, v in parts.items()}

    modes = [("pad to max_length", random_batches, "max_length"), ("before: random, pad to longest", random_batches,
                                                                    "longest"),
             ("after: length-bucketed, pad to longest", bucketed, "longest")]
    results = {name: run(b, pad) for name, b, pad in modes}

    def evaluate(rows: list) -> float:
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), tr.eval_batch_size):
                chunk = rows[i:i + tr.eval_batch_size]
                enc = tok([e.text for e in chunk], padding=True, truncation=True, max_length=cfg.model.max_length,
                          return_tensors="pt")
                model(**enc)
        model.train()
        return time.perf_counter() - t

    dev = load_task_data(cfg.task, 1, None).eval
    dev_len = [len(x) for x in tok([e.text for e in dev], truncation=True, max_length=cfg.model.max_length)["input_ids"]]
    ev_before = evaluate(dev)
    ev_after = evaluate(sorted_by_length(dev, dev_len))

    print(f"MiniLM / SST-2, batch {bs}, max_length {cfg.model.max_length}, torch threads {torch.get_num_threads()}, "
          f"{a.steps} timed steps per mode; mean train length {statistics.fmean(lengths):.1f} tokens "
          f"(max {max(lengths)}); token lengths of {len(lengths):,} rows in {len_seconds:.2f} s")
    print(f"{'mode':42} {'width':>6} {'tokenise':>9} {'forward':>8} {'backward':>9} {'optim':>7} {'step s':>7}")
    for name, r in results.items():
        print(f"{name:42} {r['width']:6.1f} {r['tokenise']:9.4f} {r['forward']:8.4f} {r['backward']:9.4f} "
              f"{r['optimizer']:7.4f} {r['step']:7.4f}")
    b, f = results[modes[1][0]]["step"], results[modes[2][0]]["step"]
    print(f"per-step time before {b:.3f} s, after {f:.3f} s: {b / f:.2f}x faster")
    print(f"eval of {len(dev)} dev sentences (batch {tr.eval_batch_size}): file order {ev_before:.2f} s, "
          f"sorted by length {ev_after:.2f} s: {ev_before / ev_after:.2f}x faster")


if __name__ == "__main__":
    main()
