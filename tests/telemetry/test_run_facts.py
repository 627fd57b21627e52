"""The facts every view shows are the run's own: the full-run gradient record, resumes counted
once, stalled runs, durations from the run's own start and end events."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gradience.cli.monitor import build_monitor_json, render_monitor_text
from gradience.report.build import build_report
from gradience.report.markdown import render_markdown
from gradience.telemetry import TelemetryReader, TelemetryWriter
from gradience.telemetry.schema import SCHEMA_ID, ConfigSnapshot
from gradience.telemetry.snapshot import REPLAY_WINDOW, RunAccumulator
from gradience.training.recorder import RunRecorder
from gradience.watch.render import banner, grad_panel
from gradience.watch.tail import WatchState

T0 = 1_700_000_000.0


def ev(event: str, step: int | None, ts: float, mono: float | None = None, run_id: str = "r", **payload: Any) -> str:
    d: dict[str, Any] = {"schema": SCHEMA_ID, "ts": ts, "run_id": run_id, "event": event, "step": step}
    if mono is not None:
        d["mono"] = mono
    d.update(payload)
    return json.dumps(d) + "\n"


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def monitor_text(path: Path, now: float | None = None) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=200, color_system=None, force_terminal=False, highlight=False)
    render_monitor_text(con, build_monitor_json(path, now=now))
    return buf.getvalue()


def plain(r: Any, width: int = 120) -> str:
    con = Console(width=width, file=io.StringIO(), no_color=True, color_system=None)
    con.print(r)
    return con.file.getvalue()  # type: ignore[attr-defined]


def watch_view(path: Path, now: float) -> Any:
    st = WatchState(path, clock=lambda: now)
    st.poll(budget_s=None)
    return st.view()


# -- 1. gradient health from the full-run record ------------------------------------------------
def _recorded_run(path: Path, steps: int = 120) -> list[tuple[float, float]]:
    """A run through the recorder: norms rise at the sampled steps, peak (1.487, clipped) at an
    unsampled step, fall at the end. Returns every step's (pre, post) norms."""
    rec = RunRecorder(path, telemetry_interval=10, run_id="run-g")
    rec.start(ConfigSnapshot.from_dict({"training": {"max_steps": steps, "max_grad_norm": 1.0}}), {})
    norms = []
    for step in range(1, steps + 1):
        pre = 0.3 + 0.004 * step if step <= 110 else 0.9 - 0.05 * (step - 110)
        if step == 37:
            pre = 1.487
        post = min(pre, 1.0)
        norms.append((pre, post))
        rec.record_grad(step, pre, post)
        if rec.wants_step(step):
            rec.train_step(step, loss=1.0 / step, lr=1e-4, grad_norm=pre, grad_norm_clipped=post)
    rec.finish("ok", None, steps)
    return norms


