"""The follower reads only new bytes and copes with partial, missing, replaced and truncated files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from gradience.telemetry.reader import TelemetryReader
from gradience.watch.tail import FileFollower, RunHistory, SeriesBuffer, WatchState

from .runs import T0, full_run, line, run_start, train_step


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_partial_line_is_held_until_its_newline(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    whole = train_step(1, T0)
    p.write_bytes(whole[:20])
    f = FileFollower(p)
    assert f.read().lines == []
    assert f.partial == whole[:20]
    append(p, whole[20:-1])
    assert f.read().lines == []
    append(p, b"\n")
    res = f.read()
    assert res.lines == [(1, whole[:-1])]
    assert f.partial == b"" and f.offset == len(whole)


def test_missing_file_is_waited_for(tmp_path: Path) -> None:
    p = tmp_path / "later.jsonl"
    st = WatchState(p)
    assert st.poll() is False
    v = st.view()
    assert not v.file_exists and v.snapshot is None
    p.write_bytes(run_start() + train_step(1, T0 + 1))
    assert st.poll() is True
    v = st.view()
    assert v.file_exists and v.snapshot is not None and v.snapshot.last_step == 1


def test_only_new_lines_are_decoded(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl", steps=30, finished=False)
    st = WatchState(p)
    calls: list[int] = []
    real = st.decoder.decode

    def counting(raw: bytes, lineno: int, *, complete: bool = True):  # type: ignore[no-untyped-def]
        calls.append(lineno)
        return real(raw, lineno, complete=complete)

    st.decoder.decode = counting  # type: ignore[method-assign]
    st.poll(budget_s=None)
    n_lines = len(p.read_bytes().splitlines())
    assert calls == list(range(1, n_lines + 1))
    calls.clear()
    append(p, train_step(31, T0 + 31) + train_step(32, T0 + 32))
    st.poll(budget_s=None)
    assert calls == [n_lines + 1, n_lines + 2]
    assert st.view().snapshot.last_step == 32  # type: ignore[union-attr]
    calls.clear()
    assert st.poll(budget_s=None) is False and calls == []


def test_matches_the_file_reader_summary(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")
    st = WatchState(p)
    # Tiny chunks force many partial-line boundaries; the result must not depend on them.
    st.poll(budget_s=None, chunk=7)
    mine = st.view().snapshot.to_dict()  # type: ignore[union-attr]
    theirs = TelemetryReader(p).summarize().to_dict()
    # The dashboard has a clock, so it says whether the run is stalled; summarize() has none.
    assert mine.pop("stalled") is False and theirs.pop("stalled") is None
    assert mine == theirs


def test_truncated_file_is_read_again(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + b"".join(train_step(s, T0 + s) for s in range(1, 41)))
    st = WatchState(p)
    st.poll(budget_s=None)
    assert st.view().snapshot.last_step == 40  # type: ignore[union-attr]
    p.write_bytes(run_start("run-B") + train_step(3, T0 + 3, "run-B"))  # shorter: truncated
    st.poll(budget_s=None)
    v = st.view()
    assert v.run_ids == ["run-B"]
    assert v.snapshot.last_step == 3  # type: ignore[union-attr]
    assert v.n_train_steps == 1
    assert any("truncated" in n for n in v.notices)


def test_replaced_file_is_read_again(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1))
    st = WatchState(p)
    st.poll(budget_s=None)
    new = tmp_path / "new.jsonl"
    # Longer than the old file, so only the inode says it is another file.
    new.write_bytes(run_start("run-B") + b"".join(train_step(s, T0 + s, "run-B") for s in range(1, 20)))
    os.replace(new, p)
    st.poll(budget_s=None)
    v = st.view()
    assert v.run_ids == ["run-B"] and v.snapshot.last_step == 19  # type: ignore[union-attr]
    assert any("replaced" in n for n in v.notices)


def test_rewritten_in_place_is_detected(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start("run-A") + train_step(1, T0 + 1, "run-A"))
    st = WatchState(p)
    st.poll(budget_s=None)
    with open(p, "r+b") as f:  # same inode, same-or-larger size, different first bytes
        f.write(run_start("run-C") + b"".join(train_step(s, T0 + s, "run-C") for s in range(1, 5)))
    st.poll(budget_s=None)
    assert st.view().run_ids == ["run-C"]


def test_deleted_then_recreated(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1))
    st = WatchState(p)
    st.poll(budget_s=None)
    p.unlink()
    st.poll(budget_s=None)
    v = st.view()
    assert not v.file_exists and v.snapshot is None
    p.write_bytes(run_start("run-D"))
    st.poll(budget_s=None)
    assert st.view().run_ids == ["run-D"]


def test_malformed_line_becomes_an_issue_with_its_line_number(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1) + b"{not json\n" + b"[1, 2]\n" + train_step(2, T0 + 2))
    st = WatchState(p)
    st.poll(budget_s=None)
    v = st.view()
    assert [(i.line, i.kind) for i in v.issues] == [(4, "not_object"), (3, "malformed_json")]
    assert v.snapshot.last_step == 2  # type: ignore[union-attr]


def test_crlf_lines_decode(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start().replace(b"\n", b"\r\n") + train_step(5, T0 + 5).replace(b"\n", b"\r\n"))
    st = WatchState(p)
    st.poll(budget_s=None)
    assert st.view().n_issues == 0 and st.view().snapshot.last_step == 5  # type: ignore[union-attr]


def test_finish_reports_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1) + train_step(2, T0 + 2)[:25])
    st = WatchState(p)
    st.poll(budget_s=None)
    assert st.view().n_issues == 0 and st.view().partial_bytes == 25  # live: still waiting
    st.finish()
    v = st.view()
    assert [(i.line, i.kind) for i in v.issues] == [(3, "truncated_last_line")]


def test_latest_started_run_is_followed_unless_run_id_given(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start("run-A") + train_step(5, T0 + 5, "run-A")
                  + run_start("run-B") + train_step(2, T0 + 9, "run-B")
                  + train_step(6, T0 + 10, "run-A"))  # a late line from A does not steal focus
    st = WatchState(p)
    st.poll(budget_s=None)
    assert st.view().snapshot.run_id == "run-B"  # type: ignore[union-attr]
    append(p, run_start("run-A", ts=T0 + 20))  # A resumes: it started last now
    st.poll(budget_s=None)
    assert st.view().snapshot.run_id == "run-A"  # type: ignore[union-attr]
    pinned = WatchState(p, run_id="run-B")
    pinned.poll(budget_s=None)
    assert pinned.view().snapshot.last_step == 2  # type: ignore[union-attr]
    waiting = WatchState(p, run_id="run-Z")
    waiting.poll(budget_s=None)
    assert waiting.view().snapshot is None and waiting.view().requested_run_id == "run-Z"


def test_pause_stops_reading(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1))
    st = WatchState(p)
    st.poll(budget_s=None)
    st.toggle_pause()
    append(p, train_step(2, T0 + 2))
    assert st.poll(budget_s=None) is False
    assert st.view().snapshot.last_step == 1 and st.view().paused  # type: ignore[union-attr]
    st.toggle_pause()
    st.poll(budget_s=None)
    assert st.view().snapshot.last_step == 2  # type: ignore[union-attr]


def test_budget_reads_a_backlog_in_slices(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl", steps=400)
    st = WatchState(p)
    st.poll(budget_s=0.0, chunk=4096)  # one chunk per call
    assert 0 < st.follower.offset < p.stat().st_size and st.view().catching_up
    while not st.follower.caught_up:
        st.poll(budget_s=0.0, chunk=4096)
    assert st.view().snapshot.status == "ok" and not st.view().catching_up  # type: ignore[union-attr]


def test_series_buffer_stays_bounded_and_keeps_the_shape() -> None:
    buf = SeriesBuffer(capacity=8)
    for i in range(1000):
        buf.append(float(i))
    vals = buf.values()
    assert len(vals) <= 9 and len(buf) == 1000
    assert vals == sorted(vals)  # a rising series stays rising
    assert vals[0] < 100 and vals[-1] > 900
    # buckets are means of consecutive points: the first covers 0..bucket-1
    assert vals[0] == pytest.approx((buf.bucket - 1) / 2)


def test_series_buffer_nonfinite_only_bucket_is_nan() -> None:
    buf = SeriesBuffer(capacity=4)
    for v in [1.0, 2.0, math.nan, math.nan]:
        buf.append(v)
    vals = buf.values()  # the 4th bucket filled the buffer: pairs merged, NaN pair stays NaN
    assert buf.bucket == 2 and vals[0] == 1.5 and len(vals) == 2 and math.isnan(vals[1])


def test_history_log_is_chronological_and_rate_is_measured() -> None:
    h = RunHistory()
    h.add({"event": "train_step", "step": 10, "ts": 100.0, "loss": 1.0, "lr": [1e-4, 2e-4]})
    h.add({"event": "alert", "step": 12, "ts": 101.0, "severity": "warning", "code": "X", "message": "m"})
    h.add({"event": "recommendation", "step": 15, "ts": 102.0,
           "recommendations": [{"severity": "info", "action": "lower_lr", "message": "try 1e-4"}]})
    h.add({"event": "recommendation", "step": 16, "ts": 103.0,
           "recommendations": [{"severity": "warning", "action": "A", "message": ""},
                               {"severity": "info", "action": "B", "message": ""}]})
    h.add({"event": "train_step", "step": 30, "ts": 110.0, "loss": 0.5, "lr": 1e-4})
    # newest event first; inside one event the writer's order (most severe first) stays
    assert [e["code"] for e in h.newest_first()] == ["A", "B", "lower_lr", "X"]
    assert h.lr.values() == [1e-4, 1e-4]
    assert h.steps_per_s == pytest.approx(2.0)


def test_oversized_line_is_dropped_as_one_issue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradience.watch.tail as tail

    monkeypatch.setattr(tail, "MAX_LINE_BYTES", 160)
    p = tmp_path / "run.jsonl"
    p.write_bytes(b'{"x": "' + b"a" * 400 + b'"}\n' + line("run_start", None, T0))
    st = WatchState(p)
    st.poll(budget_s=None, chunk=32)
    v = st.view()
    assert [(i.line, i.kind) for i in v.issues] == [(1, "malformed_json")]
    assert v.run_ids == ["run-A"]
