"""Verdicts: does a compressed variant keep the probe's quality across seeds?

Pure logic on counts (no torch). Every comparison is exact: metrics are carried as
``correct / n`` integer pairs and compared with :class:`fractions.Fraction`, so a variant
exactly 2.5 points below the probe, or passing in exactly 2 of 3 seeds, is a pass and never
the victim of floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "PASS",
    "Policy",
    "Score",
    "SeedResult",
    "delta_points",
    "judge",
    "load_policy",
]

PASS, FAIL, CONTROL, UNDERTRAINED, INCOMPLETE = "PASS", "FAIL", "CONTROL", "UNDERTRAINED", "INCOMPLETE"


@dataclass(frozen=True)
class Score:
    """A metric as an exact ratio: ``correct`` of ``n`` examples."""

    correct: int
    n: int

    @property
    def fraction(self) -> Fraction:
        return Fraction(self.correct, self.n) if self.n else Fraction(0)

    @property
    def value(self) -> float:
        return float(self.fraction)

    @classmethod
    def from_eval(cls, ev: Mapping[str, Any]) -> Score:
        return cls(int(ev["correct"]), int(ev["n"]))


@dataclass
class SeedResult:
    """One seed: the probe score and each variant's score (``control`` marks a control variant)."""

    seed: int
    probe: Score
    variants: dict[str, Score] = field(default_factory=dict)
    controls: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    min_pass_fraction: Fraction
    max_drop_points: Fraction
    worst_seed_floor_points: Fraction
    gate_strategies: tuple[str, ...]
    quality_gates: Mapping[str, float]

    def quality_gate(self, task: str, override: float | None = None) -> Fraction:
        """Minimum probe metric (a fraction in [0, 1]) for ``task``."""
        if override is not None:
            return Fraction(str(override))
        g = self.quality_gates.get(task, self.quality_gates.get("default", 0.0))
        return Fraction(str(g))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version,
            "min_pass_fraction": f"{self.min_pass_fraction.numerator}/{self.min_pass_fraction.denominator}",
            "max_drop_points": float(self.max_drop_points),
            "worst_seed_floor_points": float(self.worst_seed_floor_points),
            "gate_strategies": list(self.gate_strategies), "quality_gates": dict(self.quality_gates),
        }


def _fraction(key: str, value: Any, where: str) -> Fraction:
    try:
        if isinstance(value, bool):
            raise ValueError
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}: expected a number or 'a/b', got {value!r}", path=where) from None


def load_policy(name_or_path: str, max_drop_points: float | None = None) -> Policy:
    """Load a policy by packaged name (``safe_uniform``) or from a YAML path.

    ``max_drop_points`` overrides the file's per-seed tolerance (the bench config's
    ``acc_tolerance``); the worst-seed floor stays the policy's.
    """

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        text, where = p.read_text(encoding="utf-8"), str(p)
    else:
        res = resources.files("gradience.bench") / "policies" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown policy {name_or_path!r}", hint="use 'safe_uniform' or a path to a policy YAML")
        text, where = res.read_text(encoding="utf-8"), f"policies/{name_or_path}.yaml"
    from ..bounded import load_yaml

    data = load_yaml(text, path=where, what="bench policy")
    if not isinstance(data, dict):
        raise ConfigError("policy must be a mapping", path=where)
    known = {"name", "version", "min_pass_fraction", "max_drop_points", "worst_seed_floor_points",
             "gate_strategies", "quality_gates"}
    for k in data:
        if k not in known:
            raise ConfigError(f"unknown key '{k}' in policy", path=where)
    gates = data.get("quality_gates") or {}
    if not isinstance(gates, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in gates.values()):
        raise ConfigError("quality_gates: expected a mapping of task -> number", path=where)
    gate_strats = data.get("gate_strategies") or []
    if not isinstance(gate_strats, list) or not all(isinstance(s, str) for s in gate_strats):
        raise ConfigError("gate_strategies: expected a list of strategy names", path=where)
    drop = _fraction("max_drop_points", data.get("max_drop_points", 2.5), where)
    if max_drop_points is not None:
        drop = Fraction(str(max_drop_points))
    floor = _fraction("worst_seed_floor_points", data.get("worst_seed_floor_points", 2.5), where)
    if drop < 0 or floor < 0:
        raise ConfigError("max_drop_points and worst_seed_floor_points are drops in points and must be >= 0",
                          path=where)
    frac = _fraction("min_pass_fraction", data.get("min_pass_fraction", "2/3"), where)
    if not 0 < frac <= 1:
        raise ConfigError("min_pass_fraction must be in (0, 1]", path=where)
    return Policy(
        name=str(data.get("name", p.stem)), version=int(data.get("version", 1)), min_pass_fraction=frac,
        max_drop_points=drop, worst_seed_floor_points=floor, gate_strategies=tuple(gate_strats),
        quality_gates={str(k): float(v) for k, v in gates.items()},
    )


