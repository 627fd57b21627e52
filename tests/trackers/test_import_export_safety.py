"""import and export never overwrite their source, never splice runs, and refuse bad destinations in
one line (exit 2); export takes a run-id prefix like monitor/watch/report."""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path

import pytest

from gradience.telemetry import TelemetryWriter
from tests.conftest import run_cli

STATE = {"global_step": 3, "max_steps": 3, "log_history": [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4}
                                                           for s in (1, 2, 3)]}


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_exit_2(res) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "internal error" not in lines[0], (res.returncode, res.stderr)
    return lines[0]


def _tb_run(d: Path, scale: float) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(d))
    for s in range(1, 4):
        w.add_scalar("train/loss", scale / s, s)
    w.close()
    return d


def test_import_never_overwrites_what_it_imports(tmp_path: Path) -> None:
    state = tmp_path / "out" / "trainer_state.json"
    state.parent.mkdir()
    state.write_text(json.dumps(STATE))
    before = _digest(state)
    _one_line_exit_2(run_cli("import", str(state), "-o", str(state), "--force"))
    _one_line_exit_2(run_cli("import", str(state.parent), "-o", str(state), "--force"))
    tb = _tb_run(tmp_path / "tb", 1.0)
    event = next(tb.glob("events.out.tfevents.*"))
    ev_before = _digest(event)
    _one_line_exit_2(run_cli("import", str(tb), "-o", str(event), "--force"))
    assert _digest(state) == before and _digest(event) == ev_before
    (tmp_path / "adir").mkdir()
    assert "is a directory" in _one_line_exit_2(run_cli("import", str(state), "-o", str(tmp_path / "adir"), "--force"))
    ok = run_cli("import", str(state.parent))  # the default output beside the source is allowed
    assert ok.returncode == 0 and (state.parent / "gradience-import.jsonl").is_file()


def test_a_folder_of_several_tensorboard_runs_is_refused_not_spliced(tmp_path: Path) -> None:
    _tb_run(tmp_path / "runs" / "r1", 1.0)
    _tb_run(tmp_path / "runs" / "r2", 5.0)
    line = _one_line_exit_2(run_cli("monitor", str(tmp_path / "runs")))
    assert "2 TensorBoard runs" in line and "r1" in line and "r2" in line
    assert run_cli("monitor", str(tmp_path / "runs" / "r1")).returncode == 0


@pytest.mark.parametrize("dest", ["existing-file", "empty"])
def test_export_refuses_a_bad_tensorboard_destination(tmp_path: Path, dest: str) -> None:
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="r") as w:
        w.run_start({}, {})
        w.train_step(1, loss=1.0)
    target = str(run) if dest == "existing-file" else ""
    before = _digest(run)
    _one_line_exit_2(run_cli("export", str(run), "--to", "tensorboard", target, cwd=tmp_path))
    assert _digest(run) == before and not list(tmp_path.glob("events.out.tfevents.*"))


def test_export_mlflow_refusals_are_one_line(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="abcdef12-run") as w:
        w.run_start({}, {})
        w.train_step(1, loss=1.0)
    _one_line_exit_2(run_cli("export", str(run), "--to", "mlflow", "sqlite:///", cwd=tmp_path))
    _one_line_exit_2(run_cli("export", str(run), "--to", "mlflow", f"sqlite:///{tmp_path}/m.db", "--experiment", "",
                             cwd=tmp_path))
    ok = run_cli("export", str(run), "--to", "mlflow", f"sqlite:///{tmp_path}/m.db", "--run-id", "abcdef", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # a run-id prefix, as monitor/watch/report take it


def test_append_to_a_utf16_run_file_is_refused_and_the_file_untouched(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="r") as w:
        w.run_start({}, {})
        w.train_step(1, loss=1.0)
    u16 = tmp_path / "u16.jsonl"
    u16.write_bytes(codecs.BOM_UTF16_LE + run.read_text().encode("utf-16-le"))
    before = _digest(u16)
    from gradience.errors import GradienceError

    with pytest.raises(GradienceError, match="UTF-16"):
        TelemetryWriter(u16, run_id="r")
    assert _digest(u16) == before


def test_report_of_a_folder_is_written_inside_it(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "trainer_state.json").write_text(json.dumps(STATE))
    res = run_cli("report", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out / "report.html").is_file() and not (tmp_path / "report.html").exists()


def test_import_of_a_missing_path_says_not_found(tmp_path: Path) -> None:
    assert "not found" in _one_line_exit_2(run_cli("import", str(tmp_path / "nope")))
