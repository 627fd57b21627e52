"""Whole-adapter oracle tests: synthetic adapters with known factors, audited end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradience.audit import audit_adapter
from gradience.audit.suggest import ALLOWED_RANKS, allocate

from ._helpers import assert_sigma_close, dense_sigma, make_adapter, stored


def _rows(res):
    return {r["name"]: r for r in res.layers}


def _lowrank_b(rng, out, r, true_rank):
    return rng.standard_normal((out, true_rank)) @ rng.standard_normal((true_rank, r))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_dtypes_patterns_and_scales(tmp_path, dtype):
    rng = np.random.default_rng(1)
    mods = {
        "model.layers.0.self_attn.q_proj": (rng.standard_normal((8, 32)) * 0.1, _lowrank_b(rng, 32, 8, 2) * 0.05),
        "model.layers.0.mlp.up_proj": (rng.standard_normal((8, 32)) * 0.1, rng.standard_normal((48, 8)) * 0.05),
        "model.layers.1.self_attn.q_proj": (rng.standard_normal((4, 32)) * 0.1, rng.standard_normal((32, 4)) * 0.05),
    }
    make_adapter(tmp_path, mods, r=8, alpha=16, dtype=dtype, use_rslora=(dtype == "BF16"),
                 rank_pattern={"layers.1.self_attn.q_proj": 4}, alpha_pattern={"mlp.up_proj": 4})
    res = audit_adapter(tmp_path, top_singular_values=8)
    rows = _rows(res)
    rs = dtype == "BF16"
    expect = {"model.layers.0.self_attn.q_proj": (8, 16.0), "model.layers.0.mlp.up_proj": (8, 4.0),
              "model.layers.1.self_attn.q_proj": (4, 16.0)}
    for name, (a, b) in mods.items():
        r, alpha = expect[name]
        row = rows[name]
        scale = alpha / (math.sqrt(r) if rs else r)
        assert (row["r"], row["alpha"]) == (r, alpha)
        assert row["scale"] == pytest.approx(scale, rel=1e-15)
        ref = dense_sigma(stored(a, dtype), stored(b, dtype))
        assert_sigma_close(np.array(row["top_singular_values"]), ref)
        assert row["delta_sigma_max"] == pytest.approx(scale * ref[0], rel=1e-9)
        assert row["delta_fro_norm"] == pytest.approx(scale * np.linalg.norm(ref), rel=1e-9)
        e = np.cumsum(ref**2) / np.sum(ref**2)
        for lv in (90, 95, 99):
            assert row[f"energy_rank_{lv}"] == int(np.argmax(e >= lv / 100 - 1e-12)) + 1
    assert rows["model.layers.0.self_attn.q_proj"]["energy_rank_99"] <= 2  # true rank 2
    assert rows["model.layers.0.mlp.up_proj"]["module_type"] == "mlp"
    assert res.summary["issues"] == []


def _conditioned(rng, rows, cols, kappa):
    """A (rows, cols) matrix whose singular values span ``kappa`` (geometric)."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (u * np.geomspace(1.0, 1.0 / kappa, k)) @ v.T


@pytest.mark.parametrize("workers", [1, 2])
def test_ill_conditioned_factors_take_the_exact_slow_paths_end_to_end(tmp_path, workers, monkeypatch):
    """κ(A) past the one-pass limit (refined Cholesky-QR2), past the refine limit (Householder,
    the factor is re-read) and an exactly rank-deficient B, mixed in one batch with
    well-conditioned modules, on one and two threads: every σ still matches a dense SVD."""
    import gradience.audit.core as core

    monkeypatch.setattr(core, "audit_workers", lambda: workers)
    rng = np.random.default_rng(3)
    mods = {}
    for i, kappa in enumerate([10.0, 1e5, 1e9, 3.0]):
        a = _conditioned(rng, 8, 96, kappa)
        b = _lowrank_b(rng, 64, 8, 3) if i == 3 else rng.standard_normal((64, 8))
        mods[f"model.layers.{i}.self_attn.q_proj"] = (a, b)
    make_adapter(tmp_path, mods, r=8, alpha=8, dtype="F64")
    rows = _rows(audit_adapter(tmp_path, top_singular_values=8))
    for name, (a, b) in mods.items():
        assert_sigma_close(np.array(rows[name]["top_singular_values"]), dense_sigma(a, b))


def test_conv1d_embedding_conv_and_skipped_tensors(tmp_path):
    rng = np.random.default_rng(2)
    mods = {
        # GPT-2 Conv1D with fan_in_fan_out: PEFT still stores A as r×in, B as out×r
        "transformer.h.0.attn.c_attn": (rng.standard_normal((4, 16)), rng.standard_normal((48, 4))),
        "transformer.wte": (rng.standard_normal((4, 100)), rng.standard_normal((16, 4))),
        "encoder.conv1": (rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((8, 4, 1, 1))),
    }
    extra = {"base_model.model.score.weight": rng.standard_normal((2, 16)),
             "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector": rng.standard_normal(48)}
    make_adapter(tmp_path, mods, r=4, alpha=8, emb=frozenset({"transformer.wte"}), extra_tensors=extra,
                 fan_in_fan_out=True, use_dora=True)
    res = audit_adapter(tmp_path, top_singular_values=4)
    rows = _rows(res)
    assert rows["transformer.wte"]["kind"] == "embedding"
    assert rows["encoder.conv1"]["kind"] == "conv"
    assert rows["encoder.conv1"]["shape"] == [8, 27]
    for name, (a, b) in mods.items():
        assert_sigma_close(np.array(rows[name]["top_singular_values"]), dense_sigma(stored(a, "F32"), stored(b, "F32")))
    assert res.skipped_tensors == ["base_model.model.score.weight"]
    codes = {i["code"] for i in res.summary["issues"]}
    assert {"DORA_ADAPTER", "NON_LORA_TENSORS"} <= codes


