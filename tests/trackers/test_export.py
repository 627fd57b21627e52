"""`gradience export` writes every series with the trackers' own clients; read back with their own readers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gradience.cli.main import main
from gradience.telemetry.reader import TelemetryReader
from gradience.trackers.export import tracker_points

pytest.importorskip("tensorboard")


def expected(path):
    points, notes = tracker_points(TelemetryReader(path).iter_events())
    want: dict[str, dict[int, float]] = {}
    for p in points:
        want.setdefault(p.key, {})[p.step] = p.value
    return want, notes


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_the_run_maps_to_tracker_keys(full_run):
    want, notes = expected(full_run)
    assert want["train/loss"][1] == 1.0 and math.isnan(want["train/loss"][6])
    assert want["train/learning_rate"][7] == pytest.approx(1e-4)
    assert want["eval/test/accuracy"] == {6: 0.71, 12: 0.80} and want["eval/train/loss"] == {12: 0.5}
    assert want["gradience/guard/action"] == {6: 2.0} and want["gradience/guard/lr_scale"] == {6: 0.5}
    assert want["gradience/guard/restored_step"] == {6: 4.0}
    assert want["gradience/spectral/kappa_tilde"] == {8: 3.5}
    assert want["gradience/audit/energy_rank_90_p50"] == {12: 3.0}
    assert want["train/num_tokens"][12] == 1200.0
    assert {n.key for n in notes} == {"gradience/alerts", "gradience/audit"}


def test_export_to_tensorboard_reads_back_with_the_event_accumulator(full_run, tmp_path, capsys):
    pytest.importorskip("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["export", str(full_run), "--to", "tensorboard", str(tmp_path / "tb"), "--json"]) is None
    out = json.loads(capsys.readouterr().out)
    want, _ = expected(full_run)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(want) == set(out["keys"])
    for key, series in want.items():
        got = {ev.step: ev.value for ev in acc.Scalars(key)}
        assert got.keys() == series.keys(), key
        assert all(same(got[s], v) for s, v in series.items()), (key, got, series)
    assert any("GUARD_ROLLBACK" in t for t in map(str, acc.Tensors("gradience/alerts/text_summary")))


def test_export_to_mlflow_reads_back_with_the_client(full_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts under ./mlruns
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["export", str(full_run), "--to", "mlflow", uri, "--json"]) is None
    out = json.loads(capsys.readouterr().out)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.params["lora_r"] == "8" and run.data.params["gradience_run_id"] == "export-run"
    want, _ = expected(full_run)
    for key, series in want.items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got.keys() == series.keys(), key
        assert all(same(got[s], v) for s, v in series.items()), (key, got, series)
    notes = client.download_artifacts(run.info.run_id, "gradience_notes.json", str(tmp_path))
    assert "GUARD_ROLLBACK" in Path(notes).read_text()


def test_export_refuses_a_file_that_is_not_telemetry(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(bad), "--to", "tensorboard", str(tmp_path / "tb")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "notes.txt" in err



def test_a_missing_tracker_names_the_extra(full_run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(SystemExit) as exc:
        main(["export", str(full_run), "--to", "mlflow", f"sqlite:///{tmp_path / 'm.db'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gradience[trackers]" in err, err


def test_an_exported_tensorboard_log_imports_back(full_run, tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["export", str(full_run), "--to", "tensorboard", str(tmp_path / "tb")]) is None
    capsys.readouterr()
    assert main(["monitor", str(tmp_path / "tb"), "--json"]) is None
    sig = json.loads(capsys.readouterr().out)["signals"]
    assert sig["loss"]["first"] == 1.0 and sig["loss"]["last"] == pytest.approx(1.0 / 12, rel=1e-6)
    assert sig["loss"]["nonfinite_steps"] == [6]
    assert sig["evals"]["test"]["metrics"]["accuracy"] == pytest.approx(0.80, rel=1e-6)
    assert sig["evals"]["train"]["metrics"]["loss"] == pytest.approx(0.5, rel=1e-6)
    assert sig["eval_history"]["test"]["steps"] == [6, 12]
