"""The one-pass collector: bounded buckets, exact small runs, spikes, gaps, guard merging."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gradience.errors import GradienceError
from gradience.report.collect import BucketSeries, collect_run
from gradience.telemetry import TelemetryWriter


def test_bucket_series_is_exact_while_small() -> None:
    s = BucketSeries(max_points=10)
    for step in range(8):
        s.add(step, float(step * step))
    pts = s.points()
    assert s.width == 1
    assert [p["step"] for p in pts] == list(range(8))
    assert [p["mean"] for p in pts] == [float(i * i) for i in range(8)]


def test_bucket_series_stays_bounded_and_keeps_extremes() -> None:
    s = BucketSeries(max_points=50)
    for step in range(100_000):
        s.add(step, 1.0 if step != 77_777 else 1000.0)
    s.add(12_345, math.nan)
    assert len(s) <= 50
    assert s.count == 100_001
    pts = s.points()
    # The single outlier is not averaged away: it is the max of its bucket.
    assert max(p["max"] for p in pts) == 1000.0
    spike_bucket = next(p for p in pts if p["max"] == 1000.0)
    assert spike_bucket["from"] <= 77_777 <= spike_bucket["to"]
    nan_bucket = next(p for p in pts if p["nonfinite"])
    assert nan_bucket["from"] <= 12_345 <= nan_bucket["to"]
    assert sum(p["n"] for p in pts) == 100_000  # every finite value counted exactly once


def test_collect_healthy_run(healthy_run: Path) -> None:
    data = collect_run(healthy_run)
    c = data.curves
    assert data.run_id == "healthy-run"
    assert c.train_steps == 300
    assert c.loss.count == 300 and c.lr.count == 300 and c.grad_post.count == 300
    assert set(c.evals) == {"train", "test"}
    assert c.evals["test"]["accuracy"].count == 3
    # Train and test evals share steps 100/200/300 → three gap points each.
    assert c.gaps["acc_gap"].count == 3
    last_gap = c.gaps["acc_gap"].points()[-1]["last"]
    assert last_gap == pytest.approx((0.80 + 300 / 3000) - (0.78 + 300 / 4000))
    assert c.kappa.count == 6 and c.risk_counts == {"STABLE": 3, "LEARNING": 3}
    assert data.snapshot.status == "ok" and data.issues == []


def test_collect_guard_run_merges_alert_and_metrics(guarded_run: Path) -> None:
    data = collect_run(guarded_run)
    c = data.curves
    rollbacks = [e for e in c.guard_events if e.action == "rollback"]
    assert [e.step for e in rollbacks] == [80, 150]
    assert all(e.source == "both" for e in rollbacks)
    assert rollbacks[0].detail["lr_scale"] == 0.5 and rollbacks[0].detail["trigger"] == "nonfinite_loss"
    assert c.guard_series["rollback"].count == 2
    assert c.guard_series["snapshot"].count == 8
    assert c.guard_series["lockout"].count == 1
    loss_pts = c.loss.points()
    assert [p["step"] for p in loss_pts if p["nonfinite"]] == [80]
    assert [p["step"] for p in loss_pts if p["flags"]] == [120]  # the ×6 spike, found by SpikeDetector
    assert data.snapshot.status == "aborted"


def test_collect_picks_latest_run_and_run_id(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    for rid, n in (("first", 5), ("second", 3)):
        with TelemetryWriter(path, run_id=rid) as w:
            w.run_start({"model_name": rid})
            for s in range(n):
                w.train_step(s, loss=1.0)
    assert collect_run(path).run_id == "second"
    assert collect_run(path).runs_in_file == ["first", "second"]
    assert collect_run(path, "first").curves.train_steps == 5
    with pytest.raises(GradienceError, match="not found"):
        collect_run(path, "nope")


def test_collect_rejects_file_without_events(tmp_path: Path) -> None:
    p = tmp_path / "junk.jsonl"
    p.write_text("not json\n{\"a\": 1}\n")
    with pytest.raises(GradienceError, match="no telemetry events"):
        collect_run(p)
