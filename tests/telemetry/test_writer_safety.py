"""Append-only, crash and concurrency guarantees of the writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradience.telemetry import TelemetryReader, TelemetryWriter


def test_opening_a_writer_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path, run_id="a") as w:
        w.run_start({"model_name": "m"})
        w.train_step(1, loss=1.0)
    before = path.read_bytes()
    w2 = TelemetryWriter(path, run_id="b")
    w2.close()
    assert path.read_bytes() == before
    with TelemetryWriter(path, run_id="b") as w3:
        w3.run_start({})
    after = path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    assert TelemetryReader(path).runs() == ["a", "b"]


def test_context_manager_records_error_status(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with pytest.raises(RuntimeError), TelemetryWriter(path, run_id="a") as w:
        w.run_start({})
        raise RuntimeError("boom")
    end = list(TelemetryReader(path).iter_events("run_end"))
    assert end[-1]["status"] == "error" and "boom" in end[-1]["reason"]
    snap = TelemetryReader(path).summarize()
    assert snap.status == "error"


def test_clean_exit_writes_ok_and_buffered_mode_flushes(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path, run_id="a", flush_every=1000) as w:
        w.run_start({})
        for i in range(10):
            w.train_step(i, loss=1.0)
        assert path.read_bytes() == b""  # buffered
        w.alert("warning", "X", "m")  # alerts always flush
        assert len(path.read_bytes().splitlines()) == 12
    assert TelemetryReader(path).summarize().status == "ok"


def test_non_rank_zero_does_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    path = tmp_path / "run.jsonl"
    with TelemetryWriter(path) as w:
        assert w.run_start({}) is None
    assert not path.exists()


CHILD = textwrap.dedent(
    """
    import sys
    from gradience.telemetry import TelemetryWriter
    w = TelemetryWriter(sys.argv[1], run_id=sys.argv[2])
    w.run_start({"model_name": "m"})
    i = 0
    while True:
        w.train_step(i, loss=1.0 / (i + 1), lr=1e-4, grad_norm=0.5, note="x" * 40)
        i += 1
        if i == 200:
            print("ready", flush=True)
    """
)


def test_sigkill_mid_run_leaves_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "crash"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Simulate the worst case too: a torn tail (kill between two halves of a line).
    with open(path, "ab") as f:
        f.write(b'{"schema": "gradience.vnext.telemetry/v1", "ts": 1.5, "run_')
    raw = path.read_bytes()
    complete = raw.count(b"\n")
    r = TelemetryReader(path)
    events = list(r.iter_events())
    assert len(events) == complete >= 201
    assert [(i.kind) for i in r.issues] == ["truncated_last_line"]
    steps = [e["step"] for e in events if e["event"] == "train_step"]
    assert steps == list(range(len(steps)))
    assert r.summarize().status == "running"


APPENDER = textwrap.dedent(
    """
    import sys
    from gradience.telemetry import TelemetryWriter
    w = TelemetryWriter(sys.argv[1], run_id=sys.argv[2])
    for i in range(int(sys.argv[3])):
        w.train_step(i, loss=0.5, lr=1e-4, grad_norm=1.25, tag=sys.argv[2] * 20)
    w.close()
    """
)


def test_two_processes_append_without_tearing(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    n = 50_000
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), rid, str(n)]) for rid in ("A", "B")]
    for p in procs:
        assert p.wait(timeout=300) == 0
    r = TelemetryReader(path)
    counts = {"A": 0, "B": 0}
    last = {"A": -1, "B": -1}
    for ev in r.iter_events():
        rid = ev["run_id"]
        counts[rid] += 1
        assert ev["step"] == last[rid] + 1  # each writer's lines stay whole and in order
        last[rid] = ev["step"]
    assert counts == {"A": n, "B": n}
    assert r.issues == []
    assert os.path.getsize(path) == sum(len(line) for line in path.read_bytes().splitlines(keepends=True))
