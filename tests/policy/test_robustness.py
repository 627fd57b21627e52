"""`monitor` never crashes on odd but schema-valid files: any payload types in any event."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from gradience.cli.monitor import build_monitor_json, render_monitor_text

SCHEMA = "gradience.vnext.telemetry/v1"
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.sampled_from(["NaN", "Infinity", "-Infinity", "", "STABLE", "DANGER", "eval", "train"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(
                                                           ["loss", "ppl", "accuracy", "attn", "mlp",
                                                            "utilization_mean", "r", "action"]), inner, max_size=4)),
                      max_leaves=8)
KEYS = {
    "run_start": ["config", "meta"],
    "train_step": ["loss", "lr", "grad_norm", "grad_norm_clipped"],
    "eval": ["split", "metrics"],
    "metrics": ["kind", "metrics", "action"],
    "alert": ["severity", "code", "message", "context"],
    "recommendation": ["recommendations"],
    "run_end": ["status", "reason", "summary"],
}
AUDIT_KEYS = ["utilization_mean", "suggested_r_global_median", "suggested_r_global_90", "total_lora_params",
              "by_type", "udr_p90", "udr_max", "r", "suggested_params_global_median", "energy_rank_90_p50"]


@st.composite
def events(draw: Any) -> dict[str, Any]:
    name = draw(st.sampled_from(list(KEYS)))
    ev: dict[str, Any] = {"schema": SCHEMA, "ts": draw(st.floats(0, 1e10)), "run_id": "r", "event": name,
                          "step": draw(st.one_of(st.none(), st.integers(0, 1000)))}
    for key in KEYS[name]:
        if draw(st.booleans()):
            ev[key] = draw(values)
    if name == "metrics" and draw(st.booleans()):
        ev["kind"] = draw(st.sampled_from(["lora_audit", "spectral", "guard", "grad_norm"]))
        ev["metrics"] = draw(st.dictionaries(st.sampled_from([*AUDIT_KEYS, "kappa_tilde", "risk_level"]), values,
                                             max_size=6))
    if name == "run_start" and draw(st.booleans()):
        ev["config"] = {"task_profile": draw(st.sampled_from(["hard_reasoning", "x", 3])),
                        "optimizer": draw(st.one_of(st.just({"lr": 1e-4}), values)),
                        "lora": draw(st.one_of(st.just({"r": 8}), values))}
    return ev


@settings(max_examples=int(os.environ.get("GRADIENCE_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=12))
def test_monitor_survives_any_payload_types(evs: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in evs))
        obj = build_monitor_json(path)
        for verbose in (False, True):
            render_monitor_text(Console(file=io.StringIO(), width=80, color_system=None), obj, verbose=verbose)
        json.dumps(obj, default=str)
