"""Bench reports: ``bench.json``, ``bench.md``, ``verdicts.json`` and the cross-seed aggregate.

Pure functions over plain dicts (no torch), so ``gradience bench report`` and ``aggregate``
re-render from the JSON files alone.

``bench.json`` keys (schema ``gradience.bench/v1``): ``schema, name, status (running|done),
created, wall_seconds, env, config_hash, config, task{name, profile, metric}, seeds, seeds_done,
probe{seed: row}, variants{strategy: {seed: row}}, audit{seed: {...}}, verdicts, summary``, and
``data`` (row counts of the train rows, validation slice and eval set; the eval files with their
sizes) and ``retrain_scaling``. A row: ``value, correct, n, delta_points, r_min, r_max, r_median,
ranks, lora_params, head_params, reduction_lora, reduction_with_head, retrained, control,
train_seconds, train_steps, seconds_per_step, lr`` and, for runs under the plateau rule,
``plateau{rule, stop_reason, stopped_at, best_step, best_value, curve[{step, value, loss}]}``.

Pictures: ``bench_tradeoff.svg`` (the metric against LoRA parameters per variant and seed),
``bench_probe_curve.svg`` (the probes' learning curves) and ``bench.html`` (both, beside the tables).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..numfmt import pct as _pct
from ..telemetry.encoding import write_json_atomic as _write_json
from ..telemetry.sections import AuditSummary
from .verdicts import Policy, Score, SeedResult, delta_points, judge

__all__ = ["BENCH_SCHEMA", "aggregate", "build_bench", "load_bench", "render_aggregate_md", "render_html",
           "render_md", "write_outputs"]

BENCH_SCHEMA = "gradience.bench/v1"
AGGREGATE_SCHEMA = "gradience.bench_aggregate/v1"
PROBE = "probe"


def _row(rec: Mapping[str, Any], probe: Mapping[str, Any] | None) -> dict[str, Any]:
    row = {k: rec.get(k) for k in ("value", "correct", "n", "loss", "r_min", "r_max", "r_median", "ranks",
                                   "lora_params", "head_params", "retrained", "control")}
    train = rec.get("train") or {}
    row["train_seconds"] = train.get("train_seconds")
    row["train_steps"] = train.get("steps")
    row["seconds_per_step"] = train.get("seconds_per_step")
    row["lr"] = train.get("lr")
    if train.get("plateau"):
        row["plateau"] = train["plateau"]
    row["plan"] = {k: (rec.get("plan") or {}).get(k) for k in ("r", "alpha", "rank_pattern", "alpha_pattern",
                                                                "truncate_rank", "truncate_energy", "truncate_budget",
                                                                "heal_steps",
                                                                "scaling", "note")}
    if rec.get("same_as"):
        row["same_as"] = rec["same_as"]
    if probe is not None:
        row["delta_points"] = float(delta_points(Score.from_eval(rec), Score.from_eval(probe)))
        lp, hp = probe.get("lora_params") or 0, probe.get("head_params") or 0
        lv, hv = rec.get("lora_params") or 0, rec.get("head_params") or 0
        row["reduction_lora"] = 1 - lv / lp if lp else None
        row["reduction_with_head"] = 1 - (lv + hv) / (lp + hp) if (lp + hp) else None
    return row


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _rank_label(rows: Sequence[Mapping[str, Any]]) -> str:
    lo = [r["r_min"] for r in rows if r.get("r_min") is not None]
    hi = [r["r_max"] for r in rows if r.get("r_max") is not None]
    if not lo:
        return "—"
    a, b = min(lo), max(hi)
    if a == b:
        return f"r={a}"
    meds = [r["r_median"] for r in rows if r.get("r_median") is not None]
    return f"r={a}–{b} (median {statistics.median(meds):g})" if meds else f"r={a}–{b}"


def _ordered(names: Any) -> list[str]:
    """Strategies in protocol order (JSON files sort keys alphabetically)."""
    from .config import STRATEGIES

    return sorted(names, key=lambda n: (STRATEGIES.index(n) if n in STRATEGIES else len(STRATEGIES), n))


def summarize(probe: Mapping[str, Mapping[str, Any]], variants: Mapping[str, Mapping[str, Mapping[str, Any]]],
              verdicts: Mapping[str, Any]) -> dict[str, Any]:
    """Per strategy across seeds: verdict, mean/worst Δ, ranks, parameters and reductions."""
    out: dict[str, Any] = {"status": verdicts.get("status"), "reason": verdicts.get("reason"), "strategies": {}}
    prows = list(probe.values())
    out["probe"] = {"mean_value": _mean([r["value"] for r in prows]), "ranks": _rank_label(prows),
                    "lora_params": _mean([r.get("lora_params") for r in prows]),
                    "head_params": _mean([r.get("head_params") for r in prows]),
                    "n_seeds": len(prows)}
    for name in _ordered(variants):
        by_seed = variants[name]
        rows = list(by_seed.values())
        v = (verdicts.get("strategies") or {}).get(name, {})
        out["strategies"][name] = {
            "verdict": v.get("verdict"), "reason": v.get("reason"), "n_seeds": len(rows),
            "pass_fraction": v.get("pass_fraction"),
            "mean_value": _mean([r["value"] for r in rows]),
            "mean_delta_points": _mean([r.get("delta_points") for r in rows]),
            "worst_delta_points": min((r["delta_points"] for r in rows if r.get("delta_points") is not None),
                                      default=None),
            "ranks": _rank_label(rows), "lora_params": _mean([r.get("lora_params") for r in rows]),
            "reduction_lora": _mean([r.get("reduction_lora") for r in rows]),
            "reduction_with_head": _mean([r.get("reduction_with_head") for r in rows]),
            "retrained": all(bool(r.get("retrained")) for r in rows) if rows else None,
            "heal_steps": max(((r.get("plan") or {}).get("heal_steps") or 0 for r in rows), default=0),
            "control": any(bool(r.get("control")) for r in rows),
        }
    return out


def build_bench(cfg: Any, records: Mapping[int, Mapping[str, Mapping[str, Any]]],
                audits: Mapping[int, Mapping[str, Any]], verdicts: Mapping[str, Any], env: Mapping[str, Any],
                *, wall_seconds: float, partial: bool, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the ``bench.json`` object from per-seed eval records and audits."""
    probe: dict[str, Any] = {}
    variants: dict[str, dict[str, Any]] = {}
    for seed, recs in sorted(records.items()):
        p = recs.get(PROBE)
        if p is None:
            continue
        probe[str(seed)] = _row(p, None)
        for name, rec in recs.items():
            if name != PROBE:
                variants.setdefault(name, {})[str(seed)] = _row(rec, p)
    audit_out = {}
    for seed, a in sorted(audits.items()):
        s = AuditSummary.from_dict(a.get("summary"))
        audit_out[str(seed)] = {
            "total_lora_params": s.total_lora_params, "n_layers": s.n_layers,
            "suggested_r_global_median": s.suggested_r_global_median, "suggested_r_global_90": s.suggested_r_global_90,
            "energy_rank_90_p50": s.energy_rank_90_p50, "energy_rank_90_p90": s.energy_rank_90_p90,
            "stable_rank_mean": s.stable_rank_mean, "utilization_mean": s.utilization_mean,
        }
        audit_out[str(seed)]["budget_params"] = a.get("budget_params")
        audit_out[str(seed)]["per_layer_ranks"] = (a.get("per_module") or {}).get("ranks")
        audit_out[str(seed)]["budget_ranks"] = (a.get("budget") or {}).get("ranks")
    order = [s for s in cfg.compression.strategies if s in variants]
    variants = {k: variants[k] for k in order}
    return {
        "schema": BENCH_SCHEMA, "name": cfg.name, "status": "running" if partial else "done",
        "created": time.time(), "wall_seconds": round(wall_seconds, 1), "env": dict(env),
        "config_hash": cfg.config_hash(), "config": cfg.to_dict(),
        "task": {"name": cfg.task.name, "profile": cfg.task.profile, "metric": cfg.task.metric},
        "seeds": list(cfg.train.seeds), "seeds_done": sorted(int(s) for s in probe),
        "data": dict(data or {}), "retrain_scaling": cfg.compression.retrain_scaling,
        "probe": probe, "variants": variants, "audit": audit_out, "verdicts": dict(verdicts),
        "summary": summarize(probe, variants, verdicts),
    }


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def _val(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _params(x: float | None) -> str:
    return "—" if x is None else f"{round(x):,}"


_MEANING = {
    "PASS": "kept the probe's quality within the policy's tolerance in enough seeds",
    "FAIL": "lost more than the policy allows in too many seeds (or its worst seed did)",
    "CONTROL": "same rank as the probe: measures nothing about compression",
    "UNDERTRAINED": "the probe missed its quality gate, so no comparison is trustworthy",
    "INCOMPLETE": "not evaluated in every seed",
}


def _aggregate_table(summary: Mapping[str, Any], metric: str) -> list[str]:
    lines = [f"| variant | ranks | LoRA params | LoRA reduction | reduction incl. head | mean {metric} |"
             " mean Δ (pt) | worst Δ (pt) | seeds passing | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    p = summary.get("probe", {})
    lines.append(f"| probe | {p.get('ranks', '—')} | {_params(p.get('lora_params'))} | — | — | "
                 f"{_val(p.get('mean_value'))} | — | — | — | reference |")
    strategies = summary.get("strategies", {})
    for name in _ordered(strategies):
        s = strategies[name]
        tag = name + (f" (SVD + {s['heal_steps']} steps)" if s.get("heal_steps") else
                      " (no retraining)" if s.get("retrained") is False and not s.get("control") else "")
        lines.append(
            f"| {tag} | {s['ranks']} | {_params(s.get('lora_params'))} | {_pct(s.get('reduction_lora'))} | "
            f"{_pct(s.get('reduction_with_head'))} | {_val(s.get('mean_value'))} | "
            f"{_pts(s.get('mean_delta_points'))} | {_pts(s.get('worst_delta_points'))} | "
            f"{s.get('pass_fraction') or '—'} | {s.get('verdict') or '—'} |")
    return lines


def _interpretation(summary: Mapping[str, Any], verdicts: Mapping[str, Any]) -> list[str]:
    lines = ["## Interpretation", ""]
    status = verdicts.get("status")
    pol = verdicts.get("policy", {})
    tol = pol.get("max_drop_points")
    floor = pol.get("worst_seed_floor_points", tol)
    frac = pol.get("min_pass_fraction")
    lines.append(f"Policy `{pol.get('name')}`: a variant passes when at least {frac} of the seeds lose no more "
                 f"than {tol} points against the probe of the same seed and the worst seed loses no more than "
                 f"{floor} points. Verdict: **{status}** — {verdicts.get('reason')}.")
    lines.append("")
    strategies = summary.get("strategies", {})
    for name in _ordered(strategies):
        s = strategies[name]
        v = s.get("verdict")
        if v is None:
            continue
        lines.append(f"- `{name}` ({s['ranks']}): {v} — {_MEANING.get(v, '')}; "
                     f"mean Δ {_pts(s.get('mean_delta_points'))} pt, worst {_pts(s.get('worst_delta_points'))} pt, "
                     f"{_pct(s.get('reduction_lora'))} fewer LoRA parameters "
                     f"({_pct(s.get('reduction_with_head'))} counting the task head).")
    lines += ["", "These results hold for this model, task, data subset, training budget and these seeds. "
              "A pass says the smaller rank matched the probe here within the stated tolerance; it is evidence, "
              "not a guarantee for other tasks or longer training. Spectral audit numbers suggested the ranks; "
              "only the evaluations above support the claim."]
    return lines


def render_md(bench: Mapping[str, Any]) -> str:
    """``bench.md``: status, per-seed table, cross-seed table and a conservative interpretation."""
    v = bench.get("verdicts", {})
    metric = bench.get("task", {}).get("metric", "metric")
    cfg = bench.get("config", {})
    tr, lo = cfg.get("train", {}), cfg.get("lora", {})
    lines = [f"# Gradience bench: {bench.get('name')}", "",
             f"- status: **{v.get('status')}**" + (" (partial: still running or interrupted)"
                                                   if bench.get("status") == "running" else ""),
             f"- model `{cfg.get('model', {}).get('name')}`, task `{bench.get('task', {}).get('name')}` "
             f"({bench.get('task', {}).get('profile')}, metric {metric})",
             f"- probe r={lo.get('r', lo.get('probe_r'))}, alpha={lo.get('alpha')}, targets {lo.get('target_modules')}; "
             f"{tr.get('max_steps')} steps × batch {tr.get('batch_size')}, lr {tr.get('lr')}",
             f"- seeds {bench.get('seeds_done')} of {bench.get('seeds')}; wall time {bench.get('wall_seconds')} s; "
             f"device {bench.get('env', {}).get('device')}",
             f"- probe quality gate {v.get('probe', {}).get('gate')}", "",
             "## Per seed", "",
             f"| seed | variant | ranks | LoRA params | {metric} | Δ (pt) | retrained |",
             "|---:|---|---|---:|---:|---:|---|"]
    for seed, prow in bench.get("probe", {}).items():
        lines.append(f"| {seed} | probe | {_rank_label([prow])} | {_params(prow.get('lora_params'))} | "
                     f"{_val(prow.get('value'))} | — | yes |")
        variants = bench.get("variants", {})
        for name in _ordered(variants):
            row = variants[name].get(seed)
            if row is None:
                continue
            heal = (row.get("plan") or {}).get("heal_steps")
            how = "control (= probe)" if row.get("same_as") else ("yes" if row.get("retrained") else
                                                                  f"SVD + {heal} steps" if heal else "no (SVD)")
            lines.append(f"| {seed} | {name} | {_rank_label([row])} | {_params(row.get('lora_params'))} | "
                         f"{_val(row.get('value'))} | {_pts(row.get('delta_points'))} | {how} |")
    lines += ["", "## Across seeds", "", *_aggregate_table(bench.get("summary", {}), metric), ""]
    lines += [f"![{metric} against LoRA parameters, per variant and seed]({TRADEOFF_SVG})", "",
              *_tradeoff_text(bench), ""]
    lines += _probe_lines(bench)
    lines += _interpretation(bench.get("summary", {}), v)
    return "\n".join(lines) + "\n"


TRADEOFF_SVG = "bench_tradeoff.svg"
CURVE_SVG = "bench_probe_curve.svg"


def _tradeoff_text(bench: Mapping[str, Any], width: int = 40) -> list[str]:
    """A text picture of the trade-off: one bar per variant and seed, length = metric, label = parameters."""
    rows: list[tuple[str, str, float, float]] = []
    for seed, p in bench.get("probe", {}).items():
        rows.append(("probe", seed, p.get("lora_params") or 0, p.get("value") or 0.0))
    for name in _ordered(bench.get("variants", {})):
        for seed, r in bench["variants"][name].items():
            if not r.get("same_as"):
                rows.append((name, seed, r.get("lora_params") or 0, r.get("value") or 0.0))
    if not rows:
        return []
    lo = min(v for *_, v in rows)
    hi = max(v for *_, v in rows)
    span = (hi - lo) or 1.0
    w = max(len("variant"), *(len(r[0]) for r in rows))
    out = ["```", f"{'variant':<{w}} {'seed':>5} {'LoRA params':>11}  value (bar from {100 * lo:.1f} to {100 * hi:.1f} %)"]
    for name, seed, params, value in rows:
        bar = "#" * (1 + round((width - 1) * (value - lo) / span))
        out.append(f"{name:<{w}} {seed:>5} {params:>11,.0f}  {bar} {100 * value:.2f}")
    return [*out, "```"]


def _probe_lines(bench: Mapping[str, Any]) -> list[str]:
    """How each probe stopped (the plateau rule's evidence), or nothing when the rule did not run."""
    probes = {s: r for s, r in bench.get("probe", {}).items() if r.get("plateau")}
    if not probes:
        return []
    rule = next(iter(probes.values()))["plateau"]["rule"]
    d = bench.get("data") or {}
    lines = ["## Probe learning curves", "",
             f"Plateau rule: score the validation slice ({d.get('n_val', '?')} rows carved from the training file, "
             f"never trained on) every {rule['every']} steps; stop after {rule['patience']} scores in a row without "
             f"beating the best by more than {100 * rule['min_delta']:.2f} points; keep the best weights; at most "
             f"{rule['max_steps']} steps. The eval set is only scored.", "",
             f"![probe learning curves]({CURVE_SVG})", "",
             "| seed | stopped | at step | best step | best val. | curve (step: val.) |", "|---:|---|---:|---:|---:|---|"]
    for seed, r in probes.items():
        pl = r["plateau"]
        curve = ", ".join(f"{c['step']}: {100 * c['value']:.1f}" for c in pl["curve"])
        lines.append(f"| {seed} | {pl['stop_reason']} | {pl['stopped_at']} | {pl['best_step']} | "
                     f"{_val(pl.get('best_value'))} | {curve} |")
    return [*lines, ""]


def render_html(bench: Mapping[str, Any]) -> str:
    """``bench.html``: one self-contained page with the trade-off picture beside the tables."""
    import html as _h

    from .charts import curve_chart, tradeoff_chart

    metric = bench.get("task", {}).get("metric", "metric")

    def table(md: list[str]) -> str:
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in md if not line.startswith("|---")]
        head = "".join(f"<th>{_h.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_h.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    v = bench.get("verdicts", {})
    probe_md = [line for line in _probe_lines(bench) if line.startswith("|")]
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Gradience bench: {_h.escape(str(bench.get('name')))}</title>",
             "<style>body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:0 auto;padding:20px}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #e5e7eb;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>",
             f"<h1>Gradience bench: {_h.escape(str(bench.get('name')))}</h1>",
             f"<p>status <b>{_h.escape(str(v.get('status')))}</b> — {_h.escape(str(v.get('reason')))}; "
             f"seeds {_h.escape(str(bench.get('seeds_done')))}; wall time {bench.get('wall_seconds')} s</p>",
             f"<h2>{_h.escape(metric)} against LoRA parameters</h2>", tradeoff_chart(bench),
             "<h2>Across seeds</h2>", table(_aggregate_table(bench.get("summary", {}), metric))]
    if probe_md:
        parts += ["<h2>Probe learning curves</h2>", curve_chart(bench), table(probe_md)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_outputs(out: Path, bench: Mapping[str, Any], verdicts: Mapping[str, Any]) -> None:
    """Write bench.json, bench.md, verdicts.json and this run's bench_aggregate.json/.md."""
    _write_json(out / "bench.json", bench)
    _write_json(out / "verdicts.json", verdicts)
    (out / "bench.md").write_text(render_md(bench), encoding="utf-8")
    from .charts import curve_chart, tradeoff_chart

    for name, svg in ((TRADEOFF_SVG, tradeoff_chart(bench)), (CURVE_SVG, curve_chart(bench))):
        if svg:
            (out / name).write_text(svg + "\n", encoding="utf-8")
    (out / "bench.html").write_text(render_html(bench), encoding="utf-8")
    agg = aggregate([dict(bench)], sources=[str(out)])
    _write_json(out / "bench_aggregate.json", agg)
    (out / "bench_aggregate.md").write_text(render_aggregate_md(agg), encoding="utf-8")


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read ``bench.json`` from a bench output directory (or the file itself)."""
    p = Path(path)
    f = p / "bench.json" if p.is_dir() else p
    from ..bounded import loads_json

    try:
        data = loads_json(f.read_bytes(), path=f, what="bench.json")
    except FileNotFoundError:
        raise ConfigError("no bench.json here", path=p, hint="pass a `gradience bench run --output` directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read bench.json: {exc.strerror}", path=f) from None
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA:
        raise ConfigError(f"not a {BENCH_SCHEMA} file", path=f)
    return data


def _policy_from(d: Mapping[str, Any]) -> Policy:
    return Policy(name=d["name"], version=int(d.get("version", 1)),
                  min_pass_fraction=Fraction(str(d["min_pass_fraction"])),
                  max_drop_points=Fraction(str(d["max_drop_points"])),
                  worst_seed_floor_points=Fraction(str(d.get("worst_seed_floor_points", d["max_drop_points"]))),
                  gate_strategies=tuple(d.get("gate_strategies", ())), quality_gates=dict(d.get("quality_gates", {})))


def aggregate(benches: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge benches of one config (seeds may be split across runs) and re-judge across all seeds.

    Benches must share ``config_hash``; a seed present twice must have identical scores.
    Returns the ``bench_aggregate.json`` object: ``schema, sources, config_hash, task, seeds,
    probe, variants, verdicts, summary``.
    """
    if not benches:
        raise ConfigError("nothing to aggregate")
    h = benches[0].get("config_hash")
    for b in benches[1:]:
        if b.get("config_hash") != h:
            raise ConfigError(f"cannot aggregate benches of different configs ({h} vs {b.get('config_hash')})",
                              hint="aggregate only outputs of the same config file (seeds may differ)")
    probe: dict[str, Any] = {}
    variants: dict[str, dict[str, Any]] = {}
    for b in benches:
        for seed, row in b.get("probe", {}).items():
            if seed in probe and (probe[seed]["correct"], probe[seed]["n"]) != (row["correct"], row["n"]):
                raise ConfigError(f"seed {seed} appears twice with different probe results",
                                  hint="aggregate each seed once")
            probe[seed] = row
        for name, by_seed in b.get("variants", {}).items():
            for seed, row in by_seed.items():
                variants.setdefault(name, {})[seed] = row
    first = benches[0]
    cfg = first.get("config", {})
    results = []
    for seed, prow in sorted(probe.items(), key=lambda kv: int(kv[0])):
        r = SeedResult(seed=int(seed), probe=Score(int(prow["correct"]), int(prow["n"])))
        for name, by_seed in variants.items():
            row = by_seed.get(seed)
            if row is not None:
                r.variants[name] = Score(int(row["correct"]), int(row["n"]))
                if row.get("control"):
                    r.controls.add(name)
        results.append(r)
    policy = _policy_from(first["verdicts"]["policy"])
    strategies = [s for s in cfg.get("compression", {}).get("strategies", list(variants)) if s in variants] \
        or list(variants)
    verdicts = judge(results, policy, first["task"]["name"], strategies,
                     quality_gate=cfg.get("task", {}).get("quality_gate"))
    return {
        "schema": AGGREGATE_SCHEMA, "sources": list(sources or []), "config_hash": h, "name": first.get("name"),
        "task": first.get("task"), "model": cfg.get("model", {}).get("name"),
        "seeds": sorted(int(s) for s in probe), "probe": probe, "variants": variants,
        "wall_seconds": sum(float(b.get("wall_seconds") or 0) for b in benches),
        "verdicts": verdicts, "summary": summarize(probe, variants, verdicts),
    }


def render_aggregate_md(agg: Mapping[str, Any]) -> str:
    metric = (agg.get("task") or {}).get("metric", "metric")
    v = agg.get("verdicts", {})
    lines = [f"# Gradience bench aggregate: {agg.get('name')}", "",
             f"- model `{agg.get('model')}`, task `{(agg.get('task') or {}).get('name')}`, seeds {agg.get('seeds')}",
             f"- verdict: **{v.get('status')}** — {v.get('reason')}", "",
             *_aggregate_table(agg.get("summary", {}), metric), "",
             f"Δ is the variant's {metric} minus the probe's in the same seed, in points; LoRA reduction counts "
             "adapter matrices only, the next column adds the task head trained alongside.", ""]
    return "\n".join(lines)
