"""Render a :class:`Report` as one self-contained HTML page (inline CSS + static SVG, no JS)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..policy.rules_run import generalisation_summary
from ..telemetry.sections import AuditIssue
from ..telemetry.snapshot import resume_text
from ..training.kappa_risk import neutral_word
from . import _fmt as F
from . import charts
from .audit_view import AUDIT_COMMAND, AuditView, percentile
from .build import Report
from .svg import esc

__all__ = ["render_html"]

MAX_ALERT_ROWS = 50
MAX_ISSUE_ROWS = 50
MAX_MODULE_ROWS = 60

_CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#ffffff;--panel:#f9fafb;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1000px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;padding-top:8px;border-top:2px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:var(--muted);margin:0 0 12px}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;margin:10px 0 4px;font-size:13px}
nav a{color:var(--accent);text-decoration:none}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;vertical-align:middle}
.b-ok{background:#16a34a}.b-running{background:#2563eb}.b-aborted,.b-stalled{background:#d97706}.b-error,.b-empty{background:#dc2626}
.sev{font-size:11px;font-weight:700;text-transform:uppercase;padding:1px 6px;border-radius:4px;color:#fff}
.sev-info{background:#0891b2}.sev-warning{background:#d97706}.sev-error{background:#dc2626}.sev-critical{background:#7f1d1d}
.kpis{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.kpi{flex:1 1 auto;min-width:120px;max-width:100%;background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:5px 10px}
.kpi .k{color:var(--muted);font-size:12px}.kpi .v{font-size:16px;font-weight:600;white-space:nowrap;overflow-x:auto}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:0 28px}
figure{margin:8px 0 14px;overflow-x:auto}figure svg{max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:12px}
.rec{border:1px solid var(--line);border-left:4px solid var(--accent);border-radius:4px;padding:6px 10px;margin:6px 0;background:var(--panel)}
.rec .why{color:var(--muted);font-size:13px}
.note{color:var(--muted);font-size:13px}
.empty{color:var(--muted);font-style:italic}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:var(--panel);border:1px solid var(--line);padding:8px;overflow-x:auto;white-space:pre-wrap}
footer{margin-top:36px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:8px}
@media (max-width:760px){.cols{grid-template-columns:1fr}}
@media print{
 body{font-size:11px}main{max-width:none;padding:0}nav{display:none}
 h2{break-after:avoid}figure,table,.rec,.kpis{break-inside:avoid}
 .kpi,.rec,pre{background:none}a{color:inherit;text-decoration:none}
 @page{margin:14mm}
}
"""

