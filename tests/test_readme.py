"""The README cannot rot: its set-up commands are the ones CI runs, and every `gradience`
command it shows is run here, in order, in a scratch directory, offline.

Adaptations (each keeps the command's code path and only shortens or de-TTYs it):
- `gradience demo` gets a reduced `--steps` when none is given;
- the live `gradience watch` (a TTY app, driven in tmux by tests/watch/test_tmux.py) runs with `--once`;
- `gradience bench run` gets `--smoke` added when the config carries smoke overrides (the full
  5-seed config takes ~41 minutes; its smoke variant about a minute).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli, shared_path

README = REPO_ROOT / "README.md"
FENCE = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)
PYTHON_FENCE = re.compile(r"```python\n(.*?)```", re.S)


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
    # 80 columns and piped output: what a newcomer's terminal or CI log gets.
    res = run_cli(*argv, cwd=workdir, env={"COLUMNS": "80"}, timeout=900)
    assert res.returncode == 0, f"gradience {' '.join(argv)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    return tmp_path


_PRINTED = re.compile(r"`(gradience [^`]+)`|^\s*(gradience [a-z]+\b.*)$", re.M)


def printed_commands(output: str) -> list[str]:
    """Every `gradience …` command an output tells the user to run: a line of its own or a backticked span."""
    return [(a or b).strip() for a, b in _PRINTED.findall(output)]


def _parses(cmd: str) -> None:
    """The command as printed parses: every option has its value, every argument is there (run from the
    working directory, so paths that must exist are checked too)."""
    import click

    from gradience.cli.main import app

    argv = shlex.split(cmd)[1:]
    try:
        ctx = app.make_context("gradience", list(argv))
        sub = app.get_command(ctx, argv[0])
        assert sub is not None, f"unknown command in {cmd!r}"
        sub.make_context(argv[0], list(argv[1:]), parent=ctx)
    except click.exceptions.Exit:
        pass
    except click.UsageError as exc:  # a newline inserted into a command leaves an option without its value
        raise AssertionError(f"printed command does not parse: {cmd!r}: {exc.format_message()}") from None


def test_every_readme_command_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` (it runs `gradience demo`, see above), then every README command in order, at 80 columns
    with output piped; every command the tool prints is whole and parses."""
    monkeypatch.chdir(workdir)
    demo = _run_in(workdir, ["demo", "--steps", "16"]).stdout
    commands = readme_gradience_commands()
    # The golden path starts from what `make demo` left: the commands the demo prints as "next".
    next_block = re.split(r"─+ next ─+", demo, maxsplit=1)[1]
    golden = commands[:len(printed_commands(next_block))]
    assert printed_commands(next_block) == golden, (printed_commands(next_block), golden)
    printed = printed_commands(demo)
    for cmd in commands:
        argv = _adapt(cmd)
        if argv is None:
            continue
        printed += printed_commands(_run_in(workdir, argv).stdout)
    assert len(printed) >= len(golden) + 2
    for cmd in printed:
        _parses(cmd)
    # What the golden path promises actually happened.
    assert (workdir / "runs/demo/run.jsonl").is_file()
    assert (workdir / "runs/demo/peft/adapter_model.safetensors").is_file()
    report = (workdir / "runs/demo/report.html").read_text(encoding="utf-8")
    assert len(report) > 10_000 and 'data-chart="heat_utilization"' in report  # --peft-dir: per-module heatmaps
    assert (workdir / "runs/demo/peft-r4/adapter_config.json").is_file()
    from gradience.telemetry import TelemetryReader

    snap = TelemetryReader(workdir / "runs/demo/run.jsonl").summarize()
    assert snap.status == "ok" and snap.lora_audit is not None
    assert len(TelemetryReader(workdir / "runs/demo/run.jsonl").accumulate()) == 1  # one run: no second demo
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


@pytest.mark.parametrize("n_train", [40])
def test_python_snippet_runs_as_written(tmp_path: Path, n_train: int) -> None:
    """The README's Python example, unchanged, on a GLUE-style folder of a few dozen generated rows."""
    import json
    import subprocess
    import sys

    from gradience.training.demo_data import generate_sentiment

    (snippet,) = PYTHON_FENCE.findall(README.read_text(encoding="utf-8"))
    train, test = generate_sentiment(n_train=n_train, n_test=16, seed=3)
    (tmp_path / "data").mkdir()
    for name, rows in (("train.tsv", train), ("dev.tsv", test)):
        lines = ["label\tsentence", *(f"{ex.label}\t{ex.text}" for ex in rows)]
        (tmp_path / "data" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs/mine/run.jsonl"
    assert run.is_file() and (tmp_path / "runs/mine/peft/adapter_config.json").is_file()
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("gradience: recording")]
    assert len(said) == 1 and "runs/mine/run.jsonl" in said[0], res.stderr[-2000:]  # once, where it writes
    out = run_cli("monitor", str(run), "--json")
    assert out.returncode == 0, out.stderr
    evals = json.loads(out.stdout)["signals"]["evals"]
    assert {"train", "test"} <= set(evals) and evals["test"]["metrics"]["accuracy"] is not None


def test_parse_check_catches_a_command_broken_by_a_newline() -> None:
    """Control for the golden-path test: a command cut at a wrapped line does not parse."""
    with pytest.raises(AssertionError, match="does not parse"):
        _parses("gradience check --task sst2 --peft-dir runs/n80/peft --training-dir")
