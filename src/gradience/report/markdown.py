"""Render a :class:`Report` as a Markdown summary (for PR comments): the same numbers as the page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..telemetry.health import sparkline
from ..telemetry.snapshot import resume_text
from ..training.kappa_risk import neutral_word
from . import _fmt as F
from .audit_view import AUDIT_COMMAND
from .build import Report
from .charts import udr_bin_counts
from .html import gap_rows

__all__ = ["render_markdown"]

SPARK_WIDTH = 40


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _spark(points: list[dict[str, Any]]) -> str:
    vals = [p["mean"] for p in points]
    if not any(math.isfinite(v) for v in vals):
        return ""
    # Bucket means again down to SPARK_WIDTH characters; NaN buckets show as ×.
    n = len(vals)
    if n > SPARK_WIDTH:
        out = []
        for b in range(SPARK_WIDTH):
            chunk = [v for v in vals[b * n // SPARK_WIDTH:max(b * n // SPARK_WIDTH + 1, (b + 1) * n // SPARK_WIDTH)]
                     if math.isfinite(v)]
            out.append(sum(chunk) / len(chunk) if chunk else math.nan)
        vals = out
    return sparkline(vals)


def render_markdown(rep: Report) -> str:
    """GitHub-flavoured Markdown: overview, training, eval + gaps, guard, κ̃, audit, recommendations, alerts."""
    snap, curves = rep.snapshot, rep.run.curves
    L: list[str] = []
    status = ("stalled" if snap.stalled else snap.status) + (f" — {snap.reason}" if snap.reason else "")
    if snap.stalled:
        status += f" — no run_end, silent for {F.duration(snap.silence_s)}"
    if snap.resumed_from_step is not None:
        status += f" — {resume_text(snap.resumes, snap.resumed_from_step)}"
    L += [f"## Gradience report — {snap.model_name or 'run'}", ""]
    steps = F.num(snap.last_step) + (f" / {F.num(snap.max_steps)}" if snap.max_steps else "")
    L += _table(("run", "status", "model", "dataset", "profile", "r", "steps", "duration"), [(
        f"`{rep.run.run_id}`", status, snap.model_name or F.DASH, snap.dataset_name or F.DASH, snap.task_profile,
        F.num(snap.r), steps, F.duration(snap.duration_s))])

    loss, g, lr = snap.loss, snap.grad_norm, snap.lr
    L += ["### Training", ""]
    rows = [
        ("loss first → last", f"{F.num(loss.first)} → {F.num(loss.last)}"),
        ("loss min (step)", f"{F.num(loss.min)} ({F.num(loss.min_step)})"),
        ("non-finite losses", F.num(loss.nonfinite_count)),
        ("loss spikes", F.num(loss.spikes)),
        ("lr first → last", f"{F.num(lr.first)} → {F.num(lr.last)}"),
        ("grad norm last / max", f"{F.num(g.last, 3)} / {F.num(g.max, 3)}"),
        ("grad health", f"{g.level or F.DASH} {g.trend or ''}".strip()),
        ("grad norm clipping", g.clipped_text() or F.DASH),
        ("grad health from", g.source_text() or F.DASH),
    ]
    spark = _spark(curves.loss.points()) if curves.loss.count else ""
    if spark:
        rows.append(("loss curve", f"`{spark}`"))
    L += _table(("metric", "value"), rows)

    L += ["### Evaluation", ""]
    if snap.evals:
        keys = [k for k in ("loss", "ppl", "accuracy", "n")
                if any(k in e["metrics"] for e in snap.evals.values())]
        erows = [[split, F.num(e.get("step")), *(F.num(e["metrics"].get(k)) for k in keys)]
                 for split, e in sorted(snap.evals.items(), key=lambda kv: (kv[0] != "train", kv[0]))]
        L += _table(("split", "step", *keys), erows)
        gaps = gap_rows(snap)
        if gaps:
            L += ["Gaps: " + ", ".join(f"{k} **{v}**" for k, v in gaps), ""]
        if snap.gap_missing:
            L += ["Gap not computable: " + "; ".join(snap.gap_missing), ""]
    else:
        L += ["No eval events.", ""]

    gd = snap.guard
    if gd.enabled:
        L += ["### Guard", ""]
        L += _table(("snapshots", "rollbacks", "LR backoffs", "aborts", "lockout", "final LR scale", "integrity"), [(
            F.num(gd.snapshots), F.num(gd.rollbacks), F.num(gd.lr_backoffs),
            F.num(gd.aborts), "yes" if gd.lockout else "no", F.num(gd.final_lr_scale),
            gd.integrity_status or F.DASH)])
        steps_rb = [str(e.step) for e in curves.guard_events if e.action == "rollback" and e.step is not None]
        if steps_rb:
            L += ["Rollbacks at steps: " + ", ".join(dict.fromkeys(steps_rb)), ""]

    sp = snap.spectral
    if sp.n:
        L += ["### Spectral κ̃", ""]
        seen = ", ".join(f"{k} {v}" for k, v in sorted(curves.risk_counts.items()))
        level = f"{neutral_word(sp.risk_level)}, level {sp.risk_level}" if sp.risk_level else F.DASH
        L += [f"Last κ̃ **{F.num(sp.kappa)}** ({level}) at step "
              f"{F.num(sp.step)}; {F.num(sp.n)} samples" + (f"; levels seen: {seen}" if seen else "")
              + ". A neutral diagnostic, not an alarm.", ""]

    view = rep.audit
    if view is not None:
        s = view.summary
        L += ["### LoRA audit", ""]
        L += _table(("LoRA params", "modules", "utilization mean", "stable rank mean", "k@90% p50 / p90"), [(
            F.num(view.total_params), F.num(s.n_layers if s.n_layers is not None else (len(view.modules) or None)),
            F.num(s.utilization_mean, 3), F.num(s.stable_rank_mean, 3),
            f"{F.num(s.energy_rank_90_p50)} / {F.num(s.energy_rank_90_p90)}")])
        srows = [(f"uniform r={o.r} ({o.label})", F.num(o.params_after), F.pct(o.saving_fraction)) for o in view.uniform]
        if view.per_module_params_after is not None:
            srows.append(("per-module ranks", F.num(view.per_module_params_after), F.pct(view.per_module_saving)))
        if srows:
            L += _table(("suggested", "LoRA params after", "saving"), srows)
        if view.by_type:
            L += _table(("type", "modules", "LoRA params", "utilization mean", "k@90% p50 / p90", "energy share"),
                        [(t.name, F.num(t.n), F.num(t.params), F.num(t.utilization, 3),
                          f"{F.num(t.k90_p50)} / {F.num(t.k90_p90)}", F.pct(t.energy_share)) for t in view.by_type])
        if view.udr_values:
            L += ["UDR per module: " + ", ".join(f"{label}: {n}" for label, n in udr_bin_counts(view.udr_values)), ""]
        elif any(k != "n" for k in view.udr_summary):
            u = view.udr_summary
            L += [f"UDR mean {F.num(u.get('udr_mean'))}, median {F.num(u.get('udr_median'))}, p90 "
                  f"{F.num(u.get('udr_p90'))}, max {F.num(u.get('udr_max'))}; {F.pct(u.get('fraction_udr_gt_0_1'))} "
                  f"> 0.1, {F.pct(u.get('fraction_udr_gt_0_3'))} > 0.3 (of {F.num(u.get('n'))} modules).", ""]
        if not view.has_layers:
            L += [f"Summary only: per-module heatmaps, spectra and rank/alpha patterns need `--peft-dir DIR` "
                  f"(or `--audit` from `{AUDIT_COMMAND}`).", ""]

    L += ["### Recommendations", ""]
    if rep.recommendations:
        for r in rep.recommendations:
            conf = r.get("confidence")
            conf_s = f" (confidence {conf:.2f})" if isinstance(conf, (int, float)) else ""
            L.append(f"- **{r.get('severity', 'info')}** `{r.get('action', '')}`{conf_s}: {r.get('message', '')}")
        L.append("")
    else:
        L += ["None.", ""]

    if snap.alert_counts:
        L += ["### Alerts", ""]
        L += _table(("code", "count"), sorted(snap.alert_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if rep.run.issues:
        L += [f"**Telemetry issues:** {len(rep.run.issues)} unreadable line(s) skipped "
              f"(first: line {rep.run.issues[0].line}, {rep.run.issues[0].kind}).", ""]
    return "\n".join(L).rstrip() + "\n"
