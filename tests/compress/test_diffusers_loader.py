"""kohya files through diffusers' own LoRA loader: a tiny SD UNet and CLIP text encoder built from
configs, a kohya LoRA/LoCon file named after their modules, loaded with
``StableDiffusionPipeline.lora_state_dict`` + ``load_lora_into_unet`` / ``load_lora_into_text_encoder``
(the pipeline's loader, called on the bare models: no pipeline needed). The audit's scaled spectra
equal a float64 SVD of the ΔW diffusers puts into the model, and the compressed file, loaded the same
way, gives each module the best rank-k approximation of the original ΔW."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from gradience.audit import audit_adapter  # noqa: E402
from gradience.audit.compress import compress_adapter  # noqa: E402

from ..audit._formats import KOHYA_META, write_file  # noqa: E402

REL = 1e-6


def _models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1))
    return unet.double(), te.double()


def _kohya_file(path, unet, te):
    """Every attention/resnet Linear and Conv2d of the UNet (linear r=4 α=2; LoCon convs r=2 α=1, as
    sd-scripts' network_dim/network_alpha and conv_dim/conv_alpha give) and every text-encoder Linear."""
    rng = np.random.default_rng(0)
    tensors = {}
    mods = [("lora_unet_", n, m) for n, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and ("attentions" in n or "resnets" in n)
            and "conv_shortcut" not in n]
    mods += [("lora_te_", n, m) for n, m in te.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n]
    for prefix, n, m in mods:
        key = prefix + n.replace(".", "_")
        w = m.weight
        conv = w.ndim == 4
        r, alpha = (2, 1.0) if conv else (4, 2.0)
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((r, *w.shape[1:]))
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((w.shape[0], r, 1, 1) if conv else (w.shape[0], r))
        tensors[f"{key}.alpha"] = np.asarray(alpha)
    return write_file(path, tensors, KOHYA_META), {prefix + n.replace(".", "_"): (prefix, n) for prefix, n, _ in mods}


def _load_deltas(path):
    """ΔW per module (float64, conv kernels flattened) as diffusers' loader puts it into fresh models."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    unet, te = _models()
    sd, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet=unet)
        StableDiffusionPipeline.load_lora_into_text_encoder(sd, alphas, text_encoder=te)
    out = {}
    for prefix, model in (("lora_unet_", unet), ("lora_te_", te)):
        for n, m in model.named_modules():
            if isinstance(m, LoraLayer):
                d = m.get_delta_weight(m.active_adapters[0]).detach().double().numpy()
                out[(prefix, n)] = d.reshape(d.shape[0], -1)
    return out


def _best_rank_k(d, k):
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def test_kohya_file_audit_and_compress_against_diffusers_loader(tmp_path):
    unet, te = _models()
    f, names = _kohya_file(tmp_path / "style.safetensors", unet, te)
    deltas = _load_deltas(f)
    assert set(deltas) == set(names.values())  # diffusers' loader adapted every module of the file

    res = audit_adapter(weights=f, top_singular_values=4, udr=False)
    rows = {r.name: r for r in res.layers}
    assert set(rows) == set(names)
    for key, where in names.items():
        sig = np.linalg.svd(deltas[where], compute_uv=False)
        got = np.array(rows[key].top_singular_values) * rows[key].scale
        np.testing.assert_allclose(got, sig[: got.size], rtol=REL, err_msg=key)
        assert rows[key].delta_fro_norm == pytest.approx(np.linalg.norm(deltas[where]), rel=REL)

    out = tmp_path / "style-r2.safetensors"
    compress_adapter(f, out, rank=1)
    after = _load_deltas(out)
    for key, where in names.items():
        ref = _best_rank_k(deltas[where], 1)
        err = np.linalg.norm(after[where] - ref) / np.linalg.norm(ref)
        assert err < REL, (key, err)


def _load_diffusers_file(path):
    """ΔW per UNet module as diffusers loads a diffusers-format file (with its lora_adapter_metadata)."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    unet, _ = _models()
    sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet=unet, metadata=meta)
    out = {}
    for n, m in unet.named_modules():
        if isinstance(m, LoraLayer):
            d = m.get_delta_weight(m.active_adapters[0]).detach().double().numpy()
            out[f"unet.{n}"] = d.reshape(d.shape[0], -1)
    return out


def test_diffusers_file_written_by_diffusers_audit_and_compress(tmp_path):
    """A UNet LoRA (r=4, α=8, a conv among the targets) written by diffusers' own save_lora_weights: the
    audit uses the metadata's α/r, and the compressed file (metadata rewritten) loads back in diffusers
    as the Eckart–Young truncation of every module."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, _ = _models()
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "proj_in", "conv1"], init_lora_weights=False)
    unet.add_adapter(cfg)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p))
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.to_dict().items()}
    StableDiffusionPipeline.save_lora_weights(tmp_path / "d", unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=meta)
    f = tmp_path / "d" / "pytorch_lora_weights.safetensors"
    deltas = _load_diffusers_file(f)
    res = audit_adapter(weights=f, udr=False)
    assert res.adapter["format"] == "diffusers"
    rows = {r.name: r for r in res.layers}
    assert set(rows) == set(deltas) and any(r.kind == "conv" for r in res.layers)
    for name, dw in deltas.items():
        assert rows[name].scale == 2.0
        assert rows[name].delta_sigma_max == pytest.approx(np.linalg.norm(dw, 2), rel=REL), name
    out = tmp_path / "small.safetensors"
    compress_adapter(f, out, rank=2)
    after = _load_diffusers_file(out)
    for name, dw in deltas.items():
        ref = _best_rank_k(dw, 2)
        assert np.linalg.norm(after[name] - ref) <= REL * np.linalg.norm(ref), name
