"""`monitor` never crashes on odd but schema-valid files: any payload types in any event.

Beyond raw payload shapes, the strategies below put odd types exactly where the reader and the
accumulator convert values: the envelope (``run_id``, ``ts``, ``step``), the guard and spectral
metric keys, and every ConfigSnapshot sub-field. Integers past 64 bits and past the float range are
included because the JSON parser hands them over as Python ints of any size.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from gradience.cli.main import main
from gradience.cli.monitor import build_monitor_json, render_monitor_text
from gradience.telemetry import TelemetryReader

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


# -- odd types where values are converted ---------------------------------------------------------------
HUGE = 10**400  # past the float range: float(HUGE) raises OverflowError
odd = st.one_of(scalars, st.sampled_from([HUGE, -HUGE, 2**64, -(2**63) - 1, "abc", "8", "many", "1e-4"]),
                st.lists(scalars, max_size=2), st.dictionaries(st.sampled_from(["a", "r"]), scalars, max_size=2))
run_ids = st.one_of(st.sampled_from(["r", "s"]), st.integers(-3, 3), st.just(HUGE), st.floats(), st.none(),
                    st.booleans(), st.lists(scalars, max_size=2), st.dictionaries(st.just("a"), scalars, max_size=1))
GUARD_KEYS = ["action", "snapshots", "rollbacks", "lr_backoffs", "backoffs", "final_lr_scale", "integrity_status"]
SPECTRAL_KEYS = ["kappa_tilde", "kappa", "risk_level", "step"]
CONFIG_FIELDS = {
    "optimizer": ["name", "lr", "weight_decay", "betas", "eps", "extras"],
    "lora": ["r", "alpha", "alpha_over_r", "target_modules", "dropout", "bias", "use_rslora", "use_dora",
             "rank_pattern", "alpha_pattern", "extras"],
    "training": ["seed", "batch_size", "gradient_accumulation", "max_steps", "epochs", "dtype", "max_grad_norm",
                 "extras"],
}
TOP_CONFIG = ["model_name", "dataset_name", "task_profile", "notes", "extras"]


@st.composite
def odd_events(draw: Any) -> dict[str, Any]:
    name = draw(st.sampled_from([*KEYS, "metrics", "metrics", "run_start"]))
    ev: dict[str, Any] = {"schema": SCHEMA, "ts": draw(st.one_of(st.floats(0, 1e10), odd)),
                          "run_id": draw(run_ids), "event": draw(st.one_of(st.just(name), odd)),
                          "step": draw(st.one_of(st.none(), st.integers(0, 1000), odd))}
    if name == "metrics":
        kind = draw(st.sampled_from(["guard", "spectral", "lora_audit", "grad_norm"]))
        keys = {"guard": GUARD_KEYS, "spectral": SPECTRAL_KEYS}.get(kind, AUDIT_KEYS)
        ev["kind"] = kind
        ev["metrics"] = draw(st.dictionaries(st.sampled_from(keys), odd, max_size=len(keys)))
        if kind == "guard" and draw(st.booleans()):
            ev["metrics"]["action"] = "summary"
        if draw(st.booleans()):
            ev["action"] = draw(st.one_of(st.sampled_from(["summary", "snapshot", "backoff"]), odd))
    elif name == "run_start":
        cfg: dict[str, Any] = draw(st.dictionaries(st.sampled_from(TOP_CONFIG), odd, max_size=3))
        for section, names in CONFIG_FIELDS.items():
            if draw(st.booleans()):
                cfg[section] = draw(st.dictionaries(st.sampled_from(names), odd, max_size=len(names)))
        ev["config"] = cfg
        if draw(st.booleans()):
            ev["meta"] = draw(st.dictionaries(st.sampled_from(["world_size", "resumed_from_step"]), odd, max_size=2))
    else:
        for key in KEYS[name]:
            if draw(st.booleans()):
                ev[key] = draw(odd)
    return ev


def _write(path: Path, evs: list[dict[str, Any]]) -> None:
    # The stdlib encoder writes ints of any size, as another writer might.
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))


@settings(max_examples=int(os.environ.get("GRADIENCE_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(odd_events(), min_size=1, max_size=10))
def test_reader_and_monitor_survive_odd_types_where_values_are_converted(evs: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.jsonl"
        _write(path, evs)
        reader = TelemetryReader(path)
        snap = reader.summarize()
        json.dumps(snap.to_dict(), default=str)
        for rid in reader.runs():
            assert isinstance(rid, str)
            reader.summarize(rid)
        reader.latest_config()
        reader.latest_eval("test")
        obj = build_monitor_json(path)
        for verbose in (False, True):
            render_monitor_text(Console(file=io.StringIO(), width=80, color_system=None), obj, verbose=verbose)


def _run_main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


@settings(max_examples=int(os.environ.get("GRADIENCE_FUZZ_EXAMPLES", "150")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(odd_events(), min_size=1, max_size=8))
def test_monitor_command_never_exits_internal_error(evs: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.jsonl"
        _write(path, evs)
        for extra in ([], ["--json"], ["--verbose"]):
            code, err = _run_main(["monitor", str(path), *extra])
            assert code in (0, 1), err
            assert "internal error" not in err and "Traceback" not in err, err


def test_lines_that_used_to_crash_summarize_and_monitor(tmp_path: Path) -> None:
    """Each of these valid-JSON lines with a correct envelope used to raise from summarize() (exit 70)."""
    cases = [
        {"run_id": [1], "event": "train_step", "step": 1, "loss": 1.0},
        {"run_id": {"a": 1}, "event": "run_start", "step": None},
        {"run_id": "r", "event": "metrics", "step": 1, "kind": "guard",
         "metrics": {"action": "summary", "snapshots": "many", "rollbacks": [1]}},
        {"run_id": "r", "event": "run_start", "step": 0, "config": {"lora": {"r": "abc", "alpha": "x"}}},
        {"run_id": "r", "event": "train_step", "step": 1, "loss": HUGE, "lr": HUGE, "grad_norm": -HUGE},
    ]
    for i, case in enumerate(cases):
        path = tmp_path / f"{i}.jsonl"
        _write(path, [{"schema": SCHEMA, "ts": 1.0, **case}])
        TelemetryReader(path).summarize().to_dict()
        code, err = _run_main(["monitor", str(path)])
        assert code == 0, err
