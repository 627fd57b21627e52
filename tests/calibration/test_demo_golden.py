"""`monitor` and `watch --once` on healthy runs of the calibration corpus (the demo's task on MiniLM and
real SST-2 at batch 16): golden output, and no item at warning or above — the corpus labels these runs
healthy, so any such item would be a false alarm.

Regenerate on purpose only: ``GRADIENCE_UPDATE_GOLDEN=1 pytest tests/calibration/test_demo_golden.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "calibration"
GOLDEN = Path(__file__).parent / "golden"
PLAIN = {"NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"}
HEALTHY = ["demo_s1", "sst2_b16_s0"]
ALARM = {"warning", "error", "critical"}


def _compare(actual: str, golden: Path) -> None:
    if os.environ.get("GRADIENCE_UPDATE_GOLDEN") == "1":
        golden.write_text(actual, encoding="utf-8")
    assert golden.exists(), f"missing golden {golden.name}; run with GRADIENCE_UPDATE_GOLDEN=1"
    assert actual == golden.read_text(encoding="utf-8"), f"{golden.name} changed (regenerate only on purpose)"


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_corpus_runs_raise_no_alarm(cli, tmp_path: Path, name: str) -> None:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    assert any(r["file"] == f"{name}.jsonl" for r in manifest["runs"])
    # cwd + relative path: the output shows the path as typed, so it must not be a tmp path.
    shutil.copy(CORPUS / f"{name}.jsonl", tmp_path / "run.jsonl")
    mon = cli("monitor", "run.jsonl", "--json", env=PLAIN, cwd=tmp_path)
    assert mon.returncode == 0, mon.stderr
    obj = json.loads(mon.stdout)
    recs = [(r["severity"], r["action"]) for r in obj["recommendations"]]
    assert not [r for r in recs if r[0] in ALARM], recs
    alerts = [(a.get("severity"), a.get("code")) for a in obj["alerts"]]
    assert not [a for a in alerts if a[0] in ALARM], alerts
    text = cli("monitor", "run.jsonl", env=PLAIN, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    _compare(text.stdout, GOLDEN / f"{name}.monitor.txt")
    once = cli("watch", "run.jsonl", "--once", env=PLAIN, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert "health OK" in once.stdout, once.stdout
    _compare(once.stdout, GOLDEN / f"{name}.watch.txt")
    gate = cli("monitor", "run.jsonl", "--fail-on", "warning", env=PLAIN, cwd=tmp_path)
    assert gate.returncode == 0, gate.stdout
