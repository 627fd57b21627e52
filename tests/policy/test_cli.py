"""`gradience check` / `gradience monitor` as a user runs them: exit codes, JSON shape, errors,
compatibility files, live files, in-process use, and no torch import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradience.cli.main import app
from gradience.telemetry import TelemetryWriter
from tests.conftest import run_cli, shared_path

DATA = Path(__file__).parent / "data"
MONITOR_KEYS = {"file", "run_id", "config", "signals", "alerts", "recommendations", "telemetry_issues"}


def _memorising(path: Path, run_id: str = "m1", lr: float = 2e-4) -> None:
    with TelemetryWriter(path, run_id=run_id) as w:
        w.run_start({"task_profile": "hard_reasoning", "optimizer": {"lr": lr}, "lora": {"r": 8, "alpha": 8}})
        w.train_step(1, loss=1.0, lr=lr, grad_norm=1.0)
        w.eval(10, split="train", metrics={"loss": 0.2})
        w.eval(10, split="test", metrics={"loss": 1.0})


# -- check -----------------------------------------------------------------------------
def test_check_golden_path_invocation_text_and_json(tmp_path: Path) -> None:
    peft = tmp_path / "peft"
    training = tmp_path / "training"
    peft.mkdir()
    training.mkdir()
    shutil.copy(DATA / "peft_minilm" / "adapter_config.json", peft)
    shutil.copy(DATA / "training_args.json", training)
    args = ["check", "--task", "sst2", "--peft-dir", str(peft), "--training-dir", str(training)]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "profile easy_classification (inferred from dataset 'sst2')" in res.stdout
    assert "reduce_rank_for_efficiency" in res.stdout and "prefer_attention_only_for_efficiency" in res.stdout
    res = run_cli(*args, "--json", "--verbose")
    obj = json.loads(res.stdout)
    assert set(obj) == {"config", "recommendations"}
    assert obj["config"]["lora"]["r"] == 32 and obj["config"]["optimizer"]["lr"] == 2e-4
    recs = obj["recommendations"]
    assert {"severity", "action", "message", "rationale", "confidence", "scope", "evidence"} <= set(recs[0])
    ranks = ["critical", "error", "warning", "info"]
    assert [ranks.index(r["severity"]) for r in recs] == sorted(ranks.index(r["severity"]) for r in recs)


def test_check_verbose_shows_why_confidence_evidence() -> None:
    res = run_cli("check", "--task", "gsm8k", "--lr", "3e-4", "--r", "64", "--alpha", "64",
                  "--targets", "q_proj,v_proj,up_proj", "--verbose")
    assert res.returncode == 0
    assert "why:" in res.stdout and "confidence 0.80" in res.stdout and "evidence: lr=" in res.stdout


def test_check_fail_on_exit_codes() -> None:
    base = ["check", "--task", "sst2", "--lr", "1e-3", "--r", "8", "--alpha", "16", "--targets", "query,value"]
    assert app.main([*base, "--fail-on", "warning"], standalone_mode=False) == 1
    assert app.main([*base, "--fail-on", "error"], standalone_mode=False) in (0, None)
    assert app.main([*base, "--weight-decay", "-0.1", "--fail-on", "error"], standalone_mode=False) == 1
    # the installed console script turns it into the process exit code
    exe = Path(sys.executable).with_name("gradience")
    res = subprocess.run([str(exe), *base, "--fail-on", "warning"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "lower_lr" in res.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["check"], "nothing to check"),
    (["check", "--peft-dir", "does/not/exist"], "directory not found"),
    (["check", "--training", "nope.json"], "file not found"),
    (["check", "--peft", "a.json", "--peft-dir", "."], "not both"),
])
def test_check_bad_input_is_one_line_exit_2(args: list[str], fragment: str) -> None:
    res = run_cli(*args)
    assert res.returncode == 2
    assert fragment in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- monitor ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bench_probe_distilbert_r32.jsonl", "hf_callback_tiny_distilbert.jsonl",
                                  "vnext_minimal.jsonl"])
def test_monitor_compat_files(name: str) -> None:
    path = shared_path("compat", "telemetry", name)
    res = run_cli("monitor", str(path), "--json")
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert set(obj) == MONITOR_KEYS and obj["telemetry_issues"] == []
    assert obj["signals"]["status"] == "ok" and obj["recommendations"]
    text = run_cli("monitor", str(path), "--verbose")
    assert text.returncode == 0 and "Recommendations" in text.stdout


def test_hf_callback_eval_split_is_held_out_and_gap_reported(tmp_path: Path) -> None:
    src = shared_path("compat", "telemetry", "hf_callback_tiny_distilbert.jsonl")
    obj = json.loads(run_cli("monitor", str(src), "--json").stdout)
    assert obj["signals"]["evals"]["test"]["split_raw"] == "eval"
    assert "no train-split eval" in obj["signals"]["gap_missing"]
    assert obj["recommendations"][0]["action"] == "log_train_test_ppl"
    # with a train-split eval beside it, the gap is computed against the "eval" split
    lines = src.read_text().splitlines()
    held = json.loads(next(ln for ln in lines if '"event": "eval"' in ln))
    train = dict(held, split="train", metrics={"loss": 0.3})
    path = tmp_path / "hf.jsonl"
    path.write_text("\n".join([*lines[:-1], json.dumps(train), lines[-1]]) + "\n")
    obj = json.loads(run_cli("monitor", str(path), "--json").stdout)
    assert obj["signals"]["gaps"]["loss_gap"] == pytest.approx(0.6929733157157898 / 0.3)
    assert obj["signals"]["gaps"]["held_out_split"] == "test"


def test_monitor_fail_on_gap_threshold_and_run_id(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _memorising(path, "first", lr=2e-4)
    with TelemetryWriter(path, run_id="second") as w:  # a later, healthy run in the same file
        w.run_start({"task_profile": "hard_reasoning", "optimizer": {"lr": 5e-5}, "lora": {"r": 8, "alpha": 8}})
        w.eval(10, split="train", metrics={"loss": 0.5})
        w.eval(10, split="test", metrics={"loss": 0.55})
    assert app.main(["monitor", str(path), "--fail-on", "warning"], standalone_mode=False) in (0, None)
    assert app.main(["monitor", str(path), "--run-id", "first", "--fail-on", "warning"], standalone_mode=False) == 1
    assert app.main(["monitor", str(path), "--run-id", "first", "--gap-threshold", "3", "--fail-on", "warning"],
                    standalone_mode=False) in (0, None)
    res = run_cli("monitor", str(path), "--run-id", "nope")
    assert res.returncode == 2 and "run id 'nope' not found" in res.stderr and "first, second" in res.stderr
    res = run_cli("monitor", str(path), "--gap-threshold", "0")
    assert res.returncode == 2


def test_monitor_still_being_written_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    with TelemetryWriter(path, run_id="live") as w:
        w.run_start({"task_profile": "easy_classification"})
        for i in range(1, 6):
            w.train_step(i, loss=1.0 / i, grad_norm=1.0)
        w._ended = True  # simulate a process that is still running: no run_end written
    with open(path, "ab") as f:
        f.write(b"this is not json\n")
        f.write(b'{"schema": "gradience.vnext.telemetry/v1", "ts": 9, "run_id": "live", "ev')  # torn last line
    res = run_cli("monitor", str(path), "--json")
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["signals"]["status"] == "running" and obj["signals"]["loss"]["n"] == 5
    assert [(i["line"], i["kind"]) for i in obj["telemetry_issues"]] == [(7, "malformed_json"),
                                                                       (8, "truncated_last_line")]
    text = run_cli("monitor", str(path)).stdout
    assert "running (no run_end yet)" in text and text.count("line 7: malformed_json") == 1
    strict = run_cli("monitor", str(path), "--strict-schema")
    assert strict.returncode == 2 and "line 7" in strict.stderr and "Traceback" not in strict.stderr


def test_monitor_missing_file_and_empty_file(tmp_path: Path) -> None:
    res = run_cli("monitor", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 2 and "telemetry file not found" in res.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = run_cli("monitor", str(empty))
    assert res.returncode == 0 and "no events yet" in res.stdout


def test_in_process_invocation_prints_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo calls the commands through app.main(..., standalone_mode=False)."""
    path = tmp_path / "run.jsonl"
    _memorising(path)
    assert app.main(["monitor", str(path), "--verbose"], standalone_mode=False) in (0, None)
    assert app.main(["check", str(path)], standalone_mode=False) in (0, None)
    out = capsys.readouterr()
    assert "memorization_detected" in out.out and "\x1b[" not in out.out and out.err == ""


