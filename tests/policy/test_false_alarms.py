"""Alarm sources must not cry wolf: healthy runs get no warning-or-worse item, failures still do.

Each case is a crafted run written with the real TelemetryWriter and read back through
``monitor`` (the same snapshot ``watch`` and ``report`` read).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gradience.cli.monitor import build_monitor_json
from gradience.telemetry import TelemetryWriter
from tests.conftest import run_cli

WARNING_OR_WORSE = ("warning", "error", "critical")


def _cfg(**training: Any) -> dict[str, Any]:
    return {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "dataset_name": "sst2",
            "task_profile": "easy_classification", "optimizer": {"name": "adamw_torch", "lr": 5e-4},
            "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
            "training": {"batch_size": 16, "max_steps": 100, "max_grad_norm": 1.0, **training}}


def _recs(path: Path) -> dict[str, dict[str, Any]]:
    return {r["action"]: r for r in build_monitor_json(path)["recommendations"]}


def _loud(recs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(a for a, r in recs.items() if r["severity"] in WARNING_OR_WORSE)


# -- AMP overflows the scaler handled -------------------------------------------------------------
def _amp_run(path: Path, *, guard: bool, nan_loss: bool = False, rollbacks: int = 0,
             overflow_at_end: bool = False) -> None:
    """fp16 with a grad scaler whose first 8 steps overflow (non-finite gradient norm, finite loss)."""
    with TelemetryWriter(path, run_id="amp") as w:
        w.run_start(_cfg(dtype="fp32"), {"framework": "pytorch", "amp": {"dtype": "float16", "grad_scaler": True}})
        for i in range(1, 101):
            g = math.inf if i <= 8 or (overflow_at_end and i == 100) else 1.0
            loss = math.nan if nan_loss and i == 60 else 0.7 * math.exp(-i / 60) + 0.2
            w.train_step(i, loss=loss, lr=5e-4, grad_norm=g)
        w.eval(100, split="train", metrics={"loss": 0.3, "accuracy": 0.86})
        w.eval(100, split="test", metrics={"loss": 0.33, "accuracy": 0.84})
        if guard:
            w.metrics("guard", {"action": "summary", "snapshots": 2, "rollbacks": rollbacks, "lr_backoffs": rollbacks,
                                "final_lr_scale": 0.5 ** rollbacks, "integrity_status": "OK", "amp_overflows": 8},
                      step=100, action="summary")


def test_amp_overflows_the_scaler_handled_are_information(tmp_path: Path) -> None:
    for guard in (True, False):
        path = tmp_path / f"amp_{guard}.jsonl"
        _amp_run(path, guard=guard)
        recs = _recs(path)
        assert "investigate_nonfinite" not in recs and _loud(recs) == [], recs
        note = recs["note_amp_overflows"]
        assert note["severity"] == "info" and "skipped 8 overflow steps" in note["message"]
        assert "config_ok" in recs  # informational: nothing to change
        res = run_cli("monitor", str(path), "--fail-on", "error")
        assert res.returncode == 0, res.stdout + res.stderr


def test_real_nonfinite_values_stay_errors(tmp_path: Path) -> None:
    cases = {"nan_loss": {"guard": True, "nan_loss": True}, "rolled_back": {"guard": True, "rollbacks": 1},
             "still_overflowing": {"guard": False, "overflow_at_end": True}, "no_scaler": None}
    for name, kw in cases.items():
        path = tmp_path / f"{name}.jsonl"
        if kw is None:  # the same non-finite gradients without any sign of a grad scaler
            with TelemetryWriter(path, run_id="plain") as w:
                w.run_start(_cfg(), {"framework": "pytorch"})
                for i in range(1, 41):
                    w.train_step(i, loss=0.5, lr=5e-4, grad_norm=math.inf if i <= 3 else 1.0)
        else:
            _amp_run(path, **kw)
        recs = _recs(path)
        assert recs["investigate_nonfinite"]["severity"] == "error" and "note_amp_overflows" not in recs, name
    res = run_cli("monitor", str(tmp_path / "nan_loss.jsonl"), "--fail-on", "error")
    assert res.returncode == 1


# -- healthy demo-like run: nothing warning-or-worse from any source ------------------------------
def _classifier_run(path: Path, *, train: list[tuple[float, float]], test: list[tuple[float, float]],
                    majority: float | None = 0.51, n_labels: int | None = 2, kappa_danger: bool = False,
                    meta: dict[str, Any] | None = None) -> None:
    """A classifier with one (accuracy, loss) pair per eval and split, evals every 50 steps."""
    cfg = _cfg()
    if n_labels is not None:
        cfg["n_labels"] = n_labels
    with TelemetryWriter(path, run_id="clf") as w:
        w.run_start(cfg, {"framework": "transformers.Trainer", **(meta or {})})
        steps = 50 * len(test)
        for i in range(1, steps + 1):
            w.train_step(i, loss=0.69 * math.exp(-i / 40) + 0.02, lr=5e-4, grad_norm=1.0 + 0.1 * math.sin(i),
                         grad_norm_clipped=1.0)
            if kappa_danger and i % 10 == 0:  # LoRA's update grows from B = 0: κ̃ moves fast early on
                payload = {"kappa_tilde": 5.0 * 1.02 ** i, "risk_level": "DANGER", "slope": 0.02, "volatility": 0.0,
                           "window": 5}
                w.metrics("spectral", payload, step=i)
                if i == 10:
                    w.alert("info", "SPECTRAL_DANGER", "κ̃: changing fast", step=i, context=payload)
            if i % 50 == 0:
                k = i // 50 - 1
                extra = {"majority_rate": majority} if majority is not None else {}
                w.eval(i, split="train", metrics={"accuracy": train[k][0], "loss": train[k][1], **extra})
                w.eval(i, split="test", metrics={"accuracy": test[k][0], "loss": test[k][1], **extra})


def test_healthy_demo_like_run_raises_no_warning_anywhere(tmp_path: Path) -> None:
    from gradience.report.build import build_report
    from gradience.report.markdown import render_markdown
    from gradience.watch.render import overall_health

    path = tmp_path / "demo.jsonl"
    # 88 % held-out accuracy, 9 points below train; loss ratio 2.8 (train loss → 0); κ̃ DANGER throughout.
    _classifier_run(path, train=[(0.90, 0.20), (0.97, 0.10)], test=[(0.85, 0.35), (0.88, 0.28)], kappa_danger=True)
    obj = build_monitor_json(path)
    recs = {r["action"]: r for r in obj["recommendations"]}
    assert _loud(recs) == [], recs
    assert "memorization_detected" not in recs and "lower_lr" not in recs and "not_learning" not in recs
    assert recs["note_loss_gap"]["severity"] == "info" and recs["review_spectral_risk"]["severity"] == "info"
    assert not [a for a in obj["alerts"] if a["severity"] in WARNING_OR_WORSE]
    sig = obj["signals"]
    assert overall_health(sig["grad_norm"]["level"], sig["spectral"]["risk_level"])[0] == "OK"
    gen = sig["generalisation"]
    assert gen["signal"] == "acc_gap" and not gen["memorising"] and not gen["not_learning"]
    assert gen["chance_level"] == 0.51 and gen["held_out_trend"]["trend"] == "rising"
    res = run_cli("monitor", str(path), "--fail-on", "warning")
    assert res.returncode == 0, res.stdout
    assert "loss ×2.8 (test/train, information only)" in res.stdout
    assert "accuracy +9.0 pts (train − test; memorisation at ≥ 10 pts)" in res.stdout
    md = render_markdown(build_report(path))
    assert "changing fast" in md and "A neutral diagnostic, not an alarm." in md
    assert "loss_gap **2.8 (information only)**" in md


# -- generalisation per task type ----------------------------------------------------------------
def test_memorising_classifier_is_judged_by_its_accuracy_gap_not_the_loss_ratio(tmp_path: Path) -> None:
    path = tmp_path / "memo.jsonl"
    # Train loss → 0: the loss ratio explodes (450); the accuracy gap is 20 points, held-out falling.
    _classifier_run(path, train=[(0.95, 0.05), (1.0, 0.002)], test=[(0.85, 0.4), (0.80, 0.9)])
    recs = _recs(path)
    memo = recs["memorization_detected"]
    assert memo["severity"] == "warning" and memo["evidence"]["acc_gap"] == pytest.approx(0.2)
    assert "20.0 points above held-out" in memo["message"] and "falling" in memo["message"]
    assert "450" not in memo["message"] and "loss" not in memo["message"].split("Stop")[0]
    assert memo["evidence"]["loss_gap"] == pytest.approx(450.0) and "note_loss_gap" not in recs  # information only
    assert "not_learning" not in recs


def test_loss_ratio_alone_never_warns(tmp_path: Path) -> None:
    path = tmp_path / "loss_only.jsonl"
    with TelemetryWriter(path, run_id="loss") as w:
        w.run_start(_cfg(), {})
        for i in range(1, 21):
            w.train_step(i, loss=1.0 / i, lr=5e-4, grad_norm=1.0)
        w.eval(20, split="train", metrics={"loss": 0.01})
        w.eval(20, split="test", metrics={"loss": 0.978})
    recs = _recs(path)
    assert recs["note_loss_gap"]["severity"] == "info" and _loud(recs) == []


# -- not learning: the chance level ----------------------------------------------------------------
def test_collapsed_run_at_the_majority_class_is_not_learning(tmp_path: Path) -> None:
    path = tmp_path / "collapsed.jsonl"
    # MiniLM SST-2 at batch 4: held-out accuracy = the majority class (50.9 %) for every eval.
    _classifier_run(path, train=[(0.52, 0.69)] * 4, test=[(0.509, 0.693)] * 4, majority=0.509)
    recs = _recs(path)
    nl = recs["not_learning"]
    assert nl["severity"] == "warning" and nl["evidence"]["chance_level"] == 0.509
    assert "50.9%" in nl["message"] and "never rose above it" in nl["message"]
    res = run_cli("monitor", str(path))
    assert "NOT LEARNING" in res.stdout


def test_chance_level_from_the_label_count_and_the_nearest_cases(tmp_path: Path) -> None:
    cases = {
        # no majority rate recorded: 1/n_labels (2 labels → 50 %), 50.5 % is within a point
        "labels_only": ({"test": [(0.55, 0.69), (0.505, 0.69)], "majority": None}, True),
        # a run that learned, then collapsed to the majority class at the last eval
        "fell_back": ({"test": [(0.82, 0.4), (0.515, 0.7)], "majority": 0.51}, True),
        # 2 points above chance: learning, however slowly
        "above_chance": ({"test": [(0.52, 0.69), (0.53, 0.69)], "majority": 0.51}, False),
        # a single eval says nothing yet
        "one_eval": ({"test": [(0.51, 0.69)], "majority": 0.51}, False),
    }
    for name, (kw, fires) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        test = kw["test"]
        _classifier_run(path, train=[(0.5, 0.69)] * len(test), test=test, majority=kw["majority"])
        assert ("not_learning" in _recs(path)) is fires, name
    path = tmp_path / "unknown_chance.jsonl"
    _classifier_run(path, train=[(0.5, 0.69)] * 2, test=[(0.5, 0.69)] * 2, majority=None, n_labels=None)
    assert "not_learning" not in _recs(path)  # no chance level known: silent


def test_chance_level_from_the_recorded_untrained_loss(tmp_path: Path) -> None:
    """Files written before n_labels: the run's meta.loss_prior = ln K gives 1/K."""
    path = tmp_path / "prior.jsonl"
    _classifier_run(path, train=[(0.5, 0.69)] * 3, test=[(0.5, 0.69)] * 3, majority=None, n_labels=None,
                    meta={"loss_prior": math.log(2)})
    nl = _recs(path)["not_learning"]
    assert nl["evidence"]["chance_level"] == pytest.approx(0.5) and "ln 2" in nl["evidence"]["chance_source"]
    path = tmp_path / "lm_prior.jsonl"  # ln 105 (a vocabulary): 1/105, and 50 % is far above it
    _classifier_run(path, train=[(0.5, 0.69)] * 3, test=[(0.5, 0.69)] * 3, majority=None, n_labels=None,
                    meta={"loss_prior": math.log(105)})
    assert "not_learning" not in _recs(path)


