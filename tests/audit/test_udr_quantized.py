"""UDR that is right or absent. Bases quantized by bitsandbytes (CPU): LLM.int8 (int8 weight + SCB) and
NF4 (packed uint8 + quant state) give the UDR of their dequantized weights (exact against bitsandbytes'
own dequantization, and within the quantization error of the fp32 base), and the norms cache never holds
norms of integer codes. A base the user did not ask for that cannot be read (tokenizer-only snapshot,
.bin only, an fp8 tensor) never fails the audit: UDR is skipped with a one-line reason."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest

from gradience.audit import audit_adapter
from gradience.errors import GradienceError

from ._helpers import make_adapter

SHAPES = {"q_proj": (32, 64), "v_proj": (64, 32)}


def _adapter(d, base_id: str | None = None):
    rng = np.random.default_rng(0)
    mods = {m: (0.1 * rng.standard_normal((4, i)), 0.1 * rng.standard_normal((o, 4))) for m, (o, i) in SHAPES.items()}
    extra = {"base_model_name_or_path": base_id} if base_id else {}
    return make_adapter(d, mods, r=4, alpha=8, **extra), mods


def _fp32():
    rng = np.random.default_rng(1)
    return {m: rng.standard_normal(s).astype(np.float32) * 0.05 for m, s in SHAPES.items()}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bases")
    w = _fp32()
    out = {}
    (root / "fp32").mkdir()
    save_file({f"{m}.weight": torch.from_numpy(x) for m, x in w.items()}, root / "fp32" / "model.safetensors")
    out["fp32"] = {m: x.astype(np.float64) for m, x in w.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in ("int8", "nf4"):
            sd, deq = {}, {}
            for m, x in w.items():
                t = torch.from_numpy(x)
                if kind == "int8":
                    lin = bnb.nn.Linear8bitLt(x.shape[1], x.shape[0], bias=False, has_fp16_weights=False)
                    lin.weight = bnb.nn.Int8Params(t.clone(), requires_grad=False, has_fp16_weights=False)
                    lin.weight = lin.weight._quantize("cpu")
                    deq[m] = bnb.functional.int8_vectorwise_dequant(lin.weight.data, lin.weight.SCB).double().numpy()
                else:
                    lin = bnb.nn.Linear4bit(x.shape[1], x.shape[0], bias=False, quant_type="nf4",
                                            compress_statistics=True)
                    lin.weight = bnb.nn.Params4bit(t.clone(), requires_grad=False, quant_type="nf4",
                                                   compress_statistics=True)._quantize("cpu")
                    deq[m] = bnb.functional.dequantize_4bit(lin.weight.data, lin.weight.quant_state).double().numpy()
                sd.update({f"{m}.{k}": v.contiguous() for k, v in lin.state_dict().items()})
            (root / kind).mkdir()
            save_file(sd, root / kind / "model.safetensors")
            qc = {"quant_method": "bitsandbytes", "load_in_8bit": kind == "int8", "load_in_4bit": kind == "nf4"}
            (root / kind / "config.json").write_text(json.dumps({"quantization_config": qc}))
            out[kind] = deq
    return root, out


def _udr(mods, base_w):
    return {m: np.linalg.svd(2.0 * b @ a, compute_uv=False)[0] / np.linalg.norm(base_w[m], 2)
            for m, (a, b) in mods.items()}


@pytest.mark.parametrize("kind,tol_fp32", [("int8", 2e-2), ("nf4", 1e-1)])
def test_quantized_base_gives_the_udr_of_its_dequantized_weights(bases, tmp_path, kind, tol_fp32):
    root, weights = bases
    d, mods = _adapter(tmp_path / "a")
    cache = tmp_path / "cache"
    res = audit_adapter(d, base_model=root / kind, base_norms_cache=cache)
    rows = {r.name: r for r in res.layers}
    exact = _udr(mods, weights[kind])
    fp32 = _udr(mods, weights["fp32"])
    for m in SHAPES:
        assert rows[m].udr == pytest.approx(exact[m], rel=1e-6), m  # bitsandbytes' own dequantization
        assert rows[m].udr == pytest.approx(fp32[m], rel=tol_fp32), m  # the fp32 base, up to quantization error
    assert any(i.code == "UDR_DEQUANTIZED" and f"bnb-{kind}" in i.message for i in res.summary.issues)
    stored = json.loads(next(cache.rglob("*.json")).read_text())["tensors"]
    for m in SHAPES:
        e = stored[f"{m}.weight"]
        assert e["dequantized"] == f"bnb-{kind}"
        assert e["sigma_max"] == pytest.approx(np.linalg.norm(weights[kind][m], 2), rel=1e-6)  # never the codes' norm


def _st_header(path, entries):
    """A safetensors file from raw (name, dtype, shape, bytes) entries (fp8 included)."""
    header, blobs, off = {}, [], 0
    for name, dt, shape, data in entries:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _snapshot(cache_root, repo: str, files: dict[str, bytes]):
    snap = cache_root / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (cache_root / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache_root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc")
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


@pytest.mark.parametrize("files,reason", [
    ({"tokenizer.json": b"{}", "config.json": b"{}"}, "no safetensors weights"),
    ({"pytorch_model.bin": b"\x80\x02}q\x00.", "config.json": b"{}"}, "no safetensors weights"),
    ({"config.json": json.dumps({"quantization_config": {"quant_method": "gptq"}}).encode()}, "quantized with gptq"),
])
def test_udr_nobody_asked_for_never_fails_the_audit(tmp_path, monkeypatch, files, reason):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = _snapshot(tmp_path / "hub", "org/base", files)
    d, _ = _adapter(tmp_path / "a", base_id="org/base")
    res = audit_adapter(d)  # what the training callback runs at the end of a run
    assert res.summary.n_layers_with_udr == 0 and reason in res.summary.udr_skipped_reason
    assert "\n" not in res.summary.udr_skipped_reason
    if reason == "no safetensors weights":  # the twin: asked for explicitly, it is an error
        with pytest.raises(GradienceError, match=reason):
            audit_adapter(d, base_model=snap)


def test_a_base_tensor_in_an_unreadable_dtype_skips_that_module_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = _snapshot(tmp_path / "hub", "org/fp8", {"config.json": b"{}"})
    w = _fp32()
    _st_header(snap / "model.safetensors", [
        ("q_proj.weight", "F8_E4M3", list(SHAPES["q_proj"]), bytes(32 * 64)),
        ("v_proj.weight", "F32", list(SHAPES["v_proj"]), w["v_proj"].tobytes()),
    ])
    d, _ = _adapter(tmp_path / "a", base_id="org/fp8")
    res = audit_adapter(d)
    rows = {r.name: r for r in res.layers}
    assert rows["q_proj"].udr is None and rows["v_proj"].udr is not None
    issue = next(i for i in res.summary.issues if i.code == "UDR_BASE_UNREADABLE")
    assert "F8_E4M3" in issue.message and "q_proj" in issue.message
