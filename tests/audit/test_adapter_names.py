"""Named adapters, built with PEFT: an adapter ``save_pretrained`` put in ``OUT/<name>/`` is found (or the
error lists the subfolders), and a raw state dict holding two adapters (different r and α) is audited one
adapter at a time with ``adapter_name`` — each exact against PEFT's ``get_delta_weight`` for that
adapter — or refused with the list of names; never merged into one."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from gradience.audit import audit_adapter  # noqa: E402
from gradience.audit.compress import compress_adapter  # noqa: E402
from gradience.errors import AdapterFormatError  # noqa: E402

REL = 1e-6
CONFIGS = {"default": {"r": 4, "lora_alpha": 8}, "other": {"r": 2, "lora_alpha": 16}}


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(12, 10))
    model.add_module("v_proj", torch.nn.Linear(10, 12))
    pm = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"], **CONFIGS["default"]))
    pm.add_adapter("other", LoraConfig(target_modules=["q_proj", "v_proj"], **CONFIGS["other"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p))
    root = tmp_path_factory.mktemp("named")
    pm.save_pretrained(root / "out", selected_adapters=["other"])  # -> out/other/
    pm.save_pretrained(root / "both")  # -> both/ (default) and both/other/
    from safetensors.torch import save_file

    raw = {k: v.contiguous() for k, v in pm.state_dict().items() if "lora_" in k}
    save_file(raw, root / "raw.safetensors")
    for name, cfg in CONFIGS.items():
        (root / f"{name}_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    deltas = {}
    from peft.tuners.lora import LoraLayer

    for n, m in pm.named_modules():
        if isinstance(m, LoraLayer):
            for a in CONFIGS:
                deltas[(n.split(".")[-1], a)] = m.get_delta_weight(a).detach().double().numpy()
    return root, deltas


def _check(res, deltas, adapter):
    rows = {r.name.rsplit(".", 1)[-1]: r for r in res.layers}
    assert set(rows) == {"q_proj", "v_proj"}
    for mod, row in rows.items():
        want = CONFIGS[adapter]
        assert row.r == want["r"] and row.scale == want["lora_alpha"] / want["r"]
        sig = np.linalg.svd(deltas[(mod, adapter)], compute_uv=False)
        assert row.delta_sigma_max == pytest.approx(sig[0], rel=REL)
        assert row.delta_fro_norm == pytest.approx(np.linalg.norm(sig), rel=REL)


def test_adapter_in_its_named_subfolder_is_found(two_adapters):
    root, deltas = two_adapters
    res = audit_adapter(root / "out", udr=False)
    assert res.adapter["adapter_name"] == "other"
    _check(res, deltas, "other")


def test_adapter_name_picks_the_subfolder_and_its_silent_twin_takes_the_top_level(two_adapters):
    root, deltas = two_adapters
    _check(audit_adapter(root / "both", udr=False, adapter_name="other"), deltas, "other")
    _check(audit_adapter(root / "both", udr=False), deltas, "default")


def test_unknown_adapter_name_lists_the_subfolders(two_adapters):
    root, _ = two_adapters
    with pytest.raises(AdapterFormatError, match=r"no adapter named 'third'.*subfolders: other"):
        audit_adapter(root / "out", udr=False, adapter_name="third")


def test_two_adapters_in_one_state_dict_are_refused_with_their_names(two_adapters):
    root, _ = two_adapters
    with pytest.raises(AdapterFormatError) as e:
        audit_adapter(adapter_config=root / "default_config.json", weights=root / "raw.safetensors", udr=False)
    line = e.value.one_line()
    assert "2 adapters (default, other)" in line and "--adapter-name" in line

def test_compress_refuses_a_state_dict_with_two_adapters(two_adapters, tmp_path):
    import shutil

    root, _ = two_adapters
    shutil.copy(root / "raw.safetensors", tmp_path / "adapter_model.safetensors")
    shutil.copy(root / "other_config.json", tmp_path / "adapter_config.json")
    with pytest.raises(AdapterFormatError, match=r"2 adapters \(default, other\); compress writes one adapter"):
        compress_adapter(tmp_path, tmp_path.parent / "c", rank=1, adapter_name="other")
    assert not (tmp_path.parent / "c").exists()


@pytest.mark.parametrize("adapter", ["default", "other"])
def test_each_adapter_of_a_state_dict_is_audited_with_its_own_r_and_alpha(two_adapters, adapter):
    root, deltas = two_adapters
    res = audit_adapter(adapter_config=root / f"{adapter}_config.json", weights=root / "raw.safetensors",
                        udr=False, adapter_name=adapter)
    _check(res, deltas, adapter)
    assert not any(i.code == "RANK_MISMATCH" for i in res.summary.issues)


def test_several_subfolders_without_a_name_is_an_error_naming_them(two_adapters, tmp_path):
    import shutil

    root, _ = two_adapters
    shutil.copytree(root / "out" / "other", tmp_path / "a")
    shutil.copytree(root / "out" / "other", tmp_path / "b")
    with pytest.raises(AdapterFormatError, match=r"2 adapters in subfolders \(a, b\)"):
        audit_adapter(tmp_path, udr=False)


def test_cli_adapter_name(two_adapters, cli):
    root, _ = two_adapters
    p = cli("audit", "--peft-dir", str(root / "both"), "--adapter-name", "other", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["adapter"]["adapter_name"] == "other" and out["r"] == 2
    q = cli("audit", "--peft-dir", str(root / "out"), "--adapter-name", "third")
    assert q.returncode == 2 and "subfolders: other" in q.stderr and len(q.stderr.strip().splitlines()) == 1
