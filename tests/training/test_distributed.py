"""2-process torchrun (CPU, gloo): exactly one writer and a well-formed file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import read_events

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_torchrun(out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd() / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_two_process_run_has_exactly_one_writer(tmp_path):
    proc = run_torchrun(tmp_path, "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(tmp_path / "run.jsonl")
    names = [e["event"] for e in events]
    assert names.count("run_start") == 1 and names.count("run_end") == 1
    assert names[-1] == "run_end" and events[-1]["status"] == "ok"
    assert events[0]["meta"]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "train_step"] == [1, 2, 3]
    assert len({e["run_id"] for e in events}) == 1
    # Only rank 0 saved artefacts; both ranks finished.
    assert (tmp_path / "rank0.json").exists() and (tmp_path / "rank1.json").exists()


def test_guard_flags_are_reduced_so_ranks_agree(tmp_path):
    import json

    proc = run_torchrun(tmp_path, "check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "check0.json").read_text())
    r1 = json.loads((tmp_path / "check1.json").read_text())
    assert r0 == r1 == {"triggers": ["nonfinite_loss"], "healthy": []}


def test_fault_on_one_rank_gives_the_same_decision_on_both(tmp_path):
    import json

    options = {"guard_enabled": True, "guard_snapshot_interval": 2,
               "fault": {"kind": "nan_param", "step": 3, "rank": 1}}
    proc = run_torchrun(tmp_path, "6", json.dumps(options))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 6
    for key in ("rollbacks", "detections", "final_lr_scale", "integrity_status", "trigger_counts"):
        assert ranks[0]["guard"][key] == ranks[1]["guard"][key], key
    assert ranks[0]["guard"]["rollbacks"] == 1
    events = read_events(tmp_path / "run.jsonl")
    rollbacks = [e for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"]
    assert [e["step"] for e in rollbacks] == [3]
    assert events[-1]["status"] == "ok"
