"""User strings that look like rich markup are printed as they are, by every command.

A run id such as ``sweep[/]lr`` used to make ``monitor`` and ``report`` exit 70 (rich's
MarkupError); a folder such as ``runs/exp[lr=1e-4]`` was the same kind in audit and compress. The
consoles print without markup now and styled output is built from rich Text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.audit.test_bounded_inputs import make_adapter

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "data" / "calibration" / "demo_s0.jsonl"
HOSTILE = ("sweep[/]lr", "[bold]x", "[red]x[/red]")


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    out = tmp_path / "exp[lr=1e-4][bold]" / "run.jsonl"
    out.parent.mkdir()
    lines = []
    for line in RUN.read_text().splitlines():
        ev = json.loads(line)
        ev["run_id"] = HOSTILE[0]
        if ev.get("event") == "run_start":
            ev["config"]["model_name"] = HOSTILE[1]
            ev["config"]["dataset_name"] = HOSTILE[2]
        lines.append(json.dumps(ev))
    out.write_text("\n".join(lines) + "\n")
    return out


def _ok(p) -> str:
    assert p.returncode in (0, 1), (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    return p.stdout


def test_monitor_report_watch_print_markup_like_names_literally(cli, hostile_run):
    out = _ok(cli("monitor", str(hostile_run)))
    assert HOSTILE[0] in out or HOSTILE[1] in out
    md = _ok(cli("report", str(hostile_run), "--format", "md", "-o", "-"))
    assert HOSTILE[1] in md
    _ok(cli("report", str(hostile_run)))  # the "wrote …" line names the run id and the path
    _ok(cli("watch", str(hostile_run), "--once"))


def test_audit_compress_check_print_markup_like_paths_literally(cli, tmp_path):
    d = make_adapter(tmp_path / "runs" / "exp[lr=1e-4][red]x[/red]" / "a[/]")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "[bold]model[/]"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    out = _ok(cli("audit", "--peft-dir", str(d)))
    assert "exp[lr=1e-4][red]x[/red]" in out and "a[/]" in out
    out = _ok(cli("compress", "--peft-dir", str(d), "--rank", "1", "--out", str(tmp_path / "o[/]"), "--dry-run"))
    assert "exp[lr=1e-4][red]x[/red]" in out
    out = _ok(cli("check", "--peft-dir", str(d), "--model", "[bold]m[/]"))
    assert "[bold]m[/]" in out
    shutil.rmtree(tmp_path / "runs")
