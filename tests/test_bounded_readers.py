"""Hostile nesting in the files the trackers' importer, the bench and the telemetry reader take: one
line, exit 2 (a telemetry line is reported as malformed and the rest read), never an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradience.errors import GradienceError
from tests.conftest import run_cli

DEEP = "[" * 200_000 + "]" * 200_000


def _one_error_line(res) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr[-500:])
    assert "internal error" not in lines[0] and "Traceback" not in res.stderr
    return lines[0]


@pytest.mark.parametrize("cmd", [["import"], ["monitor"], ["report", "-o", "-"]])
def test_deep_trainer_state(tmp_path: Path, cmd: list[str]) -> None:
    state = tmp_path / "trainer_state.json"
    state.write_text('{"log_history": ' + DEEP + "}")
    line = _one_error_line(run_cli(cmd[0], str(state), *cmd[1:]))
    assert str(state) in line


def test_deep_bench_yaml_and_bench_json(tmp_path: Path) -> None:
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("task: " + DEEP + "\n")
    assert "nests deeper" in _one_error_line(run_cli("bench", "run", str(cfg), "--output", str(tmp_path / "o")))
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text('{"schema": ' + DEEP + "}")
    assert "nests deeper" in _one_error_line(run_cli("bench", "report", str(out)))


def test_deep_telemetry_line_is_a_reported_bad_line(tmp_path: Path) -> None:
    from gradience.telemetry import TelemetryReader, TelemetryWriter

    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="r") as w:
        w.run_start({}, {})
        w.train_step(1, loss=1.0)
    with run.open("a") as f:
        f.write('{"schema": "gradience.vnext.telemetry/v1", "x": NaN, "y": ' + DEEP + "}\n")
    reader = TelemetryReader(run)
    assert reader.summarize().last_step == 1
    assert len(reader.issues) == 1 and "nested deeper" in reader.issues[0].message
    res = run_cli("monitor", str(run), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["signals"]["last_step"] == 1


def test_api_raises_the_projects_error(tmp_path: Path) -> None:
    from gradience.bench.config import load_config
    from gradience.trackers.importer import import_events

    state = tmp_path / "trainer_state.json"
    state.write_text('{"log_history": ' + DEEP + "}")
    with pytest.raises(GradienceError):
        import_events(state)
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("task: " + DEEP + "\n")
    with pytest.raises(GradienceError, match="nests deeper"):
        load_config(cfg)
