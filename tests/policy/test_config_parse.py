"""Config parsing: HF TrainingArguments dumps, PEFT adapter configs, auto-detection, clear errors.

``data/training_args.json`` is ``TrainingArguments(...).to_dict()`` from transformers 5.23;
``data/peft_minilm/adapter_config.json`` was written by peft 0.21 ``LoraConfig.save_pretrained``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from gradience.errors import ConfigError, UsageError
from gradience.policy import load_config
from gradience.policy.config_parse import detect_kind
from tests.conftest import shared_path

DATA = Path(__file__).parent / "data"


def test_hf_training_args_dump() -> None:
    cfg = load_config(training=DATA / "training_args.json")
    assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 0.01
    assert cfg.optimizer.name == "adamw_torch_fused" and cfg.optimizer.betas == [0.9, 0.999]
    assert cfg.training.batch_size == 16 and cfg.training.gradient_accumulation == 2
    assert cfg.training.max_steps == 500 and cfg.training.seed == 7 and cfg.training.max_grad_norm == 1.0
    assert cfg.lora.r is None


def test_peft_adapter_config_written_by_peft() -> None:
    cfg = load_config(peft_dir=DATA / "peft_minilm")
    assert cfg.lora.r == 32 and cfg.lora.alpha == 64 and cfg.lora.alpha_over_r == 2.0
    assert sorted(cfg.lora.target_modules or []) == ["intermediate.dense", "query", "value"]
    assert cfg.lora.dropout == 0.05 and cfg.lora.use_rslora is False
    assert cfg.model_name == "sentence-transformers/all-MiniLM-L6-v2"


def test_compat_adapter_and_profile_inference_and_overrides() -> None:
    cfg = load_config(peft_dir=shared_path("compat", "adapters", "tiny_lora"), training=DATA / "training_args.json",
                      overrides={"dataset_name": "glue/sst2", "lr": 1e-4, "r": 4, "target_modules": "q_proj, v_proj"})
    assert cfg.task_profile == "easy_classification"
    assert "inferred" in cfg.extras["task_profile_source"]
    assert cfg.optimizer.lr == 1e-4 and cfg.lora.r == 4 and cfg.lora.alpha == 16 and cfg.lora.alpha_over_r == 4.0
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_yaml_and_positional_directory_autodetect(tmp_path: Path) -> None:
    peft = json.loads((DATA / "peft_minilm" / "adapter_config.json").read_text())
    peft["r"] = 8
    (tmp_path / "adapter_config.yaml").write_text(yaml.safe_dump(peft))
    (tmp_path / "training_args.yml").write_text("learning_rate: 5e-5\nweight_decay: 0.0\nmax_grad_norm: 0\n")
    cfg = load_config(tmp_path)
    assert cfg.lora.r == 8 and cfg.optimizer.lr == 5e-5 and cfg.training.max_grad_norm == 0.0


def test_gradience_snapshot_file_and_run_jsonl() -> None:
    cfg = load_config(shared_path("compat", "telemetry", "vnext_minimal.jsonl"))
    assert cfg.task_profile == "hard_reasoning" and cfg.lora.r == 8 and cfg.optimizer.lr == 5e-5


def test_detect_kind() -> None:
    assert detect_kind({"r": 8, "lora_alpha": 16}) == "peft"
    assert detect_kind({"learning_rate": 1e-4, "output_dir": "x"}) == "training"
    assert detect_kind({"lora": {"r": 8}}) == "snapshot"
    assert detect_kind({"hello": 1}) is None


@pytest.mark.parametrize(("kwargs", "exc", "fragment"), [
    ({}, UsageError, "nothing to check"),
    ({"peft": "a.json", "peft_dir": "."}, UsageError, "not both"),
    ({"training": "missing.json"}, ConfigError, "file not found"),
    ({"peft_dir": "nowhere"}, ConfigError, "directory not found"),
])
def test_bad_inputs_raise_clear_errors(kwargs: dict[str, str], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        load_config(**kwargs)  # type: ignore[arg-type]


def test_file_level_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 1"):
        load_config(training=bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load_config(peft=arr)
    wrong = tmp_path / "lr.json"
    wrong.write_text(json.dumps({"learning_rate": "fast"}))
    with pytest.raises(ConfigError, match="learning_rate must be a number"):
        load_config(training=wrong)
    with pytest.raises(UsageError, match="looks like training arguments"):
        load_config(peft=DATA / "training_args.json")
    with pytest.raises(UsageError, match="looks like a PEFT adapter config"):
        load_config(training=DATA / "peft_minilm" / "adapter_config.json")
    unknown = tmp_path / "x.json"
    unknown.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not a recognised config"):
        load_config(unknown)
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "training_args.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="no training_args"):
        load_config(training_dir=tmp_path / "pickled")
    with pytest.raises(ConfigError, match="pickled"):
        load_config(training=tmp_path / "pickled" / "training_args.bin")
    # Integers past the float range are named as too large, never an internal error.
    huge = 10**400
    for kwargs, data, field in (("peft", {"peft_type": "LORA", "r": huge, "lora_alpha": 16}, "r"),
                                ("config", {"lora": {"r": huge, "alpha": 16}}, "lora.r"),
                                ("config", {"optimizer": {"lr": huge}}, "optimizer.lr"),
                                ("training", {"learning_rate": huge, "output_dir": "x"}, "learning_rate")):
        f = tmp_path / f"huge_{kwargs}_{field}.json"
        f.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)} is too large \(401 digits\)"):
            load_config(**{kwargs: f})
    # A file given as training arguments that is not one is an error, never silently ignored.
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ConfigError, match="not HF training arguments"):
        load_config(training=junk, overrides={"dataset_name": "sst2"})
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"lora": {"r": 8}}))
    with pytest.raises(UsageError, match="Gradience config"):
        load_config(training=snap)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "emptydir" / "training_args.json").write_text("{}")
    with pytest.raises(ConfigError, match="not HF training arguments"):
        load_config(training_dir=tmp_path / "emptydir")
    # A run.jsonl given where a config file is expected says what it is and how to check it.
    from gradience.telemetry import TelemetryWriter

    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run) as w:
        w.run_start({"model_name": "m"})
        w.train_step(1, loss=0.5)
    with pytest.raises(ConfigError, match="telemetry stream") as info:
        load_config(peft=run)
    assert info.value.hint == f"pass it as CONFIG: gradience check {run}"
    lines = tmp_path / "lines.json"
    lines.write_text('{"a": 1}\n{"b": 2}\n')
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 2"):
        load_config(peft=lines)


def test_ambiguous_directory(tmp_path: Path) -> None:
    shutil.copy(DATA / "peft_minilm" / "adapter_config.json", tmp_path / "adapter_config.json")
    (tmp_path / "adapter_config.yaml").write_text("r: 4\n")
    with pytest.raises(UsageError, match="ambiguous adapter config"):
        load_config(peft_dir=tmp_path)


def test_rule_helpers_treat_out_of_range_integers_as_missing() -> None:
    from gradience.policy.config_parse import _as_num
    from gradience.policy.rules_run import _num

    assert _num(10**400) is None and _as_num(10**400) is None and _as_num(10**400, integer=True) is None
    assert _num(3) == 3.0 and _as_num(8, integer=True) == 8
