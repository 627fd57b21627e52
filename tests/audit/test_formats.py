"""Single-file LoRA formats: kohya sd-scripts LoRA/LoCon and diffusers files are detected, audited
exactly (per module σ and scaled norms against a dense float64 SVD of s·up·down), compressed back into
their own format (Eckart–Young per module, each module's scale kept, metadata updated), and files that
are not B·A products are refused with one line naming the format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradience.audit import audit_adapter
from gradience.audit.compress import compress_adapter
from gradience.audit.weights import SafetensorsFile
from gradience.errors import AdapterFormatError

from ._formats import (
    KOHYA_META,
    diffusers_metadata,
    diffusers_tensors,
    kohya_dense,
    kohya_modules,
    kohya_tensors,
    not_low_rank,
    write_file,
)

REL = 1e-6


def _rows(res):
    return {r.name: r for r in res.layers}


def _best_rank_k(d: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def _read_kohya(path) -> dict[str, np.ndarray]:
    with SafetensorsFile(path) as f:
        return {n: f.read(n).astype(np.float64) for n in f.names()}


def _dense_from_file(t: dict[str, np.ndarray], mod: str) -> np.ndarray:
    down, up = t[f"{mod}.lora_down.weight"], t[f"{mod}.lora_up.weight"]
    alpha = float(t[f"{mod}.alpha"]) if f"{mod}.alpha" in t else None
    return kohya_dense((down, up, alpha))


@pytest.mark.parametrize("sdxl", [False, True])
def test_kohya_audit_matches_dense_oracle(tmp_path, sdxl):
    rng = np.random.default_rng(1)
    mods = kohya_modules(rng, sdxl=sdxl)
    f = write_file(tmp_path / "style.safetensors", kohya_tensors(mods), KOHYA_META)
    res = audit_adapter(weights=f, top_singular_values=8, udr=False)  # no adapter_config.json anywhere
    rows = _rows(res)
    assert set(rows) == set(mods)
    assert res.adapter["format"] == "kohya" and res.adapter["config_path"] is None
    for name, mod in mods.items():
        dense = kohya_dense(mod)
        sig = np.linalg.svd(dense, compute_uv=False)
        row = rows[name]
        down, _, alpha = mod
        r = down.shape[0]
        assert row.r == r and row.scale == pytest.approx((alpha if alpha is not None else r) / r, rel=1e-12)
        assert row.shape == list(dense.shape)
        got = np.array(row.top_singular_values) * row.scale
        np.testing.assert_allclose(got, sig[: got.size], rtol=REL)
        assert row.delta_sigma_max == pytest.approx(sig[0], rel=REL)
        assert row.delta_fro_norm == pytest.approx(np.linalg.norm(dense), rel=REL)
    conv = [r for r in res.layers if r.kind == "conv"]
    assert len(conv) == 2  # the 3×3 LoCon conv and the 1×1 proj_in
    if sdxl:
        assert {n.split("_text_model")[0] for n in rows if "text_model" in n} == {"lora_te1", "lora_te2"}


def test_kohya_module_without_alpha_has_scale_one_and_its_twin_with_alpha_does_not(tmp_path):
    rng = np.random.default_rng(2)
    mods = kohya_modules(rng)
    f = write_file(tmp_path / "a.safetensors", kohya_tensors(mods))
    rows = _rows(audit_adapter(weights=f, udr=False))
    assert rows["lora_te_text_model_encoder_layers_0_self_attn_q_proj"].scale == 1.0
    assert rows["lora_te_text_model_encoder_layers_0_mlp_fc1"].scale == 1.0  # alpha 8 at r 8
    assert rows["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].scale == 0.5


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_kohya_compress_is_best_rank_k_and_keeps_scale_and_format(tmp_path, dtype):
    rng = np.random.default_rng(3)
    mods = kohya_modules(rng)
    f = write_file(tmp_path / "in.safetensors", kohya_tensors(mods), KOHYA_META, dtype=dtype)
    src = _read_kohya(f)
    rep = compress_adapter(f, tmp_path / "out.safetensors", rank=2)
    out = tmp_path / "out.safetensors"
    assert rep["summary"]["format"] == "kohya" and out.exists()
    got = _read_kohya(out)
    assert set(got) == set(src)  # same keys: alphas stay where they were, none added
    for name in mods:
        before = _dense_from_file(src, name)
        after = _dense_from_file(got, name)
        k = min(2, mods[name][0].shape[0])
        assert got[f"{name}.lora_down.weight"].shape[0] == k
        tol = 1e-6 if dtype == "F32" else 2e-3
        ref = _best_rank_k(before, k)
        assert np.linalg.norm(after - ref) <= tol * np.linalg.norm(ref)
        assert got[f"{name}.lora_up.weight"].shape[2:] == src[f"{name}.lora_up.weight"].shape[2:]
    with SafetensorsFile(out) as o:
        meta = o.metadata
    assert meta["ss_network_dim"] == "2" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_training_comment"].startswith("rank compressed by gradience from 2/4/8")
    assert meta["ss_training_comment"].endswith("; my style")
    assert "sshs_model_hash" not in meta and "sshs_legacy_hash" not in meta
    note = json.loads(meta["gradience_compressed"])
    assert note["from"] == "in.safetensors" and note["ranks_after"] == [2]


def test_kohya_compress_at_full_rank_copies_every_tensor_bit_for_bit(tmp_path):
    rng = np.random.default_rng(4)
    f = write_file(tmp_path / "in.safetensors", kohya_tensors(kohya_modules(rng)), KOHYA_META, dtype="F16")
    compress_adapter(f, tmp_path / "o", rank=64)
    with SafetensorsFile(f) as a, SafetensorsFile(tmp_path / "o" / "in.safetensors") as b:
        for n in a.names():
            ra, da = a.read_raw(n)
            rb, db = b.read_raw(n)
            assert da == db and np.array_equal(ra, rb), n


def test_kohya_compress_refuses_to_overwrite_its_input(tmp_path):
    rng = np.random.default_rng(5)
    f = write_file(tmp_path / "in.safetensors", kohya_tensors(kohya_modules(rng)))
    before = f.read_bytes()
    with pytest.raises(Exception, match="must not be the input"):
        compress_adapter(f, f, rank=2, force=True)
    assert f.read_bytes() == before


def _diffusers_modules(rng):
    mods = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (rng.standard_normal((4, 24)),
                                                                           rng.standard_normal((24, 4))),
        "unet.down_blocks.0.attentions.0.proj_in": (rng.standard_normal((8, 24)), rng.standard_normal((24, 8))),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (rng.standard_normal((4, 16)),
                                                                      rng.standard_normal((16, 4))),
    }
    return mods


@pytest.mark.parametrize("with_metadata", [True, False])
def test_diffusers_file_audit_scales(tmp_path, with_metadata):
    rng = np.random.default_rng(6)
    mods = _diffusers_modules(rng)
    meta = diffusers_metadata({"unet": {"r": 4, "lora_alpha": 8, "rank_pattern": {"proj_in": 8},
                                        "alpha_pattern": {"proj_in": 4}},
                               "text_encoder": {"r": 4, "lora_alpha": 2}}) if with_metadata else None
    f = write_file(tmp_path / "pytorch_lora_weights.safetensors", diffusers_tensors(mods), meta)
    res = audit_adapter(weights=f, top_singular_values=8, udr=False)
    assert res.adapter["format"] == "diffusers"
    rows = _rows(res)
    want = ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2.0,
             "unet.down_blocks.0.attentions.0.proj_in": 0.5,
             "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": 0.5} if with_metadata
            else dict.fromkeys(mods, 1.0))  # no metadata: diffusers loads with α = r
    for name, (a, b) in mods.items():
        assert rows[name].scale == want[name]
        sig = np.linalg.svd(want[name] * b @ a, compute_uv=False)
        assert rows[name].delta_sigma_max == pytest.approx(sig[0], rel=REL)


def test_diffusers_compress_updates_the_metadata_per_component(tmp_path):
    rng = np.random.default_rng(7)
    mods = _diffusers_modules(rng)
    meta = diffusers_metadata({"unet": {"r": 4, "lora_alpha": 8, "rank_pattern": {"proj_in": 8},
                                        "alpha_pattern": {"proj_in": 4}, "target_modules": ["to_q", "proj_in"]},
                               "text_encoder": {"r": 4, "lora_alpha": 2}})
    f = write_file(tmp_path / "in.safetensors", diffusers_tensors(mods), meta)
    compress_adapter(f, tmp_path / "out.safetensors", rank=2)
    res = audit_adapter(weights=tmp_path / "out.safetensors", udr=False)
    rows = _rows(res)
    for name, (a, b) in mods.items():
        s = {"proj_in": 0.5, "to_q": 2.0, "q_proj": 0.5}[name.rsplit(".", 1)[1]]
        assert rows[name].r == 2 and rows[name].scale == pytest.approx(s)
        ref = np.linalg.svd(s * b @ a, compute_uv=False)[0]
        assert rows[name].delta_sigma_max == pytest.approx(ref, rel=REL)
    with SafetensorsFile(tmp_path / "out.safetensors") as o:
        packed = json.loads(o.metadata["lora_adapter_metadata"])
    assert packed["unet.r"] == 2 and packed["unet.target_modules"] == ["to_q", "proj_in"]
    assert packed["text_encoder.lora_alpha"] == 1.0


@pytest.mark.parametrize("kind,label", [("loha", "LyCORIS LoHa"), ("lokr", "LyCORIS LoKr"),
                                        ("dora", "DoRA in the kohya/LyCORIS layout")])
def test_not_low_rank_formats_are_refused_naming_the_format(tmp_path, kind, label):
    f = write_file(tmp_path / f"{kind}.safetensors", not_low_rank(kind, np.random.default_rng(8)))
    with pytest.raises(AdapterFormatError) as e:
        audit_adapter(weights=f, udr=False)
    line = e.value.one_line()
    assert label in line and str(f) in line and "adapter-config" not in line and "\n" not in line
    with pytest.raises(AdapterFormatError, match=label):
        compress_adapter(f, tmp_path / "o.safetensors", rank=1)
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_audit_and_compress_a_kohya_file(tmp_path, cli):
    rng = np.random.default_rng(9)
    f = write_file(tmp_path / "style.safetensors", kohya_tensors(kohya_modules(rng)), KOHYA_META)
    p = cli("audit", "--weights", str(f), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["adapter"]["format"] == "kohya" and out["n_layers"] == 7
    p = cli("compress", "--weights", str(f), "--out", str(tmp_path / "small.safetensors"), "--rank", "2")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "small.safetensors").exists()
    loha = write_file(tmp_path / "loha.safetensors", not_low_rank("loha", rng))
    p = cli("audit", "--weights", str(loha))
    assert p.returncode == 2 and "LyCORIS LoHa" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


def test_flux_style_transformer_file_is_a_diffusers_file(tmp_path):
    rng = np.random.default_rng(10)
    mods = {f"transformer.{m}": (rng.standard_normal((4, 24)), rng.standard_normal((24, 4)))
            for m in ("single_transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj",
                      "transformer_blocks.0.attn.add_k_proj")}
    meta = diffusers_metadata({"transformer": {"r": 4, "lora_alpha": 2, "alpha_pattern": {"add_k_proj": 16}}})
    f = write_file(tmp_path / "flux_lora.safetensors", diffusers_tensors(mods), meta, dtype="BF16")
    rows = _rows(audit_adapter(weights=f, udr=False))
    assert {n: r.scale for n, r in rows.items()} == {
        "transformer.single_transformer_blocks.0.attn.to_q": 0.5, "transformer.transformer_blocks.0.ff.net.0.proj": 0.5,
        "transformer.transformer_blocks.0.attn.add_k_proj": 4.0}
    compress_adapter(f, tmp_path / "o.safetensors", rank=1)
    with SafetensorsFile(tmp_path / "o.safetensors") as o:
        assert o.dtype("transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight") == "BF16"
        packed = json.loads(o.metadata["lora_adapter_metadata"])
    assert packed["transformer.r"] == 1 and packed["transformer.alpha_pattern"] == {"transformer_blocks.0.attn.add_k_proj": 4.0}


def test_output_check_refuses_shapes_the_loader_would_reject(tmp_path):
    from gradience.audit.compress import validate_output
    from gradience.audit.core import open_adapter

    rng = np.random.default_rng(11)
    f = write_file(tmp_path / "in.safetensors", kohya_tensors(kohya_modules(rng)))
    ad = open_adapter(weights=f)
    try:
        rows = [{"new_r": min(2, m.r)} for m in ad.modules]
        entries = []
        for m in ad.modules:
            k = min(2, m.r)
            entries.append((m.a_key, "F32", [k, *m.a_shape[1:]], 0, 0))
            entries.append((m.b_key, "F32", [m.b_shape[0], k, *m.b_shape[2:]], 0, 0))
            if m.alpha_key:
                entries.append((m.alpha_key, "F32", [], 0, 0))
        validate_output(ad, rows, entries)  # the silent twin: what compress writes
        bad = [(n, d, [s[0] + 1, *s[1:]] if n.endswith("lora_down.weight") else s, a, b) for n, d, s, a, b in entries]
        with pytest.raises(AdapterFormatError, match=r"internal check failed.*nothing written"):
            validate_output(ad, rows, bad)
        with pytest.raises(AdapterFormatError, match="output tensor names differ"):
            validate_output(ad, rows, entries[1:])
    finally:
        ad.close()


def test_kohya_torch_pickle_is_read_and_written_back_as_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    mods = kohya_modules(np.random.default_rng(12))
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in kohya_tensors(mods).items()}
    torch.save(t, tmp_path / "style.ckpt")
    res = audit_adapter(weights=tmp_path / "style.ckpt", udr=False)
    assert res.adapter["format"] == "kohya" and res.summary.n_layers == len(mods)
    compress_adapter(tmp_path / "style.ckpt", tmp_path / "small.safetensors", rank=2)
    got = _read_kohya(tmp_path / "small.safetensors")
    for name, mod in mods.items():
        k = min(2, mod[0].shape[0])
        ref = _best_rank_k(kohya_dense(mod), k)
        assert np.linalg.norm(_dense_from_file(got, name) - ref) <= 1e-6 * np.linalg.norm(ref)


def test_legacy_diffusers_layout_is_named_not_sent_to_adapter_config(tmp_path):
    m = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    x = np.random.default_rng(13).standard_normal((4, 8))
    f = write_file(tmp_path / "old.safetensors", {f"{m}.down.weight": x, f"{m}.up.weight": x.T})
    with pytest.raises(AdapterFormatError) as e:
        audit_adapter(weights=f, udr=False)
    assert "legacy attention-processor" in e.value.one_line() and "adapter-config" not in e.value.one_line()
