"""SignalSnapshot: gaps, curve stats, grad-norm health, multi-run files and compat fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gradience.telemetry import ConfigSnapshot, Recommendation, TelemetryReader, TelemetryWriter
from gradience.telemetry.health import SpikeDetector, grad_level, sparkline, trend
from tests.conftest import shared_path


def _write_run(path: Path, run_id: str, profile: str = "easy_classification", *, nan_at: int | None = None,
               spike_at: int | None = None) -> None:
    with TelemetryWriter(path, run_id=run_id) as w:
        w.run_start({"model_name": "m", "task_profile": profile, "lora": {"r": 16, "alpha": 32},
                     "training": {"max_steps": 100}})
        for i in range(1, 101):
            loss = 2.0 / math.sqrt(i)
            if i == nan_at:
                loss = float("nan")
            if i == spike_at:
                loss = 50.0
            w.train_step(i, loss=loss, lr=1e-4 * (1 - i / 200), grad_norm=0.05 if i > 95 else 1.0 + i / 100)
        w.eval(100, split="train", metrics={"loss": 0.2, "accuracy": 0.99, "n": 64})
        w.eval(100, split="test", metrics={"loss": 0.5, "accuracy": 0.85, "n": 64})
        w.metrics("lora_audit", {"utilization_mean": 0.1, "suggested_r_global_median": 4})
        w.metrics("spectral", {"kappa_tilde": 12.5, "risk_level": "STABLE"}, step=100)
        w.alert("warning", "GUARD_ROLLBACK", "rolled back", step=40)
        w.recommendation([Recommendation("info", "compress_rank", "try r=4")])


def test_classification_gaps_and_curve(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _write_run(path, "r1", nan_at=30, spike_at=60)
    snap = TelemetryReader(path).summarize()
    assert snap.run_id == "r1" and snap.model_name == "m" and snap.r == 16 and snap.status == "ok"
    assert snap.gaps["loss_gap"] == pytest.approx(2.5)
    assert snap.gaps["acc_gap"] == pytest.approx(0.14)
    assert snap.gaps["ppl_gap"] is None  # no ppl derived for classification
    assert snap.loss["first"] == pytest.approx(2.0)
    assert snap.loss["last"] == pytest.approx(0.2)
    assert snap.loss["nonfinite_count"] == 1 and snap.loss["nonfinite_steps"] == [30]
    assert snap.loss["spikes"] == 1 and snap.loss["spike_steps"] == [60]
    assert snap.grad_norm["last"] == pytest.approx(0.05)
    assert snap.grad_norm["max"] == pytest.approx(1.95)
    assert snap.grad_norm["level"] == "vanishing"
    assert len(snap.grad_norm["history"]) == 10 and len(snap.grad_norm["sparkline"]) == 10
    assert snap.grad_norm["trend"] == "↓"
    assert snap.guard["rollbacks"] == 1
    assert snap.spectral == {"kappa": 12.5, "risk_level": "STABLE", "step": 100, "n": 1}
    assert snap.lora_audit == {"utilization_mean": 0.1, "suggested_r_global_median": 4}
    assert snap.recommendations[0]["action"] == "compress_rank"
    assert snap.max_steps == 100 and snap.last_step == 100
    d = snap.to_dict()
    assert d["duration_s"] is not None and d["gaps"]["loss_gap"] == pytest.approx(2.5)


def test_lm_profile_derives_ppl_gap(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _write_run(path, "lm", profile="hard_reasoning")
    snap = TelemetryReader(path).summarize()
    assert snap.gaps["ppl_gap"] == pytest.approx(math.exp(0.5) / math.exp(0.2))
    assert snap.evals["test"]["metrics"]["ppl_derived"] is True


def test_missing_gap_side_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path, run_id="x") as w:
        w.run_start({})
        w.eval(10, split="test", metrics={"loss": 1.0})
    snap = TelemetryReader(path).summarize()
    assert snap.gaps["loss_gap"] is None
    assert any("train" in m for m in snap.gap_missing)


def test_several_runs_default_to_last_started(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _write_run(path, "a")
    _write_run(path, "b")
    with TelemetryWriter(path, run_id="a") as w:  # "a" resumed after "b"
        w.run_start({"model_name": "resumed"})
        w.train_step(101, loss=0.1)
    r = TelemetryReader(path)
    assert r.runs() == ["a", "b"]
    assert r.summarize().run_id == "a"
    assert r.summarize().model_name == "resumed"
    assert r.summarize("b").run_id == "b"
    assert r.latest_config().model_name == "resumed"
    assert r.latest_eval("test")["metrics"]["accuracy"] == 0.85
    from gradience.errors import GradienceError

    with pytest.raises(GradienceError, match="not found"):
        r.summarize("nope")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert TelemetryReader(empty).summarize().status == "empty"
    from gradience.errors import GradienceError

    with pytest.raises(GradienceError, match="not found"):
        TelemetryReader(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name", ["vnext_minimal.jsonl", "hf_callback_tiny_distilbert.jsonl",
                                  "bench_probe_distilbert_r32.jsonl"])
def test_compat_files_summarise(name: str) -> None:
    path = shared_path("compat", "telemetry", name)
    r = TelemetryReader(path)
    snap = r.summarize()
    assert r.issues == []
    assert snap.status == "ok"
    assert "test" in snap.evals  # the held-out split ("eval" in older files) is recognised
    cfg = r.latest_config()
    assert isinstance(cfg, ConfigSnapshot) and cfg.lora.r is not None
    if name == "vnext_minimal.jsonl":
        assert snap.gaps["ppl_gap"] == pytest.approx(1.5)
        assert snap.gaps["acc_gap"] == pytest.approx(0.1)
        assert snap.task_profile == "hard_reasoning"
    else:
        assert snap.evals["test"]["split_raw"] == "eval"
        assert snap.loss["n"] > 0 and snap.grad_norm["last"] is not None


def test_health_helpers() -> None:
    assert [grad_level(v) for v in (0.05, 0.1, 5.0, 5.01, 10.0, 10.5, float("nan"), None)] == [
        "vanishing", "healthy", "healthy", "warning", "warning", "critical", "nonfinite", None]
    assert trend([1, 1, 1, 1]) == "→" and trend([1, 2, 3, 4]) == "↑" and trend([4, 3, 2, 1]) == "↓"
    assert trend([1.0]) == "→"
    assert sparkline([0, 7]) == "▁█"
    assert sparkline([1, float("nan"), 1]) == "▄×▄"
    assert sparkline(list(range(20)), width=10) == sparkline(list(range(10, 20)))
    det = SpikeDetector()
    flags = [det.update(v) for v in [1.0] * 20 + [1.1, 9.0, 1.0, 10.0]]
    assert flags[-4:] == [False, True, False, True]


def test_config_snapshot_roundtrip_keeps_unknown_keys() -> None:
    raw = {"model_name": "m", "future_key": 1, "lora": {"r": 8, "alpha": 16, "new_lora_field": "x"},
           "task_profile": "weird"}
    cfg = ConfigSnapshot.from_dict(raw)
    assert cfg.lora.alpha_over_r == 2.0 and cfg.task_profile == "unknown"
    assert cfg.extras["future_key"] == 1 and cfg.lora.extras["new_lora_field"] == "x"
    again = ConfigSnapshot.from_dict(cfg.to_dict())
    assert again == cfg
    rec = Recommendation.from_dict(Recommendation("warn", "lower_lr", "m", confidence=0.8).to_dict())
    assert rec.severity == "warning" and rec.severity_rank == 1
    with pytest.raises(ValueError):
        Recommendation("info", "a", "m", confidence=1.5)


def test_odd_config_sections_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    with TelemetryWriter(path, run_id="o") as w:
        w.emit("run_start", config={"lora": "r=8", "optimizer": [1, 2], "training": 3, "extras": "x"}, meta={})
    snap = TelemetryReader(path).summarize()
    assert snap.r is None and snap.config["lora"]["extras"] == {"_unparsed": "r=8"}


def test_profile_inferred_from_dataset_when_unknown(tmp_path: Path) -> None:
    path = tmp_path / "lm.jsonl"
    with TelemetryWriter(path, run_id="g") as w:
        w.run_start({"dataset_name": "openai/gsm8k", "task_profile": "unknown"})
        w.eval(1, split="train", metrics={"loss": 1.0})
        w.eval(1, split="test", metrics={"loss": 2.0})
    snap = TelemetryReader(path).summarize()
    assert snap.task_profile == "hard_reasoning"
    assert snap.gaps["ppl_gap"] == pytest.approx(math.e)


def _lines(path: Path, *events: dict) -> Path:
    import json

    path.write_text("".join(json.dumps({"schema": "gradience.vnext.telemetry/v1", "ts": 1.0, "run_id": "r",
                                        "step": 1, **e}) + "\n" for e in events))
    return path


def test_ill_typed_guard_and_spectral_metrics_read_as_missing(tmp_path: Path) -> None:
    path = _lines(tmp_path / "g.jsonl",
                  {"event": "alert", "code": "GUARD_ROLLBACK", "severity": ["x"], "message": 5, "context": [1]},
                  {"event": "metrics", "kind": "guard", "action": "snapshot", "metrics": {}},
                  {"event": "metrics", "kind": "guard",
                   "metrics": {"action": "summary", "snapshots": "many", "rollbacks": [1], "lr_backoffs": 3.0,
                               "final_lr_scale": "half", "integrity_status": {"ok": 1}}},
                  {"event": "metrics", "kind": "spectral", "metrics": {"kappa_tilde": "x", "kappa": 4,
                                                                       "risk_level": [1]}})
    snap = TelemetryReader(path).summarize()
    g = snap.guard
    # An ill-typed count falls back to what the events show; a valid one is used.
    assert (g["snapshots"], g["rollbacks"], g["lr_backoffs"]) == (1, 1, 3)
    assert g["final_lr_scale"] is None and g["integrity_status"] is None
    assert snap.spectral["kappa"] == 4.0 and snap.spectral["risk_level"] is None
    assert snap.alerts[0]["severity"] == "info" and snap.alerts[0]["message"] == "" and snap.alerts[0]["context"] == {}


def test_ill_typed_config_fields_read_as_missing_and_are_kept(tmp_path: Path) -> None:
    cfg = {"model_name": 5, "lora": {"r": "abc", "alpha": "x", "use_dora": "yes", "target_modules": "all-linear",
                                     "rank_pattern": {"q": "8"}},
           "optimizer": {"lr": "hi", "betas": [0.9, "x"], "weight_decay": 0.01},
           "training": {"max_steps": 10**30, "seed": 3.0, "epochs": 10**400}}
    path = _lines(tmp_path / "c.jsonl", {"event": "run_start", "config": cfg})
    snap = TelemetryReader(path).summarize()
    assert snap.r is None and snap.max_steps is None and snap.model_name is None
    lora, opt, tr = snap.config["lora"], snap.config["optimizer"], snap.config["training"]
    assert lora["r"] is None and lora["alpha"] is None and lora["alpha_over_r"] is None
    assert lora["target_modules"] == "all-linear"  # PEFT accepts one string
    assert lora["extras"]["_invalid"] == {"r": "abc", "alpha": "x", "use_dora": "yes", "rank_pattern": {"q": "8"}}
    assert opt["lr"] is None and opt["weight_decay"] == 0.01 and opt["extras"]["_invalid"]["betas"] == [0.9, "x"]
    assert tr["seed"] == 3 and tr["max_steps"] is None and tr["epochs"] == math.inf  # read as orjson does
    assert snap.config["extras"]["_invalid"] == {"model_name": 5}
    latest = TelemetryReader(path).latest_config()
    assert latest is not None and latest.lora.r is None and latest.optimizer.lr is None
    # from_dict keeps recorded values as they are (check names a bad one), and never raises.
    raw = ConfigSnapshot.from_dict({"lora": {"r": "abc", "alpha": "x"}})
    assert raw.lora.r == "abc" and raw.lora.alpha_over_r is None
    huge = ConfigSnapshot.from_dict({"lora": {"r": 10**400, "alpha": 1}, "training": {"epochs": -(10**400)}})
    assert huge.lora.alpha_over_r is None
    typed = huge.typed()
    assert typed.lora.r is None and typed.training.epochs is None
    assert typed.lora.extras["_invalid"] == {"r": 10**400} and typed.training.extras["_invalid"] == {"epochs": -(10**400)}


def test_writer_accepts_any_config_values(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    with TelemetryWriter(path, run_id="w") as w:
        w.run_start({"lora": {"r": "abc", "alpha": "x"}, "training": {"max_steps": "x"}})
    assert TelemetryReader(path).summarize().r is None


def test_recorded_recommendation_with_odd_values_reads_with_defaults() -> None:
    rec = Recommendation.from_dict({"severity": ["x"], "action": 5, "message": None, "confidence": "high",
                                    "evidence": [1, 2], "scope": ""})
    assert (rec.severity, rec.action, rec.message, rec.confidence, rec.scope, rec.evidence) == (
        "info", "unknown", "", 0.5, "config", {})
    assert Recommendation.from_dict({"severity": "warn", "confidence": 7}).confidence == 0.5
