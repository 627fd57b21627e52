"""`gradience audit` as a user runs it: JSON shape, --append, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gradience.telemetry import TelemetryReader, TelemetryWriter

from ..conftest import shared_path
from ._helpers import make_adapter, write_safetensors

SUMMARY_KEYS = {
    "total_lora_params", "n_layers", "stable_rank_mean", "stable_rank_median", "stable_rank_weighted_mean",
    "effective_rank_mean", "utilization_mean", "energy_rank_90_p50", "energy_rank_90_p90", "by_type",
    "suggested_r_global_median", "suggested_r_global_90", "delta_sigma_max_scaled_mean",
    "delta_sigma_max_scaled_p50", "delta_sigma_max_scaled_p90", "delta_frob_norm_scaled_mean",
    "delta_frob_norm_scaled_p50", "delta_frob_norm_scaled_p90", "issues", "energy_hhi", "top10pct_energy_share",
    "top_layers", "udr_mean", "udr_median", "udr_p90", "udr_max", "sdi_mean", "sdi_median", "sdi_p90",
    "fraction_udr_gt_0_1", "fraction_udr_gt_0_3", "n_layers_with_udr",
}
ROW_KEYS = {"name", "module_type", "layer", "r", "alpha", "scale", "shape", "params", "stable_rank", "utilization",
            "effective_rank", "energy_rank_90", "energy_rank_95", "energy_rank_99", "delta_sigma_max",
            "delta_fro_norm", "top_singular_values"}


def test_compat_adapter_json(cli):
    d = shared_path("compat", "adapters", "tiny_lora")
    p = cli("audit", "--peft-dir", str(d), "--json", "--layers", "--top-singular-values", "3")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert SUMMARY_KEYS <= set(out)
    assert out["n_layers"] == 12 and out["total_lora_params"] == 12 * 8 * (768 + 768) + 6 * 8 * (2304 - 768)
    assert len(out["layers"]) == 12
    for row in out["layers"]:
        assert ROW_KEYS <= set(row)
        assert row["module_type"] == "attn" and row["scale"] == 2.0
        assert len(row["top_singular_values"]) == 3
        assert row["top_singular_values"] == sorted(row["top_singular_values"], reverse=True)
    # The same object as the Python API's to_dict(layers=True).
    from gradience.audit import audit_adapter

    api = audit_adapter(d, top_singular_values=3).to_dict(layers=True)
    assert json.loads(json.dumps(api, default=str)).keys() == out.keys()
    assert out["issues"] == []


def test_text_report_and_no_layers_key(cli, tmp_path):
    d = shared_path("compat", "adapters", "tiny_lora")
    p = cli("audit", "--peft-dir", str(d), "--top-wasteful", "2", "--suggest-per-layer", "--energy", "0.8")
    assert p.returncode == 0, p.stderr
    for text in ("Summary", "By module type", "Most wasteful modules", "Suggested ranks", "rank_pattern",
                 "allocation", "No issues found"):
        assert text in p.stdout
    q = cli("audit", "--peft-dir", str(d), "--json")
    assert "layers" not in json.loads(q.stdout)


def test_append_goes_to_last_run(cli, tmp_path):
    run = tmp_path / "run.jsonl"
    with TelemetryWriter(run, run_id="first") as w:
        w.run_start({"model_name": "m"})
    with TelemetryWriter(run, run_id="second") as w:
        w.run_start({"model_name": "m"})
    d = shared_path("compat", "adapters", "tiny_lora")
    p = cli("audit", "--peft-dir", str(d), "--append", str(run), "--json")
    assert p.returncode == 0, p.stderr
    evs = list(TelemetryReader(run).iter_events("metrics"))
    assert len(evs) == 1 and evs[0]["run_id"] == "second" and evs[0]["kind"] == "lora_audit"
    printed = json.loads(p.stdout)
    assert evs[0]["metrics"]["suggested_r_global_median"] == printed["suggested_r_global_median"]
    assert TelemetryReader(run).summarize().lora_audit["n_layers"] == 12


def _err(cli, *args):
    p = cli("audit", *args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    return p.stderr


def test_errors_are_one_line_naming_the_file(cli, tmp_path):
    src = shared_path("compat", "adapters", "tiny_lora")
    # missing config
    d1 = tmp_path / "noconf"
    d1.mkdir()
    shutil.copy(src / "adapter_model.safetensors", d1)
    assert "adapter_config.json" in _err(cli, "--peft-dir", str(d1))
    # missing weights
    d2 = tmp_path / "noweights"
    d2.mkdir()
    shutil.copy(src / "adapter_config.json", d2)
    assert "no adapter weights" in _err(cli, "--peft-dir", str(d2))
    # truncated
    d3 = tmp_path / "trunc"
    shutil.copytree(src, d3)
    (d3 / "adapter_model.safetensors").chmod(0o644)
    data = (src / "adapter_model.safetensors").read_bytes()
    (d3 / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(cli, "--peft-dir", str(d3))
    # zero-size and garbage
    (d3 / "adapter_model.safetensors").write_bytes(b"")
    assert "zero-size" in _err(cli, "--peft-dir", str(d3))
    (d3 / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "adapter_model.safetensors" in _err(cli, "--peft-dir", str(d3))
    # B without A
    d4 = tmp_path / "lonely"
    d4.mkdir()
    shutil.copy(src / "adapter_config.json", d4)
    write_safetensors(d4 / "adapter_model.safetensors", {"base_model.model.x.lora_B.weight": np.ones((4, 2))})
    assert "no lora_A" in _err(cli, "--peft-dir", str(d4))
    # nothing LoRA in the file: never an empty audit
    write_safetensors(d4 / "adapter_model.safetensors", {"classifier.weight": np.ones((4, 2))})
    assert "no LoRA modules" in _err(cli, "--peft-dir", str(d4))
    # invalid config JSON / non-LoRA peft type
    (d4 / "adapter_config.json").write_text("{oops")
    assert "not valid JSON" in _err(cli, "--peft-dir", str(d4))
    (d4 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    assert "not LoRA" in _err(cli, "--peft-dir", str(d4))
    # missing directory, conflicting flags, append target without a run
    assert "not found" in _err(cli, "--peft-dir", str(tmp_path / "nope"))
    assert "alternatives" in _err(cli, "--peft-dir", str(src), "--budget-params", "10", "--energy", "0.5")
    assert "not found" in _err(cli, "--peft-dir", str(src), "--append", str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    assert "no run" in _err(cli, "--peft-dir", str(src), "--append", str(tmp_path / "empty.jsonl"))


def test_shape_disagreeing_with_config_is_reported(tmp_path):
    from gradience.audit import audit_adapter

    rng = np.random.default_rng(0)
    make_adapter(tmp_path, {"m.layers.0.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4))),
                            "m.layers.1.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 3)))},
                 r=8, alpha=8)
    res = audit_adapter(tmp_path)
    codes = {i["code"] for i in res.summary["issues"]}
    assert {"RANK_MISMATCH", "SHAPE_MISMATCH"} <= codes
    assert res.summary["n_layers"] == 1


@pytest.mark.parametrize("module", ["gradience.cli.audit", "gradience.audit"])
def test_core_does_not_import_torch(module):
    import subprocess
    import sys

    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "from gradience.audit import audit_adapter; "
            f"audit_adapter({str(shared_path('compat', 'adapters', 'tiny_lora'))!r}); "
            "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_tables_drop_the_shared_module_prefix_but_keep_layer_indices():
    from gradience.cli.audit import _shared_prefix

    assert _shared_prefix(["bert.encoder.layer.0.attention.self.query",
                           "bert.encoder.layer.5.attention.self.value"]) == "bert.encoder."
    assert _shared_prefix(["base_model.model.model.layers.0.self_attn.q_proj",
                           "base_model.model.model.layers.1.mlp.up_proj"]) == "base_model.model.model."
    assert _shared_prefix(["a.b", "a.c"]) == "" and _shared_prefix(["only.one.name"]) == ""


def test_wasteful_table_fits_80_columns_without_folding_names(cli, tmp_path):
    rng = np.random.default_rng(0)
    mods = {f"bert.encoder.layer.{i}.attention.self.{w}": (rng.standard_normal((8, 64)), rng.standard_normal((64, 8)))
            for i in range(10, 12) for w in ("query", "value")}
    make_adapter(tmp_path / "a", mods, r=8, alpha=16)
    p = cli("audit", "--peft-dir", str(tmp_path / "a"), "--top-wasteful", "4", env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # the table fits; prose and paths are never broken (the console soft-wraps), so they may be longer
    start = next(i for i, line in enumerate(lines) if line.startswith("Most wasteful"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    assert max(len(line) for line in lines[start:end]) <= 80
    for name in mods:
        short = name[len("bert.encoder."):]
        assert any(line.startswith(short + " ") for line in lines), short


def test_layer_rows_carry_their_share_of_update_energy(cli, tmp_path):
    rng = np.random.default_rng(1)
    mods = {f"model.layers.{i}.self_attn.{w}": (rng.standard_normal((4, 16)) * (i + 1), rng.standard_normal((16, 4)))
            for i in range(3) for w in ("q_proj", "v_proj")}
    mods["model.layers.3.self_attn.q_proj"] = (rng.standard_normal((4, 16)), np.zeros((16, 4)))  # zero update
    make_adapter(tmp_path / "a", mods, r=4, alpha=8)
    p = cli("audit", "--peft-dir", str(tmp_path / "a"), "--json", "--layers", "--no-udr")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    rows = {r["name"]: r for r in out["layers"]}
    energy = {n: r["delta_fro_norm"] ** 2 for n, r in rows.items()}
    total = sum(energy.values())
    for n, r in rows.items():
        assert r["energy_share"] == pytest.approx(energy[n] / total, rel=1e-12)
    assert sum(r["energy_share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-12)
    assert rows["model.layers.3.self_attn.q_proj"]["energy_share"] == 0.0
    # the per-layer shares are the sums of the per-module ones
    for layer, share in out["energy_by_layer"].items():
        assert share == pytest.approx(sum(r["energy_share"] for r in rows.values() if r["layer_key"] == layer))


def test_all_modules_nonfinite_is_an_error_not_an_empty_audit(cli, tmp_path):
    rng = np.random.default_rng(2)
    inf_b = rng.standard_normal((8, 4))
    inf_b[3, 1] = np.inf
    make_adapter(tmp_path / "a", {"m.layers.0.q_proj": (np.full((4, 8), np.nan), np.ones((8, 4))),
                                  "m.layers.1.q_proj": (rng.standard_normal((4, 8)), inf_b)}, r=4, alpha=4)
    err = _err(cli, "--peft-dir", str(tmp_path / "a"), "--no-udr")
    assert "adapter_model.safetensors" in err and "NaN/Inf" in err and "every LoRA module" in err
    from gradience.audit import audit_adapter
    from gradience.errors import AdapterFormatError

    with pytest.raises(AdapterFormatError, match="every LoRA module"):
        audit_adapter(tmp_path / "a", udr=False)


def test_some_modules_nonfinite_still_audits_the_rest(cli, tmp_path):
    rng = np.random.default_rng(3)
    make_adapter(tmp_path / "a", {"m.layers.0.q_proj": (np.full((4, 8), np.nan), np.ones((8, 4))),
                                  "m.layers.1.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4)))},
                 r=4, alpha=4)
    p = cli("audit", "--peft-dir", str(tmp_path / "a"), "--json", "--layers", "--no-udr")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [i["code"] for i in out["issues"]] == ["NONFINITE_WEIGHTS"]
    assert out["n_modules_measured"] == 1
    rows = {r["name"]: r for r in out["layers"]}
    assert "error" in rows["m.layers.0.q_proj"] and "energy_share" not in rows["m.layers.0.q_proj"]
    assert rows["m.layers.1.q_proj"]["energy_share"] == 1.0
