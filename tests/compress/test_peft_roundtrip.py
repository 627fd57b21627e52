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

    # nothing truncated: the factors are copied, so the outputs are identical to the bit
    compress_adapter(tmp_path / "orig", tmp_path / "same", rank=8)
    same = load(tmp_path / "same")
    with torch.no_grad():
        assert torch.equal(same(ids).logits, ref_logits)

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


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)


class _Nested(torch.nn.Module):
    """Module names where one ends with another's full name: ``a.lin``, ``b.a.lin``, ``d.b.a.lin``."""

    def __init__(self):
        super().__init__()
        self.a = _Block()
        self.b = torch.nn.Module()
        self.b.a = _Block()
        self.c = _Block()
        self.d = torch.nn.Module()
        self.d.b = torch.nn.Module()
        self.d.b.a = _Block()


def test_patterns_resolve_exactly_when_one_module_name_ends_with_another(tmp_path):
    """PEFT matches a pattern key against the end of the module path and takes the first hit, so a
    key ``a.lin`` also matches ``b.a.lin``: each module must still get exactly its own r and α."""
    def make():
        torch.manual_seed(0)
        return _Nested()

    pm = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=8, target_modules=["lin"],
                                                     alpha_pattern={"c.lin": 3}))
    true_rank = {"a.lin": 8, "b.a.lin": 1, "c.lin": 2, "d.b.a.lin": 8}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g))
                mod = n.removeprefix("base_model.model.").split(".lora_B")[0]
                p[:, true_rank[mod]:] = 0
    pm.save_pretrained(tmp_path / "orig")
    ref = _deltas(pm)
    rep = compress_adapter(tmp_path / "orig", tmp_path / "out", energy=0.999)
    assert {m["name"]: m["new_r"] for m in rep["modules"]} == true_rank
    loaded = peft.PeftModel.from_pretrained(make(), tmp_path / "out")
    scale_in = {"a.lin": 1.0, "b.a.lin": 1.0, "c.lin": 3 / 8, "d.b.a.lin": 1.0}
    got = _deltas(loaded)
    for n, m in loaded.named_modules():
        name = n.removeprefix("base_model.model.")
        if name in true_rank:
            assert m.r["default"] == true_rank[name], name
            assert m.scaling["default"] == pytest.approx(scale_in[name], rel=1e-12), name
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-5 * np.abs(ref[name]).max())


class _TwoBranches(torch.nn.Module):
    """y = a(x) + b(x): the output error of truncating a and b is at most (e_a + e_b)·‖x‖."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(24, 20)
        self.b = torch.nn.Linear(24, 20)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_output_error_is_bounded_by_the_reported_spectral_errors(tmp_path):
    """‖y' − y‖ = ‖Σ_j (ΔW'_j − ΔW_j)·x‖ ≤ Σ_j e_j·‖x‖ with e_j = s_j·σ_{k+1} the reported spectral
    error; for one module the bound is attained at x = v_{k+1}, so the reported e_j is the true
    worst-case output error (neither larger nor smaller)."""
    def make():
        torch.manual_seed(0)
        return _TwoBranches().double()

    pm = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=12, target_modules=["a", "b"],
                                                     alpha_pattern={"b": 4}))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    pm.save_pretrained(tmp_path / "orig")
    pm.eval()
    ref = _deltas(pm)
    k = 3
    rep = compress_adapter(tmp_path / "orig", tmp_path / "r3", rank=k)
    err = {m["name"]: m["spectral_error"] for m in rep["modules"]}
    assert set(err) == {"a", "b"} and min(err.values()) > 0
    small = peft.PeftModel.from_pretrained(make(), tmp_path / "r3")
    small.eval()

    x = torch.randn(512, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gap = (small(x) - pm(x)).norm(dim=1)
    bound = (err["a"] + err["b"]) * x.norm(dim=1)
    assert torch.all(gap <= bound * (1 + 1e-9))

    # one module at a time: the bound is reached exactly at its (k+1)-th right singular vector
    for name in ("a", "b"):
        _, s, vt = np.linalg.svd(ref[name])
        assert err[name] == pytest.approx(s[k], rel=1e-9)
        v = torch.from_numpy(vt[k].copy())
        with torch.no_grad():
            gap1 = getattr(small.base_model.model, name)(v) - getattr(pm.base_model.model, name)(v)
        assert gap1.norm().item() == pytest.approx(err[name] * v.norm().item(), rel=1e-9)
