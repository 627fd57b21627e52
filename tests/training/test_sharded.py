"""Sharded training (2-process torchrun, CPU gloo): DDP, FSDP1 and FSDP2 (``fully_shard`` on a CPU
mesh) driven by a plain loop with ``GradienceController``. One writer; every recorded loss, norm,
count, byte figure and κ̃ equals the single-process run of the same global batch; a fault on one
rank is the recorded trigger and the rollback leaves every rank's shard bit-identical to the
snapshot it restored. (The HF Trainer turns ``fsdp=`` into plain DDP on CPU: test_distributed.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import read_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("fsdp_worker.py")
MODES = ["ddp", "fsdp1", "fsdp2"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd() / "src")}


def run_worker(out: Path, mode: str, options: dict | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    launcher = [] if mode == "single" else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [sys.executable, *launcher, str(WORKER), str(out), mode, json.dumps(options or {})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run_worker(out, "single")
    return out, read_events(out / "run.jsonl")


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "peft" / "adapter_model.safetensors"))


@pytest.mark.parametrize("mode", MODES)
def test_sharded_run_records_the_single_process_figures(tmp_path, single, mode):
    import torch

    single_dir, single = single
    ranks = run_worker(tmp_path, mode)
    events = read_events(tmp_path / "run.jsonl")
    names = [e["event"] for e in events]
    assert names.count("run_start") == names.count("run_end") == 1  # one writer
    meta, ref_meta = events[0]["meta"], single[0]["meta"]
    assert meta["parallelism"] == mode and ref_meta["parallelism"] == "single"
    # Global counts, though FSDP ranks hold halves (FSDP1: flat slices, some empty).
    assert (meta["n_params"], meta["n_trainable_params"]) == (ref_meta["n_params"], ref_meta["n_trainable_params"])
    assert meta["n_params"] == ranks[0]["n_params_full"]
    if mode != "ddp":
        assert sum(r["local_numel"] for r in ranks) == meta["n_params"]

    def steps(evs):
        return [(e["step"], e["loss"], e["grad_norm"], e["grad_norm_clipped"]) for e in evs
                if e["event"] == "train_step"]

    got, want = steps(events), steps(single)
    assert [s[0] for s in got] == [s[0] for s in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert g[1:] == pytest.approx(w[1:], rel=1e-5), (g, w)

    def kinds(evs, kind):
        return [e for e in evs if e["event"] == "metrics" and e["kind"] == kind]

    assert [e["metrics"]["kappa_tilde"] for e in kinds(events, "spectral")] == pytest.approx(
        [e["metrics"]["kappa_tilde"] for e in kinds(single, "spectral")], rel=1e-6)
    assert kinds(events, "grad_norm")[-1]["metrics"]["clipped_steps"] == \
        kinds(single, "grad_norm")[-1]["metrics"]["clipped_steps"] == 0
    # Snapshot bytes: the whole trainable state across ranks (FSDP2 keeps Adam's scalar step count
    # on each rank: a few bytes per parameter tensor more).
    snaps = [e["metrics"]["bytes"] for e in kinds(events, "guard") if e["action"] == "snapshot"]
    ref = [e["metrics"]["bytes"] for e in kinds(single, "guard") if e["action"] == "snapshot"]
    assert len(snaps) == len(ref) and all(0 <= s - r <= 8 * 16 for s, r in zip(snaps, ref, strict=True)), (snaps, ref)
    # The saved adapter is whole and the same as the single-process one.
    saved, ref_saved = _adapter(tmp_path), _adapter(single_dir)
    assert saved.keys() == ref_saved.keys()
    for k in saved:
        assert torch.allclose(saved[k], ref_saved[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("mode", MODES)
def test_a_fault_on_one_rank_is_the_trigger_and_every_shard_is_restored(tmp_path, mode):
    ranks = run_worker(tmp_path, mode, {"steps": 5, "fault": {"kind": "nan_param", "step": 3, "rank": 1}})
    events = read_events(tmp_path / "run.jsonl")
    rollbacks = [e for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"]
    assert [e["step"] for e in rollbacks] == [3] and "nonfinite_loss" in rollbacks[0]["message"]
    loss3 = next(e["loss"] for e in events if e["event"] == "train_step" and e["step"] == 3)
    assert loss3 != loss3  # rank 1's NaN is in the recorded (mean over ranks) loss
    assert len(ranks) == 2
    assert ranks[0]["restored_step"] == ranks[1]["restored_step"] is not None
    assert all(r["restored_bit_identical"] for r in ranks), ranks
    assert ranks[0]["guard"]["trigger_counts"] == ranks[1]["guard"]["trigger_counts"]
    assert events[-1]["status"] == "ok"
    for r in ranks:
        if mode == "ddp":
            assert r["grad_fault"] == "attached"
        else:
            assert "cannot be injected into a sharded (FSDP) model" in r["grad_fault"], r["grad_fault"]
