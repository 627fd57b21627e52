"""The audit's output is typed (AuditSummary, AuditLayer) and serialises to exactly what it did as dicts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from gradience.audit import AuditLayer, audit_adapter
from gradience.telemetry import TelemetryReader, TelemetryWriter
from gradience.telemetry.sections import AuditIssue, AuditSummary, LayerShare, TypeSummary

from ._helpers import make_adapter


def _adapter(tmp_path):
    rng = np.random.default_rng(11)
    bad_a = rng.standard_normal((4, 8))
    bad_a[0, 0] = np.nan
    mods = {"m.layers.0.self_attn.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4))),
            "m.layers.0.mlp.up_proj": (rng.standard_normal((4, 8)), np.zeros((8, 4))),
            "m.layers.1.mlp.up_proj": (bad_a, rng.standard_normal((8, 4))),
            "m.layers.1.self_attn.v_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4)))}
    return make_adapter(tmp_path / "adapter", mods, r=4, alpha=8)


def test_audit_output_conforms_to_its_types(tmp_path):
    res = audit_adapter(_adapter(tmp_path), top_singular_values=2)
    s = res.summary
    assert isinstance(s, AuditSummary)
    # Every key the audit writes is a declared field of the declared type.
    assert s.extras == {} and s.recorded == {}
    assert list(s.to_dict()) == [k for k in s.field_names() if k in s.to_dict()]
    assert isinstance(s.suggested_r_global_median, int) and isinstance(s.utilization_mean, float)
    nested = [*(s.by_type or {}).values(), *(s.top_layers or []), *(s.issues or [])]
    assert {type(x) for x in nested} == {TypeSummary, LayerShare, AuditIssue}
    assert all(x.extras == {} and x.recorded == {} for x in nested)
    assert {i.code for i in s.issues or []} >= {"NONFINITE_WEIGHTS", "ZERO_UPDATE"}
    for row in res.layers:
        assert isinstance(row, AuditLayer)
        assert row.extras == {} and row.recorded == {}
    by_name = {r.name: r for r in res.layers}
    assert by_name["m.layers.1.mlp.up_proj"].error and by_name["m.layers.1.mlp.up_proj"].stable_rank is None
    assert "stable_rank" not in by_name["m.layers.1.mlp.up_proj"].to_dict()
    assert by_name["m.layers.0.self_attn.q_proj"].top_singular_values is not None
    # The per-row JSON is exactly its dict (missing fields stay missing, present Nones stay).
    for row in res.layers:
        assert AuditLayer.from_dict(row.to_dict()).to_dict() == row.to_dict()


def test_summary_round_trips_through_telemetry_byte_for_byte(tmp_path):
    res = audit_adapter(_adapter(tmp_path))
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="r1") as w:
        w.run_start(config={"lora": {"r": 4}})
        w.metrics(kind="lora_audit", metrics=res.summary.to_dict())
    snap = TelemetryReader(run).summarize()
    assert snap.lora_audit is not None
    assert json.dumps(snap.lora_audit.to_dict()) == json.dumps(res.summary.to_dict())
    assert snap.lora_audit.suggested_r_global_median == res.summary.suggested_r_global_median
    # The dict-style read access still answers for callers written against the plain dict.
    assert snap.lora_audit["suggested_r_global_median"] == res.summary.suggested_r_global_median


def test_summary_read_leniently_keeps_what_was_recorded():
    payload = {"utilization_mean": "high", "suggested_r_global_median": 4.0, "r": 8, "current_r": 8,
               "by_type": {"attn": {"utilization_mean": 0.3}}}
    s = AuditSummary.from_dict(payload)
    assert s.utilization_mean is None  # ill-typed reads as missing ...
    assert s.suggested_r_global_median == 4 and isinstance(s.suggested_r_global_median, int)
    assert s.extras == {"current_r": 8}
    assert s.type_utilization("attn") == 0.3 and s.type_utilization("mlp") is None
    assert s.total_lora_params is None and "total_lora_params" not in s
    # ... and re-serialising writes back exactly what was read (values, keys, order).
    assert json.dumps(s.to_dict()) == json.dumps(payload)
    assert AuditSummary.from_dict(None).to_dict() == {} and not AuditSummary.from_dict("junk")


def test_replace_keeps_the_shape():
    s = AuditSummary.from_dict({"r": 8, "suggested_r_global_median": 4})
    t = dataclasses.replace(s, suggested_r_global_median=2)
    assert t.to_dict() == {"r": 8, "suggested_r_global_median": 2}


def test_a_field_set_after_reading_serialises_its_new_value():
    s = AuditSummary.from_dict({"suggested_r_global_median": 4.0, "utilization_mean": "x"})
    assert s.to_dict() == {"suggested_r_global_median": 4.0, "utilization_mean": "x"}
    s.suggested_r_global_median, s.utilization_mean = 2, 0.5
    assert s.to_dict() == {"suggested_r_global_median": 2, "utilization_mean": 0.5}


def test_a_nested_block_of_another_shape_is_kept_as_recorded():
    payload = {"by_type": {"attn": 0.3}, "issues": ["free text"], "top_layers": [{"layer": "0", "energy_share": 1.0}]}
    s = AuditSummary.from_dict(payload)
    assert s.by_type == {} and s.issues == []  # entries that are not objects are left out ...
    assert s.top_layers == [LayerShare(layer="0", energy_share=1.0)]
    assert s.to_dict() == payload  # ... and the blocks serialise as recorded
    mixed = AuditSummary.from_dict({"by_type": {"attn": 0.3, "mlp": {"utilization_mean": 0.05}}})
    assert mixed.type_utilization("mlp") == 0.05 and mixed.type_utilization("attn") is None
    assert mixed.to_dict() == {"by_type": {"attn": 0.3, "mlp": {"utilization_mean": 0.05}}}