def delta_points(variant: Score, probe: Score) -> Fraction:
    """``100 * (variant - probe)``: the change in metric points, exact."""
    return 100 * (variant.fraction - probe.fraction)


def _ratio(a: int, b: int) -> str:
    return f"{a}/{b}"


def judge(results: Sequence[SeedResult], policy: Policy, task: str, strategies: Sequence[str],
          quality_gate: float | None = None) -> dict[str, Any]:
    """Apply ``policy`` to per-seed results; returns the ``verdicts.json`` object.

    Shape: ``{status, reason, policy, probe: {gate, seeds: {seed: value}, undertrained_seeds},
    strategies: {name: {verdict, reason, n_seeds, n_pass, pass_fraction, deltas_points,
    worst_delta_points, mean_delta_points}}}``. ``status`` is ``PASS`` (every gate strategy that
    ran passed), ``FAIL``, ``UNDERTRAINED`` (a probe missed the quality gate) or ``INCOMPLETE``.
    """
    gate = policy.quality_gate(task, quality_gate)
    tol = -policy.max_drop_points
    floor = -policy.worst_seed_floor_points
    probe_vals = {str(r.seed): r.probe.value for r in results}
    under = [r.seed for r in results if r.probe.fraction < gate]
    out_strats: dict[str, Any] = {}
    for name in strategies:
        deltas: dict[str, Fraction] = {}
        control = False
        for r in results:
            if name in r.variants:
                deltas[str(r.seed)] = delta_points(r.variants[name], r.probe)
                control = control or name in r.controls
        entry: dict[str, Any] = {
            "n_seeds": len(deltas),
            "deltas_points": {s: float(d) for s, d in deltas.items()},
            "worst_delta_points": float(min(deltas.values())) if deltas else None,
            "mean_delta_points": float(sum(deltas.values(), Fraction(0)) / len(deltas)) if deltas else None,
            "control": control,
        }
        n_pass = sum(1 for d in deltas.values() if d >= tol)
        entry["n_pass"] = n_pass
        entry["pass_fraction"] = _ratio(n_pass, len(deltas)) if deltas else None
        if under:
            entry["verdict"] = UNDERTRAINED
            entry["reason"] = f"probe below its quality gate in seed(s) {', '.join(map(str, under))}"
        elif not deltas:
            entry["verdict"], entry["reason"] = INCOMPLETE, "no seed evaluated this strategy"
        elif len(deltas) < len(results):
            entry["verdict"], entry["reason"] = INCOMPLETE, f"evaluated in {len(deltas)} of {len(results)} seeds"
        elif control:
            entry["verdict"] = CONTROL
            entry["reason"] = "same rank as the probe: a control, not a compression"
        else:
            frac_ok = Fraction(n_pass, len(deltas)) >= policy.min_pass_fraction
            worst = min(deltas.values())
            worst_ok = worst >= floor
            entry["verdict"] = PASS if (frac_ok and worst_ok) else FAIL
            why = [f"{n_pass}/{len(deltas)} seeds within {float(policy.max_drop_points):g} pt"
                   f" (need ≥ {_ratio(policy.min_pass_fraction.numerator, policy.min_pass_fraction.denominator)})",
                   f"worst seed {float(worst):+.2f} pt (floor {float(floor):+.2f})"]
            entry["reason"] = "; ".join(why)
        out_strats[name] = entry

    if not results:
        status, reason = INCOMPLETE, "no seed finished"
    elif under:
        vals = ", ".join(f"seed {r.seed}: {r.probe.value:.4f}" for r in results if r.seed in under)
        status = UNDERTRAINED
        reason = (f"probe below the {task} quality gate {float(gate):.4f} ({vals}); train longer or raise "
                  "the learning rate before trusting any compression verdict")
    else:
        gated = [s for s in policy.gate_strategies if s in out_strats]
        if not gated:
            status = INCOMPLETE
            reason = f"none of the policy's gate strategies ({', '.join(policy.gate_strategies)}) was run"
        else:
            bad = [s for s in gated if out_strats[s]["verdict"] != PASS]
            if bad:
                status = INCOMPLETE if all(out_strats[s]["verdict"] == INCOMPLETE for s in bad) else FAIL
                reason = "; ".join(f"{s}: {out_strats[s]['verdict']} ({out_strats[s]['reason']})" for s in bad)
            else:
                status, reason = PASS, "; ".join(f"{s}: {out_strats[s]['reason']}" for s in gated)
    return {
        "status": status,
        "reason": reason,
        "policy": policy.to_dict(),
        "task": task,
        "probe": {"gate": float(gate), "seeds": probe_vals, "undertrained_seeds": under},
        "strategies": out_strats,
    }