# What a person opens the page for comes first (status and health, curves, evaluation, what to do,
# the audit); reference tables (configuration, environment, alert log, unreadable lines) come last.
SECTIONS = (
    ("overview", "Overview"),
    ("training", "Training curves"),
    ("eval", "Evaluation"),
    ("recommendations", "Recommendations"),
    ("audit", "LoRA audit"),
    ("guard", "Guard"),
    ("spectral", "Spectral κ̃"),
    ("alerts", "Alerts"),
    ("configuration", "Configuration"),
    ("issues", "Telemetry issues"),
)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (), cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = c if isinstance(c, _Raw) else esc(c)
            cells.append(f'<td class="n">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML that :func:`_table` must not escape again."""


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return _table(("", ""), [(k, v) for k, v in rows]).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _kpis(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>' for k, v in items
    ) + "</div>"


def _fig(svg: str, caption: str = "") -> str:
    if not svg:
        return ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


def _sev(sev: Any) -> _Raw:
    s = str(sev or "info").lower()
    s = "warning" if s == "warn" else s
    return _Raw(f'<span class="sev sev-{esc(s)}">{esc(s)}</span>')


# -- sections ------------------------------------------------------------------------------
def _overview(rep: Report) -> str:
    snap = rep.snapshot
    status = snap.status or "running"
    if snap.stalled:
        status = "stalled"
    badge = f'<span class="badge b-{esc(status)}">{esc(status)}</span>'
    reason = f" — {esc(snap.reason)}" if snap.reason else ""
    if snap.stalled:
        reason += (f" — no run_end and silent for {esc(F.duration(snap.silence_s))}, longer than the "
                   f"{esc(F.duration(snap.stall_after_s))} its cadence allows (the process likely died)")
    if snap.resumed_from_step is not None:
        reason += f" — {esc(resume_text(snap.resumes, snap.resumed_from_step))}"
    steps = F.num(snap.last_step)
    if snap.max_steps:
        steps += f" / {F.num(snap.max_steps)}"
    kp = _kpis([  # the model is the page's title
        ("dataset", snap.dataset_name or F.DASH),
        ("task profile", snap.task_profile),
        ("LoRA r", F.num(snap.r)),
        ("steps", steps),
        ("duration", F.duration(snap.duration_s)),
    ])
    other_runs = [r for r in rep.run.runs_in_file if r != rep.run.run_id]
    more = ""
    if other_runs:
        shown = ", ".join(other_runs[-5:])
        more = (f'<p class="note">This file holds {len(rep.run.runs_in_file)} runs; showing the latest '
                f"(others: {esc(shown)}). Pick one with <code>--run-id</code> (any unique prefix).</p>")
    return f'<p>Status {badge}{reason}</p>{kp}<h3 id="health">Health</h3>{_health_kpis(rep)}{more}'


def _health_kpis(rep: Report) -> str:
    """The health summary beside the status: gradient health, loss trouble, alerts, guard, memorisation."""
    snap = rep.snapshot
    loss, g, gd = snap.loss, snap.grad_norm, snap.guard
    grad = " ".join(v for v in (g.level, g.trend) if v) or F.DASH
    trouble = f"{F.num(loss.spikes or 0)} spikes · {F.num(loss.nonfinite_count or 0)} non-finite"
    n_alerts = sum(snap.alert_counts.values())
    worst = _worst_severity(snap.alerts)
    alerts = f"{F.num(n_alerts)}" + (f" (worst {worst})" if worst else "")
    guard = (f"{F.num(gd.rollbacks or 0)} rollbacks · {F.num(gd.lr_backoffs or 0)} backoffs"
             if gd.enabled else "off")
    gen = generalisation_summary(snap)
    signal = gen["signal"]
    value = snap.gaps.get(signal) if signal else None
    memo = (f"{signal} {F.num(value)}" + (" (over the threshold)" if gen["memorising"] else "")
            if value is not None else F.DASH)
    return _kpis([("gradient health", grad), ("loss", trouble), ("alerts", alerts), ("guard", guard),
                  ("memorisation", memo)])


_SEVERITY_ORDER = ("info", "warning", "error", "critical")


def _worst_severity(alerts: Sequence[dict[str, Any]]) -> str | None:
    seen = {("warning" if str(a.get("severity")).lower() == "warn" else str(a.get("severity")).lower())
            for a in alerts}
    return next((s for s in reversed(_SEVERITY_ORDER) if s in seen), None)


def _configuration(rep: Report) -> str:
    snap = rep.snapshot
    cfg_rows = [(k, F.value(v)) for k, v in F.flatten(snap.config)]
    meta_rows = [("events", F.num(snap.n_events)), ("train steps logged", F.num(rep.run.curves.train_steps)),
                 *((k, F.value(v)) for k, v in F.flatten(snap.meta))]
    return ('<div class="cols"><div><h3>Configuration</h3>'
            + (_kv(cfg_rows) if cfg_rows else _empty("no run_start config recorded"))
            + "</div><div><h3>Environment</h3>"
            + (_kv(meta_rows) if meta_rows else _empty("no meta recorded"))
            + "</div></div>")


def _training(rep: Report) -> str:
    snap, curves = rep.snapshot, rep.run.curves
    loss, g = snap.loss, snap.grad_norm
    width = max(curves.loss.width, curves.grad_pre.width)
    note = (f'<p class="note">Curves are downsampled for display to at most {curves.max_points} buckets '
            f"({F.num(width)} steps per bucket): the line is the bucket mean and the band its min–max, so "
            "no spike is averaged away.</p>") if width > 1 else ""
    stats = _kv([
        ("loss first → last", f"{F.num(loss.first)} → {F.num(loss.last)}"),
        ("loss min (step)", f"{F.num(loss.min)} ({F.num(loss.min_step)})"),
        ("non-finite losses", F.num(loss.nonfinite_count)),
        ("loss spikes", F.num(loss.spikes)),
        ("lr first → last", f"{F.num(snap.lr.first)} → {F.num(snap.lr.last)}"),
        ("grad norm last / max", f"{F.num(g.last, 3)} / {F.num(g.max, 3)}"),
        ("grad norm post-clip (last)", F.num(g.last_clipped, 3)),
        ("grad norm clipping", g.clipped_text() or F.DASH),
        ("grad health (trend)", f"{g.level or F.DASH} {g.trend or ''} {g.sparkline or ''}"),
        ("non-finite grad norms", F.num(g.nonfinite_count)),
        ("grad health from", g.source_text() or F.DASH),
    ])
    figs = [
        _fig(charts.loss_chart(curves), "▲ loss spike against the robust running baseline; × non-finite loss "
             "(drawn at the top edge); dashed lines mark guard rollbacks/backoffs."),
        _fig(charts.lr_chart(curves), "Learning rate of the first parameter group; dashed lines mark guard "
             "LR backoffs and rollbacks."),
        _fig(charts.grad_chart(curves), "Pre-clip (solid) and post-clip (dashed) total gradient L2 norm. Bands: "
             "vanishing < 0.1, healthy 0.1–5, warning 5–10, critical > 10."),
    ]
    body = "".join(figs)
    if not body:
        body = _empty("no train_step events with loss, lr or grad_norm in this run")
    return body + note + "<h3>Summary</h3>" + stats


def _eval(rep: Report) -> str:
    snap = rep.snapshot
    if not snap.evals:
        return _empty("no eval events in this run — log a train and a held-out split to see the memorisation gap")
    keys: list[str] = []
    for entry in snap.evals.values():
        for k, v in entry["metrics"].items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    spine = [k for k in ("loss", "ppl", "accuracy", "n") if k in keys]
    keys = spine + [k for k in keys if k not in spine][: max(0, 8 - len(spine))]
    rows = []
    for split in sorted(snap.evals, key=lambda s: (s != "train", s)):
        e = snap.evals[split]
        rows.append([split, F.num(e.get("step")), *(F.num(e["metrics"].get(k)) for k in keys)])
    latest = _table(["split", "step", *keys], rows, numeric=range(1, len(keys) + 2))
    gap_html = _kv(gap_rows(snap)) if gap_rows(snap) else ""
    if snap.gap_missing:
        gap_html += '<p class="note">Gap not computable: ' + esc("; ".join(snap.gap_missing)) + "</p>"
    gap_html += ('<p class="note">ppl_gap = test ppl / train ppl; loss_gap = test loss / train loss; '
                 "acc_gap = train accuracy − test accuracy (latest eval per split). Memorisation is judged by "
                 "acc_gap for a classifier (≥ 0.10) and by ppl_gap for a language model; loss_gap is information "
                 "only (it grows without bound as the training loss approaches 0).</p>")
    figs = "".join(_fig(svg) for _, svg in charts.eval_charts(rep.run.curves))
    return "<h3>Latest eval per split</h3>" + latest + "<h3>Gaps</h3>" + gap_html + figs


def gap_rows(snap: Any) -> list[tuple[str, str]]:
    """The gaps with their role (the task's memorisation signal, or information only), then the
    held-out chance level and trend (``policy.generalisation_summary``)."""
    gen = generalisation_summary(snap)
    rows = []
    for name in ("ppl_gap", "acc_gap", "loss_gap"):
        v = snap.gaps.get(name)
        if v is None:
            continue
        if name == gen["signal"]:
            role = " (memorisation signal" + (": over the threshold)" if gen["memorising"] else ")")
        elif name == "loss_gap":
            role = " (information only)"
        else:
            role = ""
        rows.append((name, F.num(v) + role))
    trend = gen["held_out_trend"]
    if trend and trend.get("trend"):
        rows.append(("held-out accuracy", f"{trend['trend']} ({F.num(trend['last'])}, best {F.num(trend['best'])})"))
    if gen["chance_level"] is not None:
        rows.append(("chance level", f"{F.num(gen['chance_level'])} ({gen['chance_source']})"
                     + (" — not learning" if gen["not_learning"] else "")))
    return rows


def _x_range(rep: Report) -> tuple[float, float]:
    c = rep.run.curves
    lo, hi = math.inf, -math.inf
    for s in [c.loss, c.lr, c.grad_pre, c.kappa, *c.guard_series.values()]:
        pts = s.points()
        if pts:
            lo, hi = min(lo, pts[0]["from"]), max(hi, pts[-1]["to"])
    if not math.isfinite(lo):
        return (0.0, 1.0)
    return (float(lo), float(hi if hi > lo else lo + 1))


def _guard(rep: Report) -> str:
    gd, curves = rep.snapshot.guard, rep.run.curves
    if not gd.enabled and not curves.guard_series:
        return _empty("the guard was not enabled for this run (no guard events)")
    integrity = gd.integrity_status or F.DASH
    kp = _kpis([
        ("snapshots", F.num(gd.snapshots)),
        ("rollbacks", F.num(gd.rollbacks)),
        ("LR backoffs", F.num(gd.lr_backoffs)),
        ("aborts", F.num(gd.aborts)),
        ("lockout", "yes" if gd.lockout else "no"),
        ("final LR scale", F.num(gd.final_lr_scale)),
        ("integrity", str(integrity)),
    ])
    fig = _fig(charts.guard_timeline(curves, _x_range(rep)), "Each mark is a guard decision (hover for the step).")
    rows = []
    for e in curves.guard_events:
        if e.action == "snapshot":
            continue
        d = e.detail
        what = d.get("message") or d.get("reason") or ""
        extra = ", ".join(f"{k}={F.value(v)}" for k, v in d.items()
                          if k not in ("message", "reason", "action") and not isinstance(v, (dict, list)))
        rows.append((F.num(e.step), e.action, e.source, str(what)[:160], extra[:160]))
    table = _table(("step", "decision", "from", "reason", "details"), rows, numeric=(0,)) if rows else ""
    n_total = sum(curves.guard_counts.values())
    cap = (f'<p class="note">Table shows the first {len(curves.guard_events)} of {n_total} guard events '
           "(snapshots omitted).</p>") if n_total > len(curves.guard_events) else ""
    return kp + fig + (("<h3>Decisions</h3>" + table + cap) if table else "")


def _spectral(rep: Report) -> str:
    sp, curves = rep.snapshot.spectral, rep.run.curves
    if not sp.n:
        return _empty("no spectral (κ̃) samples in this run")
    kp = _kpis([
        ("last κ̃", F.num(sp.kappa)),
        ("κ̃ change", f"{neutral_word(sp.risk_level)} ({sp.risk_level})" if sp.risk_level else F.DASH),
        ("at step", F.num(sp.step)),
        ("samples", F.num(sp.n)),
    ])
    counts = ", ".join(f"{neutral_word(lvl)} ({lvl}): {curves.risk_counts[lvl]}" for lvl in charts.RISK_COLORS
                       if curves.risk_counts.get(lvl))
    note = (f'<p class="note">κ̃ levels seen — {esc(counts)}. κ̃ is a neutral diagnostic of the update\'s '
            "conditioning, not an alarm: its levels fire in healthy early training and did not lead a loss blow-up "
            "when measured; it is not claimed to predict accuracy.</p>") if counts else ""
    return kp + _fig(charts.kappa_chart(curves)) + note


PER_MODULE_HINT = (f"pass <code>--peft-dir DIR</code> (or <code>--audit AUDIT.json</code> from "
                   f"<code>{esc(AUDIT_COMMAND)}</code>)")
FRAGMENT_OPEN_ENTRIES = 40  # longer PEFT fragments are folded into a <details> (still complete)


def _by_type_table(view: AuditView) -> str:
    if not view.by_type:
        return ""
    rows = [(t.name, F.num(t.n), F.num(t.params), F.num(t.utilization, 3), F.num(t.stable_rank, 3),
             f"{F.num(t.k90_p50)} / {F.num(t.k90_p90)}", F.num(t.suggested_r), F.pct(t.energy_share))
            for t in view.by_type]
    return "<h3>By module type</h3>" + _table(
        ("type", "modules", "LoRA params", "utilization mean", "stable rank mean", "k@90% p50 / p90",
         "suggested r (median)", "share of update energy"), rows, numeric=range(1, 8))


def _peft_fragment(view: AuditView) -> str:
    frag = view.peft_fragment
    if frag is None:
        return ""
    text = json.dumps(frag, indent=2)
    n = len(frag.get("rank_pattern") or {}) + len(frag.get("alpha_pattern") or {})
    pre = f"<pre>{esc(text)}</pre>"
    if n > FRAGMENT_OPEN_ENTRIES:
        pre = f"<details><summary>show all {n} pattern entries</summary>{pre}</details>"
    return ("<h3>PEFT config for the per-module ranks</h3>"
            '<p class="note">Use all four keys together: <code>alpha_pattern</code> keeps each module\'s scale '
            "(α/r) at its new rank; <code>rank_pattern</code> with a single <code>lora_alpha</code> would change "
            "it.</p>" + pre)


def _or(value: Any, fallback: Any) -> Any:
    """The audit's own figure when it has one, else the one derived here."""
    return value if value is not None else fallback


def _udr(view: AuditView) -> str:
    s = view.summary
    udr = charts.udr_histogram(view)
    guide = ("Reading guide: UDR < 0.1 small perturbation; ~1 comparable to the base weight; > 3 the "
             "adapter dominates. UDR is informational, never a pass/fail gate.")
    if udr:
        vals = view.udr_values
        return "<h3>Update dominance (UDR)</h3>" + _fig(udr, guide) + _kv([
            ("modules with UDR", F.num(len(vals))),
            ("median / p90 / max", f"{F.num(_or(s.udr_median, percentile(vals, 50)))} / "
                                   f"{F.num(_or(s.udr_p90, percentile(vals, 90)))} / "
                                   f"{F.num(_or(s.udr_max, max(vals)))}"),
            ("fraction UDR > 0.1", F.pct(sum(v > 0.1 for v in vals) / len(vals))),
            ("fraction UDR > 0.3", F.pct(sum(v > 0.3 for v in vals) / len(vals)))])
    u = view.udr_summary
    if any(k != "n" for k in u):  # the audit's summary figures (a summary-only audit has no per-module UDR)
        return "<h3>Update dominance (UDR)</h3>" + _kv([
            ("modules with UDR", F.num(u.get("n"))),
            ("mean / median / p90 / max", " / ".join(F.num(u.get(k)) for k in ("udr_mean", "udr_median", "udr_p90",
                                                                               "udr_max"))),
            ("fraction UDR > 0.1", F.pct(u.get("fraction_udr_gt_0_1"))),
            ("fraction UDR > 0.3", F.pct(u.get("fraction_udr_gt_0_3"))),
        ]) + f'<p class="note">{esc(guide)}</p>'
    reason = s.udr_skipped_reason
    if reason:
        return f'<h3>Update dominance (UDR)</h3><p class="note">Not computed: {esc(reason)}.</p>'
    return ""


def _audit_issue(issue: AuditIssue) -> str:
    """``info NON_LORA_TENSORS: message``; an issue without a message as its recorded object."""
    if issue.message:
        head = " ".join(v for v in (issue.severity, issue.code) if v)
        return f"<b>{esc(head)}</b>: {esc(issue.message)}" if head else esc(issue.message)
    return esc(F.value(issue.to_dict()))


def _audit(rep: Report) -> str:
    view = rep.audit
    if view is None:
        return _empty(f"no adapter audit: pass --audit AUDIT.json (from `{AUDIT_COMMAND}`) or "
                      "--peft-dir DIR, or append one to the run with `gradience audit --append`")
    s = view.summary
    src = {"file": "audit file", "peft-dir": "adapter directory (audited now)", "telemetry": "the run's lora_audit event",
           "given": "supplied audit"}.get(view.source, view.source)
    kp = _kpis([
        ("LoRA params", F.num(view.total_params)),
        ("modules", F.num(_or(s.n_layers, len(view.modules) or None))),
        ("utilization mean", F.num(s.utilization_mean, 3)),
        ("stable rank mean", F.num(s.stable_rank_mean, 3)),
        ("effective rank mean", F.num(s.effective_rank_mean, 3)),
        ("k@90% p50 / p90", f"{F.num(s.energy_rank_90_p50)} / {F.num(s.energy_rank_90_p90)}"),
    ])
    out = [f'<p class="note">Source: {esc(src)}.</p>', kp]
    if not view.has_layers:
        out.append(f'<p class="note">Per-module heatmaps, spectra and the PEFT rank/alpha patterns need the '
                   f"per-module rows, which this audit does not have: {PER_MODULE_HINT}.</p>")
    # Suggested ranks with savings.
    rows = []
    cur_r = s.r or max((m.r for m in view.modules if m.r), default=None)
    for opt in view.uniform:
        rows.append((f"uniform r={opt.r} ({opt.label} of k@90%)", F.num(opt.params_after), F.pct(opt.saving_fraction)))
    if view.per_module_params_after is not None:
        default = f"; default r = {view.per_module_default_r}" if view.per_module_default_r is not None else ""
        rows.append((f"per-module ranks (smallest allowed ≥ k@90%{default})", F.num(view.per_module_params_after),
                     F.pct(view.per_module_saving)))
    if rows:
        out.append("<h3>Suggested ranks</h3>")
        out.append(f'<p class="note">Current r = {esc(F.num(cur_r))}, {esc(F.num(view.total_params))} LoRA '
                   "parameters. Savings count LoRA parameters only (A and B scale linearly with r). Verify any "
                   "smaller rank with an eval (e.g. <code>gradience bench</code>) before adopting it.</p>")
        out.append(_table(("option", "LoRA params after", "saving"), rows, numeric=(1, 2)))
    out.append(_peft_fragment(view))
    out.append(_by_type_table(view))
    heat_titles = {"utilization": ("Utilization by layer × module", "utilization = stable rank / r; light = "
                                   "little of the rank is used."),
                   "k90": ("k@90% by layer × module", "the rank that keeps 90% of the update energy.")}
    for key, svg in charts.util_heatmaps(view):
        head, cap = heat_titles[key]
        out.append(f"<h3>{esc(head)}</h3>" + _fig(svg, cap))
    spectra = charts.spectra_chart(view)
    if spectra:
        out.append("<h3>Spectra</h3>" + _fig(spectra, "A fast-decaying spectrum means the update lives in few "
                                             "directions, i.e. rank to spare."))
    elif view.has_layers:
        out.append('<h3>Spectra</h3><p class="note">This audit has no singular values per module: rerun '
                   f"<code>{esc(AUDIT_COMMAND)}</code> and pass it with <code>--audit</code>, or use "
                   "<code>--peft-dir DIR</code>.</p>")
    out.append(_udr(view))
    if view.modules:
        mods = sorted(view.modules, key=lambda m: (m.layer if m.layer is not None else 10**9, m.module_type, m.short))
        mrows = [(F.num(m.layer), m.short, m.module_type, F.num(m.r), F.num(m.utilization, 3), F.num(m.k90),
                  F.num(m.suggested_r), F.num(m.params), F.num(m.udr, 3)) for m in mods[:MAX_MODULE_ROWS]]
        out.append("<h3>Modules</h3>" + _table(("layer", "module", "type", "r", "util", "k@90%", "suggested r",
                                                  "params", "UDR"), mrows, numeric=(0, 3, 4, 5, 6, 7, 8)))
        if len(mods) > MAX_MODULE_ROWS:
            out.append(f'<p class="note">First {MAX_MODULE_ROWS} of {len(mods)} modules.</p>')
    issues = s.issues
    if issues:
        out.append("<h3>Audit issues</h3><ul>" + "".join(f"<li>{_audit_issue(i)}</li>" for i in issues[:20]) + "</ul>")
    return "".join(out)


def _recommendations(rep: Report) -> str:
    src = "Gradience run rules applied to this run"
    if not rep.recommendations:
        return _empty(f"no recommendations ({src})")
    cards = []
    for r in rep.recommendations:
        conf = r.get("confidence")
        conf_s = f" · confidence {conf:.2f}" if isinstance(conf, (int, float)) else ""
        why = f'<div class="why">Why: {_inline_code(r.get("rationale"))}</div>' if r.get("rationale") else ""
        cards.append(f'<div class="rec">{_sev(r.get("severity"))} <code>{esc(r.get("action", ""))}</code>'
                     f"{esc(conf_s)}<div>{_inline_code(r.get('message', ''))}</div>{why}</div>")
    return f'<p class="note">Source: {esc(src)}.</p>' + "".join(cards)


def _inline_code(text: Any) -> str:
    """Escape ``text`` and show its `backticked` spans (commands, keys) as code, as the terminal does."""
    parts = str(text or "").split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: show the text as written
        return esc(str(text or ""))
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def _alerts(rep: Report) -> str:
    snap = rep.snapshot
    if not snap.alert_counts:
        return _empty("no alerts")
    counts = _table(("code", "count"), sorted(snap.alert_counts.items(), key=lambda kv: (-kv[1], kv[0])), numeric=(1,))
    recent = snap.alerts[-MAX_ALERT_ROWS:]
    rows = [(F.num(a.get("step")), _sev(a.get("severity")), a.get("code", ""), str(a.get("message", ""))[:200])
            for a in recent]
    total = sum(snap.alert_counts.values())
    note = (f'<p class="note">Showing the last {len(recent)} of {total} alerts.</p>') if total > len(recent) else ""
    return counts + "<h3>Recent alerts</h3>" + _table(("step", "severity", "code", "message"), rows, numeric=(0,)) + note


def _issues(rep: Report) -> str:
    issues = rep.run.issues
    if not issues:
        return _empty("none — every line of the file is valid telemetry v1")
    rows = [(F.num(i.line), i.kind, i.message) for i in issues[:MAX_ISSUE_ROWS]]
    more = f'<p class="note">First {MAX_ISSUE_ROWS} of {len(issues)} issues.</p>' if len(issues) > MAX_ISSUE_ROWS else ""
    return (f"<p>{len(issues)} unreadable line(s) were skipped; everything else was read.</p>"
            + _table(("line", "kind", "message"), rows, numeric=(0,)) + more)


_RENDERERS = {
    "overview": _overview,
    "training": _training,
    "eval": _eval,
    "guard": _guard,
    "spectral": _spectral,
    "audit": _audit,
    "recommendations": _recommendations,
    "alerts": _alerts,
    "configuration": _configuration,
    "issues": _issues,
}


def render_html(rep: Report) -> str:
    """The whole page as a string: one file, no external resources, no scripts."""
    snap = rep.snapshot
    name = snap.model_name or "run"
    title = f"Gradience report — {name}"
    generated = _dt.datetime.fromtimestamp(rep.generated_ts, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    started = (_dt.datetime.fromtimestamp(snap.first_ts, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if snap.first_ts and snap.first_ts > 1e8 else F.DASH)
    nav = "".join(f'<a href="#{sid}">{esc(label)}</a>' for sid, label in SECTIONS)
    body = []
    for sid, label in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{esc(label)}</h2>{_RENDERERS[sid](rep)}</section>')
    src = Path(rep.run.path).name
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="sub">run <code>{esc(rep.run.run_id)}</code> · started {esc(started)} · '
        f"file <code>{esc(src)}</code> ({esc(F.num(rep.run.file_bytes))} bytes)</p>"
        f"<nav>{nav}</nav>"
        + "".join(body)
        + f"<footer>Generated by gradience {esc(__version__)} on {esc(generated)}. Static page: no scripts, no "
          "network. Observe first, recommend conservatively, always verify with eval.</footer>"
          "</main></body></html>\n"
    )
