"""Float64 oracles for `compress_adapter` on real PEFT layouts: each compressed ΔW, as PEFT itself
computes it after loading, equals the dense truncated SVD of the input ΔW (GPT-2 Conv1D with
fan_in_fan_out, Conv2d, Embedding); `.bin` inputs keep their dtype; non-LoRA tensors are copied."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gradience.audit.compress import compress_adapter  # noqa: E402
from gradience.audit.weights import SafetensorsFile  # noqa: E402

TOL = 1e-6  # relative Frobenius error against the float64 oracle


def _lora_layers(pm):
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def _deltas(pm):
    """PEFT's own s·ΔW per module (float64; Conv1D transposed, conv kernels kept, embeddings (num, dim))."""
    return {n: m.get_delta_weight("default").detach().double().numpy() for n, m in _lora_layers(pm).items()}


def _truncated(x, k):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], s


def _randomize(pm, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def _check_oracle(ref, got, rep, k):
    assert set(got) == set(ref)
    for name, dw in ref.items():
        d2 = dw.reshape(dw.shape[0], -1)
        want, sv = _truncated(d2, k)
        new = got[name].reshape(d2.shape)
        assert np.linalg.norm(new - want) <= TOL * np.linalg.norm(d2), name
        row = next(m for m in rep["modules"] if m["name"] == name)
        assert row["new_r"] == k and not row["untouched"]
        assert row["spectral_error"] == pytest.approx(sv[k], rel=TOL)
        assert row["frob_error"] == pytest.approx(np.sqrt(np.sum(sv[k:] ** 2)), rel=TOL)


def test_gpt2_conv1d_fan_in_fan_out_matches_the_dense_oracle(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)

    def make():
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(cfg).double().eval()

    pm = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=16, fan_in_fan_out=True,
                                                     target_modules=["c_attn", "c_proj", "c_fc"]))
    _randomize(pm)
    pm.save_pretrained(tmp_path / "orig")
    ref = _deltas(pm)
    assert ref["transformer.h.0.attn.c_attn"].shape == (32, 96)  # Conv1D: ΔW is (in, out)
    rep = compress_adapter(tmp_path / "orig", tmp_path / "r3", rank=3)
    small = peft.PeftModel.from_pretrained(make(), tmp_path / "r3")
    _check_oracle(ref, _deltas(small), rep, 3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        merged = make()
        for name, dw in _deltas(small).items():  # the loaded model is the base plus the truncated ΔW
            merged.get_submodule(name).weight += torch.from_numpy(dw)
        torch.testing.assert_close(small(ids).logits, merged(ids).logits, rtol=1e-10, atol=1e-10)


class _ConvEmb(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 12)
        self.conv = torch.nn.Conv2d(3, 10, 3, padding=1)
        self.classifier = torch.nn.Linear(12, 5)


def _conv_emb(tmp_path):
    def make():
        torch.manual_seed(0)
        return _ConvEmb().double()

    pm = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["emb", "conv"],
                                                     modules_to_save=["classifier"]))
    _randomize(pm)
    pm.save_pretrained(tmp_path / "orig")
    return make, pm


def test_conv2d_and_embedding_lora_match_the_dense_oracle_and_modules_to_save_are_copied(tmp_path):
    make, pm = _conv_emb(tmp_path)
    ref = _deltas(pm)
    assert ref["conv"].shape == (10, 3, 3, 3) and ref["emb"].shape == (40, 12)
    rep = compress_adapter(tmp_path / "orig", tmp_path / "r3", rank=3)
    f = SafetensorsFile(tmp_path / "r3" / "adapter_model.safetensors")
    assert f.shape("base_model.model.conv.lora_A.weight") == (3, 3, 3, 3)
    assert f.shape("base_model.model.conv.lora_B.weight") == (10, 3, 1, 1)
    assert f.shape("base_model.model.emb.lora_embedding_A") == (3, 40)
    assert f.shape("base_model.model.emb.lora_embedding_B") == (12, 3)
    f.close()
    small = peft.PeftModel.from_pretrained(make(), tmp_path / "r3")
    _check_oracle(ref, _deltas(small), rep, 3)
    # modules_to_save: the trained classifier comes back unchanged
    trained = pm.base_model.model.classifier.modules_to_save["default"]
    loaded = small.base_model.model.classifier.modules_to_save["default"]
    assert torch.equal(trained.weight, loaded.weight) and torch.equal(trained.bias, loaded.bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_bin_input_keeps_its_dtype_and_non_lora_tensors_bit_for_bit(tmp_path, dtype):
    """A `.bin` adapter (torch.save of a state dict) compresses to safetensors in the same dtype;
    non-LoRA tensors, integer ones included, keep their bits."""
    _, pm = _conv_emb(tmp_path)
    sd = {k: v.to(dtype) for k, v in peft.get_peft_model_state_dict(pm).items()}
    sd["base_model.model.classifier.weight"] = sd["base_model.model.classifier.weight"] * 1.5
    sd["base_model.model.token_ids"] = torch.arange(7, dtype=torch.int64) * 3 - 5
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(sd, d / "adapter_model.bin")
    (d / "adapter_config.json").write_text((tmp_path / "orig" / "adapter_config.json").read_text())
    rep = compress_adapter(d, tmp_path / "out", rank=3)
    st = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    f = SafetensorsFile(tmp_path / "out" / "adapter_model.safetensors")
    assert set(f.names()) == set(sd)
    for name, t in sd.items():
        raw, dt = f.read_raw(name)
        assert st[dt] == t.dtype, name
        if "lora_" not in name:  # copied: the same bits
            assert raw.tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes(), name
    f.close()
    # the LoRA factors: the float64 oracle on the values the .bin held
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == pytest.approx(6.0)  # scale 16/8 kept
    g = SafetensorsFile(tmp_path / "out" / "adapter_model.safetensors")
    for mod, (ka, kb) in {"conv": ("lora_A.weight", "lora_B.weight"),
                          "emb": ("lora_embedding_A", "lora_embedding_B")}.items():
        p = f"base_model.model.{mod}."
        a = sd[p + ka].double().numpy().reshape(8, -1)
        b = sd[p + kb].double().numpy().reshape(-1, 8)
        want, sv = _truncated(b @ a, 3)
        new = g.read(p + kb).astype(np.float64).reshape(-1, 3) @ g.read(p + ka).astype(np.float64).reshape(3, -1)
        tol = {torch.float64: TOL, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
        assert np.linalg.norm(new - want) <= tol * np.linalg.norm(b @ a), (mod, dtype)
        row = next(m for m in rep["modules"] if m["name"] == mod)
        assert row["spectral_error"] == pytest.approx(2.0 * sv[3], rel=1e-9)
    g.close()
