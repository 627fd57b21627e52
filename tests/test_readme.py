"""The README cannot rot: its set-up commands are the ones CI runs, and every `gradience`
command it shows is run here, in order, in a scratch directory, offline.

Adaptations (each keeps the command's code path and only shortens or de-TTYs it):
- `gradience demo` gets a reduced `--steps` when none is given;
- the live `gradience watch` (a TTY app, driven in tmux by tests/watch/test_tmux.py) runs with `--once`;
- `gradience bench run` gets `--smoke` added when the config carries smoke overrides (the full
  3-seed config takes ~40 minutes; its smoke variant about 50 s).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli, shared_path

README = REPO_ROOT / "README.md"
FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)


def _blocks() -> list[list[str]]:
    out = []
    for body in FENCE.findall(README.read_text(encoding="utf-8")):
        lines = [ln.split("  #", 1)[0].split("\t#", 1)[0].strip() for ln in body.splitlines()]
        out.append([ln for ln in lines if ln and not ln.startswith("#")])
    return out


def readme_gradience_commands() -> list[str]:
    return [ln for block in _blocks() for ln in block if ln.startswith("gradience ")]


def test_two_setup_commands_at_the_top_and_ci_runs_the_same() -> None:
    blocks = _blocks()
    assert blocks[0] == ["make demo", "make test"]
    text = README.read_text(encoding="utf-8")
    assert text.index("make demo") < text.index("##")  # before any section
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t.*gradience demo", makefile, re.M)


def _adapt(cmd: str) -> list[str] | None:
    argv = shlex.split(cmd)[1:]
    if argv[0] == "demo" and "--steps" not in argv:
        argv += ["--steps", "16"]
    if argv[0] == "watch" and "--once" not in argv and "--json" not in argv:
        argv.append("--once")
    if argv[0] == "bench":
        return None
    return argv


def _run_in(workdir: Path, argv: list[str]):
    res = run_cli(*argv, cwd=workdir, env={"COLUMNS": "100"}, timeout=900)
    assert res.returncode == 0, f"gradience {' '.join(argv)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    return tmp_path


def test_every_readme_command_runs(workdir: Path) -> None:
    commands = readme_gradience_commands()
    assert commands[0].startswith("gradience demo")  # the golden path starts with the demo
    outputs = {}
    for cmd in commands:
        argv = _adapt(cmd)
        if argv is None:
            continue
        outputs[cmd] = _run_in(workdir, argv).stdout
    # What the golden path promises actually happened.
    assert (workdir / "runs/demo/run.jsonl").is_file()
    assert (workdir / "runs/demo/peft/adapter_model.safetensors").is_file()
    assert (workdir / "runs/demo/report.html").stat().st_size > 10_000
    assert (workdir / "runs/demo/peft-r4/adapter_config.json").is_file()
    from gradience.telemetry import TelemetryReader

    snap = TelemetryReader(workdir / "runs/demo/run.jsonl").summarize()
    assert snap.status == "ok" and snap.lora_audit is not None
    guard = TelemetryReader(workdir / "runs/guard/run.jsonl").summarize()
    assert guard.guard["rollbacks"] >= 1 and guard.status == "ok"


def test_readme_bench_commands_run(workdir: Path) -> None:
    shared_path("data", "sst2")  # the bench scores real SST-2: skipped on a clone without ../shared
    bench = [c for c in readme_gradience_commands() if c.startswith("gradience bench")]
    assert bench
    for cmd in bench:
        argv = shlex.split(cmd)[1:]
        if argv[:2] == ["bench", "run"] and "smoke" not in argv[2] and "--smoke" not in argv:
            argv.append("--smoke")
        _run_in(workdir, argv)
    assert (workdir / "runs/bench-smoke/bench.json").is_file()
    assert (workdir / "bench_out/minilm_sst2/bench_aggregate.md").is_file()
