"""Adapters made by real PEFT on tiny models built from configs: the audit agrees with PEFT's
own r/scale per module, with a dense SVD of PEFT's delta weights, and UDR with a dense
spectral norm of the saved base weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the hf extra is part of the dev install
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gradience.audit import audit_adapter  # noqa: E402
from gradience.audit.lanczos import SIGMA1_TOL  # noqa: E402
from gradience.audit.naming import module_type, pattern_key  # noqa: E402


def _tiny(kind: str):
    t = transformers
    if kind == "bert":
        cfg = t.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48)
        return t.BertForSequenceClassification(cfg), dict(target_modules=["query", "value", "dense"],
                                                          modules_to_save=["classifier"])
    if kind == "gpt2":
        cfg = t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
        return t.GPT2LMHeadModel(cfg), dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    if kind == "llama":
        cfg = t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
        return t.LlamaForCausalLM(cfg), dict(
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                            "embed_tokens"],
            use_rslora=True, rank_pattern={"layers.1.self_attn.q_proj": 4, "down_proj": 2},
            alpha_pattern={"model.layers.0.mlp.up_proj": 3})
    cfg = t.T5Config(vocab_size=64, d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2)
    return t.T5ForConditionalGeneration(cfg), dict(target_modules=["q", "v", "wi", "wo"])


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama", "t5"])
def peft_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    model, lora_kw = _tiny(request.param)
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "base")
    model.save_pretrained(root / "base_sharded", max_shard_size="20KB")  # several shards + index
    pm = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, **lora_kw))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:  # PEFT inits B (and embedding A) to zero
                p.normal_(0, 0.05)
    pm.save_pretrained(root / "adapter")
    return request.param, pm, root


def _lora_layers(pm):
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {n[len(prefix):]: m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def test_audit_matches_peft_and_dense(peft_pair, tmp_path):
    kind, pm, root = peft_pair
    res = audit_adapter(root / "adapter", top_singular_values=64, base_model=root / "base",
                        base_norms_cache=tmp_path / "cache")
    rows = {r["name"]: r for r in res.layers}
    layers = _lora_layers(pm)
    assert set(rows) == set(layers)
    assert not [i for i in res.summary["issues"] if i["severity"] != "info"], res.summary["issues"]
    base_sd = {}
    from safetensors.numpy import load_file

    for f in (root / "base").glob("*.safetensors"):
        base_sd.update(load_file(f))
    for name, mod in layers.items():
        row = rows[name]
        assert row["r"] == mod.r["default"]
        assert row["scale"] == pytest.approx(mod.scaling["default"], rel=1e-12)
        dw = mod.get_delta_weight("default").detach().double().numpy()
        dw = dw.reshape(dw.shape[0], -1)
        ref = np.linalg.svd(dw, compute_uv=False)[: row["r"]]
        got = abs(row["scale"]) * np.array(row["top_singular_values"])
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * ref[0])
        # UDR against a dense spectral norm of the base tensor (tied/renamed keys included):
        # σ₁(W) within SIGMA1_TOL, ‖W‖_F to float64 rounding; UDR is a ratio of two values
        # each within 1e-6, hence 2e-6.
        w = base_sd[row["base_tensor"]].astype(np.float64)
        w = w.reshape(w.shape[0], -1)
        s1 = np.linalg.norm(w, 2)
        assert abs(row["base_sigma_max"] - s1) <= SIGMA1_TOL * s1
        assert row["base_fro_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12)
        assert row["udr"] == pytest.approx(ref[0] / s1, rel=2e-6)
        assert row["udr_f"] == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(w), rel=2e-6)
    assert res.summary["n_layers_with_udr"] == len(layers)
    if kind == "bert":
        assert any("classifier" in s for s in res.skipped_tensors)
    types = {r["module_type"] for r in res.layers}
    # embed_tokens (llama) and bert.pooler.dense are neither attention nor MLP
    assert types == ({"attn", "mlp", "other"} if kind in ("llama", "bert") else {"attn", "mlp"})
    # second run is served from the norms cache and gives identical UDRs
    again = audit_adapter(root / "adapter", base_model=root / "base", base_norms_cache=tmp_path / "cache")
    assert [r["udr"] for r in again.layers] == [r["udr"] for r in res.layers]


def test_sharded_base_gives_the_same_udrs(peft_pair):
    root = peft_pair[2]
    shards = sorted(p.name for p in (root / "base_sharded").glob("*.safetensors"))
    assert len(shards) >= 2 and (root / "base_sharded" / "model.safetensors.index.json").exists(), shards
    one = audit_adapter(root / "adapter", base_model=root / "base")
    sharded = audit_adapter(root / "adapter", base_model=root / "base_sharded")
    assert sharded.summary["n_layers_with_udr"] == len(sharded.layers) == one.summary["n_layers_with_udr"]
    for a, b in zip(one.layers, sharded.layers, strict=True):
        assert (b["name"], b["base_tensor"]) == (a["name"], a["base_tensor"])
        assert b["udr"] == a["udr"] and b["udr_f"] == a["udr_f"]


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("gpt2", True)])
def test_lm_head_gets_a_udr_tied_or_not(tmp_path, kind, tied):
    """A real adapter on ``lm_head``: mapped to ``lm_head.weight``, or to the input embedding
    when the base ties them (then the checkpoint holds no ``lm_head.weight``)."""
    t = transformers
    torch.manual_seed(1)
    if kind == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                 tie_word_embeddings=tied))
        targets, emb = ["q_proj", "lm_head"], "model.embed_tokens.weight"
    else:
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=32))
        targets, emb = ["c_attn", "lm_head"], "transformer.wte.weight"
    model.save_pretrained(tmp_path / "base")
    from safetensors.numpy import load_file

    base_sd = load_file(tmp_path / "base" / "model.safetensors")
    assert ("lm_head.weight" in base_sd) == (not tied)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=kind == "gpt2"))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pm.save_pretrained(tmp_path / "adapter")
    res = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "base")
    rows = {r["name"]: r for r in res.layers}
    assert "lm_head" in rows and res.summary["n_layers_with_udr"] == len(rows)
    assert not [i for i in res.summary["issues"] if i["code"].startswith("UDR")], res.summary["issues"]
    head = rows["lm_head"]
    assert head["base_tensor"] == (emb if tied else "lm_head.weight")
    w = base_sd[head["base_tensor"]].astype(np.float64)
    dw = _lora_layers(pm)["lm_head"].get_delta_weight("default").detach().double().numpy()
    s1 = np.linalg.norm(w, 2)
    assert abs(head["base_sigma_max"] - s1) <= SIGMA1_TOL * s1
    assert head["udr"] == pytest.approx(np.linalg.norm(dw, 2) / s1, rel=2e-6)


KEYS = ["model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.q_proj", "model.layers.1.mlp.down_proj",
        "encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.2.DenseReluDense.wo", "h.0.attn.c_proj"]
PATTERNS = [["q_proj"], ["layers.1.self_attn.q_proj", "q_proj"], ["0.self_attn.q_proj"], ["self_attn.q_proj", "down_proj"],
            ["layers\\.1\\d\\..*q_proj"], ["q", "wo"], ["SelfAttention.q", "EncDecAttention.q"], ["c_proj", "attn.c_proj"],
            ["proj"], ["model.layers.0.self_attn.q_proj"]]


@pytest.mark.parametrize("patterns", PATTERNS)
def test_pattern_matching_agrees_with_peft(patterns):
    from peft.utils.other import get_pattern_key

    for key in KEYS:
        theirs = get_pattern_key(patterns, key)
        ours = pattern_key(patterns, key)
        assert (ours if ours is not None else key) == theirs, (patterns, key)


@pytest.mark.parametrize("name,typ", [
    ("model.layers.0.self_attn.q_proj", "attn"), ("model.layers.0.mlp.down_proj", "mlp"),
    ("transformer.h.0.attn.c_proj", "attn"), ("transformer.h.0.mlp.c_proj", "mlp"), ("transformer.h.3.mlp.c_fc", "mlp"),
    ("bert.encoder.layer.0.attention.self.query", "attn"), ("bert.encoder.layer.0.attention.output.dense", "attn"),
    ("bert.encoder.layer.0.intermediate.dense", "mlp"), ("bert.encoder.layer.0.output.dense", "mlp"),
    ("distilbert.transformer.layer.0.attention.q_lin", "attn"), ("distilbert.transformer.layer.0.ffn.lin2", "mlp"),
    ("encoder.block.0.layer.0.SelfAttention.q", "attn"), ("decoder.block.0.layer.1.EncDecAttention.o", "attn"),
    ("encoder.block.0.layer.1.DenseReluDense.wo", "mlp"), ("vit.encoder.layer.0.attention.attention.value", "attn"),
    ("model.encoder.layers.0.self_attn.out_proj", "attn"), ("model.decoder.layers.2.fc1", "mlp"),
    ("model.decoder.layers.2.encoder_attn.k_proj", "attn"), ("model.embed_tokens", "other"), ("lm_head", "other"),
])
def test_module_types_across_architectures(name, typ):
    assert module_type(name) == typ
