"""A full disk never kills training: the HF Trainer runs to its last step while run.jsonl cannot grow
(a real file-size limit, RLIMIT_FSIZE, in a subprocess), the writer says so once, keeps the events and
writes them when the file may grow again, with a TELEMETRY_GAP alert; a torn last line never swallows
the next process's run_start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradience.telemetry import TelemetryReader, TelemetryWriter

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent('''
    import resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    from transformers import BertTokenizerFast, TrainerCallback
    from gradience import GradienceCallback
    from gradience.training import demo_data
    from tests.training.conftest import make_trainer

    out = Path({out!r})
    tok = BertTokenizerFast(vocab={{w: i for i, w in enumerate(demo_data.vocabulary())}}, do_lower_case=True)
    run = out / "run" / "run.jsonl"

    class Disk(TrainerCallback):  # the disk fills up after step 5 and has room again after step 25
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                resource.setrlimit(resource.RLIMIT_FSIZE, (run.stat().st_size + 1500, resource.RLIM_INFINITY))
            if state.global_step == 25:
                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    cb = GradienceCallback(out / "run", telemetry_interval=1, audit=False, save_adapter=False, spectral_enabled=False)
    trainer = make_trainer(out, tok, [Disk(), cb], steps=40, eval_steps=None)
    trainer.train()
    print("TRAINED", trainer.state.global_step)
''')


def test_training_survives_a_full_disk_and_the_events_arrive_late(tmp_path: Path) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    res = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=repo, out=str(tmp_path))], capture_output=True,
                         text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                      "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TRAINED 40" in res.stdout  # the Trainer reached its last step (it used to die at the first failed write)
    warned = [ln for ln in res.stderr.splitlines() if ln.startswith("gradience: cannot write telemetry")]
    assert len(warned) == 1 and "File too large" in warned[0], res.stderr[-2000:]
    run = tmp_path / "run" / "run.jsonl"
    reader = TelemetryReader(run)
    events = list(reader.iter_events())
    assert len(reader.issues) <= 1, reader.issues  # the line torn at the limit, on a line of its own
    steps = sorted(e["step"] for e in events if e["event"] == "train_step")
    gap = [e for e in events if e["event"] == "alert" and e.get("code") == "TELEMETRY_GAP"]
    assert len(gap) == 1 and gap[0]["dropped"] <= 1, gap  # at most the one line torn at the limit
    assert len(steps) >= 39 and steps[-1] == 40, steps
    assert [e["event"] for e in events][-1] == "run_end"
    snap = TelemetryReader(run).summarize()
    assert snap.status == "ok" and snap.last_step == 40


def test_a_torn_last_line_does_not_swallow_the_next_run_start(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="first") as w:
        w.run_start({"model_name": "first"}, {})
        w.train_step(1, loss=1.0)
    before = run.read_bytes()
    run.write_bytes(before + b'{"schema": "gradience.vnext.telemetry/v1", "ts": 1, "run_id": "first", "ev')  # torn
    with TelemetryWriter(run, run_id="second") as w:
        w.run_start({"model_name": "resumed"}, {})
        w.train_step(2, loss=0.9)
    assert run.read_bytes().startswith(before)  # nothing before the torn line was touched
    reader = TelemetryReader(run)
    snap = reader.summarize("second")
    assert snap.model_name == "resumed" and snap.last_step == 2
    assert len(reader.issues) == 1  # the torn line alone is reported


def test_writer_keeps_lines_while_writes_fail_and_reports_the_gap(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same with os.write failing (ENOSPC) for a while: no exception reaches the caller."""
    import errno
    import os

    import gradience.telemetry.writer as wmod

    run = tmp_path / "run.jsonl"
    w = TelemetryWriter(run, run_id="r")
    w.run_start({}, {})
    real = os.write
    monkeypatch.setattr(wmod.os, "write", lambda fd, b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    for s in range(1, 6):
        w.train_step(s, loss=1.0)
    monkeypatch.setattr(wmod.os, "write", real)
    w.train_step(6, loss=1.0)
    w.close()
    events = [json.loads(ln) for ln in run.read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train_step"] == [1, 2, 3, 4, 5, 6]
    gap = [e for e in events if e.get("code") == "TELEMETRY_GAP"]
    assert len(gap) == 1 and gap[0]["dropped"] == 0
    assert capsys.readouterr().err.count("cannot write telemetry") == 1


def test_a_removed_file_is_started_again_and_the_gap_recorded(tmp_path: Path, capsys) -> None:
    """rm run.jsonl while training writes it: the next event starts a new file at the path with a
    TELEMETRY_GAP alert saying how many events went with the removed one; nothing raises."""
    run = tmp_path / "run.jsonl"
    w = TelemetryWriter(run, run_id="r")
    w.run_start({}, {})
    w.train_step(1, loss=1.0)
    run.unlink()
    w.train_step(2, loss=0.9)
    w.train_step(3, loss=0.8)
    w.close()
    reader = TelemetryReader(run)
    events = list(reader.iter_events())
    assert [e["event"] for e in events] == ["alert", "train_step", "train_step"]
    assert events[0]["code"] == "TELEMETRY_GAP" and events[0]["dropped"] == 2
    assert capsys.readouterr().err.count("was removed while this run was writing it") == 1
    assert TelemetryReader(run).summarize().last_step == 3
