"""--run-id takes the full id or any unique prefix (commands show 8 characters), in monitor, watch and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradience.errors import GradienceError
from gradience.telemetry import TelemetryWriter
from gradience.telemetry.run_select import resolve_run_id
from tests.conftest import run_cli

IDS = ("3f2a9c1e-0000-4000-8000-000000000001", "3f2a77aa-0000-4000-8000-000000000002",
       "b7c1d2e3-0000-4000-8000-000000000003")


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "run.jsonl"
    for i, rid in enumerate(IDS):
        with TelemetryWriter(path, run_id=rid) as w:
            w.run_start({"model_name": f"model-{i}"}, {})
            w.train_step(1, loss=1.0 + i, lr=1e-4)
            w.run_end("ok")
    return path


def test_rule() -> None:
    assert resolve_run_id(None, IDS, "f") == IDS[-1]
    assert resolve_run_id("3f2a9c1e", IDS, "f") == IDS[0]
    assert resolve_run_id(IDS[1], IDS, "f") == IDS[1]
    with pytest.raises(GradienceError, match="matches 2 runs"):
        resolve_run_id("3f2a", IDS, "f")
    with pytest.raises(GradienceError, match="not found"):
        resolve_run_id("zzz", IDS, "f")


@pytest.mark.parametrize("argv", [["monitor", "--json"], ["report", "--format", "md", "-o", "-"],
                                  ["watch", "--once"]])
def test_eight_character_prefix_selects_the_run(tmp_path: Path, argv: list[str]) -> None:
    path = _file(tmp_path)
    res = run_cli(argv[0], str(path), *argv[1:], "--run-id", IDS[0][:8])
    assert res.returncode == 0, res.stderr
    if argv[0] == "monitor":
        assert json.loads(res.stdout)["run_id"] == IDS[0]
    else:
        assert "model-0" in res.stdout and "model-2" not in res.stdout.split("runs")[0]


@pytest.mark.parametrize("cmd", ["monitor", "report"])
def test_ambiguous_prefix_is_a_one_line_error_listing_the_runs(tmp_path: Path, cmd: str) -> None:
    path = _file(tmp_path)
    res = run_cli(cmd, str(path), "--run-id", "3f2a")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "matches 2 runs" in lines[0] and IDS[0] in lines[0] and IDS[1] in lines[0]
