"""Verdict logic at the policy's boundaries (exact 2/3, exact -2.5 points) and undertrained probes."""

from __future__ import annotations

from fractions import Fraction

import pytest

from gradience.bench.verdicts import Score, SeedResult, delta_points, judge, load_policy
from gradience.errors import ConfigError

POLICY = load_policy("safe_uniform")
N = 1000  # 1 point = 10 examples, so -2.5 points is exactly 25 examples


def seeds(probe_correct: list[int], variant_correct: list[int], name: str = "uniform_median",
          n: int = N) -> list[SeedResult]:
    return [SeedResult(seed=i, probe=Score(p, n), variants={name: Score(v, n)})
            for i, (p, v) in enumerate(zip(probe_correct, variant_correct, strict=True))]


def test_packaged_policy_values():
    assert POLICY.min_pass_fraction == Fraction(2, 3)
    assert POLICY.max_drop_points == Fraction(5, 2)
    assert POLICY.quality_gate("sst2") == Fraction(3, 4)
    assert "uniform_median" in POLICY.gate_strategies


def test_exactly_minus_2_5_points_passes_and_one_example_more_fails():
    ok = judge(seeds([900, 900, 900], [875, 875, 900]), POLICY, "sst2", ["uniform_median"])
    assert ok["strategies"]["uniform_median"]["verdict"] == "PASS"
    assert ok["strategies"]["uniform_median"]["worst_delta_points"] == -2.5
    assert ok["status"] == "PASS"
    bad = judge(seeds([900, 900, 900], [874, 900, 900]), POLICY, "sst2", ["uniform_median"])
    assert bad["strategies"]["uniform_median"]["verdict"] == "FAIL"  # worst seed -2.6
    assert bad["status"] == "FAIL"


def test_float_rounding_cannot_flip_the_boundary():
    # 0.875 - 0.9 in floats is -0.025000000000000022; exact arithmetic gives -2.5 points.
    assert (0.875 - 0.9) * 100 < -2.5
    assert delta_points(Score(7, 8), Score(9, 10)) == Fraction(-5, 2)
    r = judge([SeedResult(0, Score(9, 10), {"uniform_median": Score(7, 8)})], POLICY, "sst2", ["uniform_median"])
    assert r["strategies"]["uniform_median"]["verdict"] == "PASS"


def test_pass_fraction_exactly_two_thirds_passes_one_third_fails():
    # A bench tightened to 1 point per seed; the worst-seed floor stays at 2.5 points.
    tight = load_policy("safe_uniform", max_drop_points=1.0)
    assert tight.worst_seed_floor_points == Fraction(5, 2)
    # deltas 0, -1.0 (exactly the tolerance), -2.0: 2 of 3 within 1 point, worst above the floor.
    two_thirds = judge(seeds([900] * 3, [900, 890, 880]), tight, "sst2", ["uniform_median"])
    v = two_thirds["strategies"]["uniform_median"]
    assert (v["pass_fraction"], v["n_pass"], v["verdict"]) == ("2/3", 2, "PASS")
    # One example fewer in the second seed: 1 of 3 within tolerance.
    one_third = judge(seeds([900] * 3, [900, 889, 880]), tight, "sst2", ["uniform_median"])
    assert one_third["strategies"]["uniform_median"]["pass_fraction"] == "1/3"
    assert one_third["strategies"]["uniform_median"]["verdict"] == "FAIL"
    # 4 of 6 is exactly 2/3 too.
    six = judge(seeds([900] * 6, [900, 900, 900, 890, 880, 880]), tight, "sst2", ["uniform_median"])
    assert six["strategies"]["uniform_median"]["pass_fraction"] == "4/6"
    assert six["strategies"]["uniform_median"]["verdict"] == "PASS"


def test_worst_seed_floor_applies_even_when_the_fraction_passes():
    tight = load_policy("safe_uniform", max_drop_points=1.0)
    r = judge(seeds([900] * 3, [900, 900, 874]), tight, "sst2", ["uniform_median"])["strategies"]["uniform_median"]
    assert r["pass_fraction"] == "2/3" and r["verdict"] == "FAIL" and r["worst_delta_points"] == -2.6
    r = judge(seeds([900] * 3, [900, 900, 875]), tight, "sst2", ["uniform_median"])["strategies"]["uniform_median"]
    assert r["verdict"] == "PASS"


def test_undertrained_probe_is_not_a_pass():
    r = judge(seeds([700, 900, 900], [700, 900, 900]), POLICY, "sst2", ["uniform_median"])
    assert r["status"] == "UNDERTRAINED"
    assert r["probe"]["undertrained_seeds"] == [0]
    assert "0.7000" in r["reason"] and "quality gate" in r["reason"]
    assert r["strategies"]["uniform_median"]["verdict"] == "UNDERTRAINED"


def test_gate_exactly_met_is_not_undertrained():
    r = judge(seeds([750], [750]), POLICY, "sst2", ["uniform_median"])
    assert r["status"] == "PASS"


def test_controls_and_incomplete_and_no_gate_strategy():
    res = seeds([900] * 3, [900] * 3, name="uniform_p90")
    for s in res:
        s.controls.add("uniform_p90")
    r = judge(res, POLICY, "sst2", ["uniform_p90"])
    assert r["strategies"]["uniform_p90"]["verdict"] == "CONTROL"
    assert r["status"] == "INCOMPLETE" and "gate strategies" in r["reason"]
    part = seeds([900] * 3, [900] * 3)
    del part[2].variants["uniform_median"]
    r2 = judge(part, POLICY, "sst2", ["uniform_median"])
    assert r2["strategies"]["uniform_median"]["verdict"] == "INCOMPLETE" and r2["status"] == "INCOMPLETE"


def test_policy_override_and_bad_policy(tmp_path):
    assert load_policy("safe_uniform", max_drop_points=1.0).max_drop_points == 1
    assert load_policy("safe_uniform", max_drop_points=None).max_drop_points == Fraction(5, 2)
    with pytest.raises(ConfigError, match="unknown policy"):
        load_policy("no_such_policy")
    p = tmp_path / "p.yaml"
    p.write_text("name: x\nmin_pass_fraction: 2/3\nsurprise: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'surprise'"):
        load_policy(str(p))


def test_within_one_point_policy_needs_every_seed_within_exactly_one_point():
    strict = load_policy("within_one_point")
    name = "truncate_budget_heal"
    assert strict.min_pass_fraction == 1 and strict.gate_strategies == (name,)
    ok = judge(seeds([900, 900, 900], [890, 900, 905], name), strict, "sst2", [name])
    assert ok["status"] == "PASS" and ok["strategies"][name]["worst_delta_points"] == -1.0
    bad = judge(seeds([900, 900, 900], [889, 900, 905], name), strict, "sst2", [name])
    assert bad["status"] == "FAIL"  # one seed at -1.1 is enough
