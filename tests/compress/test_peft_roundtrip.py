"""Compressed adapters load with `PeftModel.from_pretrained` and behave as predicted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gradience.audit.compress import compress_adapter  # noqa: E402


def _base(kind):
    t = transformers
    if kind == "llama":
        cfg = t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
        return (lambda: t.LlamaForCausalLM(cfg)), dict(
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], use_rslora=True,
            rank_pattern={"layers.1.self_attn.q_proj": 4}, alpha_pattern={"down_proj": 8})
    cfg = t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return (lambda: t.GPT2LMHeadModel(cfg)), dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)


def _deltas(pm):
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m.get_delta_weight("default").detach().double().numpy()
            for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_roundtrip_through_peft(kind, tmp_path):
    make, kw = _base(kind)
    torch.manual_seed(0)
    model = make()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, **kw))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "orig")
    pm.eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref_logits = pm(ids).logits
    ref_deltas = _deltas(pm)

    def load(d):
        base = make()
        base.load_state_dict(state)
        m = peft.PeftModel.from_pretrained(base, d)
        m.eval()
        return m

    # nothing truncated: identical outputs
    compress_adapter(tmp_path / "orig", tmp_path / "same", rank=8)
    same = load(tmp_path / "same")
    with torch.no_grad():
        torch.testing.assert_close(same(ids).logits, ref_logits, rtol=1e-5, atol=1e-5)

    # truncated to rank 2: each ΔW' is the best rank-2 ΔW, off by exactly the reported σ₃·s
    rep = compress_adapter(tmp_path / "orig", tmp_path / "r2", rank=2)
    small = load(tmp_path / "r2")
    got = _deltas(small)
    assert set(got) == set(ref_deltas)
    for name, dw in ref_deltas.items():
        d2 = dw.reshape(dw.shape[0], -1)
        u, s, vt = np.linalg.svd(d2, full_matrices=False)
        want = (u[:, :2] * s[:2]) @ vt[:2]
        new = got[name].reshape(d2.shape)
        assert np.linalg.norm(new - want) <= 1e-5 * np.linalg.norm(d2)
        row = next(m for m in rep["modules"] if m["name"] == name)
        assert row["spectral_error"] == pytest.approx(np.linalg.norm(d2 - new, 2), rel=1e-4)
        assert row["spectral_error"] == pytest.approx(s[2], rel=1e-4)
    for mod in (m for m in small.modules() if hasattr(m, "r") and isinstance(m.r, dict)):
        assert mod.r["default"] == 2
    with torch.no_grad():
        assert not torch.allclose(small(ids).logits, ref_logits)
