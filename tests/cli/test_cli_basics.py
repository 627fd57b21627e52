"""CLI skeleton: version, help, fast start without torch, one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gradience import __version__
from gradience.cli.main import COMMANDS
from tests.conftest import run_cli

HEAVY = ("torch", "transformers", "peft", "textual", "safetensors", "accelerate")


def test_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_help_lists_every_spec_command() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for name in ("demo", "check", "monitor", "audit", "compress", "bench", "watch", "report"):
        assert name in COMMANDS and f"  {name} " in res.stdout


def _imported_modules(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from gradience.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES=' + ','.join(sorted(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    marker = res.stderr.rsplit("MODULES=", 1)
    assert len(marker) == 2, res.stderr
    return set(marker[1].split(","))


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["monitor", "--help"], ["audit", "--help"],
                                  ["compress", "--help"], ["report", "--help"], ["watch", "--help"],
                                  ["bench", "--help"], ["demo", "--help"]])
def test_help_never_imports_heavy_libraries(argv: list[str]) -> None:
    mods = _imported_modules(argv)
    assert not [m for m in HEAVY if m in mods], sorted(m for m in HEAVY if m in mods)


def test_importing_gradience_does_not_import_torch() -> None:
    code = "import gradience, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_gradience_error_is_one_line_exit_2(tmp_path) -> None:
    missing = tmp_path / "nope.jsonl"
    code = (
        "from gradience.cli.main import app, main\n"
        "import click\n"
        "from gradience.telemetry import TelemetryReader\n"
        "@app.command('x-read')\n"
        "@click.argument('path')\n"
        "def _x(path):\n"
        "    TelemetryReader(path)\n"
        f"main(['x-read', {str(missing)!r}])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert str(missing) in lines[0] and "not found" in lines[0]


def test_unknown_command_is_usage_error() -> None:
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_python_dash_m_entry_point() -> None:
    res = subprocess.run([sys.executable, "-m", "gradience", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and __version__ in res.stdout


@pytest.mark.parametrize(("argv", "reason"), [
    (["check", "--lr", "abc"], "Invalid value for '--lr': 'abc' is not a valid float"),
    (["monitor"], "Missing argument 'RUN.jsonl'"),
    (["monitor", "run.jsonl", "--bogus"], "No such option '--bogus'"),
    (["monitor", "run.jsonl", "--fail-on", "zzz"], "Invalid value for '--fail-on'"),
    (["audit", "--no-such-flag"], "No such option '--no-such-flag'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_click_usage_errors_are_one_line_exit_2(argv: list[str], reason: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from gradience.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and out == "", err
    assert lines[0].startswith("gradience: error: ") and reason in lines[0]
    cmd = "gradience" if argv[0] == "frobnicate" else f"gradience {argv[0]}"
    assert lines[0].endswith(f"see '{cmd} --help'")


def test_usage_error_from_the_console_script_is_one_line() -> None:
    res = run_cli("monitor")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == ["gradience: error: Missing argument 'RUN.jsonl' — see 'gradience monitor --help'"]


def test_bare_gradience_still_shows_help() -> None:
    res = run_cli()
    assert res.returncode == 2 and "Usage: gradience" in res.stderr and "Commands" in res.stderr