def test_suggestions_are_exact(tmp_path):
    rng = np.random.default_rng(3)
    # modules with exact ranks 1, 3, 3, 10 (r=16): k@90 ≤ true rank, suggestions round up in {1,2,4,8,16}
    mods = {}
    for i, tr in enumerate([1, 3, 3, 10]):
        mods[f"model.layers.{i}.self_attn.v_proj"] = (rng.standard_normal((16, 24)), _lowrank_b(rng, 24, 16, tr))
    make_adapter(tmp_path, mods, r=16, alpha=32)
    res = audit_adapter(tmp_path)
    k90 = [r["energy_rank_90"] for r in res.layers]
    s = res.summary
    assert s["energy_rank_90_p50"] == pytest.approx(float(np.percentile(k90, 50)))
    up = lambda k: next(a for a in ALLOWED_RANKS if a >= k)  # noqa: E731
    assert s["suggested_r_global_median"] == min(up(np.percentile(k90, 50)), 16)
    assert s["suggested_r_global_90"] == min(up(np.percentile(k90, 90)), 16)
    pl = res.per_layer
    ranks = [up(k) for k in k90]
    assert list(pl["ranks"].values()) == ranks
    mode = max(set(ranks), key=lambda k: (ranks.count(k), -k))
    assert pl["r"] == mode
    # keep each module's scale: alpha/r = 2 for every module
    for name, k in pl["ranks"].items():
        alpha = pl["alpha_pattern"].get(name, pl["lora_alpha"])
        assert alpha / k == pytest.approx(2.0)
        assert pl["rank_pattern"].get(name, pl["r"]) == k


def test_suggested_patterns_resolve_exactly_under_peft_matching(tmp_path):
    """A pattern key also matches every module whose name ends with it (PEFT's rule), so a
    suggestion for `a.lin` must not leak into `b.a.lin`: every module resolves to its own rank
    and keeps its scale when the fragment is read the way PEFT reads it."""
    from gradience.audit.naming import resolve_rank_alpha

    rng = np.random.default_rng(5)
    mods = {name: (rng.standard_normal((16, 24)), _lowrank_b(rng, 24, 16, tr))
            for name, tr in [("a.lin", 10), ("b.a.lin", 1), ("c.b.a.lin", 3), ("c.lin", 1), ("d.lin", 1)]}
    make_adapter(tmp_path, mods, r=16, alpha=32, prefix="")
    pl = audit_adapter(tmp_path).per_layer
    assert len(set(pl["ranks"].values())) > 1
    # The --json output keeps the patterns' order (PEFT takes the first matching key).
    from gradience.telemetry.encoding import dumps_pretty

    printed = json.loads(dumps_pretty({"per_layer_suggestion": pl}))["per_layer_suggestion"]
    assert list(printed["rank_pattern"]) == list(pl["rank_pattern"]) != sorted(pl["rank_pattern"])
    for frag in (pl, printed):
        for name, k in pl["ranks"].items():
            r, alpha = resolve_rank_alpha(name, frag["r"], frag["lora_alpha"], frag["rank_pattern"],
                                          frag["alpha_pattern"])
            assert (r, alpha / r) == (k, pytest.approx(2.0)), name


def test_budget_allocation_is_greedy_optimal_on_a_small_case():
    rows = [{"name": "a", "scale": 1.0, "in_features": 10, "out_features": 10, "params": 40, "r": 2},
            {"name": "b", "scale": 1.0, "in_features": 5, "out_features": 5, "params": 20, "r": 2}]
    sig = [np.array([3.0, 2.0]), np.array([2.0, 1.9])]
    # energies per param: a: 9/20, 4/20; b: 4/10, 3.61/10. Minimum (rank 1 each) = 30 params.
    out = allocate(rows, sig, False, budget_params=40)
    assert out["ranks"] == {"a": 1, "b": 2} and out["params_after"] == 40
    out = allocate(rows, sig, False, budget_params=60)
    assert out["ranks"] == {"a": 2, "b": 2}
    out = allocate(rows, sig, False, energy=0.5)
    assert out["ranks"] == {"a": 1, "b": 1}
    total = 9 + 4 + 4 + 3.61
    assert out["energy_kept"] == pytest.approx(13 / total)
    with pytest.raises(ValueError):
        allocate(rows, sig, False, budget_params=10)


def test_zero_and_nonfinite_modules_are_reported_not_crashed(tmp_path):
    rng = np.random.default_rng(4)
    bad_a = rng.standard_normal((4, 8))
    bad_a[0, 0] = np.nan
    mods = {"m.layers.0.q_proj": (rng.standard_normal((4, 8)), np.zeros((8, 4))),
            "m.layers.1.q_proj": (bad_a, rng.standard_normal((8, 4))),
            "m.layers.2.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4)))}
    make_adapter(tmp_path, mods, r=4, alpha=4)
    res = audit_adapter(tmp_path)
    codes = {i["code"] for i in res.summary["issues"]}
    assert {"ZERO_UPDATE", "NONFINITE_WEIGHTS"} <= codes
    assert res.summary["n_modules_measured"] == 1
    assert "error" in _rows(res)["m.layers.1.q_proj"]
