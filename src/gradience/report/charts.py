"""Report data → SVG charts (one function per chart; each returns ``""`` when there is no data)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..telemetry.health import DEFAULT_THRESHOLDS, GradThresholds
from ..training.kappa_risk import neutral_word
from .audit_view import AuditView
from .collect import RISK_LEVELS, BucketSeries, Curves
from .svg import Band, Marker, Series, VLine, bar_chart, heatmap, line_chart, timeline

__all__ = [
    "RISK_COLORS",
    "UDR_BINS",
    "eval_charts",
    "grad_chart",
    "guard_timeline",
    "kappa_chart",
    "loss_chart",
    "lr_chart",
    "spectra_chart",
    "udr_bin_counts",
    "udr_histogram",
    "util_heatmaps",
]

# κ̃ levels are a neutral diagnostic (docs/guard.md#why-the-levels-are-a-neutral-diagnostic): shades of one
# neutral hue by how fast κ̃ changes, never an alarm colour.
RISK_COLORS = {"STABLE": "#cbd5e1", "LEARNING": "#94a3b8", "WARNING": "#64748b", "DANGER": "#475569",
               "INSTABILITY": "#1e293b"}
GUARD_ROWS = (  # action → (label, colour); anything else goes to "other"
    ("snapshot", "snapshot", "#64748b"),
    ("trigger", "trigger", "#d97706"),
    ("rollback", "rollback", "#dc2626"),
    ("backoff", "LR backoff", "#ea580c"),
    ("lockout", "lockout", "#7f1d1d"),
    ("abort", "abort", "#7f1d1d"),
)
LR_EVENT_ACTIONS = ("rollback", "backoff", "lockout", "abort")
# UDR reading guide (docs/audit.md#udr--sdi): < 0.1 small perturbation; ~1 comparable to the base; > 3 dominates.
UDR_BINS = ((0.0, 0.01), (0.01, 0.03), (0.03, 0.1), (0.1, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, math.inf))


def _where(p: dict[str, Any]) -> str:
    return f"step {p['from']}" if p["from"] == p["to"] else f"steps {p['from']}–{p['to']}"


def _times(n: int) -> str:
    return f" ×{n}" if n > 1 else ""


def _xy(series: BucketSeries, key: str = "mean") -> tuple[list[float], list[float]]:
    pts = series.points()
    return [float(p["step"]) for p in pts], [p[key] for p in pts]


def _envelope_series(name: str, s: BucketSeries, color: str | None = None, dashed: bool = False) -> Series:
    pts = s.points()
    xs = [float(p["step"]) for p in pts]
    exact = s.width == 1
    return Series(name if exact else f"{name} (bucket mean; band = min..max)", xs, [p["mean"] for p in pts],
                  color=color, lo=None if exact else [p["min"] for p in pts],
                  hi=None if exact else [p["max"] for p in pts], dashed=dashed)


def _guard_vlines(curves: Curves) -> list[VLine]:
    out: list[VLine] = []
    for action in LR_EVENT_ACTIONS:
        s = curves.guard_series.get(action)
        if s is None:
            continue
        for p in s.points():
            count = p["n"]
            out.append(VLine(float(p["step"]), "#dc2626" if action != "backoff" else "#ea580c",
                             f"guard {action}{_times(count)} at {_where(p)}"))
    return out


def loss_chart(curves: Curves) -> str:
    """Training loss with spike (▲) and non-finite (× at the top edge) markers; guard rollbacks as lines."""
    s = curves.loss
    if not s.count:
        return ""
    markers = []
    for p in s.points():
        if p["flags"]:
            y = p["max"] if math.isfinite(p["max"]) else None
            markers.append(Marker(float(p["step"]), y, "triangle", "#d97706",
                                  f"loss spike{_times(p['flags'])} at {_where(p)}"))
        if p["nonfinite"]:
            markers.append(Marker(float(p["step"]), None, "x", "#dc2626",
                                  f"non-finite loss ×{p['nonfinite']} at {_where(p)}"))
    legend = []
    if any(m.shape == "triangle" for m in markers):
        legend.append(("spike", "#d97706", "marker:triangle"))
    if any(m.shape == "x" for m in markers):
        legend.append(("non-finite", "#dc2626", "marker:x"))
    vlines = _guard_vlines(curves)
    if vlines:
        legend.append(("guard rollback / backoff", "#dc2626", "dashed"))
    return line_chart("loss", [_envelope_series("loss", s)], title="Training loss", y_label="loss",
                      markers=markers, vlines=vlines, legend_extra=legend)


def lr_chart(curves: Curves) -> str:
    """Learning rate (first param group) with guard backoff/rollback events as vertical lines."""
    s = curves.lr
    if not s.count:
        return ""
    vlines = _guard_vlines(curves)
    legend = [("guard backoff / rollback", "#ea580c", "dashed")] if vlines else []
    name = "lr" if curves.lr_groups == 1 else f"lr (group 0 of {curves.lr_groups})"
    return line_chart("lr", [_envelope_series(name, s)], title="Learning rate", y_label="learning rate",
                      vlines=vlines, legend_extra=legend)


def grad_chart(curves: Curves, thresholds: GradThresholds = DEFAULT_THRESHOLDS) -> str:
    """Gradient norm before (solid) and after (dashed) clipping over the health bands."""
    pre, post = curves.grad_pre, curves.grad_post
    if not pre.count and not post.count:
        return ""
    series = []
    if pre.count:
        series.append(_envelope_series("pre-clip", pre, "#2563eb"))
    if post.count:
        xs, ys = _xy(post)
        series.append(Series("post-clip", xs, ys, color="#ea580c", dashed=True))
    ranges = [r for r in (pre.finite_range(), post.finite_range()) if r is not None]
    positive = [v for r in ranges for v in r if v > 0]
    y_log = bool(positive) and max(positive) / min(positive) > 30
    top = max(positive) * 2 if positive else 1.0
    bands = [Band(1e-12 if y_log else 0.0, thresholds.vanishing, "#64748b", f"vanishing < {thresholds.vanishing:g}"),
             Band(thresholds.vanishing, thresholds.warning, "#16a34a", f"healthy {thresholds.vanishing:g}–{thresholds.warning:g}"),
             Band(thresholds.warning, thresholds.critical, "#d97706", f"warning {thresholds.warning:g}–{thresholds.critical:g}"),
             Band(thresholds.critical, max(top, thresholds.critical * 10), "#dc2626", f"critical > {thresholds.critical:g}")]
    markers = [Marker(float(p["step"]), None, "x", "#dc2626", f"non-finite grad norm ×{p['nonfinite']} at {_where(p)}")
               for p in pre.points() if p["nonfinite"]]
    return line_chart("grad_norm", series, title="Gradient norm (L2, all trainable parameters)",
                      y_label="grad norm" + (" (log)" if y_log else ""), y_log=y_log, bands=bands, markers=markers)


def eval_charts(curves: Curves) -> list[tuple[str, str]]:
    """One chart per metric (loss, accuracy, ppl, ...) with a line per split, then the gaps."""
    metrics: dict[str, dict[str, BucketSeries]] = {}
    for split, per in curves.evals.items():
        for key, s in per.items():
            metrics.setdefault(key, {})[split] = s
    order = ["loss", "accuracy", "ppl"]
    keys = [k for k in order if k in metrics] + sorted(k for k in metrics if k not in order)
    split_colors = {"train": "#2563eb", "test": "#ea580c", "val": "#16a34a"}
    out = []
    for key in keys:
        series = []
        for i, (split, s) in enumerate(sorted(metrics[key].items())):
            xs, ys = _xy(s, "last")
            series.append(Series(split, xs, ys, color=split_colors.get(split, f"#{(i * 0x3a7b5d) % 0xffffff:06x}"),
                                 points=len(xs) <= 60))
        out.append((key, line_chart(f"eval_{key}", series, title=f"Eval {key} by split", y_label=key, height=220)))
    # One chart per gap: acc_gap (a difference, ~0.1) and loss_gap / ppl_gap (ratios, ~1-10) on one
    # axis would flatten the smaller one into a line at zero.
    gap_titles = {"acc_gap": "acc_gap = train accuracy − held-out accuracy",
                  "loss_gap": "loss_gap = held-out loss / train loss",
                  "ppl_gap": "ppl_gap = held-out ppl / train ppl"}
    for i, (name, s) in enumerate(sorted(curves.gaps.items())):
        xs, ys = _xy(s, "last")
        series = [Series(name, xs, ys, points=len(xs) <= 60, color=("#9333ea", "#0891b2", "#db2777")[i % 3])]
        out.append((f"gap_{name}", line_chart(f"eval_{name}", series, title=gap_titles.get(name, f"{name} at shared eval steps"),
                                              y_label=name, height=180)))
    return out


def guard_timeline(curves: Curves, x_range: tuple[float, float]) -> str:
    """Guard decisions as strips over steps (snapshots, triggers, rollbacks, backoffs, lockout)."""
    if not curves.guard_series:
        return ""
    rows = []
    known = {a for a, _, _ in GUARD_ROWS}
    for action, label, color in GUARD_ROWS:
        s = curves.guard_series.get(action)
        if s is None:
            continue
        rows.append((label, color, [(float(p["step"]), f"{label} ×{p['n']} at {_where(p)}") for p in s.points()]))
    for action in sorted(a for a in curves.guard_series if a not in known):
        s = curves.guard_series[action]
        rows.append((action[:14], "#9333ea", [(float(p["step"]), f"{action} ×{p['n']} at {_where(p)}")
                                              for p in s.points()]))
    return timeline("guard", rows, x_range=x_range, title="Guard timeline")


def kappa_chart(curves: Curves) -> str:
    """κ̃ over steps; each point shaded by how fast κ̃ changed in its bucket (a neutral diagnostic)."""
    s = curves.kappa
    if not s.count:
        return ""
    pts = s.points()
    xs, ys = [float(p["step"]) for p in pts], [p["mean"] for p in pts]
    markers = []
    for p in pts:
        if 0 <= p["level"] < len(RISK_LEVELS) and math.isfinite(p["mean"]):
            level = RISK_LEVELS[p["level"]]
            markers.append(Marker(float(p["step"]), p["mean"], "circle", RISK_COLORS[level],
                                  f"κ̃ {p['mean']:.4g} — {neutral_word(level)} ({level}) at {_where(p)}"))
    seen = sorted({m.color for m in markers})
    legend = [(neutral_word(lvl), c, "marker") for lvl, c in RISK_COLORS.items() if c in seen]
    positive = [v for v in ys if math.isfinite(v) and v > 0]
    y_log = bool(positive) and len(positive) == len([v for v in ys if math.isfinite(v)]) and \
        max(positive) / min(positive) > 30
    return line_chart("kappa", [Series("κ̃", xs, ys, color="#475569")], title="Spectral κ̃ (condition-number proxy)",
                      y_label="κ̃" + (" (log)" if y_log else ""), y_log=y_log, markers=markers, legend_extra=legend)


def util_heatmaps(view: AuditView) -> list[tuple[str, str]]:
    if not view.modules or not view.columns:
        return []
    rows = [f"layer {layer}" if layer is not None else "no layer" for layer in view.layers]
    return [
        ("utilization", heatmap("heat_utilization", rows, view.columns, view.util_grid,
                                title="Utilization (stable rank / r) by layer × module", vmin=0.0,
                                vmax=max(1.0, max((v for r in view.util_grid for v in r if v is not None), default=1)),
                                fmt=lambda v: f"{v:.2f}")),
        ("k90", heatmap("heat_k90", rows, view.columns, view.k90_grid,
                        title="k@90% energy (rank that keeps 90% of the update) by layer × module", vmin=0.0,
                        fmt=lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}")),
    ]


def spectra_chart(view: AuditView) -> str:
    """Top singular values σᵢ of the most used (solid) and least used (dashed) modules, log scale."""
    picks = [(m, False) for m in view.most_used] + [(m, True) for m in view.least_used]
    if not picks:
        return ""
    series = []
    palette_most = ("#1d4ed8", "#2563eb", "#60a5fa")
    palette_least = ("#c2410c", "#ea580c", "#fb923c")
    for i, (m, least) in enumerate(picks):
        xs = [float(k + 1) for k in range(len(m.top_sv))]
        color = (palette_least if least else palette_most)[i % 3]
        tag = "least" if least else "most"
        util = f"{m.utilization:.2f}" if m.utilization is not None else "?"
        series.append(Series(f"{tag}: L{m.layer if m.layer is not None else '-'} {m.short} (u={util})", xs,
                             list(m.top_sv), color=color, dashed=least, points=True))
    return line_chart("spectra", series, title="Singular-value spectra: most vs least used modules",
                      x_label="index i", y_label="σᵢ (log)", y_log=True, height=270)


def udr_bin_counts(values: Sequence[float]) -> list[tuple[str, int]]:
    def label(lo: float, hi: float) -> str:
        if hi == math.inf:
            return f"> {lo:g}"
        if lo == 0:
            return f"< {hi:g}"
        return f"{lo:g}–{hi:g}"

    return [(label(lo, hi), sum(1 for v in values if lo <= v < hi)) for lo, hi in UDR_BINS]


def udr_histogram(view: AuditView) -> str:
    vals = view.udr_values
    if not vals:
        return ""
    counts = udr_bin_counts(vals)
    colors = ["#16a34a"] * 3 + ["#0891b2"] * 2 + ["#d97706", "#dc2626"]
    return bar_chart("udr", [c[0] for c in counts], [float(c[1]) for c in counts], colors=colors,
                     title="UDR distribution (update σ₁ / base σ₁) per module", x_label="UDR",
                     y_label="modules", y_fmt=lambda v: f"{v:g}")
