"""`gradience bench run --smoke` on the bundled MiniLM and real SST-2: part of the default suite
(and so of CI), as the bench issue asks; every strategy, truncate_heal included; about 55 s on the
2-core CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_minilm_sst2_smoke_produces_every_documented_output(tmp_path, cli, sst2_dir):
    out = tmp_path / "smoke"
    r = cli("bench", "run", str(REPO / "configs" / "bench_minilm_sst2.yaml"), "--smoke", "--output", str(out),
            "--json", timeout=1200)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] in ("PASS", "FAIL", "INCOMPLETE")
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["model"]["name"] == "bundled:minilm" and bench["seeds_done"] == [42]
    assert set(bench["variants"]) == {"uniform_median", "uniform_p90", "per_layer", "budget", "truncate",
                                      "truncate_heal", "truncate_budget", "truncate_budget_heal"}
    heal, cut = bench["variants"]["truncate_heal"]["42"], bench["variants"]["truncate"]["42"]
    assert heal["train_steps"] == 3 and heal["ranks"] == cut["ranks"]  # truncated as truncate is, then trained
    budget = bench["variants"]["budget"]["42"]
    for name in ("truncate_budget", "truncate_budget_heal"):  # the budget's ranks, cut from the probe
        assert bench["variants"][name]["42"]["ranks"] == budget["ranks"]
        assert bench["variants"][name]["42"]["lora_params"] <= bench["audit"]["42"]["budget_params"]
    plateau = bench["probe"]["42"]["plateau"]
    assert plateau["curve"] and plateau["stop_reason"] in ("plateau", "max_steps")
    assert bench["data"]["n_val"] == 64 and bench["retrain_scaling"] == "keep_scale"
    assert plateau["curve"][0]["step"] == 4
    probe = bench["probe"]["42"]
    assert probe["n"] == 128 and probe["r_min"] == probe["r_max"] == 32
    assert len(probe["ranks"]) == 12  # 6 layers × query/value
    assert probe["head_params"] > 0
    for name in ("bench.md", "verdicts.json", "bench_aggregate.json", "bench_aggregate.md", "bench.html",
                 "bench_tradeoff.svg", "bench_probe_curve.svg"):
        assert (out / name).is_file()
    for v, row in bench["variants"].items():
        ev = json.loads((out / "seed_42" / v / "eval.json").read_text())
        assert ev["ranks"] and ev["lora_params"] == row["42"]["lora_params"]
