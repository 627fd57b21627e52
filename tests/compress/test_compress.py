"""`compress_adapter` / `gradience compress`: exact truncation, PEFT round trip, safety rails."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from gradience.audit.compress import compress_adapter, exact_patterns
from gradience.audit.naming import resolve_rank_alpha
from gradience.audit.weights import SafetensorsFile
from gradience.errors import AdapterFormatError

from ..audit._helpers import make_adapter, stored
from ..conftest import shared_path


def _delta(d, name):
    """Dense s·B·A of module ``name`` from a written adapter (float64)."""
    cfg = json.loads((d / "adapter_config.json").read_text())
    f = SafetensorsFile(d / "adapter_model.safetensors")
    a = f.read(f"base_model.model.{name}.lora_A.weight").astype(np.float64)
    b = f.read(f"base_model.model.{name}.lora_B.weight").astype(np.float64)
    f.close()
    r, alpha = resolve_rank_alpha(name, cfg["r"], cfg["lora_alpha"], cfg.get("rank_pattern") or {},
                                  cfg.get("alpha_pattern") or {})
    assert a.shape[0] == r
    s = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
    return s * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))


def _truncated(x, k):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def _adapter(tmp_path, dtype="F64", **cfg):
    rng = np.random.default_rng(0)
    mods = {
        "model.layers.0.self_attn.q_proj": (rng.standard_normal((8, 20)), rng.standard_normal((24, 8))),
        "model.layers.0.mlp.up_proj": (rng.standard_normal((8, 20)),
                                       rng.standard_normal((30, 3)) @ rng.standard_normal((3, 8))),  # rank 3
        "model.layers.1.self_attn.q_proj": (rng.standard_normal((4, 20)), rng.standard_normal((24, 4))),
    }
    cfg.setdefault("rank_pattern", {"layers.1.self_attn.q_proj": 4})
    return make_adapter(tmp_path / "in", mods, r=8, alpha=16, dtype=dtype, **cfg), mods


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_rank_truncation_equals_dense_eckart_young(tmp_path, rslora, k):
    src, mods = _adapter(tmp_path, use_rslora=rslora)
    rep = compress_adapter(src, tmp_path / "out", rank=k)
    for name in mods:
        before = _delta(src, name)
        after = _delta(tmp_path / "out", name)
        kk = min(k, 4 if "layers.1" in name else 8)
        want = _truncated(before, kk)
        assert np.linalg.norm(after - want) <= 1e-10 * np.linalg.norm(before)
        row = next(m for m in rep["modules"] if m["name"] == name)
        sv = np.linalg.svd(before, compute_uv=False)
        assert row["new_r"] == kk
        assert row["spectral_error"] == pytest.approx(sv[kk] if kk < len(sv) and kk < row["old_r"] else 0.0,
                                                      rel=1e-9, abs=1e-9 * sv[0])
        assert row["retained_energy"] == pytest.approx(np.sum(sv[:kk] ** 2) / np.sum(sv[: row["old_r"]] ** 2),
                                                       rel=1e-12)
    if k == 8:  # no-op everywhere
        assert rep["summary"]["n_truncated"] == 0 and rep["summary"]["retained_energy_min"] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_output_keeps_dtype_and_conv1d_layout(tmp_path, dtype):
    src, mods = _adapter(tmp_path, dtype=dtype, fan_in_fan_out=True)
    compress_adapter(src, tmp_path / "out", energy=0.99)
    f = SafetensorsFile(tmp_path / "out" / "adapter_model.safetensors")
    assert {f.dtype(n) for n in f.names()} == {dtype}
    f.close()
    tol = {"F32": 1e-6, "F16": 2e-3, "BF16": 2e-2}[dtype]
    for name, (a, b) in mods.items():
        before = stored(b, dtype) @ stored(a, dtype)
        sv = np.linalg.svd(before, compute_uv=False)
        e = np.cumsum(sv**2) / np.sum(sv**2)
        k = int(np.argmax(e >= 0.99 - 1e-12)) + 1
        after = _delta(tmp_path / "out", name)
        s = 16 / 8 if "layers.0" in name else 16 / 4  # the input scale α/r (rank_pattern r=4), kept
        assert np.linalg.norm(after - s * _truncated(before, k)) <= tol * np.linalg.norm(s * before)


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
def test_untouched_modules_are_copied_bit_for_bit(tmp_path, dtype):
    """A module kept at its own rank is not re-factored: its A and B are the input bytes, so
    `--rank r` is an exact no-op in every dtype (re-encoding fp16/bf16 factors would move ΔW)."""
    src, mods = _adapter(tmp_path, dtype=dtype)
    f0 = SafetensorsFile(src / "adapter_model.safetensors")
    for k, out in ((8, "noop"), (4, "mixed")):  # rank 4: the r=4 module is untouched, the r=8 ones truncated
        rep = compress_adapter(src, tmp_path / out, rank=k)
        f1 = SafetensorsFile(tmp_path / out / "adapter_model.safetensors")
        for row in rep["modules"]:
            keys = [f"base_model.model.{row['name']}.lora_{w}.weight" for w in "AB"]
            same = all(f0.read_raw(n)[1] == f1.read_raw(n)[1] and f0.read_raw(n)[0].tobytes() == f1.read_raw(n)[0].tobytes()
                       for n in keys)
            assert row["untouched"] == (row["old_r"] == row["new_r"]) == same, (out, row["name"])
            if row["untouched"]:
                assert row["spectral_error"] == 0.0 and row["frob_error"] == 0.0 and row["retained_energy"] == 1.0
        f1.close()
        assert rep["summary"]["n_untouched"] == sum(m["untouched"] for m in rep["modules"])
        if k == 8:
            assert rep["summary"]["n_untouched"] == len(mods)
            cfg_in = json.loads((src / "adapter_config.json").read_text())
            cfg_out = json.loads((tmp_path / out / "adapter_config.json").read_text())
            for name in mods:  # and PEFT gives every module the input r and α back
                assert (resolve_rank_alpha(name, cfg_out["r"], cfg_out["lora_alpha"], cfg_out["rank_pattern"],
                                           cfg_out["alpha_pattern"])
                        == resolve_rank_alpha(name, cfg_in["r"], cfg_in["lora_alpha"], cfg_in["rank_pattern"], {}))
    f0.close()


def _peft_resolve(pattern, name, default):
    """PEFT's lookup (peft.utils.other.get_pattern_key): the first key, in dict order, whose regex
    ``(.*\\.)?(key)$`` matches the module path; the global value when none does."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", name):
            return pattern[key]
    return default


