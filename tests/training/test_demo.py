"""`gradience demo` as a user runs it (offline, reduced steps), and the real MiniLM on SST-2 rows."""

from __future__ import annotations

import json

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import read_events

pytestmark = pytest.mark.integration

# One intra-op thread: on a shared machine OpenMP spin-waits make multi-threaded CPU steps far slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_demo_golden_path_offline_and_appends(cli, tmp_path):
    out = tmp_path / "demo"
    # An earlier run in the same file must survive: the demo appends, never truncates.
    from gradience.telemetry.writer import TelemetryWriter

    with TelemetryWriter(out / "run.jsonl") as w:
        w.run_start({"model_name": "earlier"})
    earlier = (out / "run.jsonl").read_bytes()
    proc = cli("demo", "--steps", "4", "--out", str(out), env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "GRADIENCE DEMO" in text and "RESULTS" in text
    for follow_up in ("gradience check --task sst2", "gradience monitor", "gradience audit --peft-dir",
                      "gradience watch", "gradience report"):
        assert follow_up in text
    assert "Recommendations" in text  # the real `check` ran in-process
    assert (out / "peft" / "adapter_config.json").exists()
    assert (out / "training" / "training_args.json").exists()
    events = read_events(out / "run.jsonl")
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "ok"
    snap = TelemetryReader(out / "run.jsonl").summarize()
    assert snap.gap_missing == [] and snap.gaps["loss_gap"] is not None
    assert snap.config["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert snap.lora_audit is not None

    assert len(TelemetryReader(out / "run.jsonl").runs()) == 2  # the earlier run is still there
    assert (out / "run.jsonl").read_bytes().startswith(earlier)


def test_minilm_on_sst2_rows_json(cli, tmp_path, sst2_dir):
    """The real bundled MiniLM + LoRA on SST-2 rows (--data-dir), summary as --json."""
    out = tmp_path / "sst2"
    proc = cli("demo", "--data-dir", str(sst2_dir), "--steps", "4", "--rank", "4", "--seed", "1", "--json",
               "--out", str(out), env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and result["steps"] == 4
    assert set(result["final_eval"]) == {"test", "train"} and result["final_eval"]["test"]["n"] == 128
    events = read_events(out / "run.jsonl")
    assert [e["step"] for e in events if e["event"] == "train_step"] == [1, 4]
    cfg = events[0]["config"]
    assert cfg["lora"]["r"] == 4 and cfg["training"]["seed"] == 1 and "sst2" in cfg["dataset_name"]
    assert cfg["task_profile"] == "easy_classification"


def test_demo_bad_data_dir_is_one_line_error(cli, tmp_path):
    proc = cli("demo", "--steps", "1", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "train.tsv" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_guard_injection_via_python_module(tmp_path):
    """`python -m gradience.demo --guard --inject-nan` recovers and says so."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "g"
    proc = subprocess.run([sys.executable, "-m", "gradience.demo", "--guard", "--inject-nan", "--steps", "12",
                           "--inject-step", "6", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in ("Guard:       True", "Inject NaN:  True @ step 6", "INJECTING NaN at step 6", "Corrupted:",
                 "Success:   True", "Integrity: OK", "Rollbacks: 1", "Recoveries: 1"):
        assert line in text, line
    snap = TelemetryReader(out / "run.jsonl").summarize()
    assert snap.guard["rollbacks"] == 1 and snap.status == "ok"
    # Recorded as injected, and `monitor` blames the injection, not fp16 or the weights.
    assert [(f["step"], f["kind"]) for f in snap.injected_faults] == [(6, "nan_param")]
    assert "lora_B" in snap.injected_faults[0]["target"]
    from gradience.policy.engine import run_recommendations

    recs = {r.action: r for r in run_recommendations(snap)}
    assert "investigate_nonfinite" not in recs and "review_guard_rollbacks" not in recs
    assert recs["review_injected_faults"].severity == "warning"
    assert "nan_param" in recs["review_injected_faults"].message


def test_demo_rejects_two_faults_and_out_of_range_step(cli, tmp_path):
    proc = cli("demo", "--inject-nan", "--inject-inf", "--out", str(tmp_path))
    assert proc.returncode == 2 and "choose one" in proc.stderr
    proc = cli("demo", "--inject-nan", "--steps", "5", "--inject-step", "9", "--out", str(tmp_path))
    assert proc.returncode == 2 and "outside the run" in proc.stderr
    # A guarded spike in the first steps (before any baseline) is caught by the spike limit
    # (10 × the loss of guessing): no step is refused.
    from gradience.training.demo import DemoOptions, validate_options

    validate_options(DemoOptions(guard=True, inject="loss_spike", inject_step=1))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_healthy_demo_seeds_never_trigger_the_guard(tmp_path, seed):
    """False positives: the default demo with the guard on, 10 seeds → zero triggers."""
    from gradience.training.demo import DemoOptions, run_demo

    result = run_demo(DemoOptions(out=tmp_path, seed=seed, guard=True))
    assert result.status == "ok"
    g = result.guard
    assert g["detections"] == 0 and g["rollbacks"] == 0 and g["lr_backoffs"] == 0, g
