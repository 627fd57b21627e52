"""The snapshot's typed sections: same JSON as the dicts they replaced, lenient on recorded data."""

from __future__ import annotations

import json

from gradience.telemetry import TelemetryReader, TelemetryWriter
from gradience.telemetry.sections import GuardSummary, LossSummary, SpectralSummary
from gradience.telemetry.snapshot import SignalSnapshot


def test_sections_serialise_to_the_documented_keys(tmp_path):
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="a") as w:
        w.run_start(config={"lora": {"r": 8}})
        for step in range(1, 6):
            w.train_step(step, loss=1.0 / step, lr=1e-4, grad_norm=0.5)
        w.metrics("spectral", {"kappa_tilde": 3.0, "risk_level": "STABLE"}, step=5)
    snap = TelemetryReader(run).summarize()
    d = snap.to_dict()
    assert list(d["loss"]) == ["first", "last", "min", "min_step", "n", "nonfinite_count", "nonfinite_steps",
                               "spikes", "spike_steps"]
    assert list(d["lr"]) == ["first", "last"]
    assert list(d["grad_norm"]) == ["last", "max", "last_clipped", "history", "level", "trend", "sparkline",
                                    "nonfinite_count", "summary", "source", "n_steps", "clipped_steps",
                                    "record_step"]
    assert list(d["guard"]) == ["enabled", "snapshots", "rollbacks", "lr_backoffs", "aborts", "lockout",
                                "final_lr_scale", "integrity_status", "last", "amp_overflows"]
    assert d["spectral"] == {"kappa": 3.0, "risk_level": "STABLE", "step": 5, "n": 1}
    assert snap.loss.n == 5 and snap.loss.last == 0.2 and snap.grad_norm.level == "healthy"
    assert snap.guard == GuardSummary() and not snap.guard.enabled
    assert d["lora_audit"] is None


def test_an_empty_snapshot_has_empty_sections():
    d = SignalSnapshot(status="empty").to_dict()
    assert all(d[k] == {} for k in ("loss", "lr", "grad_norm", "guard", "spectral"))
    assert SignalSnapshot().loss.n == 0 and not SignalSnapshot().guard


def test_a_section_given_as_a_dict_is_read_leniently():
    snap = SignalSnapshot(loss={"first": 1.0, "n": "many", "extra": 1}, spectral={"risk_level": 3, "n": 2.0})
    assert isinstance(snap.loss, LossSummary) and snap.loss.first == 1.0 and snap.loss.n == 0
    assert isinstance(snap.spectral, SpectralSummary) and snap.spectral.risk_level is None and snap.spectral.n == 2
    # Written back exactly as given.
    assert json.dumps(snap.to_dict()["loss"]) == json.dumps({"first": 1.0, "n": "many", "extra": 1})
    assert snap.to_dict()["spectral"] == {"risk_level": 3, "n": 2.0}
    assert snap.loss["first"] == 1.0 and snap.loss.get("min") is None and "min" not in snap.loss
