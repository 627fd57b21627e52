"""`gradience demo` as a user runs it (offline, reduced steps), and the real MiniLM on SST-2 rows."""

from __future__ import annotations

import json

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import read_events

pytestmark = pytest.mark.integration


def test_demo_golden_path_offline_and_appends(cli, tmp_path):
    out = tmp_path / "demo"
    proc = cli("demo", "--steps", "4", "--out", str(out))
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

    # A second demo into the same directory appends a new run; the first is kept intact.
    before = (out / "run.jsonl").read_bytes()
    proc2 = cli("demo", "--steps", "1", "--out", str(out), "--json", "--rank", "4", "--seed", "1")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    result = json.loads(proc2.stdout)
    assert result["status"] == "ok" and result["steps"] == 1
    assert (out / "run.jsonl").read_bytes().startswith(before)
    reader = TelemetryReader(out / "run.jsonl")
    assert len(reader.runs()) == 2
    assert reader.latest_config().lora.r == 4


def test_minilm_on_sst2_rows(tmp_path, sst2_dir):
    """The real bundled MiniLM + LoRA on 64 SST-2 rows through the callback."""
    from gradience.training.demo import DemoOptions, run_demo

    result = run_demo(DemoOptions(out=tmp_path, steps=4, data_dir=sst2_dir, n_train=64, n_eval=32,
                                  batch_size=16, eval_every=4, telemetry_interval=1))
    assert result.status == "ok" and result.steps == 4
    events = read_events(result.run_jsonl)
    assert [e["step"] for e in events if e["event"] == "train_step"] == [1, 2, 3, 4]
    assert {e["split"] for e in events if e["event"] == "eval"} == {"test", "train"}
    assert result.final_eval["test"]["n"] == 32
    cfg = events[0]["config"]
    assert cfg["lora"]["r"] == 8 and cfg["task_profile"] == "easy_classification"


def test_demo_bad_data_dir_is_one_line_error(cli, tmp_path):
    proc = cli("demo", "--steps", "1", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "train.tsv" in proc.stderr and "Traceback" not in proc.stderr
