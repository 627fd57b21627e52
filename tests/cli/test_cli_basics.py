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
