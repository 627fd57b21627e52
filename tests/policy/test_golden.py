"""Golden text and JSON output of `gradience monitor` for crafted runs.

Regenerate on purpose only: ``GRADIENCE_UPDATE_GOLDEN=1 pytest tests/policy/test_golden.py``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

import gradience.telemetry.writer as writer_mod
from gradience.cli._output import dumps_json
from gradience.cli.monitor import build_monitor_json, render_monitor_text
from tests.conftest import run_cli
from tests.policy.crafted import RUNS, FakeClock

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GRADIENCE_UPDATE_GOLDEN") == "1"
WIDTH = 100


def _write(name: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(writer_mod, "time", FakeClock())
    RUNS[name](directory / f"{name}.jsonl")
    return f"{name}.jsonl"


def _text(obj: dict, verbose: bool) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=WIDTH, color_system=None, force_terminal=False, highlight=False)
    render_monitor_text(con, obj, verbose=verbose)
    return buf.getvalue()


def _compare(actual: str, golden: Path) -> None:
    if UPDATE:
        golden.write_text(actual, encoding="utf-8")
    assert golden.exists(), f"missing golden {golden.name}; run with GRADIENCE_UPDATE_GOLDEN=1"
    assert actual == golden.read_text(encoding="utf-8"), f"{golden.name} changed (regenerate only on purpose)"


@pytest.mark.parametrize("name", list(RUNS))
def test_monitor_golden(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = _write(name, tmp_path, monkeypatch)
    obj = build_monitor_json(rel)
    _compare(dumps_json(obj) + "\n", GOLDEN / f"{name}.json")
    _compare(_text(obj, verbose=False), GOLDEN / f"{name}.txt")
    _compare(_text(obj, verbose=True), GOLDEN / f"{name}.verbose.txt")


EXPECTED_ACTIONS = {
    "healthy": ["config_ok"],
    "memorising": ["memorization_detected", "lower_lr"],
    "diverging_nan": ["investigate_nonfinite", "investigate_run_error", "stabilize_gradients"],
    "guard_rollbacks": ["review_guard_rollbacks", "investigate_loss_spikes"],  # κ̃ DANGER: info only
    "oversized_rank": ["compress_rank", "low_utilization", "compress_mlp_targets"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_crafted_run_headline_recommendations(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Independent of the goldens: the recommendations each crafted run exists to trigger."""
    monkeypatch.chdir(tmp_path)
    obj = build_monitor_json(_write(name, tmp_path, monkeypatch))
    actions = [r["action"] for r in obj["recommendations"]]
    for want in EXPECTED_ACTIONS[name]:
        assert want in actions, f"{name}: {want} missing from {actions}"
    assert actions[: len(EXPECTED_ACTIONS[name])] == EXPECTED_ACTIONS[name]


def test_cli_text_matches_golden_without_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = _write("guard_rollbacks", tmp_path, monkeypatch)
    res = run_cli("monitor", rel, cwd=tmp_path, env={"COLUMNS": str(WIDTH)})
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stdout
    assert res.stdout == (GOLDEN / "guard_rollbacks.txt").read_text(encoding="utf-8")
    res = run_cli("monitor", rel, "--json", cwd=tmp_path)
    assert json.loads(res.stdout) == json.loads((GOLDEN / "guard_rollbacks.json").read_text(encoding="utf-8"))
