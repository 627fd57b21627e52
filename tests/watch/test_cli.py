"""`gradience watch` as a user runs it: --once (golden), --json, errors, lazy textual import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.cells import cell_len

from .runs import T0, full_run, line, run_start, train_step

GOLDEN = Path(__file__).parent / "golden" / "once_full_run.txt"
PLAIN = {"NO_COLOR": "1", "COLUMNS": "80", "TERM": "dumb"}


def test_once_golden(cli, tmp_path: Path) -> None:
    full_run(tmp_path / "run.jsonl")
    # cwd + relative path: the title shows the path as typed, so it must not be a tmp path.
    res = cli("watch", "run.jsonl", "--once", env=PLAIN, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout
    if os.environ.get("GRADIENCE_UPDATE_GOLDEN"):
        GOLDEN.write_text(res.stdout, encoding="utf-8")
    expected = GOLDEN.read_text(encoding="utf-8")
    assert res.stdout == expected, "rerun with GRADIENCE_UPDATE_GOLDEN=1 only if the change is intended"


def test_once_accepts_a_run_directory_and_width(cli, tmp_path: Path) -> None:
    full_run(tmp_path / "run.jsonl")
    res = cli("watch", str(tmp_path), "--once", "--width", "100", env=PLAIN)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(cell_len(ln) for ln in lines) == 100
    assert "FINISHED OK  step 120/200 (60%)" in res.stdout


def test_json_shape(cli, tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")
    with open(p, "ab") as f:
        f.write(b"not json\n")
    res = cli("watch", str(p), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["snapshot"]["run_id"] == "run-A" and data["snapshot"]["status"] == "ok"
    assert data["snapshot"]["last_step"] == 120
    assert data["n_train_steps"] == 120 and len(data["loss_series"]) == 120
    assert [e["code"] for e in data["log"]] == ["compress_rank", "GUARD_ROLLBACK", "GRAD_NORM_WARNING"]
    assert data["issues"] == [{"line": data["issues"][0]["line"], "kind": "malformed_json",
                               "message": data["issues"][0]["message"]}]
    assert data["steps_per_s"] == 1.0


def test_run_id_selects_and_unknown_is_a_usage_error(cli, tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start("run-A") + train_step(7, T0 + 7, "run-A")
                  + run_start("run-B") + train_step(2, T0 + 9, "run-B"))
    res = cli("watch", str(p), "--json", "--run-id", "run-A")
    assert json.loads(res.stdout)["snapshot"]["last_step"] == 7
    res = cli("watch", str(p), "--once", "--run-id", "run-Z")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "run-Z" in res.stderr and "run-A, run-B" in res.stderr


def test_missing_file_with_once_is_a_one_line_error(cli, tmp_path: Path) -> None:
    res = cli("watch", str(tmp_path / "none.jsonl"), "--once")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_refresh_is_rejected(cli, tmp_path: Path) -> None:
    res = cli("watch", str(tmp_path / "x.jsonl"), "--refresh", "0", "--once")
    assert res.returncode == 2 and "--refresh" in res.stderr


def test_once_and_help_do_not_import_textual(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")
    code = (
        "import sys, io, contextlib\n"
        "from gradience.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['watch', {str(p)!r}, '--once'])\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch', 'transformers')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_live_mode_without_textual_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['textual'] = None  # as if the tui extra were not installed\n"
        "class Tty:\n"  # pretend to be in a terminal, or watch falls back to --once
        "    def __init__(self, f): self.f = f\n"
        "    def isatty(self): return True\n"
        "    def __getattr__(self, name): return getattr(self.f, name)\n"
        "sys.stdout, sys.stdin = Tty(sys.stdout), Tty(sys.stdin)\n"
        "from gradience.cli.main import main\n"
        f"main(['watch', {str(tmp_path / 'run.jsonl')!r}])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "gradience[tui]" in res.stderr and "Traceback" not in res.stderr


def test_once_on_a_torn_last_line_reports_it(cli, tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1) + line("train_step", 2, T0 + 2, loss=0.5)[:30])
    res = cli("watch", str(p), "--once", env=PLAIN)
    assert res.returncode == 0
    assert "line 3 truncated_last_line" in res.stdout


def test_without_a_terminal_live_mode_prints_the_static_view(cli, tmp_path: Path) -> None:
    full_run(tmp_path / "run.jsonl")
    live = cli("watch", "run.jsonl", env=PLAIN, cwd=tmp_path)  # stdout is a pipe here
    once = cli("watch", "run.jsonl", "--once", env=PLAIN, cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert live.stdout == once.stdout
    assert "not a terminal" in live.stderr