def test_not_learning_waits_for_the_final_eval(tmp_path: Path) -> None:
    """Healthy runs often sit at the majority class for most of their steps before they learn."""
    path = tmp_path / "live.jsonl"
    w = TelemetryWriter(path, run_id="live")  # no context manager: it would write run_end on exit
    w.run_start(_cfg(max_steps=120), {})
    for step in (15, 30, 45):
        w.train_step(step, loss=0.69, lr=5e-4, grad_norm=1.0)
        w.eval(step, split="test", metrics={"accuracy": 0.578, "majority_rate": 0.578})
    w.flush()
    assert "not_learning" not in _recs(path)  # mid-run: not yet a verdict
    w.run_end("ok", step=45)  # ended early at the chance level: the verdict
    w.close()
    assert _recs(path)["not_learning"]["severity"] == "warning"


def test_memorisation_is_judged_at_the_final_eval(tmp_path: Path) -> None:
    """Mid-run the training split is often learned first: a transient gap while held-out catches up."""
    path = tmp_path / "gap.jsonl"
    w = TelemetryWriter(path, run_id="gap")
    w.run_start(_cfg(max_steps=120), {})
    w.train_step(45, loss=0.4, lr=5e-4, grad_norm=1.0)
    w.eval(45, split="train", metrics={"accuracy": 0.781})
    w.eval(45, split="test", metrics={"accuracy": 0.625})
    w.flush()
    assert "memorization_detected" not in _recs(path)
    w.eval(120, split="train", metrics={"accuracy": 1.0})
    w.eval(120, split="test", metrics={"accuracy": 0.85})  # the planned last step: the final eval
    w.close()
    assert _recs(path)["memorization_detected"]["severity"] == "warning"


def test_a_live_amp_run_overflowing_now_is_information_and_health_ok(tmp_path: Path) -> None:
    from gradience.watch.render import banner
    from gradience.watch.tail import WatchState

    path = tmp_path / "amp_live.jsonl"
    w = TelemetryWriter(path, run_id="amp")
    w.run_start(_cfg(), {"amp": {"grad_scaler": True}})
    w.train_step(1, loss=0.69, lr=5e-4, grad_norm=math.inf)  # the scaler's first steps overflow
    w.flush()
    recs = _recs(path)
    assert recs["note_amp_overflows"]["severity"] == "info" and "investigate_nonfinite" not in recs
    state = WatchState(path)
    state.poll()
    assert "health OK (grad amp overflow)" in banner(state.view(), 80).renderables[1].plain
    w.close()
