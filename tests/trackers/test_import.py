"""`gradience import` and monitor/watch/report given an HF trainer_state.json, output_dir or a
file that is neither telemetry nor an importable log. trainer_state.json files here have the
shapes the Trainer writes (NaN entries, eval-only logs, a resumed run's re-logged steps); a real
Trainer's own files (and its TensorBoard log) are imported in tests/training/test_import_hf.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gradience.cli.main import main
from gradience.telemetry.reader import TelemetryReader
from tests.conftest import run_cli


def _state(tmp_path: Path, log_history: list[dict], **extra) -> Path:
    d = tmp_path / "out"
    d.mkdir(parents=True, exist_ok=True)
    state = {"global_step": max(e["step"] for e in log_history), "max_steps": 6, "train_batch_size": 8,
             "num_train_epochs": 1, "log_history": log_history, **extra}
    # The Trainer writes NaN as Python's json does (a bare NaN token).
    (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return d


def _monitor(path: Path, capsys) -> dict:
    assert main(["monitor", str(path), "--json"]) is None
    return json.loads(capsys.readouterr().out)


def test_a_trainer_state_with_nan_and_evals_reads_as_a_run(tmp_path, capsys):
    logs = [{"step": s, "loss": (float("nan") if s == 3 else 2.0 / s), "learning_rate": 1e-4, "grad_norm": 0.5,
             "epoch": s / 6} for s in range(1, 7)]
    logs.insert(2, {"step": 2, "eval_test_loss": 0.9, "eval_test_accuracy": 0.6, "eval_test_runtime": 0.1,
                    "eval_test_samples_per_second": 320.0, "epoch": 2 / 6})
    logs.append({"step": 6, "eval_train_loss": 0.4, "eval_train_accuracy": 0.9, "eval_train_runtime": 0.1})
    logs.append({"step": 6, "eval_test_loss": 0.7, "eval_test_accuracy": 0.8, "eval_test_runtime": 0.1})
    logs.append({"step": 6, "train_runtime": 3.0, "train_loss": 0.9, "total_flos": 1.0, "epoch": 1.0})
    out = _state(tmp_path, logs)
    obj = _monitor(out, capsys)
    sig = obj["signals"]
    assert obj["file"] == str(out) and sig["status"] == "ok" and sig["last_step"] == 6
    assert sig["loss"]["first"] == 2.0 and sig["loss"]["last"] == pytest.approx(2.0 / 6)
    assert sig["loss"]["nonfinite_count"] == 1 and sig["loss"]["nonfinite_steps"] == [3]
    assert sig["evals"]["test"]["metrics"]["accuracy"] == 0.8 and sig["evals"]["test"]["step"] == 6
    assert sig["evals"]["train"]["metrics"]["accuracy"] == 0.9
    assert sig["gaps"]["acc_gap"] == pytest.approx(0.1)
    assert sig["eval_history"]["test"]["accuracy"] == [0.6, 0.8]

    # The same through `gradience import`: a telemetry v1 file beside the source, the source untouched.
    before = (out / "trainer_state.json").read_bytes()
    assert main(["import", str(out), "--json"]) is None
    written = json.loads(capsys.readouterr().out)
    assert written["format"] == "trainer_state" and written["train_step"] == 6 and written["eval"] == 3
    events = list(TelemetryReader(written["output"]).iter_events())
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert math.isnan(next(e["loss"] for e in events if e.get("step") == 3 and e["event"] == "train_step"))
    assert (out / "trainer_state.json").read_bytes() == before
    with pytest.raises(SystemExit) as exc:  # never overwrites without --force
        main(["import", str(out)])
    assert exc.value.code == 2


def test_eval_only_logs_and_a_resumed_run(tmp_path, capsys):
    evals = [{"step": s, "eval_loss": 1.0 / s, "eval_accuracy": 0.5 + s / 20, "eval_runtime": 0.1}
             for s in (2, 4, 6)]
    obj = _monitor(_state(tmp_path, evals), capsys)
    assert obj["signals"]["evals"]["test"]["metrics"]["accuracy"] == pytest.approx(0.8)
    assert obj["signals"]["loss"]["n"] == 0

    # Resumed from the step-4 checkpoint: steps 3-4 were logged again; the resumed values win.
    first = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4} for s in range(1, 5)]
    again = [{"step": s, "loss": 10.0 + s, "learning_rate": 1e-4} for s in range(3, 7)]
    resumed = _state(tmp_path / "r", first + again)
    sig = _monitor(resumed, capsys)["signals"]
    assert sig["loss"]["last"] == 16.0 and sig["last_step"] == 6


def test_the_newest_checkpoint_is_read_when_the_output_dir_has_no_state(tmp_path, capsys):
    out = tmp_path / "out"
    for step in (2, 4):
        ck = out / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        ck.joinpath("trainer_state.json").write_text(json.dumps(
            {"global_step": step, "max_steps": 4, "log_history": [{"step": s, "loss": 1.0 / s}
                                                                   for s in range(1, step + 1)]}))
    sig = _monitor(out, capsys)["signals"]
    assert sig["last_step"] == 4 and sig["status"] == "ok"


@pytest.mark.parametrize("command", [["monitor"], ["watch", "--once"], ["report", "-o", "-"]])
def test_a_file_that_is_neither_is_one_line_and_exit_2(tmp_path, command):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("".join(f'{{"not": "telemetry", "i": {i}}}\n' for i in range(344)) + "plain text\n" * 118)
    before = bad.read_bytes()
    res = run_cli(*command, str(bad))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.jsonl" in lines[0] and "neither a telemetry file" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and bad.read_bytes() == before
    other = tmp_path / "empty-dir"
    other.mkdir()
    res = run_cli(*command, str(other))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_watch_and_report_read_an_output_dir_directly(tmp_path, capsys):
    out = _state(tmp_path, [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4} for s in range(1, 7)]
                 + [{"step": 6, "eval_loss": 0.5, "eval_accuracy": 0.75, "eval_runtime": 0.1}])
    assert main(["watch", str(out), "--once", "--json"]) is None
    view = json.loads(capsys.readouterr().out)
    assert json.dumps(view).count("0.75") >= 1
    assert main(["report", str(out), "--format", "md", "-o", "-"]) is None
    text = capsys.readouterr().out
    assert "0.75" in text or "75" in text
    assert not (out / "run.jsonl").exists()  # nothing written into the user's directory
