"""`check`'s configuration block says what it knows once, plainly: the profile and why, the length
that decides training, the precision TrainingArguments record."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def _write(tmp_path: Path, **training: object) -> tuple[Path, Path]:
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]}))
    tr = tmp_path / "training"
    tr.mkdir()
    (tr / "training_args.json").write_text(json.dumps({"learning_rate": 5e-4, "max_grad_norm": 1.0, **training}))
    return peft, tr


def _check(tmp_path: Path, *extra: str, **training: object) -> str:
    peft, tr = _write(tmp_path, **training)
    res = run_cli("check", "--peft-dir", str(peft), "--training-dir", str(tr), *extra)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_unknown_profile_says_why_once_and_what_to_pass(tmp_path: Path) -> None:
    out = _check(tmp_path)
    assert "profile unknown: no --task given" in out and "`--task NAME`" in out
    assert "unknown (unknown" not in out


def test_given_profile_twin(tmp_path: Path) -> None:
    out = _check(tmp_path, "--task", "sst2")
    assert "profile easy_classification (inferred from dataset 'sst2')" in out and "--task NAME" not in out


def test_max_steps_hides_the_epochs_it_overrides(tmp_path: Path) -> None:
    out = _check(tmp_path, max_steps=120, num_train_epochs=3)
    assert "max_steps=120" in out and "epochs=" not in out


def test_epochs_shown_when_they_decide_the_length(tmp_path: Path) -> None:
    out = _check(tmp_path, max_steps=-1, num_train_epochs=3)
    assert "epochs=3" in out and "max_steps=" not in out


def test_full_precision_recorded_as_float32(tmp_path: Path) -> None:
    assert "dtype=float32" in _check(tmp_path, bf16=False, fp16=False)


def test_half_precision_twin(tmp_path: Path) -> None:
    assert "dtype=bfloat16" in _check(tmp_path, bf16=True, fp16=False)


def test_precision_unknown_without_the_flags(tmp_path: Path) -> None:
    assert "dtype=—" in _check(tmp_path)
