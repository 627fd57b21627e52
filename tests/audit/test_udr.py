"""UDR against synthetic base weights: the norms cache, module-name mapping (one-component
names, tied lm_head), σ₁ accuracy, the memory of the base-norm pass, sharded bases."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gradience.audit import audit_adapter
from gradience.audit import lanczos as L
from gradience.audit import udr as U
from gradience.audit.base_model import BaseWeights

from ._helpers import make_adapter, write_safetensors

Q = "model.layers.0.self_attn.q_proj"


def _pair(rng: np.random.Generator, n_out: int, n_in: int, r: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((r, n_in)), rng.standard_normal((n_out, r))


def _rows(res):
    return {r["name"]: r for r in res.layers}


def _dense_sigma1(w: np.ndarray) -> float:
    return float(np.linalg.norm(w.astype(np.float32).astype(np.float64), 2))


# ---------------------------------------------------------------- norms cache


def _cache_case(tmp_path: Path) -> tuple[Path, Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    make_adapter(tmp_path / "adapter", {Q: _pair(rng, 16, 16)}, r=4, alpha=4)
    (tmp_path / "base").mkdir()
    w = rng.standard_normal((16, 16))
    write_safetensors(tmp_path / "base" / "model.safetensors", {f"{Q}.weight": w})
    return tmp_path / "adapter", tmp_path / "base", tmp_path / "cache", w


def test_cache_serves_fresh_norms_after_the_base_is_rewritten_in_place(tmp_path):
    adapter, base, cache, w = _cache_case(tmp_path)
    first = audit_adapter(adapter, base_model=base, base_norms_cache=cache).layers[0]
    assert first["base_sigma_max"] == pytest.approx(_dense_sigma1(w), rel=1e-6)
    write_safetensors(base / "model.safetensors", {f"{Q}.weight": 10 * w})  # same shapes, same header
    again = audit_adapter(adapter, base_model=base, base_norms_cache=cache).layers[0]
    assert again["base_sigma_max"] == pytest.approx(10 * first["base_sigma_max"], rel=1e-6)
    assert again["base_fro_norm"] == pytest.approx(10 * first["base_fro_norm"], rel=1e-6)  # 10·w in float32
    assert again["udr"] == pytest.approx(first["udr"] / 10, rel=1e-6)


def test_cache_key_follows_mtime_and_content(tmp_path):
    _, base, _, w = _cache_case(tmp_path)
    path = base / "model.safetensors"

    def key() -> str:
        b = BaseWeights(base, "m")
        try:
            return b.fingerprint()
        finally:
            b.close()

    k0 = key()
    assert key() == k0  # unchanged files: the same key (the cache is hit)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    k1 = key()
    assert k1 != k0  # touched: recomputed
    # rewritten with other values and the old mtime put back (cp -p, rsync -a): the sampled bytes differ
    write_safetensors(path, {f"{Q}.weight": -w})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert key() not in (k0, k1)


def test_cache_is_hit_when_nothing_changed(tmp_path, monkeypatch):
    adapter, base, cache, _ = _cache_case(tmp_path)
    first = audit_adapter(adapter, base_model=base, base_norms_cache=cache).layers[0]

    def boom(*a, **k):
        raise AssertionError("base norms recomputed although cached")

    monkeypatch.setattr(U, "sigma_max_checked", boom)
    monkeypatch.setattr(U, "fro_norm", boom)
    again = audit_adapter(adapter, base_model=base, base_norms_cache=cache).layers[0]
    assert again["udr"] == first["udr"] and len(list(cache.iterdir())) == 1


# ---------------------------------------------------------------- name mapping


@pytest.mark.parametrize("head", ["lm_head", "score", "classifier"])
def test_one_component_module_names_map_to_their_base_tensor(tmp_path, head):
    rng = np.random.default_rng(1)
    make_adapter(tmp_path / "adapter", {head: _pair(rng, 32, 16), Q: _pair(rng, 16, 16)}, r=4, alpha=4)
    (tmp_path / "base").mkdir()
    wh = rng.standard_normal((32, 16))
    write_safetensors(tmp_path / "base" / "model.safetensors",
                      {f"{head}.weight": wh, f"{Q}.weight": rng.standard_normal((16, 16)),
                       "model.embed_tokens.weight": rng.standard_normal((32, 16))})
    res = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "base")
    row = _rows(res)[head]
    assert row["base_tensor"] == f"{head}.weight"
    assert row["base_sigma_max"] == pytest.approx(_dense_sigma1(wh), rel=1e-6)
    assert res.summary["n_layers_with_udr"] == 2
    assert not [i for i in res.summary["issues"] if i["code"].startswith("UDR")]


@pytest.mark.parametrize("emb", ["model.embed_tokens", "transformer.wte", "shared"])
@pytest.mark.parametrize("tie", [True, None])
def test_tied_lm_head_maps_to_the_input_embedding(tmp_path, emb, tie):
    rng = np.random.default_rng(2)
    make_adapter(tmp_path / "adapter", {"lm_head": _pair(rng, 32, 16)}, r=4, alpha=4)
    (tmp_path / "base").mkdir()
    we = rng.standard_normal((32, 16))
    write_safetensors(tmp_path / "base" / "model.safetensors",
                      {f"{emb}.weight": we, "model.layers.0.mlp.up_proj.weight": rng.standard_normal((24, 16))})
    if tie is not None:
        (tmp_path / "base" / "config.json").write_text(json.dumps({"tie_word_embeddings": tie}))
    row = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "base").layers[0]
    assert row["base_tensor"] == f"{emb}.weight"
    assert row["base_sigma_max"] == pytest.approx(_dense_sigma1(we), rel=1e-6)


def test_untied_lm_head_without_its_tensor_stays_unmapped(tmp_path):
    rng = np.random.default_rng(3)
    make_adapter(tmp_path / "adapter", {"lm_head": _pair(rng, 32, 16), Q: _pair(rng, 16, 16)}, r=4, alpha=4)
    (tmp_path / "base").mkdir()
    write_safetensors(tmp_path / "base" / "model.safetensors",
                      {"model.embed_tokens.weight": rng.standard_normal((32, 16)),
                       f"{Q}.weight": rng.standard_normal((16, 16))})
    (tmp_path / "base" / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    res = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "base")
    assert "udr" not in _rows(res)["lm_head"]
    assert [i["code"] for i in res.summary["issues"]] == ["UDR_UNMAPPED"]


def test_one_component_suffix_does_not_map_a_longer_name(tmp_path):
    """``foo.dense`` must not be matched to an unrelated lone ``dense`` by its last component."""
    rng = np.random.default_rng(4)
    (tmp_path / "base").mkdir()
    write_safetensors(tmp_path / "base" / "model.safetensors", {"dense.weight": rng.standard_normal((8, 8))})
    b = BaseWeights(tmp_path / "base", "m")
    try:
        assert b.match("dense") == "dense.weight"
        assert b.match("encoder.layer.0.output.dense") is None
    finally:
        b.close()


# ---------------------------------------------------------------- σ₁ and ‖·‖_F


def _spectrum_matrix(kind: str, m: int = 600, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "gaussian":  # Marchenko–Pastur edge: no gap at the top, the slowest case
        return rng.standard_normal((m, n)).astype(np.float32)
    q1, _ = np.linalg.qr(rng.standard_normal((m, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if kind == "decaying":
        s = 1.0 / (1.0 + np.arange(n)) ** 0.5
    else:  # "cluster": σ₁ and σ₂ 1e-3 apart
        s = np.linspace(0.5, 0.01, n)
        s[:2] = [1.0, 1.0 - 1e-3]
    return ((q1 * s) @ q2.T).astype(np.float32)


@pytest.mark.parametrize("kind", ["gaussian", "decaying", "cluster"])
def test_sigma_max_is_within_the_stated_tolerance(kind):
    w = _spectrum_matrix(kind)
    got = L.sigma_max(w)
    ref = _dense_sigma1(w)
    assert abs(got - ref) <= L.SIGMA1_TOL * ref, (got, ref, abs(got - ref) / ref)


@pytest.mark.parametrize("shape,block", [((1, 7), 8), ((37, 5), 40), ((37, 5), 1 << 20), ((300, 129), 4096)])
def test_fro_norm_in_row_blocks_matches_a_dense_norm(shape, block):
    w = (np.random.default_rng(6).standard_normal(shape) * 1e3).astype(np.float32)
    assert L.fro_norm(w, block_bytes=block) == pytest.approx(float(np.linalg.norm(w.astype(np.float64))),
                                                             rel=1e-13)


def test_base_norm_pass_makes_no_whole_matrix_float64_copy(tmp_path):
    """Reading a base matrix and taking its σ₁ and Frobenius norm allocates the float32
    matrix plus bounded work space (a float64 copy alone would be twice the matrix)."""
    rng = np.random.default_rng(7)
    m, n = 4096, 1024
    (tmp_path / "base").mkdir()
    write_safetensors(tmp_path / "base" / "model.safetensors",
                      {f"{Q}.weight": rng.standard_normal((m, n), dtype=np.float32)})
    make_adapter(tmp_path / "adapter", {Q: _pair(rng, m, n)}, r=4, alpha=4)
    f32 = m * n * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        row = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "base").layers[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["udr"] > 0
    assert peak < 1.75 * f32, f"peak {peak / 2**20:.1f} MiB for a {f32 / 2**20:.0f} MiB float32 matrix"


# ---------------------------------------------------------------- sharded base


def test_sharded_base_gives_the_same_udrs(tmp_path):
    rng = np.random.default_rng(8)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(3)]
    make_adapter(tmp_path / "adapter", {n: _pair(rng, 16, 16) for n in names}, r=4, alpha=4)
    ws = {f"{n}.weight": rng.standard_normal((16, 16)) for n in names}
    (tmp_path / "one").mkdir()
    write_safetensors(tmp_path / "one" / "model.safetensors", ws)
    (tmp_path / "sharded").mkdir()
    shard_of = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(ws)}
    for fname in sorted(set(shard_of.values())):
        write_safetensors(tmp_path / "sharded" / fname, {k: ws[k] for k, f in shard_of.items() if f == fname})
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": shard_of}))
    one = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "one")
    sharded = audit_adapter(tmp_path / "adapter", base_model=tmp_path / "sharded")
    assert [r["udr"] for r in sharded.layers] == [r["udr"] for r in one.layers]
    assert [r["udr_f"] for r in sharded.layers] == [r["udr_f"] for r in one.layers]
    assert sharded.summary["n_layers_with_udr"] == 3
    for r in sharded.layers:
        assert r["base_sigma_max"] == pytest.approx(_dense_sigma1(ws[r["base_tensor"]]), rel=1e-6)


def test_unconverged_sigma_is_flagged_and_reads_as_an_upper_bound_on_udr(tmp_path, monkeypatch):
    w = _spectrum_matrix("cluster")
    s1, ok = L.sigma_max_checked(w, max_steps=3)
    assert not ok and s1 <= _dense_sigma1(w) * (1 + 1e-9)  # a Ritz value: never above σ₁
    assert L.sigma_max_checked(w)[1] and L.sigma_max_checked(w[:5, :4], max_steps=3)[1] is False
    assert L.sigma_max_checked(w[:3, :3], max_steps=3)[1]  # the Krylov space is exhausted: exact

    adapter, base, cache, _ = _cache_case(tmp_path)
    exact = audit_adapter(adapter, base_model=base).layers[0]["udr"]
    monkeypatch.setattr(L, "MAX_STEPS", 2)
    res = audit_adapter(adapter, base_model=base, base_norms_cache=cache)
    issue = next(i for i in res.summary["issues"] if i["code"] == "UDR_SIGMA_APPROX")
    assert issue["count"] == 1 and f"{Q}.weight" in issue["message"]
    assert res.layers[0]["udr"] >= exact * (1 - 1e-12)
    # Served from the cache, the flag survives; with enough steps the issue is gone.
    again = audit_adapter(adapter, base_model=base, base_norms_cache=cache)
    assert any(i["code"] == "UDR_SIGMA_APPROX" for i in again.summary["issues"])
    monkeypatch.setattr(L, "MAX_STEPS", 120)
    assert not any(i["code"] == "UDR_SIGMA_APPROX" for i in audit_adapter(adapter, base_model=base).summary["issues"])


def test_cache_keeps_one_file_per_base_directory(tmp_path):
    adapter, base, cache, w = _cache_case(tmp_path)
    audit_adapter(adapter, base_model=base, base_norms_cache=cache)
    first = sorted(cache.glob("base_norms_*.json"))
    assert len(first) == 1
    # Another model's cache in the same folder, and a file that is not a cache of ours, stay.
    other = tmp_path / "other"
    shutil.copytree(base, other)
    audit_adapter(adapter, base_model=other, base_norms_cache=cache)
    (cache / "base_norms_foreign.json").write_text("not json")
    write_safetensors(base / "model.safetensors", {f"{Q}.weight": 3 * w})  # new weights, new key
    res = audit_adapter(adapter, base_model=base, base_norms_cache=cache).layers[0]
    assert res["base_sigma_max"] == pytest.approx(3 * _dense_sigma1(w), rel=1e-6)
    files = sorted(p.name for p in cache.glob("base_norms_*.json"))
    assert len(files) == 3 and first[0].name not in files and "base_norms_foreign.json" in files