def test_the_recorder_writes_a_running_gradient_summary_and_a_final_one(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    _recorded_run(path)
    records = [(e["step"], e["metrics"]["final"], e["metrics"]["n"])
               for e in TelemetryReader(path).iter_events("metrics") if e["kind"] == "grad_norm"]
    assert records == [(50, False, 50), (100, False, 100), (120, True, 120)]


def test_views_take_gradient_health_from_the_full_run_record(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    norms = _recorded_run(path)
    g = TelemetryReader(path).summarize().grad_norm
    assert g.source == "full_run" and g.record_step == 120 and g.n_steps == 120
    assert g.max == 1.487  # an unsampled step: the samples alone top out lower
    assert g.clipped_steps == 1 and g.trend == "↓"
    assert g.history == pytest.approx([p for p, _ in norms[-10:]])
    assert g.clipped_text() == "clipped 0.8 % of steps (1/120)"

    text = monitor_text(path)
    assert "max 1.487 · clipped 0.8 % of steps (1/120)" in text
    assert "from the full-run record (120 steps, at step 120)" in text
    panel = plain(grad_panel(watch_view(path, T0), 100))
    assert "max 1.487" in panel and "clipped 0.8 % of steps (1/120)" in panel
    assert "steps 111–120 · full-run record" in panel
    narrow = plain(grad_panel(watch_view(path, T0), 36), width=40)  # the 80×24 layout's panel
    assert "steps 111–120\n" in narrow and "clipped 0.8 % (1/120) · non-finite 0" in narrow
    md = render_markdown(build_report(path))
    assert "/ 1.49" in md and "clipped 0.8 % of steps (1/120)" in md and "full-run record" in md


def test_a_live_run_has_the_record_before_its_end(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rec = RunRecorder(path, telemetry_interval=10, run_id="live")
    rec.start(ConfigSnapshot(), {})
    for step in range(1, 61):
        pre = 2.0 if step == 33 else 0.5
        rec.record_grad(step, pre, min(pre, 1.0))
        if rec.wants_step(step):
            rec.train_step(step, loss=0.5, lr=1e-4, grad_norm=pre, grad_norm_clipped=min(pre, 1.0))
    rec.writer.flush()
    g = TelemetryReader(path).summarize().grad_norm
    assert g.source == "full_run" and g.record_step == 50 and g.n_steps == 50
    assert g.max == 2.0 and g.clipped_steps == 1
    assert g.last == 0.5  # the newer sample at step 60


def test_a_newer_sample_than_the_record_sets_last_level_and_max(tmp_path: Path) -> None:
    record = {"n": 50, "last": 0.5, "last_clipped": 0.5, "max": 0.9, "nonfinite_count": 0, "clipped_steps": 0,
              "history": [0.5] * 10, "final": False}
    path = write(tmp_path / "run.jsonl", [
        ev("run_start", None, T0, config={}, meta={}),
        ev("metrics", 50, T0 + 50, kind="grad_norm", metrics=record),
        ev("train_step", 60, T0 + 60, grad_norm=12.0, grad_norm_clipped=1.0),
    ])
    g = TelemetryReader(path).summarize().grad_norm
    # One high sample after a healthy record is not yet a level (the sustained level: median of the
    # last 5 norms); a non-finite one is at once.
    assert (g.source, g.last, g.level, g.max, g.last_clipped) == ("full_run", 12.0, "healthy", 12.0, 1.0)
    path = write(tmp_path / "nan.jsonl", [
        ev("run_start", None, T0, config={}, meta={}),
        ev("metrics", 50, T0 + 50, kind="grad_norm", metrics=record),
        ev("train_step", 60, T0 + 60, grad_norm=float("nan"), grad_norm_clipped=float("nan")),
    ])
    assert TelemetryReader(path).summarize().grad_norm.level == "nonfinite"


def test_without_a_record_the_samples_are_used_and_the_views_say_so(tmp_path: Path) -> None:
    lines = [ev("run_start", None, T0, config={}, meta={})]
    for i, step in enumerate(range(10, 110, 10)):
        lines.append(ev("train_step", step, T0 + step, grad_norm=1.2 + i, grad_norm_clipped=1.0 if i < 5 else 1.2 + i))
    path = write(tmp_path / "run.jsonl", lines)
    g = TelemetryReader(path).summarize().grad_norm
    assert g.source == "sampled" and g.n_steps == 10 and g.clipped_steps == 5 and g.summary is None
    assert g.clipped_text() == "clipped 50 % of sampled steps (5/10)"
    text = monitor_text(path, now=T0 + 101)
    assert "clipped 50 % of sampled steps (5/10)" in text
    assert "10 sampled train_step values (no full-run record)" in text
    assert "sampled" in plain(grad_panel(watch_view(path, T0 + 101), 100))


# -- 2. resumes -----------------------------------------------------------------------------------
def _resumed(path: Path, *, alert_in_replay: bool = False) -> Path:
    lines = [ev("run_start", None, T0, mono=10.0, config={"training": {"max_steps": 12}},
                meta={"resumed_from_step": None})]
    for step in range(1, 11):  # the first process got to step 10, its checkpoint is at step 8
        loss = 0.01 if step == 10 else 1.0 / step
        lines.append(ev("train_step", step, T0 + step, mono=10.0 + step, loss=loss, lr=1e-4, grad_norm=0.5))
    if alert_in_replay:
        lines.append(ev("alert", 10, T0 + 10.5, severity="warning", code="GRAD_NORM_WARNING", message="x",
                        context={}))
    lines.append(ev("run_start", 8, T0 + 100, mono=500.0, config={"training": {"max_steps": 12}},
                    meta={"resumed_from_step": 8}))
    for step in range(9, 13):
        lines.append(ev("train_step", step, T0 + 100 + step, mono=500.0 + step, loss=0.2, lr=1e-4, grad_norm=0.4))
    lines.append(ev("run_end", 12, T0 + 113, mono=513.0, status="ok", summary={"duration_s": 13.0}))
    return write(path, lines)


def test_a_resumed_run_counts_each_step_once_with_the_newer_values(tmp_path: Path) -> None:
    path = _resumed(tmp_path / "run.jsonl", alert_in_replay=True)
    snap = TelemetryReader(path).summarize()
    assert snap.loss.n == 12 and snap.loss.last == 0.2
    assert snap.loss.min == 0.125 and snap.loss.min_step == 8  # the replaced step-10 loss 0.01 is gone
    assert snap.resumed_from_step == 8
    assert snap.resumes == [{"from_step": 8, "replaced_train_steps": 2, "exact": True}]
    assert snap.alert_counts == {} and snap.alerts == []  # the replaced step's alert went with it
    assert snap.last_step == 12
    assert snap.duration_s == pytest.approx(10.0 + 13.0)  # both segments, not the downtime between


def test_the_resumed_fold_equals_a_clean_run_of_the_same_steps(tmp_path: Path) -> None:
    """Across checkpoints of the fold: the resumed file reads exactly as the effective run."""
    def step_line(step: int, value: float, ts: float) -> str:
        return ev("train_step", step, ts, loss=value, lr=value / 100, grad_norm=value,
                  grad_norm_clipped=min(value, 1.0))

    def old(step: int) -> float:
        return 1.0 + (step % 7) / 3 + (5.0 if step == 75 else 0.0)

    def new(step: int) -> float:
        return 0.5 + (step % 5) / 4

    resumed = [ev("run_start", None, T0, config={}, meta={})]
    resumed += [step_line(s, old(s), T0 + s) for s in range(1, 101)]
    resumed += [ev("run_start", 70, T0 + 200, config={}, meta={"resumed_from_step": 70})]
    resumed += [step_line(s, new(s), T0 + 200 + s) for s in range(71, 131)]
    clean = [ev("run_start", None, T0, config={}, meta={})]
    clean += [step_line(s, old(s) if s <= 70 else new(s), T0 + s) for s in range(1, 131)]
    a = TelemetryReader(write(tmp_path / "a.jsonl", resumed)).summarize()
    b = TelemetryReader(write(tmp_path / "b.jsonl", clean)).summarize()
    for section in ("loss", "lr", "grad_norm"):
        assert getattr(a, section).to_dict() == getattr(b, section).to_dict(), section
    assert a.resumes[0]["replaced_train_steps"] == 30 and a.resumes[0]["exact"]


def test_a_resume_beyond_the_kept_window_says_it_is_not_exact() -> None:
    acc = RunAccumulator("r")
    acc.add({"event": "run_start", "ts": T0, "step": None, "meta": {}})
    for s in range(1, REPLAY_WINDOW + 200):
        acc.add({"event": "train_step", "ts": T0 + s, "step": s, "loss": 1.0})
    acc.add({"event": "run_start", "ts": T0 + 1e5, "step": 10, "meta": {"resumed_from_step": 10}})
    snap = acc.snapshot()
    assert snap.resumes == [{"from_step": 10, "replaced_train_steps": 0, "exact": False}]


def test_views_say_the_run_resumed(tmp_path: Path) -> None:
    path = _resumed(tmp_path / "run.jsonl")
    obj = build_monitor_json(path)
    assert obj["signals"]["resumed_from_step"] == 8 and obj["signals"]["resumes"][0]["from_step"] == 8
    assert "resumed from step 8; 2 replayed steps counted once" in monitor_text(path)
    assert "resumed from step 8" in plain(banner(watch_view(path, T0 + 120), 120))
    assert "resumed from step 8" in render_markdown(build_report(path))


def _grad_record(n: int, mx: float, clipped: int, last: float, final: bool) -> dict[str, Any]:
    return {"n": n, "last": last, "last_clipped": min(last, 1.0), "max": mx, "min": 0.1, "mean": 0.5,
            "nonfinite_count": 0, "clipped_steps": clipped, "history": [last] * min(n, 10),
            "level_counts": {"healthy": n}, "final": final}


def test_the_gradient_record_of_a_resumed_run_joins_both_processes(tmp_path: Path) -> None:
    lines = [ev("run_start", None, T0, config={}, meta={})]
    lines += [ev("train_step", s, T0 + s, loss=1.0, grad_norm=0.5) for s in range(1, 11)]
    lines.append(ev("metrics", 8, T0 + 8.5, kind="grad_norm", metrics=_grad_record(8, 2.0, 3, 0.5, False)))
    lines.append(ev("metrics", 10, T0 + 10.5, kind="grad_norm", metrics=_grad_record(10, 2.5, 4, 0.5, True)))
    lines.append(ev("run_start", 8, T0 + 100, config={}, meta={"resumed_from_step": 8}))
    lines += [ev("train_step", s, T0 + 100 + s, loss=1.0, grad_norm=0.7) for s in range(9, 13)]
    lines.append(ev("metrics", 12, T0 + 113, kind="grad_norm", metrics=_grad_record(4, 1.5, 1, 0.7, True)))
    g = TelemetryReader(write(tmp_path / "run.jsonl", lines)).summarize().grad_norm
    # steps 1-8 from the first process's record at step 8 (its step-10 record is replaced), 9-12 from the second
    assert (g.n_steps, g.clipped_steps, g.max, g.last, g.record_step) == (12, 4, 2.0, 0.7, 12)
    assert g.summary is not None and g.summary["level_counts"] == {"healthy": 12}
    assert g.source_text() == "full-run record (12 steps, at step 12)"

    # Without a record of the steps before the resume, the views say how much the record covers.
    partial = [ln for ln in lines if '"grad_norm", "metrics": {"n": 8' not in ln and '"n": 10,' not in ln]
    g = TelemetryReader(write(tmp_path / "partial.jsonl", partial)).summarize().grad_norm
    assert (g.n_steps, g.record_step, g.partial_record) == (4, 12, True)
    assert g.source_text() == "gradient record of 4 of the run's 12 steps"
    assert g.clipped_text() == "clipped 25 % of recorded steps (1/4)"


def test_the_dashboard_and_report_curves_hold_each_replayed_step_once(tmp_path: Path) -> None:
    from gradience.report.collect import collect_run
    from gradience.watch.tail import SeriesBuffer

    path = _resumed(tmp_path / "run.jsonl")
    v = watch_view(path, T0 + 120)
    assert v.n_train_steps == 12
    assert v.loss_series == pytest.approx([1.0 / s for s in range(1, 9)] + [0.2] * 4)
    curves = collect_run(path, now=T0 + 120).curves
    assert curves.train_steps == 12
    assert [(p["step"], p["last"]) for p in curves.loss.points()][-5:] == [(8, 0.125)] + [(s, 0.2) for s in range(9, 13)]
    assert curves.loss.count == 12

    buf = SeriesBuffer(capacity=4)  # buckets double: 8 values → 2 buckets of 4
    for x in range(8):
        buf.append(float(x))
    buf.drop_last(4)
    assert buf.values() == [1.5] and len(buf) == 4


# -- 3. stalled runs ------------------------------------------------------------------------------
def _unfinished(path: Path, every_s: float, n: int = 20) -> Path:
    lines = [ev("run_start", None, T0, config={"training": {"max_steps": 1000}}, meta={})]
    lines += [ev("train_step", s, T0 + s * every_s, loss=1.0) for s in range(1, n + 1)]
    return write(path, lines)


def test_a_silent_run_is_stalled_against_its_own_cadence(tmp_path: Path) -> None:
    path = _unfinished(tmp_path / "run.jsonl", every_s=1.0)
    acc = TelemetryReader(path).accumulate()["r"]
    last = T0 + 20
    quiet = acc.snapshot(now=last + 200)
    assert (quiet.stalled, quiet.silence_s, quiet.stall_after_s) == (False, 200.0, 300.0)
    dead = acc.snapshot(now=last + 301)
    assert dead.stalled is True and dead.silence_s == 301.0 and dead.status == "running"
    slow = TelemetryReader(_unfinished(tmp_path / "slow.jsonl", every_s=60.0)).accumulate()["r"]
    assert slow.snapshot(now=T0 + 20 * 60 + 500).stalled is False  # 10 × 60 s = 600 s allowed
    assert slow.snapshot(now=T0 + 20 * 60 + 601).stalled is True
    assert acc.snapshot().stalled is None  # no current time, no verdict


def test_a_finished_run_is_never_stalled(tmp_path: Path) -> None:
    path = _resumed(tmp_path / "run.jsonl")
    snap = TelemetryReader(path).accumulate()["r"].snapshot(now=T0 + 1e6)
    assert snap.stalled is False and snap.silence_s is None


def test_views_show_a_stalled_run(tmp_path: Path) -> None:
    path = _unfinished(tmp_path / "run.jsonl", every_s=1.0)
    now = T0 + 20 + 3600
    obj = build_monitor_json(path, now=now)
    assert obj["signals"]["stalled"] is True and obj["signals"]["silence_s"] == 3600.0
    assert "status stalled (no run_end, silent for 1h 00m" in monitor_text(path, now=now)
    assert "status running (no run_end yet)" in monitor_text(path, now=T0 + 25)
    assert plain(banner(watch_view(path, now), 120)).lstrip().startswith("STALLED")
    assert "RUNNING" in plain(banner(watch_view(path, T0 + 25), 120))


# -- 4. durations ---------------------------------------------------------------------------------
def test_the_writer_records_a_monotonic_clock(tmp_path: Path) -> None:
    with TelemetryWriter(tmp_path / "run.jsonl", run_id="m") as w:
        w.run_start({})
        w.train_step(1, loss=1.0)
        with pytest.raises(ValueError, match="mono"):
            w.emit("alert", mono=1.0)
    events = list(TelemetryReader(tmp_path / "run.jsonl").iter_events())
    monos = [e["mono"] for e in events]
    assert all(isinstance(m, float) for m in monos) and monos == sorted(monos)
    snap = TelemetryReader(tmp_path / "run.jsonl").summarize()
    assert snap.duration_source == "monotonic" and snap.duration_s == pytest.approx(monos[-1] - monos[0])


def _timed(path: Path, *, mono: bool, summary: bool, wall_end: float) -> Path:
    m = (lambda x: x) if mono else (lambda x: None)
    end = {"summary": {"duration_s": 341.0}} if summary else {}
    return write(path, [
        ev("run_start", None, T0, mono=m(1000.0), config={}, meta={}),
        ev("train_step", 10, T0 + 100, mono=m(1100.0), loss=1.0),
        ev("run_end", 10, wall_end, mono=m(1341.0), status="ok", **end),
        # `gradience audit --append` half a minute later, from another process
        ev("metrics", None, wall_end + 30, mono=m(77.0), kind="lora_audit", metrics={"r": 8, "n_layers": 2, "total_lora_params": 96}),
    ])


@pytest.mark.parametrize(("mono", "summary", "source"), [(True, True, "monotonic"), (False, True, "run_end")])
def test_an_appended_audit_and_a_clock_step_leave_the_duration_alone(
        tmp_path: Path, mono: bool, summary: bool, source: str) -> None:
    for wall_end in (T0 + 341, T0 + 341 - 3600):  # as recorded; the wall clock stepped back an hour
        path = _timed(tmp_path / "run.jsonl", mono=mono, summary=summary, wall_end=wall_end)
        snap = TelemetryReader(path).summarize()
        assert (snap.duration_s, snap.duration_source) == (341.0, source)
        assert build_monitor_json(path)["signals"]["duration_s"] == 341.0
        assert "5m 41s" in monitor_text(path)
        assert "5m 41s" in render_markdown(build_report(path))


def test_without_either_clock_the_wall_clock_is_clamped_at_zero(tmp_path: Path) -> None:
    path = _timed(tmp_path / "run.jsonl", mono=False, summary=False, wall_end=T0 - 3259)
    snap = TelemetryReader(path).summarize()
    assert (snap.duration_s, snap.duration_source) == (0.0, "wall_clock")
    ok = TelemetryReader(_timed(tmp_path / "b.jsonl", mono=False, summary=False, wall_end=T0 + 341)).summarize()
    assert ok.duration_s == 341.0  # the audit appended 30 s later does not extend it


def test_a_running_run_lasts_until_its_last_training_event(tmp_path: Path) -> None:
    path = write(tmp_path / "run.jsonl", [
        ev("run_start", None, T0, mono=5.0, config={}, meta={}),
        ev("train_step", 1, T0 + 10, mono=15.0, loss=1.0),
        ev("eval", 1, T0 + 12, mono=17.0, split="test", metrics={"loss": 1.0}),
        ev("metrics", None, T0 + 500, mono=3.0, kind="lora_audit", metrics={}),
    ])
    assert TelemetryReader(path).summarize().duration_s == 12.0
