"""Commands and paths the tool prints are never broken by a newline it inserts, at any width."""

from __future__ import annotations

import pytest

from gradience.cli._output import wrap_text
from tests.conftest import run_cli

CMD = "gradience check --task sst2 --peft-dir runs/n80/peft --training-dir runs/n80/training"


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_wrap_keeps_backticked_commands_and_paths_whole(width: int) -> None:
    text = (f"Re-check the configuration with `{CMD}` before training again; the adapter is in "
            "runs/a-very-long-directory-name/with/many/levels/peft-adapter-output/")
    lines = wrap_text(text, width, first="      ", indent=6)
    joined = "\n".join(lines)
    assert f"`{CMD}`" in joined  # one line holds the whole command
    assert "runs/a-very-long-directory-name/with/many/levels/peft-adapter-output/" in joined
    assert all(len(ln) <= width for ln in lines if "`" not in ln and "runs/a-very" not in ln)


def test_wrap_control_without_backticks_the_command_would_break() -> None:
    """Control: the same sentence without the backticks is wrapped inside the command at 80 columns."""
    lines = wrap_text(f"Re-check the configuration with {CMD} before training again", 80, "      ", 6)
    assert not any(CMD in ln for ln in lines)


def test_error_one_liner_stays_one_line_at_40_columns(tmp_path) -> None:
    missing = tmp_path / "a-rather-long-folder-name" / "and-a-long-run-file-name-that-does-not-exist.jsonl"
    res = run_cli("monitor", str(missing), env={"COLUMNS": "40"})
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(missing) in lines[0], res.stderr
