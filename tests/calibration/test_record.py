"""The calibration corpus recorder (benchmarks/calibration_record.py).

The slow test re-records the ``--quick`` corpus (one seed of every profile, fewer steps) and checks
that every file parses, that the manifest describes it, and that each profile has the property it
exists for. The fast test holds the committed corpus to the same checks and its size budget."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import calibration_record as cr

from tests.conftest import REPO_ROOT

CORPUS = REPO_ROOT / "tests" / "data" / "calibration"
MAX_CORPUS_BYTES = 3_000_000
RUN_KEYS = {"file", "profile", "variant", "seed", "split", "intent", "labels", "injected", "notes", "observed"}


def load_manifest(root: Path) -> dict[str, Any]:
    doc = json.loads((root / "manifest.json").read_text())
    assert doc["version"] == 1
    return doc


def check_entry_and_file(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Manifest keys, a clean parse, a train_step at every step, evals with the split's metrics."""
    assert RUN_KEYS <= set(entry), entry
    assert entry["split"] in ("fit", "test")
    run = cr.read_run(root / entry["file"])
    assert run["issues"] == [], run["issues"]
    steps = sorted({s for s, _ in run["losses"]})
    assert steps == list(range(1, steps[-1] + 1)), "telemetry_interval=1: every step is recorded"
    assert len(run["starts"]) >= 1 and run["starts"][0]["meta"]["telemetry_interval"] == 1
    assert run["starts"][0]["meta"]["guard_enabled"] is False
    assert {e["split"] for e in run["evals"]} == {"test", "train"}
    labels = entry["labels"]
    if entry["profile"] == "causal_lm":
        assert labels["majority_rate"] is None and labels["n_labels"] is None
        assert all("ppl" in e["metrics"] for e in run["evals"])
    else:
        assert labels["n_labels"] == 2 and 0.5 <= labels["majority_rate"] < 1
        assert all("accuracy" in e["metrics"] for e in run["evals"])
    return run


def losses_at(run: dict[str, Any], step: int) -> float:
    return dict(run["losses"])[step]


def grads_at(run: dict[str, Any], step: int) -> float:
    return dict(run["grad_norms"])[step]


