"""`gradience monitor`: post-flight summary of a run.jsonl with recommendations."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..numfmt import pct as _pct
from ..telemetry.sections import GradNormSummary
from ..telemetry.snapshot import resume_text
from ..training.kappa_risk import neutral_word
from ._output import console, err_console, fmt_num, print_json, styled
from .check import FAIL_ON, _wrapped, fails, render_recommendations

if TYPE_CHECKING:
    from rich.console import Console

MAX_ALERTS_SHOWN = 10


def build_monitor_json(path: str | Path, *, run_id: str | None = None, gap_threshold: float = 1.5,
                       strict_schema: bool = False, now: float | None = None) -> dict[str, Any]:
    """Read ``path`` once and build the ``monitor --json`` object.

    Shape: ``{file, run_id, config, signals, alerts, recommendations, telemetry_issues}``:
    ``config`` is the run's ConfigSnapshot dict, ``signals`` the SignalSnapshot
    (``SignalSnapshot.to_dict()`` without config/alerts, with ``recorded_recommendations``
    (those written into the file during training) and ``runs_in_file``), ``alerts`` the
    last alerts of the run (at most 200), ``recommendations`` the policy output sorted by
    severity, ``telemetry_issues`` one ``{line, kind, message}`` per bad line. ``signals`` also
    carries ``generalisation`` (``policy.generalisation_summary``: the task's memorisation signal,
    the held-out trend and the chance level). ``now`` (unix
    seconds, default the current time) decides whether a run without ``run_end`` is stalled.

    Raises:
        GradienceError: missing file, unknown ``run_id``; TelemetryFormatError with
            ``strict_schema`` on the first bad line.
    """
    from ..errors import GradienceError
    from ..policy import generalisation_summary, run_recommendations
    from ..telemetry.reader import TelemetryReader
    from ..telemetry.run_select import resolve_run_id
    from ..telemetry.snapshot import SignalSnapshot
    from ..trackers.importer import resolve_input

    source, path = path, resolve_input(path)  # an HF / TensorBoard log is read through an import
    reader = TelemetryReader(path, strict_schema=strict_schema)
    accs = reader.accumulate()  # one streaming pass; memory independent of file size
    if run_id is not None and not accs:
        raise GradienceError(f"run id {run_id!r} not found", path=path, hint="runs in this file: none")
    if accs:
        chosen = resolve_run_id(run_id, list(accs), path)  # full id or unique prefix; default the latest
        snap = accs[chosen].snapshot(now=time.time() if now is None else now)
    else:
        snap = SignalSnapshot(status="empty")
    recs = run_recommendations(snap, gap_threshold=gap_threshold)
    signals = snap.to_dict()
    config = signals.pop("config") or {}
    alerts = signals.pop("alerts")
    signals["recorded_recommendations"] = signals.pop("recommendations")
    signals["runs_in_file"] = list(accs)
    signals["gap_threshold"] = gap_threshold
    signals["generalisation"] = generalisation_summary(snap, gap_threshold=gap_threshold)
    return {
        "file": str(source),
        "run_id": snap.run_id,
        "config": config,
        "signals": signals,
        "alerts": alerts,
        "recommendations": [r.to_dict() for r in recs],
        "telemetry_issues": [i.to_dict() for i in reader.issues],
    }


# -- text ------------------------------------------------------------------------------
def _dur(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds != seconds:
        return "—"
    s = round(float(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _g(x: Any) -> str:
    """Gradient norms: three decimals (docs/telemetry.md#signalsnapshot)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf"):
        return f"{x:.3f}"
    return fmt_num(x)


def _steps(xs: list[Any], n: int = 5) -> str:
    shown = [str(s) for s in xs[:n] if s is not None]
    return ", ".join(shown) + (", …" if len(xs) > n else "")


_SPINE = ("loss", "ppl", "accuracy", "n")


def _gap_text(gaps: dict[str, Any], gen: dict[str, Any]) -> str:
    """The task's memorisation signal first (accuracy gap for a classifier, perplexity ratio for a
    language model), then the loss ratio, information only."""
    parts = []
    signal, thr = gen.get("signal"), gen.get("threshold")
    acc, ppl = gaps.get("acc_gap"), gaps.get("ppl_gap")
    if signal == "acc_gap" and isinstance(acc, (int, float)) and isinstance(thr, (int, float)):
        parts.append(f"accuracy {acc * 100:+.1f} pts (train − test; memorisation at ≥ {thr * 100:g} pts)")
    elif signal == "ppl_gap":
        parts.append(f"perplexity ×{fmt_num(ppl)} (test/train; memorisation at ≥ {fmt_num(thr)})")
        if isinstance(acc, (int, float)):
            parts.append(f"accuracy {acc * 100:+.1f} pts (train − test)")
    if gaps.get("loss_gap") is not None:
        parts.append(f"loss ×{fmt_num(gaps.get('loss_gap'))} (test/train, information only)")
    return " · ".join(parts) or "—"


def _held_out_text(gen: dict[str, Any]) -> str:
    """`` · accuracy rising (0.88, best 0.88 @ 200) · chance 0.51 (majority-class rate ...)``."""
    out = ""
    trend = gen.get("held_out_trend") or {}
    if trend:
        best_at = f" @ {trend['best_step']}" if trend.get("best_step") is not None else ""
        word = f"{trend['trend']} " if trend.get("trend") else ""
        out += (f" · accuracy {word}({fmt_num(trend.get('last'))}, best {fmt_num(trend.get('best'))}{best_at}, "
                f"{trend.get('n')} eval{'s' if trend.get('n') != 1 else ''})")
    if gen.get("chance_level") is not None:
        out += f" · chance {fmt_num(gen['chance_level'])} ({gen.get('chance_source')})"
        if gen.get("not_learning"):
            out += ": NOT LEARNING"
    return out


def render_monitor_text(con: Console, obj: dict[str, Any], *, verbose: bool = False) -> None:
    """Render the ``build_monitor_json`` object as text (the same object ``--json`` prints)."""

    def say(text: str, indent: int = 4) -> None:
        _wrapped(con, "  ", text, indent)

    def section(title: str, extra: str = "") -> None:
        con.print(styled((title, "bold"), extra))

    sig, cfg = obj["signals"], obj["config"] or {}
    lora, opt = cfg.get("lora") or {}, cfg.get("optimizer") or {}
    status = sig.get("status")
    if status == "empty":
        _wrapped(con, "", f"{obj['file']}: no events yet", 2)
    else:
        runs = sig.get("runs_in_file") or []
        note = f" (run {runs.index(obj['run_id']) + 1} of {len(runs)} in file)" if len(runs) > 1 else ""
        section("Run", f" {obj['run_id']}{note}")
        say(f"file {obj['file']}")
        status_txt = {"running": "running (no run_end yet)"}.get(str(status), str(status))
        if sig.get("stalled"):
            status_txt = (f"stalled (no run_end, silent for {_dur(sig.get('silence_s'))}, longer than the "
                          f"{_dur(sig.get('stall_after_s'))} its cadence allows; the process likely died)")
        if sig.get("reason"):
            status_txt += f": {sig['reason']}"
        if sig.get("stop_reason"):
            status_txt += f" ({str(sig['stop_reason']).replace('_', ' ')}"
            adapter = sig.get("adapter") or {}
            if adapter.get("source") in ("best_checkpoint", "guard_snapshot"):
                status_txt += f"; adapter from step {adapter.get('step')}"
            status_txt += ")"
        if sig.get("resumed_from_step") is not None:
            status_txt += f" · {resume_text(sig.get('resumes') or [], sig['resumed_from_step'])}"
        say(f"model {sig.get('model_name') or '—'} · dataset {sig.get('dataset_name') or '—'} · "
            f"profile {sig.get('task_profile')}")
        say(f"LoRA r={fmt_num(sig.get('r'))} α={fmt_num(lora.get('alpha'))} · lr={fmt_num(opt.get('lr'))}")
        steps = f"step {fmt_num(sig.get('last_step'))}" + (f" of {fmt_num(sig['max_steps'])}" if sig.get("max_steps") else "")
        say(f"status {status_txt} · {steps} · {fmt_num(sig.get('n_events'))} events · {_dur(sig.get('duration_s'))}")
        if verbose and sig.get("meta"):
            say("meta: " + ", ".join(f"{k}={v}" for k, v in sig["meta"].items()))

    # eval and gaps
    con.print()
    section("Eval", " (latest per split)")
    evals = sig.get("evals") or {}
    if not evals:
        say("no eval events")
    for split in sorted(evals, key=lambda s: (s != "train", s)):
        e = evals[split]
        m = e.get("metrics") or {}
        keys = [k for k in _SPINE if k in m]
        if verbose:
            keys += sorted(k for k in m if k not in _SPINE and k != "ppl_derived")
        parts = " ".join(f"{k} {fmt_num(m[k])}" for k in keys)
        if m.get("ppl_derived"):
            parts += " (ppl = exp(loss))"
        raw = e.get("split_raw")
        alias = f" (recorded as {raw!r})" if raw is not None and raw != split else ""
        say(f"{split:<6} step {fmt_num(e.get('step')):>6}  {parts}{alias}", 20)
    gaps = sig.get("gaps") or {}
    gen = sig.get("generalisation") or {}
    if any(gaps.get(k) is not None for k in ("ppl_gap", "loss_gap", "acc_gap")):
        say("gaps   " + _gap_text(gaps, gen), 9)
        say(f"       held-out split {gaps.get('held_out_split')}" + _held_out_text(gen), 9)
    else:
        say("gaps   not computable: " + ("; ".join(sig.get("gap_missing") or []) or "—"), 9)
        if gen.get("held_out_trend") or gen.get("chance_level") is not None:
            say("      " + _held_out_text(gen).lstrip(" ·"), 9)

    # training curve
    loss, lr = sig.get("loss") or {}, sig.get("lr") or {}
    con.print()
    section("Training curve")
    if loss.get("n") or loss.get("nonfinite_count"):
        n = loss.get("n") or 0
        say(f"loss first {fmt_num(loss.get('first'))} → last {fmt_num(loss.get('last'))} · min "
            f"{fmt_num(loss.get('min'))} @ step {fmt_num(loss.get('min_step'))} · {fmt_num(n)} value{'s' if n != 1 else ''}")
        nf, sp = int(loss.get("nonfinite_count") or 0), int(loss.get("spikes") or 0)
        nf_txt = f"{nf} (steps {_steps(loss.get('nonfinite_steps') or [])})" if nf else "0"
        sp_txt = f"{sp} (steps {_steps(loss.get('spike_steps') or [])})" if sp else "0"
        say(f"non-finite {nf_txt} · spikes {sp_txt}")
        say(f"lr {fmt_num(lr.get('first'))} → {fmt_num(lr.get('last'))}")
    else:
        say("no training losses recorded")

    # gradient health
    g = sig.get("grad_norm") or {}
    con.print()
    section("Gradient health")
    if g.get("last") is not None:
        gs = GradNormSummary.from_dict(g)
        clipped = f" · {gs.clipped_text()}" if gs.clipped_text() else ""
        g_nf = f" · non-finite {g['nonfinite_count']}" if g.get("nonfinite_count") else ""
        say(f"last {_g(g.get('last'))} · max {_g(g.get('max'))}{clipped} · {g.get('sparkline') or ''} "
            f"{g.get('trend') or ''} · level {g.get('level') or '—'}{g_nf}")
        if gs.source_text():
            say(f"from the {gs.source_text()}")
        if verbose and g.get("history"):
            say(f"last {len(g['history'])}: " + ", ".join(_g(v) for v in g["history"]))
    else:
        say("no gradient norms recorded")
    grad_alerts = {k: v for k, v in (sig.get("alert_counts") or {}).items() if k.startswith("GRAD_NORM_")}
    if grad_alerts:
        say("level changes: " + ", ".join(f"{k} ×{v}" for k, v in sorted(grad_alerts.items())))

    # guard and spectral
    gd, spc = sig.get("guard") or {}, sig.get("spectral") or {}
    con.print()
    section("Guard")
    if gd.get("enabled"):
        say(f"rollbacks {fmt_num(gd.get('rollbacks'))} · LR backoffs {fmt_num(gd.get('lr_backoffs'))} · snapshots "
            f"{fmt_num(gd.get('snapshots'))} · aborts {fmt_num(gd.get('aborts'))} · final LR scale "
            f"{fmt_num(gd.get('final_lr_scale'))}"
            + (f" · integrity {gd['integrity_status']}" if gd.get("integrity_status") else "")
            + (" · LOCKED OUT" if gd.get("lockout") else ""))
    else:
        say("not active in this run (no guard events)")
    section("Spectral")
    if spc.get("n"):
        level = spc.get("risk_level")
        word = f"{neutral_word(level)} (level {level}; " if level else "("
        say(f"κ̃ {fmt_num(spc.get('kappa'))} · {word}step {fmt_num(spc.get('step'))}, "
            f"{spc['n']} sample{'s' if spc['n'] != 1 else ''}) · a diagnostic, not an alarm")
    else:
        say("no spectral samples")

    # LoRA audit
    audit = sig.get("lora_audit") if isinstance(sig.get("lora_audit"), dict) else None
    con.print()
    section("LoRA audit")
    if audit:
        def pct(x: Any) -> str:  # recorded values are untyped: only finite numbers print
            return _pct(float(x), 0) if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"

        say(f"suggested r: median {fmt_num(audit.get('suggested_r_global_median'))} · p90 "
            f"{fmt_num(audit.get('suggested_r_global_90'))} (audited r={fmt_num(audit.get('r', sig.get('r')))}) · energy rank@90% p50 "
            f"{fmt_num(audit.get('energy_rank_90_p50'))}")
        by_type = audit.get("by_type") if isinstance(audit.get("by_type"), dict) else {}
        types = " · ".join(f"{t} {pct(v.get('utilization_mean'))}" for t, v in sorted(by_type.items())
                           if isinstance(v, dict))
        say(f"utilization mean {pct(audit.get('utilization_mean'))}" + (f" ({types})" if types else "")
            + f" · LoRA params {fmt_num(audit.get('total_lora_params'))}"
            + (f" · layers {fmt_num(audit.get('n_layers'))}" if audit.get("n_layers") is not None else ""))
        if audit.get("udr_median") is not None or audit.get("udr_p90") is not None:
            say(f"UDR median {fmt_num(audit.get('udr_median'))} · p90 {fmt_num(audit.get('udr_p90'))} · max "
                f"{fmt_num(audit.get('udr_max'))} (information, not a gate)")
    else:
        say("none in this run (add one: `gradience audit --peft-dir DIR --append RUN.jsonl`)")

    # telemetry issues, alerts, recommendations
    issues = obj.get("telemetry_issues") or []
    if issues:
        con.print()
        section("Telemetry issues", f" ({len(issues)} bad line{'s' if len(issues) != 1 else ''}, skipped)")
        shown = issues if verbose else issues[:MAX_ALERTS_SHOWN]
        for i in shown:
            say(f"line {i['line']}: {i['kind']}: {i['message']}")
        if len(shown) < len(issues):
            say(f"… {len(issues) - len(shown)} more (--verbose lists all)")
    alerts = obj.get("alerts") or []
    counts = sig.get("alert_counts") or {}
    con.print()
    section("Alerts", f" ({sum(counts.values())})")
    if not alerts:
        say("none")
    elif verbose:
        for a in alerts:
            say(f"step {fmt_num(a.get('step')):>6}  {a.get('severity')!s:<8} {a.get('code')}  {a.get('message') or ''}", 10)
    else:
        last: dict[str, dict[str, Any]] = {}
        for a in alerts:
            last[str(a.get("code"))] = a
        ordered = sorted(last.items(), key=lambda kv: (-counts.get(kv[0], 1), kv[0]))
        for code, a in ordered[:MAX_ALERTS_SHOWN]:
            say(f"{code} ×{counts.get(code, 1)} · last at step {fmt_num(a.get('step'))}: {a.get('message') or ''}")
        if len(ordered) > MAX_ALERTS_SHOWN:
            say(f"… {len(ordered) - MAX_ALERTS_SHOWN} more codes (--verbose lists all)")
    con.print()
    section("Recommendations", " (most severe first)")
    render_recommendations(con, obj["recommendations"], verbose=verbose)


@click.command(name="monitor")
@click.argument("run_file", metavar="RUN.jsonl", type=click.Path(path_type=str))
@click.option("--run-id", help="Summarise this run (default: the last run in the file).")
@click.option("--gap-threshold", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
              help="Test/train perplexity ratio at which memorisation is flagged (language models; "
                   "classifiers use the accuracy gap, 10 points; the loss ratio is information only).")
@click.option("--strict-schema", is_flag=True, help="Exit 2 on the first line that violates telemetry v1.")
@click.option("--verbose", "-v", is_flag=True, help="Why/confidence/evidence, every alert and issue, extra metrics.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {file, run_id, config, signals, alerts, recommendations, telemetry_issues} as JSON.")
@click.option("--fail-on", type=click.Choice(FAIL_ON),
              help="Exit 1 when a recommendation at or above this severity fired (for CI).")
@click.pass_context
def monitor(ctx: click.Context, run_file: str, run_id: str | None, gap_threshold: float, strict_schema: bool,
            verbose: bool, as_json: bool, fail_on: str | None) -> None:
    """Post-flight: summarise a run.jsonl with recommendations.

    Works on a run that is still being written (a torn last line is reported, not fatal).

    \b
    Examples:
      gradience monitor runs/demo/run.jsonl --verbose
      gradience monitor run.jsonl --json --fail-on error
    """
    status = None
    if not as_json and sys.stderr.isatty():
        # Reading millions of events takes seconds; show that something is happening.
        status = err_console().status(f"reading {run_file} …")
        status.start()
    try:
        obj = build_monitor_json(run_file, run_id=run_id, gap_threshold=gap_threshold, strict_schema=strict_schema)
    finally:
        if status is not None:
            status.stop()
    if as_json:
        print_json(obj)
    else:
        render_monitor_text(console(), obj, verbose=verbose)
    if fails(obj["recommendations"], fail_on):
        ctx.exit(1)
