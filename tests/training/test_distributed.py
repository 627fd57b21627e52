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
