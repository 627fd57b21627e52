"""`--base-model ORG/NAME` resolved from the local Hugging Face cache (never downloaded), the
config's `base_model_name_or_path` used the same way, and the one-line error when the model
is not cached. The cache is a real hub-cache layout (models--org--name/refs/main → a
snapshot) holding a tiny base model saved with `save_pretrained`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

REPO = "acme/tiny-llama"


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hub")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(root / "base")
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pm.save_pretrained(root / "adapter")
    cache = root / "hf" / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    old, new = "0" * 40, "a1b2c3" + "0" * 34
    # An older snapshot with other weights must lose to the one refs/main names.
    shutil.copytree(root / "base", repo / "snapshots" / new)
    (repo / "snapshots" / old).mkdir(parents=True)
    (repo / "snapshots" / old / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)
    return {"root": root, "cache": cache}


def _udr(p) -> dict:
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    return {row["name"]: row["udr"] for row in out["layers"]}


def test_hub_id_is_found_in_the_local_cache(cli, hub, tmp_path):
    root = hub["root"]
    env = {"HF_HUB_CACHE": str(hub["cache"]), "HF_HUB_OFFLINE": "1"}
    from_dir = _udr(cli("audit", "--peft-dir", str(root / "adapter"), "--base-model", str(root / "base"),
                        "--json", "--layers"))
    from_id = _udr(cli("audit", "--peft-dir", str(root / "adapter"), "--base-model", REPO, "--json", "--layers",
                       env=env))
    assert from_id == from_dir and len(from_id) == 4 and all(v > 0 for v in from_id.values())
    # HF_HOME/hub is searched as well.
    home_env = {"HF_HOME": str(hub["cache"].parent), "HF_HUB_CACHE": "", "HF_HUB_OFFLINE": "1"}
    assert _udr(cli("audit", "--peft-dir", str(root / "adapter"), "--base-model", REPO, "--json", "--layers",
                    env=home_env)) == from_dir

    # Without --base-model the adapter config's base_model_name_or_path is used when cached ...
    adapter = tmp_path / "adapter"
    shutil.copytree(root / "adapter", adapter)
    conf = json.loads((adapter / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = REPO
    (adapter / "adapter_config.json").write_text(json.dumps(conf))
    assert _udr(cli("audit", "--peft-dir", str(adapter), "--json", "--layers", env=env)) == from_dir
    # ... and skipped with a stated reason when it is not (the audit itself still succeeds).
    p = cli("audit", "--peft-dir", str(adapter), "--json", env={**env, "HF_HUB_CACHE": str(tmp_path / "empty")})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["n_layers_with_udr"] == 0 and REPO in out["udr_skipped_reason"]


def test_uncached_hub_id_is_a_one_line_error(cli, hub, tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "nohome"), "HF_HUB_OFFLINE": "1"}
    p = cli("audit", "--peft-dir", str(hub["root"] / "adapter"), "--base-model", "acme/not-downloaded", env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "acme/not-downloaded" in p.stderr and "--no-udr" in p.stderr