def test_exact_patterns_give_every_module_its_own_value_under_peft_matching():
    names = ["a.lin", "b.a.lin", "d.b.a.lin", "c.lin", "lin", "aXlin", "h.1.q", "h.11q", "x.h.1.q"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = [int(v) for v in rng.choice([1, 2, 4, 8], size=len(names))]
        default = int(rng.choice(values))
        pat = exact_patterns(names, values, default)
        for n, v in zip(names, values, strict=True):
            assert _peft_resolve(pat, n, default) == v, (n, pat)
    # the reviewer's case: b.a.lin at the global rank, a.lin overridden
    pat = exact_patterns(["a.lin", "b.a.lin", "c.lin"], [8, 1, 2], 1)
    assert list(pat) == ["b.a.lin", "a.lin", "c.lin"] and pat["b.a.lin"] == 1
    with pytest.raises(AdapterFormatError, match="cannot be given its own"):
        exact_patterns(["a+b", "q"], [2, 1], 1)


def test_fast_pattern_lookup_agrees_with_peft_matching():
    from gradience.audit.naming import _first_match, pattern_key

    rng = np.random.default_rng(1)
    parts = ["a", "b", "lin", "h", "1", "11", "q", "aXlin", "x", "1.q", "b.a"]
    names = sorted({".".join(rng.choice(parts, size=rng.integers(1, 5))) for _ in range(300)})
    for _ in range(30):
        keys = list(rng.choice(names, size=min(40, len(names)), replace=False))
        first = _first_match(keys)
        for n in names:
            assert first(n) == pattern_key(keys, n), (n, keys)


def test_strategies_budget_and_patterns(tmp_path):
    src, _ = _adapter(tmp_path)
    rep = compress_adapter(src, tmp_path / "pl", strategy="per_layer")
    cfg = rep["config"]
    ranks = {m["name"]: m["new_r"] for m in rep["modules"]}
    assert ranks["model.layers.0.mlp.up_proj"] <= 4  # true rank 3 -> k@90 ≤ 3 -> rounded up ≤ 4
    for name, k in ranks.items():
        assert cfg["rank_pattern"].get(name, cfg["r"]) == k
        scale = 4.0 if "layers.1" in name else 2.0  # α/r of the input (layers.1 has r=4 by rank_pattern)
        assert cfg["alpha_pattern"].get(name, cfg["lora_alpha"]) / k == pytest.approx(scale)
    rep = compress_adapter(src, tmp_path / "b", budget_params=3 * 44 + 2 * 54)
    assert rep["summary"]["params_after"] <= 3 * 44 + 2 * 54
    for strat in ("uniform_median", "uniform_p90"):
        rep = compress_adapter(src, tmp_path / strat, strategy=strat)
        assert len({m["new_r"] for m in rep["modules"] if m["old_r"] == 8}) == 1


def test_safety_rails(tmp_path):
    src, _ = _adapter(tmp_path)
    from gradience.errors import UsageError

    with pytest.raises(UsageError, match="inside"):
        compress_adapter(src, src / "sub", rank=2)
    with pytest.raises(UsageError, match="exactly one"):
        compress_adapter(src, tmp_path / "o", rank=2, energy=0.5)
    compress_adapter(src, tmp_path / "o", rank=2)
    with pytest.raises(UsageError, match="not empty"):
        compress_adapter(src, tmp_path / "o", rank=2)
    compress_adapter(src, tmp_path / "o", rank=3, force=True)
    assert json.loads((tmp_path / "o" / "adapter_config.json").read_text())["r"] == 3
    rep = compress_adapter(src, tmp_path / "dry", rank=2, dry_run=True)
    assert not (tmp_path / "dry").exists() and rep["summary"]["dry_run"]
    rng = np.random.default_rng(1)
    dora = make_adapter(tmp_path / "dora", {"m.layers.0.q_proj": (rng.standard_normal((2, 4)), rng.standard_normal((4, 2)))},
                        r=2, alpha=2, use_dora=True)
    with pytest.raises(AdapterFormatError, match="DoRA"):
        compress_adapter(dora, tmp_path / "dora_out", rank=1)
    a = rng.standard_normal((2, 4))
    a[0, 1] = np.nan
    bad = make_adapter(tmp_path / "nan", {"m.layers.0.q_proj": (a, rng.standard_normal((4, 2)))}, r=2, alpha=2)
    for k in (1, 2):  # truncated or copied, a non-finite module is refused
        with pytest.raises(AdapterFormatError, match="NaN"):
            compress_adapter(bad, tmp_path / f"nan_out{k}", rank=k)


def test_cli_json_and_errors(cli, tmp_path):
    d = shared_path("compat", "adapters", "tiny_lora")
    p = cli("compress", "--peft-dir", str(d), "--out", str(tmp_path / "c"), "--rank", "4", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["summary"]["params_after"] == rep["summary"]["params_before"] // 2
    assert rep["summary"]["bytes_after"] == (tmp_path / "c" / "adapter_model.safetensors").stat().st_size
    a = cli("audit", "--peft-dir", str(tmp_path / "c"), "--json")
    assert json.loads(a.stdout)["r"] == 4
    q = cli("compress", "--peft-dir", str(d), "--out", str(tmp_path / "c"), "--rank", "4")
    assert q.returncode == 2 and "--force" in q.stderr and q.stderr.count("\n") == 1
    t = cli("compress", "--peft-dir", str(d), "--out", str(tmp_path / "t"), "--strategy", "per_layer")
    assert t.returncode == 0 and "retained energy" in t.stdout


def test_text_table_drops_the_shared_prefix_and_fits_80_columns(cli, tmp_path):
    rng = np.random.default_rng(0)
    mods = {f"bert.encoder.layer.{i}.attention.self.{w}": (rng.standard_normal((8, 64)), rng.standard_normal((64, 8)))
            for i in range(10, 12) for w in ("query", "value")}
    make_adapter(tmp_path / "a", mods, r=8, alpha=16)
    p = cli("compress", "--peft-dir", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--rank", "4",
            env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # paths are never broken (the console soft-wraps), so the header naming them may be longer
    assert max(len(line) for line in lines if str(tmp_path) not in line) <= 80
    assert any("bert.encoder." in line for line in lines)  # the prefix is named once
    for name in mods:
        short = name[len("bert.encoder."):]
        assert any(line.startswith(short + " ") for line in lines), (short, p.stdout)
