"""A run file that went through Windows PowerShell 5.1 (`>` writes UTF-16 with a BOM and CRLF) or an
editor that adds a UTF-8 BOM reads exactly like the original, in monitor, watch and report alike."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from gradience.telemetry import TelemetryReader
from gradience.watch.tail import WatchState
from tests.conftest import REPO_ROOT, run_cli

ORIGINAL = REPO_ROOT / "tests" / "data" / "calibration" / "demo_s0.jsonl"


def _variant(tmp_path: Path, kind: str) -> Path:
    text = ORIGINAL.read_text(encoding="utf-8")
    out = tmp_path / f"{kind}.jsonl"
    if kind == "utf16le":
        out.write_bytes(codecs.BOM_UTF16_LE + text.replace("\n", "\r\n").encode("utf-16-le"))
    elif kind == "utf16be":
        out.write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    else:
        out.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    return out


@pytest.mark.parametrize("kind", ["utf16le", "utf16be", "utf8bom"])
def test_reader_monitor_and_watch_agree_with_the_original(tmp_path: Path, kind: str) -> None:
    path = _variant(tmp_path, kind)
    ref = TelemetryReader(ORIGINAL).summarize().to_dict()
    reader = TelemetryReader(path)
    got = reader.summarize().to_dict()
    assert reader.issues == []
    for key in ("last_step", "n_events", "model_name", "status", "evals"):
        assert got[key] == ref[key], key
    mon = json.loads(run_cli("monitor", str(path), "--json").stdout)
    assert mon["signals"]["last_step"] == ref["last_step"] and mon["signals"]["model_name"] == ref["model_name"]
    watch = json.loads(run_cli("watch", str(path), "--json").stdout)
    assert watch["n_train_steps"] == 100 and watch["n_issues"] == 0


def test_watch_follows_utf16_in_odd_sized_chunks(tmp_path: Path) -> None:
    """The live follower decodes across chunk boundaries that split a UTF-16 code unit."""
    path = _variant(tmp_path, "utf16le")
    state = WatchState(path)
    while state.poll(budget_s=None, chunk=4097) or not state.follower.caught_up:
        pass
    state.finish()
    v = state.view()
    assert v.n_issues == 0 and v.n_train_steps == 100


def test_control_without_the_converter_the_utf16_file_is_unreadable(tmp_path: Path) -> None:
    """Control: read as UTF-8 bytes, the UTF-16 file has no valid event at all."""
    import orjson

    raw = _variant(tmp_path, "utf16le").read_bytes()
    ok = 0
    for line in raw.split(b"\n"):
        try:
            ok += isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError:
            pass
    assert ok == 0


def test_a_giant_line_is_reported_and_skipped_without_holding_it(tmp_path: Path) -> None:
    """A 100 MB line (past the 16 MB line limit) between valid events: one issue,
    the events around it read, and the reader never holds the whole line."""
    import tracemalloc

    from gradience.telemetry import TelemetryWriter

    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="r") as w:
        w.run_start({}, {})
        w.train_step(1, loss=1.0)
    with run.open("ab") as f:
        f.write(b'{"junk": "' + b"x" * (100 << 20) + b'"}\n')
    with TelemetryWriter(run, run_id="r") as w:
        w.train_step(2, loss=0.5)
    tracemalloc.start()
    reader = TelemetryReader(run)
    snap = reader.summarize("r")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert snap.last_step == 2
    assert [i.message for i in reader.issues] == ["line longer than 16777216 bytes"]
    assert peak < 50 << 20, peak  # about two line-limit pieces, never the 100 MB line


def test_converted_lines_bound_a_giant_line_too() -> None:
    import io

    from gradience.telemetry.encoding import source_converter
    from gradience.telemetry.reader import _converted_lines

    text = 'a\n' + "x" * 5000 + "\nb\n"
    data = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    out = list(_converted_lines(io.BytesIO(data), source_converter(data[:4]), chunk=700, limit=1000))
    assert out == [b"a\n", None, b"b\n"]
