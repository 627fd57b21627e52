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


@pytest.mark.parametrize("cmd", ["audit", "compress"])
def test_module_tables_fit_80_columns(tmp_path, cmd: str) -> None:
    """Long module names fold inside their column; the numeric columns never wrap; the table fits."""
    import numpy as np

    from tests.audit._helpers import make_adapter

    rng = np.random.default_rng(0)
    names = [f"model.language_model.layers.{i}.mlp.experts_shared_gate_and_up_projection_block_{i}.dense"
             for i in range(3)]
    d = make_adapter(tmp_path / "a", {n: (rng.standard_normal((4, 16)), rng.standard_normal((24, 4))) for n in names},
                     r=4, alpha=8)
    argv = ["audit", "--peft-dir", str(d)] if cmd == "audit" else \
        ["compress", "--peft-dir", str(d), "--out", str(tmp_path / "o"), "--rank", "2", "--dry-run"]
    res = run_cli(*argv, env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    table_lines = [ln for ln in res.stdout.splitlines() if "│" in ln or "─" in ln or "mlp" in ln]
    assert table_lines and max(len(ln) for ln in table_lines) <= 80, "\n".join(table_lines)