# -- startup cost ----------------------------------------------------------------------
HEAVY = ("torch", "transformers", "peft", "safetensors", "accelerate")


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom gradience.cli.main import app\n"
            f"app.main({argv!r}, standalone_mode=False)\n"
            "sys.stderr.write('\\nMODULES=' + ','.join(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MODULES=" in res.stderr, res.stderr[-2000:]
    return set(res.stderr.rsplit("MODULES=", 1)[1].split(","))


def test_help_and_real_runs_do_not_import_torch() -> None:
    run = str(shared_path("compat", "telemetry", "vnext_minimal.jsonl"))
    adapter = str(shared_path("compat", "adapters", "tiny_lora"))
    for argv in (["check", "--help"], ["monitor", "--help"], ["monitor", run, "--verbose"], ["monitor", run, "--json"],
                 ["check", "--peft-dir", adapter, "--task", "gsm8k", "--json"]):
        mods = _modules_after(argv)
        assert not [m for m in HEAVY if m in mods], f"{argv} imported {[m for m in HEAVY if m in mods]}"


def test_monitor_prints_non_finite_recorded_audit_values_as_missing(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run) as w:
        w.run_start({"model_name": "m"})
        w.emit("metrics", step=1, kind="lora_audit",
               metrics={"utilization_mean": float("inf"), "by_type": {"attn": {"utilization_mean": 0.25}}})
    p = run_cli("monitor", str(run))
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "utilization mean" in ln)
    assert "utilization mean — (attn 25%)" in line and "inf" not in line.lower()