def check_profile(root: Path, entry: dict[str, Any], run: dict[str, Any], *, quick: bool = False) -> None:
    """The property each profile exists for (``quick``: the MiniLM runs are too short to show theirs)."""
    profile, obs = entry["profile"], entry["observed"]
    finite_losses = [v for _, v in run["losses"] if math.isfinite(v)]
    if profile == "divergence":
        boost = entry["lr_boost"]["step"]
        blow = cr.divergence_step(run["losses"])
        assert blow is not None and blow >= boost, (entry["file"], blow)
        assert run["starts"][0]["config"]["training"]["max_grad_norm"] == 0.0
    elif profile == "fault":
        (inj,) = entry["injected"]
        step, kind = inj["step"], inj["kind"]
        loss, grad = losses_at(run, step), grads_at(run, step)
        assert cr.divergence_step([(s, v) for s, v in run["losses"] if s < step]) is None, "healthy before"
        recorded = [e for e in run["events"] if e.get("event") == "metrics" and e.get("kind") == "fault_injection"]
        assert [(e["step"], e["metrics"]["kind"]) for e in recorded] == [(step, kind)], "recorded as injected"
        if kind in ("nan_loss", "inf_loss", "nan_param", "inf_param"):
            assert not math.isfinite(loss)
        if kind in ("nan_grad", "inf_grad", "nan_param", "inf_param"):
            assert not math.isfinite(grad)
        if kind == "loss_spike":
            assert loss >= 50 * statistics.median(v for _, v in run["losses"][:step + 5] if math.isfinite(v))
        if kind == "grad_explosion":
            assert grad >= 1e4
    elif profile == "amp_overflow":
        bad = [s for s, v in run["grad_norms"] if not math.isfinite(v)]
        assert bad and bad == entry["amp_skipped_steps"]
        assert all(math.isfinite(v) for _, v in run["losses"]), "the scaler's overflows leave the loss finite"
        assert bad[0] == 1
        assert obs["divergence_step"] is None
    elif profile == "resume":
        starts = run["starts"]
        assert len(starts) == 2 and starts[0]["run_id"] == starts[1]["run_id"]
        assert starts[0]["meta"]["resumed_from_step"] is None
        assert starts[1]["meta"]["resumed_from_step"] == entry["checkpoint_step"]
        assert [e["status"] for e in run["ends"]] == ["ok"], "the killed segment has no run_end"
        steps = [e["step"] for e in run["events"] if e.get("event") == "train_step"]
        replayed = range(entry["checkpoint_step"] + 1, entry["killed_at_step"] + 1)
        assert all(steps.count(s) == 2 for s in replayed)
        assert len(steps) == run["losses"][-1][0] + len(replayed)
    elif profile == "grad_accum":
        cfg = run["starts"][0]["config"]["training"]
        assert cfg["gradient_accumulation"] == 4 and cfg["batch_size"] == 4
        assert entry["samples_per_step"] == 16
        ratios = [e["samples_per_second"] / e["steps_per_second"] for e in run["events"]
                  if e.get("event") == "train_step" and e.get("steps_per_second")]
        assert ratios and all(abs(r - 16) < 1e-6 for r in ratios)
    elif profile == "no_learning":
        assert run["starts"][0]["config"]["optimizer"]["lr"] == 0.0
        assert obs["test_accuracy"] <= entry["labels"]["majority_rate"] + 0.01
    elif profile == "collapse" and not quick:
        assert obs["test_accuracy"] <= entry["labels"]["majority_rate"] + 0.01
    elif profile == "memorisation":
        assert obs["train_accuracy"] - obs["test_accuracy"] >= 0.10
    elif profile == "causal_lm":
        evals = [e["metrics"]["loss"] for e in run["evals"] if e["split"] == "test"]
        assert evals[-1] < evals[0], "the causal LM learns"
    if entry["intent"] in ("healthy", "memorisation", "not_learning"):
        assert obs["divergence_step"] is None and len(finite_losses) == len(run["losses"])
    if entry["intent"] != "not_learning" and profile not in ("fault",):
        # κ̃ is sampled every 5 steps (LoRA B starts at 0: the first samples may be undefined).
        assert obs["kappa_samples"] >= 1


def test_committed_corpus_matches_its_manifest() -> None:
    doc = load_manifest(CORPUS)
    files = {p.name for p in CORPUS.glob("*.jsonl")}
    assert files == {e["file"] for e in doc["runs"]}
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) <= MAX_CORPUS_BYTES
    assert doc["quick"] is False
    profiles = {e["profile"] for e in doc["runs"]}
    assert {"demo", "sst2_b16", "sst2_b4", "collapse", "causal_lm", "memorisation", "warmup_cosine",
            "amp_overflow", "resume", "grad_accum", "no_learning", "divergence", "fault"} <= profiles
    assert {e["split"] for e in doc["runs"]} == {"fit", "test"}
    for e in doc["runs"]:
        assert (e["profile"] == "fault") == bool(e["injected"])
        check_profile(CORPUS, e, check_entry_and_file(CORPUS, e))


@pytest.mark.slow
def test_quick_corpus_records_every_profile(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "calibration_record.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = load_manifest(tmp_path)
    assert doc["quick"] is True
    expected = {p.name for p in cr.profiles()}
    assert {e["variant"] for e in doc["runs"]} == expected
    assert {p.name for p in tmp_path.glob("*.jsonl")} == {e["file"] for e in doc["runs"]}
    # one progress line per run, with its duration
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("  ") and ln.rstrip().endswith(tuple("0123456789"))]
    assert len(lines) == len(doc["runs"])
    for entry in doc["runs"]:
        run = check_entry_and_file(tmp_path, entry)
        check_profile(tmp_path, entry, run, quick=True)
