"""2-process torchrun (CPU, gloo): exactly one writer, a well-formed file, and guard decisions
that agree across ranks when only one rank sees the fault. One launch covers all three
(starting two Python processes with torch is most of the cost)."""

from __future__ import annotations

import json
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


def test_two_ranks_one_writer_and_the_same_guard_decision(tmp_path):
    options = {"guard_enabled": True, "guard_snapshot_interval": 2,
               "fault": {"kind": "nan_param", "step": 3, "rank": 1}}
    proc = run_torchrun(tmp_path, "6", json.dumps(options))
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Exactly one writer, a well-formed file (read_events asserts no reader issues).
    events = read_events(tmp_path / "run.jsonl")
    names = [e["event"] for e in events]
    assert names.count("run_start") == 1 and names.count("run_end") == 1
    assert names[-1] == "run_end" and events[-1]["status"] == "ok"
    assert events[0]["meta"]["world_size"] == 2 and events[0]["meta"]["parallelism"] == "ddp"
    assert json.loads((tmp_path / "training" / "training_args.json").read_text())["parallelism_in_effect"] == "ddp"
    assert [e["step"] for e in events if e["event"] == "train_step"] == [1, 2, 3, 4, 5, 6]
    assert len({e["run_id"] for e in events}) == 1

    # Only rank 1 was corrupted; both ranks rolled back at the same step and finished together.
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 6
    for key in ("rollbacks", "detections", "final_lr_scale", "integrity_status", "trigger_counts"):
        assert ranks[0]["guard"][key] == ranks[1]["guard"][key], key
    assert ranks[0]["guard"]["rollbacks"] == 1
    assert [e["step"] for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"] == [3]

    # The recorded loss is the one the Trainer logs (the mean over ranks) at every step, except the
    # fault's: rank 1's loss is NaN there, which the Trainer's logging_nan_inf_filter replaces and
    # Gradience records as it is (the guard's trigger).
    logged = {e["step"]: e["loss"] for e in ranks[0]["log_history"] if "loss" in e}
    recorded = {e["step"]: e["loss"] for e in events if e["event"] == "train_step"}
    for step in (1, 2, 4, 5, 6):
        assert recorded[step] == pytest.approx(logged[step], rel=1e-5), (step, recorded, logged)
    assert recorded[3] != recorded[3] or recorded[3] in ("nan", "NaN"), recorded[3]

    # The flag reduction itself: a trigger seen on rank 1 only is reported by both ranks.
    assert ranks[0]["check"] == ranks[1]["check"] == ["nonfinite_loss"]
    assert ranks[0]["check_healthy"] == ranks[1]["check_healthy"] == []


@pytest.mark.slow
def test_a_loss_spike_on_one_rank_is_the_recorded_loss_and_the_trigger(tmp_path):
    """×100 on rank 1's loss only: the recorded loss is the Trainer's (the ranks' mean, spike
    included), the rollback names loss_spike, and monitor counts the spike."""
    options = {"guard_enabled": True, "guard_snapshot_interval": 2,
               "fault": {"kind": "loss_spike", "factor": 100.0, "step": 7, "rank": 1}}
    proc = run_torchrun(tmp_path, "9", json.dumps(options))
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(tmp_path / "run.jsonl")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    logged = {e["step"]: e["loss"] for e in ranks[0]["log_history"] if "loss" in e}
    recorded = {e["step"]: e["loss"] for e in events if e["event"] == "train_step"}
    assert sorted(recorded) == sorted(logged) == list(range(1, 10))
    for step, value in logged.items():
        assert recorded[step] == pytest.approx(value, rel=1e-5), (step, recorded, logged)
    assert recorded[7] > 20 * recorded[6]
    rollbacks = [e for e in events if e["event"] == "alert" and e["code"] == "GUARD_ROLLBACK"]
    assert [e["step"] for e in rollbacks] == [7] and "loss_spike" in rollbacks[0]["message"]
    assert ranks[0]["guard"]["trigger_counts"] == ranks[1]["guard"]["trigger_counts"] == {"loss_spike": 1}
    from gradience.cli.monitor import build_monitor_json

    signals = build_monitor_json(tmp_path / "run.jsonl")["signals"]
    assert signals["loss"]["spikes"] >= 1 and 7 in signals["loss"]["spike_steps"]
