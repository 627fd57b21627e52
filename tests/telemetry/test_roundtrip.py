"""Writer/reader round trip, redaction and reader robustness (property-based)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradience.telemetry import SCHEMA_ID, TelemetryReader, TelemetryWriter
from gradience.telemetry.encoding import TextPolicyViolation

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda k: k not in ("schema", "ts", "run_id", "event", "step")
)
# Strings that are neither long nor one of the three non-finite spellings.
short_text = st.text(max_size=40).filter(lambda s: s not in ("NaN", "Infinity", "-Infinity"))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True), short_text,
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
payloads = st.dictionaries(keys, values, max_size=6)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


@SETTINGS
@given(payload=payloads, step=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)))
def test_any_accepted_event_reads_back_equal(tmp_path: Path, payload, step) -> None:
    path = tmp_path / "rt.jsonl"
    path.unlink(missing_ok=True)
    with TelemetryWriter(path, run_id="r") as w:
        w.emit("metrics", step=step, kind="x", metrics=payload)
    events = list(TelemetryReader(path).iter_events())
    assert len(events) == 1
    ev = events[0]
    assert ev["schema"] == SCHEMA_ID and ev["run_id"] == "r" and ev["step"] == step
    assert _same(payload, ev["metrics"])
    # Every line is strict JSON (orjson rejects bare NaN/Infinity).
    for line in path.read_bytes().splitlines():
        orjson.loads(line)


long_text = st.text(min_size=257, max_size=600)


@SETTINGS
@given(text=long_text, depth=st.integers(min_value=0, max_value=4))
def test_long_strings_redacted_at_any_depth(tmp_path: Path, text: str, depth: int) -> None:
    path = tmp_path / "red.jsonl"
    path.unlink(missing_ok=True)
    nested: object = text
    for i in range(depth):
        nested = {"k": [nested]} if i % 2 else [nested]
    with TelemetryWriter(path, run_id="r") as w:
        w.emit("metrics", kind="x", metrics={"v": nested})
    raw = path.read_text(encoding="utf-8")
    assert text not in raw
    assert f"[REDACTED len={len(text)}]" in raw


def test_redaction_boundary_and_envelope(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    ok, too_long = "a" * 256, "b" * 257
    with TelemetryWriter(path, run_id="x" * 300) as w:
        w.alert("info", "CODE", ok, context={"c": too_long})
    ev = next(TelemetryReader(path).iter_events())
    assert ev["message"] == ok
    assert ev["context"]["c"] == "[REDACTED len=257]"
    assert ev["run_id"] == "[REDACTED len=300]"  # the envelope is covered too


def test_allow_text_and_raise(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    text = "z" * 1000
    with TelemetryWriter(path, run_id="r", allow_text=True) as w:
        w.emit("metrics", kind="x", metrics={"t": text})
    assert next(TelemetryReader(path).iter_events())["metrics"]["t"] == text
    w2 = TelemetryWriter(path, run_id="r", on_text_violation="raise")
    with pytest.raises(TextPolicyViolation):
        w2.emit("metrics", kind="x", metrics={"t": text})
    w2.close()
    assert len(path.read_bytes().splitlines()) == 1  # nothing partial written


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=2000))
def test_reader_never_raises_on_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_bytes(blob)
    r = TelemetryReader(path)
    list(r.iter_events())
    r.summarize()
    lines = [ln for ln in blob.split(b"\n")]
    assert all(i.line <= len(lines) for i in r.issues)


def test_each_bad_line_reported_once_with_kind(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"schema": SCHEMA_ID, "ts": 1.0, "run_id": "r", "event": "train_step", "step": 1, "loss": 1.0}
    lines = [
        orjson.dumps(good),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({**good, "schema": "other/v9"}),
        orjson.dumps({k: v for k, v in good.items() if k != "run_id"}),
        b'{"schema": "gradience.vnext.telemetry/v1", "ts": 2.0, "run_id": "r", "event": "train_step", "step": 2, "loss": NaN}',
        b'{"schema": "gradience.vnext.telemetry/v1", "ts": 3',
    ]
    path.write_bytes(b"\n".join(lines))  # last line torn: no newline
    r = TelemetryReader(path)
    events = list(r.iter_events())
    list(r.iter_events())  # a second pass must not duplicate issues
    assert [e["step"] for e in events] == [1, 2]
    assert math.isnan(events[1]["loss"])  # bare NaN from older releases
    assert [(i.line, i.kind) for i in r.issues] == [
        (2, "malformed_json"), (3, "not_object"), (4, "wrong_schema"),
        (5, "missing_envelope_key"), (7, "truncated_last_line"),
    ]
    from gradience.errors import TelemetryFormatError

    with pytest.raises(TelemetryFormatError, match="line 2"):
        list(TelemetryReader(path, strict_schema=True).iter_events())


def test_nonfinite_written_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "nf.jsonl"
    with TelemetryWriter(path, run_id="r") as w:
        w.train_step(1, loss=float("nan"), lr=float("inf"), grad_norm=float("-inf"))
    raw = path.read_text()
    assert '"loss":"NaN"' in raw and '"lr":"Infinity"' in raw and '"grad_norm":"-Infinity"' in raw
    ev = next(TelemetryReader(path).iter_events("train_step"))
    assert math.isnan(ev["loss"]) and ev["lr"] == math.inf and ev["grad_norm"] == -math.inf


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30, 10**400, -(10**400), 10**5000],
                         ids=["2^64", "-2^63-1", "1e30", "1e400", "-1e400", "1e5000"])
def test_integers_past_64_bits_are_written_not_raised(tmp_path: Path, big: int) -> None:
    path = tmp_path / "big.jsonl"
    with TelemetryWriter(path, run_id="r") as w:
        w.emit("metrics", step=10**30, kind="x", metrics={"v": big, "nested": [{"n": big}], "ok": 2**63 - 1})
    line = path.read_bytes().splitlines()[0]
    orjson.loads(line)  # strict JSON
    ev = next(TelemetryReader(path).iter_events())
    assert ev["step"] == float(10**30) and ev["metrics"]["ok"] == 2**63 - 1
    try:
        expected: object = float(big)
    except OverflowError:  # past the float range: the exact digits, as text
        expected = str(big) if abs(big) < 10**4000 else hex(big)
    assert ev["metrics"]["v"] == expected and ev["metrics"]["nested"][0]["n"] == expected


def test_reader_reads_integers_like_orjson(tmp_path: Path) -> None:
    # Another writer's stdlib json may write any integer; none may reach a float() that raises.
    path = tmp_path / "ints.jsonl"
    big, bigger = "1" + "0" * 400, "1" + "0" * 5000
    path.write_text(f'{{"schema": "{SCHEMA_ID}", "ts": 1.0, "run_id": "r", "event": "train_step", "step": 3, '
                    f'"loss": {big}, "lr": -{bigger}, "grad_norm": 18446744073709551616, "n": 7}}\n')
    ev = next(TelemetryReader(path).iter_events())
    assert ev["loss"] == math.inf and ev["lr"] == -math.inf and ev["grad_norm"] == float(2**64)
    assert ev["step"] == 3 and type(ev["n"]) is int


def test_long_keys_redacted_like_values(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    k256, k300a, k300b = "k" * 256, "a" * 300, "b" * 300
    with TelemetryWriter(path, run_id="r") as w:
        w.emit("metrics", kind="x", metrics={k256: 1, "deep": [{k300a: "x", k300b: "y"}], k300a: {"v": 2}})
    raw = path.read_text(encoding="utf-8")
    assert k300a not in raw and k300b not in raw
    m = next(TelemetryReader(path).iter_events())["metrics"]
    assert m[k256] == 1  # exactly the limit passes
    assert m["[REDACTED len=300]"] == {"v": 2}
    # Two long keys of one length are both kept.
    assert m["deep"] == [{"[REDACTED len=300]": "x", "[REDACTED len=300] #2": "y"}]
    w2 = TelemetryWriter(path, run_id="r", on_text_violation="raise")
    with pytest.raises(TextPolicyViolation, match="a key"):
        w2.emit("metrics", kind="x", metrics={"ok": {k300a: 1}})
    w2.close()
    with TelemetryWriter(path, run_id="r", allow_text=True) as w3:
        w3.emit("metrics", kind="x", metrics={k300a: 1})
    assert k300a in path.read_text(encoding="utf-8")


def test_invalid_run_id_is_an_issue_numbers_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    base = {"schema": SCHEMA_ID, "ts": 1.0, "event": "train_step", "step": 1, "loss": 1.0}
    ids: list[object] = ["a", [1], {"x": 1}, None, True, 7, 2.5]
    path.write_bytes(b"".join(orjson.dumps({**base, "run_id": rid}) + b"\n" for rid in ids))
    r = TelemetryReader(path)
    assert r.runs() == ["a", "7", "2.5"]
    assert [(i.line, i.kind) for i in r.issues] == [(n, "invalid_envelope") for n in (2, 3, 4, 5)]
    assert "run_id must be a string, got list" in r.issues[0].message
    assert r.summarize("7").loss["last"] == 1.0 and r.summarize().run_id == "2.5"
    from gradience.errors import TelemetryFormatError

    with pytest.raises(TelemetryFormatError, match="line 2: invalid_envelope"):
        list(TelemetryReader(path, strict_schema=True).iter_events())
