"""Fused MoE experts adapted with PEFT's ``target_parameters`` (a tiny Mixtral, experts.gate_up_proj and
experts.down_proj): the audit measures each expert's own update exactly (against PEFT's
``get_delta_weight``, per expert), and compress writes a per-expert truncation that
``PeftModel.from_pretrained`` loads, or refuses when PEFT could not load what it would write."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gradience.audit import audit_adapter  # noqa: E402
from gradience.audit.compress import compress_adapter  # noqa: E402
from gradience.errors import AdapterFormatError  # noqa: E402

REL = 1e-6
E = 4


def _model():
    cfg = transformers.MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, num_local_experts=E,
                                     num_experts_per_tok=2)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(cfg)


def _deltas(pm):
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    out = {}
    for n, m in pm.named_modules():
        if isinstance(m, ParamWrapper):
            d = m.get_delta_weight("default").detach().double().numpy()  # (E, out, in)
            for e in range(d.shape[0]):
                out[f"{n.removeprefix('base_model.model.')}[expert {e}]"] = d[e]
        elif isinstance(m, LoraLayer):
            out[n.removeprefix("base_model.model.")] = m.get_delta_weight("default").detach().double().numpy()
    return out


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    d = tmp_path_factory.mktemp("moe") / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                 target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p))
    pm.save_pretrained(d)
    return d, _deltas(pm)


def _load(d):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _deltas(PeftModel.from_pretrained(_model(), d))


def test_each_expert_is_audited_exactly(moe):
    d, deltas = moe
    res = audit_adapter(d, udr=False, top_singular_values=2)
    rows = {r.name: r for r in res.layers}
    assert set(rows) == set(deltas)
    assert sum("[expert" in n for n in rows) == 2 * 2 * E  # 2 layers × 2 parameters × E experts
    for name, dw in deltas.items():
        sig = np.linalg.svd(dw, compute_uv=False)
        assert rows[name].r == 2
        assert rows[name].delta_sigma_max == pytest.approx(sig[0], rel=REL), name
        assert rows[name].delta_fro_norm == pytest.approx(np.linalg.norm(dw), rel=REL), name
    fused = res.adapter["fused_experts"]
    assert len(fused) == 4 and all(f["n_experts"] == E and f["r"] == 2 for f in fused)
    assert {tuple(f["candidates"]) for f in fused} == {("down_proj", "gate_up_proj")}
    assert not any(i.code == "RANK_MISMATCH" for i in res.summary.issues)


def test_compress_truncates_each_expert_and_peft_loads_it(moe, tmp_path):
    d, deltas = moe
    rep = compress_adapter(d, tmp_path / "r1", rank=1)
    assert rep["summary"]["r"] == 1
    after = _load(tmp_path / "r1")
    for name, dw in deltas.items():
        u, s, vt = np.linalg.svd(dw, full_matrices=False)
        ref = s[0] * np.outer(u[:, 0], vt[0])
        assert np.linalg.norm(after[name] - ref) <= 1e-6 * np.linalg.norm(ref), name


def test_compress_refuses_what_peft_could_not_load(moe, tmp_path):
    d, _ = moe
    cfg = json.loads((d / "adapter_config.json").read_text())
    src = tmp_path / "in"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes((d / "adapter_model.safetensors").read_bytes())
    (src / "adapter_config.json").write_text(json.dumps({**cfg, "alpha_pattern": {"q_proj": 8}}))
    with pytest.raises(AdapterFormatError, match=r"fused MoE experts .* per-module ranks or alphas"):
        compress_adapter(src, tmp_path / "out", rank=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
