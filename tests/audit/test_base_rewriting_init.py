"""Adapters whose B·A is not the learned update (PiSSA / OLoRA rewrite the base at initialisation), built
with PEFT on a tiny model: the audit says so and reports no UDR (even against the original base), compress
refuses naming PEFT's conversion; the converted adapter PEFT writes (path_initial_model_for_weight_conversion)
is audited as the true update, checked against the original base."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from gradience.audit import audit_adapter  # noqa: E402
from gradience.audit.compress import compress_adapter  # noqa: E402
from gradience.errors import AdapterFormatError  # noqa: E402


@pytest.fixture(scope="module", params=["pissa", "olora"])
def rewritten(request, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("q_proj", torch.nn.Linear(16, 12))
    base.add_module("v_proj", torch.nn.Linear(12, 16))
    orig = {k: v.detach().clone() for k, v in base.state_dict().items()}
    (root / "base").mkdir()
    save_file({k: v.contiguous() for k, v in orig.items()}, root / "base" / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=request.param))
        pm.peft_config["default"].init_lora_weights = True
        pm.save_pretrained(root / "init")
        pm.peft_config["default"].init_lora_weights = request.param
        with torch.no_grad():  # "training": a small step on every factor
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.add_(0.05 * torch.randn_like(p))
        pm.save_pretrained(root / "ft")
        pm.save_pretrained(root / "conv", path_initial_model_for_weight_conversion=str(root / "init"))
        merged = copy.deepcopy(pm).merge_and_unload().state_dict()
    true = {m: (merged[f"{m}.weight"].double() - orig[f"{m}.weight"].double()).numpy() for m in ("q_proj", "v_proj")}
    base_sigma = {m: float(np.linalg.norm(orig[f"{m}.weight"].double().numpy(), 2)) for m in true}
    return root, true, base_sigma


def test_unconverted_adapter_is_flagged_and_gets_no_udr(rewritten):
    root, _, _ = rewritten
    res = audit_adapter(root / "ft", base_model=root / "base")
    codes = {i.code: i for i in res.summary.issues}
    assert "BASE_REWRITING_INIT" in codes and "path_initial_model_for_weight_conversion" in codes["BASE_REWRITING_INIT"].message
    assert res.summary.n_layers_with_udr == 0 and "rewrote the base" in res.summary.udr_skipped_reason


def test_unconverted_adapter_compress_is_refused(rewritten, tmp_path):
    root, _, _ = rewritten
    with pytest.raises(AdapterFormatError) as e:
        compress_adapter(root / "ft", tmp_path / "out", rank=2)
    assert "not the learned update" in e.value.one_line() and "path_initial_model_for_weight_conversion" in e.value.one_line()
    assert not (tmp_path / "out").exists()


def test_converted_adapter_is_the_true_update(rewritten, tmp_path):
    root, true, base_sigma = rewritten
    res = audit_adapter(root / "conv", base_model=root / "base")
    rows = {r.name: r for r in res.layers}
    assert not any(i.code == "BASE_REWRITING_INIT" for i in res.summary.issues)
    assert res.summary.n_layers_with_udr == 2
    for m, dw in true.items():
        sig = np.linalg.svd(dw, compute_uv=False)
        # float32 merge (W_res + s·B·A) minus W: about 1e-7 absolute on weights of size ~0.2
        assert rows[m].delta_sigma_max == pytest.approx(sig[0], rel=1e-4)
        assert rows[m].base_sigma_max == pytest.approx(base_sigma[m], rel=1e-6)  # against the original base
        assert rows[m].udr == pytest.approx(sig[0] / base_sigma[m], rel=1e-4)
    compress_adapter(root / "conv", tmp_path / "c", rank=2)  # a plain LoRA now: compress works


def test_initial_adapter_gives_the_true_update(rewritten):
    root, true, base_sigma = rewritten
    res = audit_adapter(root / "ft", base_model=root / "base", initial_adapter=root / "init", top_singular_values=8)
    codes = {i.code for i in res.summary.issues}
    assert "TRUE_UPDATE_FROM_INITIAL" in codes and "BASE_REWRITING_INIT" not in codes
    conv = {r.name: r for r in audit_adapter(root / "conv", udr=False, top_singular_values=8).layers}
    for r in res.layers:
        sig = np.linalg.svd(true[r.name], compute_uv=False)
        assert r.r == 8 and r.delta_sigma_max == pytest.approx(sig[0], rel=1e-4)
        # the same update PEFT's conversion writes, to float32 storage
        assert r.delta_sigma_max == pytest.approx(conv[r.name].delta_sigma_max, rel=1e-6)
        assert r.udr == pytest.approx(sig[0] / base_sigma[r.name], rel=1e-4)


def test_initial_adapter_on_a_plain_lora_is_a_usage_error(rewritten):
    from gradience.errors import UsageError

    root, _, _ = rewritten
    with pytest.raises(UsageError, match="already is its update"):
        audit_adapter(root / "conv", udr=False, initial_adapter=root / "init")
