"""The real `python -m gradience watch FILE` in a detached 80×24 tmux session, while a
background writer appends to the file: the step counter and the loss sparkline move,
`p` pauses, `q` quits cleanly. The captured screens are printed (pytest -s) for a human eye."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradience.telemetry.writer import TelemetryWriter

pytest.importorskip("textual", reason="the tui extra (textual) is part of the dev install; install gradience[tui]")

STEP_RE = re.compile(r"RUNNING\s+step ([\d,]+)/2,000")


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    exe = shutil.which("tmux")
    if exe is None:
        # CI installs tmux (scripts/system-deps.sh): there a missing tmux is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("!!! tmux is NOT installed: the real-terminal test of `gradience watch` did not run. "
                    "Install it (scripts/system-deps.sh, or apt-get install -y tmux) !!!")
    # A private server socket: never touches a tmux the user is running.
    base = [exe, "-L", f"gradience-watch-test-{os.getpid()}"]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=10)


def _capture(base: list[str]) -> str:
    return subprocess.run([*base, "capture-pane", "-p", "-t", "w"], capture_output=True, text=True,
                          timeout=10).stdout


def _wait(base: list[str], pred, timeout: float = 60.0) -> str:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    screen = _capture(base)
    while not pred(screen) and time.monotonic() < end:
        time.sleep(0.1)
        screen = _capture(base)
    return screen


def _step(screen: str) -> int | None:
    m = STEP_RE.search(screen)
    return int(m.group(1).replace(",", "")) if m else None


def _loss_row(screen: str) -> str:
    return next((row for row in screen.splitlines() if row.lstrip("│ ").startswith("loss ")), "")


def test_watch_in_a_real_terminal(tmux: list[str], tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    stop = threading.Event()
    writer = TelemetryWriter(path, run_id="tmux-run")
    writer.run_start({"model_name": "tiny-bert", "training": {"max_steps": 2000}})

    def feed() -> None:
        s = 0
        while not stop.is_set() and s < 2000:
            s += 1
            writer.train_step(s, loss=2.0 * math.exp(-s / 40) + 0.1 + 0.05 * math.sin(s), lr=1e-4,
                              grad_norm=0.5 + 0.3 * math.sin(s / 3))
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # The shell records the exit status itself: tmux 3.3 can leave the exited process unreaped for
    # seconds (pane dead, #{pane_dead_status} still empty), which made the status check flaky.
    status_file = tmp_path / "exit-status"
    cmd = (f"{shlex.quote(sys.executable)} -m gradience watch {shlex.quote(str(path))} --refresh 0.2; "
           f"echo $? > {shlex.quote(str(status_file))}")
    env_args = []
    for key in ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "HOME"):
        if key in os.environ:
            env_args += ["-e", f"{key}={os.environ[key]}"]
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", "w", "-x", "80", "-y", "24", *env_args, cmd,
                        ";", "set-option", "-w", "-t", "w", "remain-on-exit", "on"],
                       check=True, capture_output=True, timeout=20)
        first = _wait(tmux, lambda sc: (_step(sc) or 0) >= 5)
        print("\n--- first capture ---\n" + first)
        s1 = _step(first)
        assert s1 is not None, f"no step counter on screen:\n{first}"
        second = _wait(tmux, lambda sc: (_step(sc) or 0) >= s1 + 20)
        print("\n--- second capture ---\n" + second)
        s2 = _step(second)
        assert s2 is not None and s2 >= s1 + 20, f"step counter did not advance from {s1}:\n{second}"
        assert _loss_row(first) and _loss_row(second) and _loss_row(first) != _loss_row(second)
        assert len(second.splitlines()) <= 24 and "q quit" in second

        subprocess.run([*tmux, "send-keys", "-t", "w", "p"], check=True, timeout=10)
        paused = _wait(tmux, lambda sc: "PAUSED" in sc)
        print("\n--- paused ---\n" + paused)
        assert "PAUSED" in paused
        held = _step(paused)
        time.sleep(1.0)
        assert _step(_capture(tmux)) == held, "the step moved while paused"
        subprocess.run([*tmux, "send-keys", "-t", "w", "p"], check=True, timeout=10)
        resumed = _wait(tmux, lambda sc: (_step(sc) or 0) > (held or 0) and "PAUSED" not in sc)
        assert (_step(resumed) or 0) > (held or 0)

        subprocess.run([*tmux, "send-keys", "-t", "w", "q"], check=True, timeout=10)
        end = time.monotonic() + 10
        while time.monotonic() < end and not (status_file.exists() and status_file.read_text().strip()):
            time.sleep(0.1)
        status = status_file.read_text().strip() if status_file.exists() else None
        assert status == "0", f"watch did not exit cleanly on q (exit status {status!r}):\n{_capture(tmux)}"
    finally:
        stop.set()
        feeder.join(timeout=5)
        writer.close()
