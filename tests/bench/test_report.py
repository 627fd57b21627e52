"""Reports and aggregation from bench.json data alone (no torch)."""

from __future__ import annotations

import copy

import pytest

from gradience.bench.config import config_from_dict
from gradience.bench.report import aggregate, build_bench, render_aggregate_md, render_md
from gradience.bench.verdicts import Score, SeedResult, judge, load_policy
from gradience.errors import ConfigError

CFG = config_from_dict({"name": "unit", "task": {"data_dir": "x"},
                        "compression": {"strategies": ["uniform_median", "per_layer"]}})


def _rec(strategy: str, correct: int, lora: int, ranks: dict[str, int]) -> dict:
    vals = sorted(ranks.values())
    return {"strategy": strategy, "metric": "accuracy", "correct": correct, "n": 1000, "value": correct / 1000,
            "lora_params": lora, "head_params": 100, "ranks": ranks, "r_min": vals[0], "r_max": vals[-1],
            "r_median": vals[len(vals) // 2], "retrained": True, "control": False,
            "plan": {"r": vals[0]}, "train": {"train_seconds": 1.0}}


def _bench(seeds_correct: dict[int, tuple[int, int, int]]) -> dict:
    records = {}
    results = []
    for seed, (p, m, pl) in seeds_correct.items():
        records[seed] = {"probe": _rec("probe", p, 3200, {"a": 32, "b": 32}),
                         "uniform_median": _rec("uniform_median", m, 200, {"a": 2, "b": 2}),
                         "per_layer": _rec("per_layer", pl, 300, {"a": 1, "b": 4})}
        results.append(SeedResult(seed, Score(p, 1000), {"uniform_median": Score(m, 1000),
                                                         "per_layer": Score(pl, 1000)}))
    verdicts = judge(results, load_policy("safe_uniform"), "sst2", ["uniform_median", "per_layer"])
    return build_bench(CFG, records, {}, verdicts, {"device": "cpu"}, wall_seconds=12.0, partial=False)


def test_summary_numbers_and_markdown():
    b = _bench({1: (900, 895, 870), 2: (880, 880, 880)})
    s = b["summary"]["strategies"]["uniform_median"]
    assert s["verdict"] == "PASS" and s["mean_delta_points"] == pytest.approx(-0.25)
    assert s["worst_delta_points"] == pytest.approx(-0.5)
    assert s["reduction_lora"] == pytest.approx(1 - 200 / 3200)
    assert s["reduction_with_head"] == pytest.approx(1 - 300 / 3300)
    assert s["ranks"] == "r=2"
    pl = b["summary"]["strategies"]["per_layer"]
    assert pl["verdict"] == "FAIL" and pl["ranks"].startswith("r=1–4")
    md = render_md(b)
    assert "| 1 | uniform_median | r=2 | 200 | 89.50 | -0.50 | yes |" in md
    assert "**PASS**" in md and "not a guarantee" in md


def test_aggregate_merges_seeds_and_rejudges():
    a = _bench({1: (900, 895, 900)})
    b = _bench({2: (900, 870, 900)})
    b["config_hash"] = a["config_hash"]
    agg = aggregate([a, b], sources=["a", "b"])
    assert agg["seeds"] == [1, 2]
    um = agg["verdicts"]["strategies"]["uniform_median"]
    assert um["pass_fraction"] == "1/2" and um["verdict"] == "FAIL"  # each alone passes, together not
    assert a["verdicts"]["strategies"]["uniform_median"]["verdict"] == "PASS"
    assert "| uniform_median | r=2 |" in render_aggregate_md(agg)


def test_aggregate_refuses_mixed_configs_and_conflicting_seeds():
    a = _bench({1: (900, 895, 900)})
    other = copy.deepcopy(a)
    other["config_hash"] = "different"
    with pytest.raises(ConfigError, match="different configs"):
        aggregate([a, other])
    clash = _bench({1: (800, 800, 800)})
    with pytest.raises(ConfigError, match="seed 1 appears twice"):
        aggregate([a, clash])
    assert aggregate([a, copy.deepcopy(a)])["seeds"] == [1]  # the same result twice is harmless


def test_probe_curve_tradeoff_picture_and_html():
    from gradience.bench.charts import curve_chart, tradeoff_chart
    from gradience.bench.report import render_html

    b = _bench({1: (900, 895, 870), 2: (880, 880, 880)})
    curve = {"rule": {"every": 50, "patience": 3, "min_delta": 0.002, "max_steps": 800},
             "stop_reason": "plateau", "stopped_at": 250, "best_step": 100, "best_value": 0.9,
             "curve": [{"step": 50, "value": 0.85, "loss": 0.4}, {"step": 100, "value": 0.9, "loss": 0.3}]}
    b["probe"]["1"]["plateau"] = curve
    b["data"] = {"n_val": 1000}
    md = render_md(b)
    assert "![accuracy against LoRA parameters, per variant and seed](bench_tradeoff.svg)" in md
    assert "| 1 | plateau | 250 | 100 | 90.00 | 50: 85.0, 100: 90.0 |" in md
    assert "1000 rows carved from the training file" in md
    svg = tradeoff_chart(b)
    # One dot per variant and seed: 2 probes + 2 × 2 variants.
    assert svg.startswith("<svg") and svg.count("<circle") == 6
    assert curve_chart(b).count("<circle") == 2
    page = render_html(b)
    assert page.count("<svg") == 2 and "<td>uniform_median</td>" in page
