"""GradienceConfig: one documented settings object; the flat keywords are shorthand that never
silently override it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from gradience import GradienceConfig, GuardConfig, SpectralConfig
from gradience.training.config import SHORTHAND, RiskThresholds, describe, resolve_config

from .conftest import read_events, tiny_model

torch = pytest.importorskip("torch")


def test_every_field_is_documented():
    for cls in (GradienceConfig, GuardConfig, SpectralConfig, RiskThresholds):
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get("help", "")) > 10, (cls.__name__, f.name)
    text = describe()
    assert "telemetry_interval = 10:" in text and "guard = None:" in text


def test_importing_the_config_does_not_import_torch():
    code = "import sys, gradience; gradience.GradienceConfig(guard=gradience.GuardConfig()); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shorthand_builds_the_same_config():
    got = resolve_config(None, {"guard_enabled": True, "guard_max_rollbacks": 1, "guard_lr_backoff": 0.25,
                                "spectral_interval": 5, "telemetry_interval": 2, "dataset_name": "sst2"}, "X")
    assert got == GradienceConfig(guard=GuardConfig(max_rollbacks=1, lr_backoff=0.25),
                                  spectral=SpectralConfig(interval=5), telemetry_interval=2, dataset_name="sst2")
    assert resolve_config(None, {"spectral_enabled": False}, "X").spectral is None
    assert resolve_config(None, {}, "X") == GradienceConfig()
    # A GuardConfig alone turns the guard on (it used to be ignored without guard_enabled=True).
    assert resolve_config(None, {"guard_config": GuardConfig(cooldown=3)}, "X").guard == GuardConfig(cooldown=3)
    # guard_config and guard_* keywords that agree are fine.
    agreed = resolve_config(None, {"guard_config": GuardConfig(max_rollbacks=2), "guard_max_rollbacks": 2,
                                   "guard_enabled": True}, "X")
    assert agreed.guard == GuardConfig(max_rollbacks=2)


@pytest.mark.parametrize(("given", "match"), [
    # explicitly passed at its default value: still a conflict with the config's 50
    ({"guard_snapshot_interval": 100}, "guard_snapshot_interval=100 conflicts with config"),
    ({"guard_enabled": False}, "guard_enabled=False conflicts with config"),
    ({"telemetry_interval": 10}, "telemetry_interval=10 conflicts with config"),
    ({"spectral_interval": 50}, "spectral_interval=50 conflicts"),
    ({"out_dir": "elsewhere"}, "out_dir='elsewhere' conflicts"),
    ({"guard_config": GuardConfig()}, "guard_config=.* conflicts"),
])
def test_a_keyword_that_contradicts_the_config_is_an_error(given, match):
    cfg = GradienceConfig(out_dir="runs/x", telemetry_interval=3, guard=GuardConfig(snapshot_interval=50),
                          spectral=SpectralConfig(interval=7))
    with pytest.raises(ValueError, match=match) as err:
        resolve_config(cfg, given, "GradienceCallback")
    assert "\n" not in str(err.value) and str(err.value).startswith("GradienceCallback: ")


def test_a_keyword_that_agrees_with_the_config_is_accepted():
    cfg = GradienceConfig(telemetry_interval=3, guard=GuardConfig())
    assert resolve_config(cfg, {"telemetry_interval": 3, "guard_enabled": True,
                                "guard_snapshot_interval": 100}, "X") is cfg


@pytest.mark.parametrize(("given", "error", "match"), [
    ({"guard_max_rollbacks": 1}, ValueError, "the guard is off; pass guard_enabled=True"),
    ({"guard_enabled": False, "guard_config": GuardConfig()}, ValueError, "guard_enabled=False conflicts"),
    ({"guard_config": GuardConfig(max_rollbacks=2), "guard_max_rollbacks": 5}, ValueError,
     "conflicts with guard_config"),
    ({"spectral_enabled": False, "spectral_interval": 5}, ValueError, "spectral_enabled=False conflicts"),
    ({"guard_config": {"max_rollbacks": 1}}, ValueError, "must be a GuardConfig"),
    ({"telemetry_interval": 0}, ValueError, "telemetry_interval must be >= 1"),
    ({"spectral_interval": 0}, ValueError, "spectral_interval must be >= 1"),
    ({"guard_enabled": True, "guard_lr_backoff": 2.0}, ValueError, "lr_backoff must be in"),
    ({"gap_threshold": float("nan")}, ValueError, "gap_threshold"),
    ({"gaurd_enabled": True}, TypeError, "unknown setting 'gaurd_enabled'"),
])
def test_bad_settings_are_one_line_errors(given, error, match):
    with pytest.raises(error, match=match) as err:
        resolve_config(None, given, "GradienceController")
    assert "\n" not in str(err.value)


def test_every_shorthand_names_a_real_setting():
    for key, path in SHORTHAND.items():
        obj = GradienceConfig(guard=GuardConfig())
        for part in path:
            assert hasattr(obj, part), (key, part)
            obj = getattr(obj, part)


def test_the_integrations_take_a_config_or_shorthand(tmp_path):
    from gradience import GradienceCallback, GradienceController

    cfg = GradienceConfig(guard=GuardConfig(max_rollbacks=1), telemetry_interval=2)
    assert GradienceCallback(config=cfg).config is cfg
    assert GradienceCallback(tmp_path, guard_enabled=True, guard_max_rollbacks=1, telemetry_interval=2).config \
        == dataclasses.replace(cfg, out_dir=tmp_path)
    with pytest.raises(ValueError, match="guard_max_rollbacks=3 conflicts"):
        GradienceCallback(config=cfg, guard_max_rollbacks=3)
    with pytest.raises(ValueError, match="give an output directory"):
        GradienceController(guard_enabled=True)
    with pytest.raises(ValueError, match="run_config="):
        GradienceController(tmp_path, config={"model_name": "x"})  # the recorded ConfigSnapshot moved
    ctl = GradienceController(config=dataclasses.replace(cfg, out_dir=tmp_path))
    assert ctl.path == tmp_path / "run.jsonl"


def test_controller_as_context_manager_records_a_crash(tmp_path, tiny_tokenizer):
    from gradience import GradienceController

    model = tiny_model(tiny_tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(RuntimeError, match="boom"), GradienceController(tmp_path, telemetry_interval=1) as ctl:
        ctl.initialize(model, optimizer=opt)
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        ctl.step(1, 0.7)
        raise RuntimeError("boom")
    end = read_events(tmp_path / "run.jsonl")[-1]
    assert end["event"] == "run_end" and end["status"] == "error" and "RuntimeError: boom" in end["reason"]
    # ... and a clean exit finalizes.
    with GradienceController(tmp_path / "ok", telemetry_interval=1, recommend=False) as ctl2:
        ctl2.initialize(model, optimizer=opt)
        ctl2.step(1, 0.5)
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["status"] == "ok"


def test_controller_resume_continues_the_run_id(tmp_path, tiny_tokenizer):
    from gradience import GradienceController

    model = tiny_model(tiny_tokenizer)
    first = GradienceController(tmp_path, recommend=False, save_adapter=False)
    first.initialize(model)
    first.step(1, 0.5)
    first.finalize()
    again = GradienceController(tmp_path, recommend=False, save_adapter=False)
    again.initialize(model, resumed_from_step=1)
    again.step(2, 0.4)
    again.finalize()
    starts = [e for e in read_events(tmp_path / "run.jsonl") if e["event"] == "run_start"]
    assert len(starts) == 2 and starts[0]["run_id"] == starts[1]["run_id"]
    assert starts[1]["meta"]["resumed_from_step"] == 1
