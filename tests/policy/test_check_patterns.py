"""`check` resolves target_modules, exclude_modules, rank_pattern and alpha_pattern with PEFT's
matching rules: each finding fires next to its nearest silent twin, and names the key or module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradience.policy import check_config, load_config

from ..audit._helpers import write_safetensors


def _check(tmp_path: Path, model: str | None = None, task: str = "x", **peft: Any) -> dict[str, Any]:
    data = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **peft}
    p = tmp_path / f"cfg{abs(hash(json.dumps(data, sort_keys=True)))}.json"
    p.write_text(json.dumps(data))
    cfg = load_config(peft=p, overrides={"model_name": model, "dataset_name": task})
    recs = check_config(cfg)
    actions = [r.action for r in recs]
    assert len(actions) == len(set(actions)), actions
    return {r.action: r for r in recs}


LLAMA = "meta-llama/Llama-3.2-1B"


def test_issue_example_scale_64_and_unanchorable_key(tmp_path):
    hit = _check(tmp_path, LLAMA, alpha_pattern={"^q_proj": 100, "v_proj": 256})
    rec = hit["review_module_alpha_over_r"]
    assert rec.severity == "warning" and "v_proj alpha/r=64" in rec.message
    assert "model.layers.0.self_attn.v_proj" in rec.evidence["modules"]
    keys = hit["fix_pattern_keys"]
    assert "alpha_pattern['^q_proj']" in keys.message and keys.severity == "info"  # family sketch, not a checkpoint
    quiet = _check(tmp_path, LLAMA, alpha_pattern={"q_proj": 8, "v_proj": 16})
    assert "review_module_alpha_over_r" not in quiet and "fix_pattern_keys" not in quiet


def test_without_module_names_the_keys_are_judged_on_their_own(tmp_path):
    hit = _check(tmp_path, None, alpha_pattern={"^q_proj": 100, "v_proj": 256})
    assert "v_proj" in hit["review_module_alpha_over_r"].message
    assert hit["fix_pattern_keys"].severity == "warning"  # ^q_proj matches no dotted module path at all
    quiet = _check(tmp_path, None, alpha_pattern={"q_proj": 8, "v_proj": 12})
    assert "review_module_alpha_over_r" not in quiet and "fix_pattern_keys" not in quiet


@pytest.mark.parametrize("loud,quiet", [
    (["model.layers.*.self_attn.q_proj"], r"model\.layers\.\d+\.self_attn\.q_proj"),
    (["all-linear", "q_proj"], "all-linear"),
])
def test_regex_or_shorthand_inside_a_list_is_an_error(tmp_path, loud, quiet):
    rec = _check(tmp_path, LLAMA, target_modules=loud)["fix_target_modules_form"]
    assert rec.severity == "error" and loud[0] in rec.message
    assert "fix_target_modules_form" not in _check(tmp_path, LLAMA, target_modules=quiet)


def test_invalid_regex_key_is_an_error_naming_it(tmp_path):
    rec = _check(tmp_path, LLAMA, rank_pattern={"q_proj(": 2})["fix_pattern_regex"]
    assert rec.severity == "error" and "'q_proj('" in rec.message
    assert "fix_pattern_regex" not in _check(tmp_path, LLAMA, rank_pattern={"q_proj": 2})


def test_targets_that_match_nothing(tmp_path):
    rec = _check(tmp_path, LLAMA, target_modules=["query", "value"])["fix_target_modules"]
    assert "matches no module" in rec.message and "usual llama" in rec.message
    part = _check(tmp_path, LLAMA, target_modules=["q_proj", "query"])
    assert "fix_target_modules" not in part and "query" in part["fix_unmatched_targets"].message
    quiet = _check(tmp_path, LLAMA, target_modules=["q_proj", "v_proj"])
    assert "fix_target_modules" not in quiet and "fix_unmatched_targets" not in quiet


@pytest.mark.parametrize("targets", [
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # what PEFT saves for all-linear
    "all-linear",
])
def test_exclude_modules_is_honoured_by_the_target_advice(tmp_path, targets):
    mlp_out = _check(tmp_path, LLAMA, task="gsm8k", target_modules=targets,
                     exclude_modules=["gate_proj", "up_proj", "down_proj"])
    assert "prefer_attention_only" not in mlp_out
    twin = _check(tmp_path, LLAMA, task="gsm8k", target_modules=targets)
    assert "down_proj" in twin["prefer_attention_only"].message


def _checkpoint(d: Path) -> Path:
    d.mkdir()
    t = {f"transformer.h.{i}.{m}.weight": np.zeros((4, 4), np.float32)
         for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    t["transformer.ln_f.weight"] = np.zeros(4, np.float32)
    write_safetensors(d / "model.safetensors", t)
    return d


def test_model_checkpoint_names_make_findings_exact(tmp_path):
    ck = str(_checkpoint(tmp_path / "ck"))
    rec = _check(tmp_path, ck, target_modules=["q_proj", "v_proj"])["fix_target_modules"]
    assert rec.severity == "error" and f"checkpoint {ck}" in rec.message
    quiet = _check(tmp_path, ck, target_modules=["c_attn"], rank_pattern={"h.1.attn.c_attn": 8})
    assert "fix_target_modules" not in quiet and "fix_pattern_keys" not in quiet
    loud = _check(tmp_path, ck, target_modules=["c_attn"], rank_pattern={"h.2.attn.c_attn": 8})
    assert loud["fix_pattern_keys"].severity == "warning" and "h.2.attn.c_attn" in loud["fix_pattern_keys"].message


def test_cli_check_with_model_dir(tmp_path, cli):
    ck = _checkpoint(tmp_path / "ck")
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "alpha_pattern": {"c_attn": 256}}))
    p = cli("check", "--peft", str(tmp_path / "adapter_config.json"), "--model", str(ck), "--json")
    assert p.returncode == 0, p.stderr
    acts = {r["action"]: r for r in json.loads(p.stdout)["recommendations"]}
    assert "transformer.h.0.attn.c_attn" in acts["review_module_alpha_over_r"]["evidence"]["modules"]
