"""Rich renderables for the watch dashboard, built from a :class:`~.tail.WatchView`.

Pure functions of the view (no I/O, no clock): the textual app puts each panel body in a
bordered widget, ``--once`` stacks the same bodies in rich panels. Every colour has a
word beside it (level names, state names), so nothing is lost without colour
(``NO_COLOR``, a pipe, a CI log).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from ..numfmt import num as _num
from ..policy.rules_run import amp_overflows_handled, generalisation_summary
from ..telemetry.health import downsample, sparkline
from ..telemetry.sections import GradNormSummary, GuardSummary, SpectralSummary
from ..training.kappa_risk import neutral_word
from .tail import WatchView

__all__ = [
    "PANELS",
    "banner",
    "compact_count",
    "fmt_duration",
    "render_once",
]

GRAD_STYLES = {
    "vanishing": "bold blue",
    "healthy": "green",
    "warning": "yellow",
    "critical": "bold red",
    "nonfinite": "bold red reverse",
    "amp overflow": "cyan",
}
# κ̃ levels are a neutral diagnostic (docs/guard.md#why-the-levels-are-a-neutral-diagnostic): no level is
# coloured as an alarm and none enters the health word.
RISK_STYLES = {
    "WARMUP": "dim",
    "STABLE": "",
    "LEARNING": "",
    "WARNING": "",
    "DANGER": "",
    "INSTABILITY": "",
}
SEVERITY_STYLES = {"info": "cyan", "warning": "yellow", "error": "red", "critical": "bold red"}
SEVERITY_TAGS = {"info": "INFO", "warning": "WARN", "error": "ERR ", "critical": "CRIT"}
STATES = {
    "running": ("RUNNING", "bold cyan"),
    "ok": ("FINISHED OK", "bold green"),
    "aborted": ("ABORTED", "bold yellow"),
    "error": ("ERROR", "bold red"),
}
# How bad each grad level is, to colour the overall health word. Vanishing is information (a converged
# run's norms fall below 0.1; its GRAD_NORM_VANISHING alert is info): shown in the parentheses, health OK.
_GRAD_RANK = {"healthy": 0, "vanishing": 0, "warning": 1, "critical": 2, "nonfinite": 3}
_HEALTH_WORDS = {0: ("OK", "green"), 1: ("WATCH", "yellow"), 2: ("BAD", "bold red"), 3: ("CRITICAL", "bold red reverse")}
# A running run whose last event is older than this is called out as possibly stalled.
STALE_AFTER_S = 30.0


# ---------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------
def num(x: Any, digits: int = 4) -> str:
    """The shared number rule (:mod:`gradience.numfmt`), with ``Inf`` to save columns."""
    return _num(x, digits, inf="Inf")


def compact_count(x: Any) -> str:
    """``147456`` → ``147k``, ``1234567`` → ``1.23M``; ``—`` when missing."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``2m13s``, ``3h05m``, ``2d04h``; ``—`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _short_id(rid: str | None) -> str:
    if not rid:
        return "—"
    return rid if len(rid) <= 12 else rid[:8] + "…"


def _line(*parts: str | tuple[str, str]) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    for p in parts:
        if isinstance(p, tuple):
            t.append(p[0], style=p[1])
        else:
            t.append(p)
    return t


def _dim(s: str) -> tuple[str, str]:
    return (s, "dim")


def _spark(values: list[float], width: int) -> str:
    if not values:
        return ""
    points = downsample(values, max(1, width))
    finite = [x for x in points if math.isfinite(x)]
    if finite:
        lo, hi = min(finite), max(finite)
        # Bucket means of a constant (a fixed LR) differ in the last bits; do not draw that noise.
        if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
            points = [lo if math.isfinite(x) else x for x in points]
    return sparkline(points)


def overall_health(grad_level: str | None, risk_level: str | None = None) -> tuple[str, str]:
    """The health word and its style, from the grad-norm level.

    ``risk_level`` (κ̃) is accepted and ignored: κ̃ levels fire in healthy early training and did
    not lead a loss blow-up, so they are shown as a neutral diagnostic, never as health
    (``gradience.training.kappa_risk.ALARM_LEVELS`` is empty)."""
    if grad_level is None:
        return "—", "dim"
    return _HEALTH_WORDS[_GRAD_RANK.get(grad_level, 0)]


# ---------------------------------------------------------------------------------------
# panel bodies: (view, width) -> renderable
# ---------------------------------------------------------------------------------------
def banner(v: WatchView, width: int) -> RenderableType:
    """Two lines: state, progress, time; then health, run and model."""
    s = v.snapshot
    # First on the line, so a long status line can never truncate it away.
    paused: list[str | tuple[str, str]] = [("⏸ PAUSED", "bold reverse"), "  "] if v.paused else []
    if s is None:
        if not v.file_exists:
            first = _line(*paused, ("WAITING", "bold yellow"), "  for the file to appear")
        elif v.requested_run_id is not None:
            first = _line(*paused, ("WAITING", "bold yellow"), f"  for run {v.requested_run_id!r}")
        else:
            first = _line(*paused, ("WAITING", "bold yellow"), "  no telemetry events yet")
        others = f"runs in file: {', '.join(_short_id(r) for r in v.run_ids[-4:])}" if v.run_ids else v.path
        return Group(first, _line(_dim(others)))
    label, style = STATES.get(s.status, (s.status.upper(), "bold"))
    step = "—" if s.last_step is None else f"{s.last_step:,}"
    if s.max_steps:
        pct = "" if s.last_step is None else f" ({100 * s.last_step / s.max_steps:.0f}%)"
        step = f"{step}/{s.max_steps:,}{pct}"
    running = s.status == "running"
    if s.stalled:
        label, style = "STALLED", "bold yellow"
    # The run's own duration (its start and end events, monotonic clock); a live run adds the
    # time since its last event (never negative, whatever the wall clock did).
    elapsed = s.duration_s
    if running and not s.stalled and elapsed is not None and s.last_ts is not None:
        elapsed += max(v.now - s.last_ts, 0.0)
    parts: list[str | tuple[str, str]] = [(label, style), f"  step {step}", f" · elapsed {fmt_duration(elapsed)}"]
    if v.steps_per_s:
        parts.append(f" · {v.steps_per_s:.3g} step/s")
        if running and s.max_steps and s.last_step is not None and s.last_step < s.max_steps:
            parts.append(f" · ETA {fmt_duration((s.max_steps - s.last_step) / v.steps_per_s)}")
    if s.stalled:
        parts.append((f" · silent {fmt_duration(s.silence_s)} (no run_end)", "yellow"))
    elif running and s.last_ts is not None and v.now - s.last_ts > STALE_AFTER_S:
        parts.append((f" · last event {fmt_duration(v.now - s.last_ts)} ago", "yellow"))
    if s.resumed_from_step is not None:
        parts.append(f" · resumed from step {s.resumed_from_step:,}")
    if not running and s.reason:
        parts.append(f" · {s.reason}")
    first = _line(*paused, *parts)

    level = s.grad_norm.level
    if level == "nonfinite" and amp_overflows_handled(s):
        # An fp16 overflow the AMP grad scaler skips (finite loss): information, not a health problem.
        level = "amp overflow"
    word, hstyle = overall_health("healthy" if level == "amp overflow" else level)
    second_parts: list[str | tuple[str, str]] = ["health ", (word, hstyle), _dim(" (grad "),
                                                 (level or "—", GRAD_STYLES.get(level or "", "dim")),
                                                 _dim(")")]
    which = ""
    if len(v.run_ids) > 1 and s.run_id in v.run_ids:
        which = f" ({v.run_ids.index(s.run_id) + 1} of {len(v.run_ids)})"
    second_parts += [f"  run {_short_id(s.run_id)}{which}"]
    if s.model_name:
        second_parts.append(f" · {s.model_name}")
    return Group(first, _line(*second_parts))


def _grad_window(n: int, steps: list[int | None]) -> str:
    """What the grad-norm sparkline covers: ``steps 30–120`` (the logged values need not be every
    step), ``step 7``, or ``last 10 values`` when the steps are unknown or go back (a rollback)."""
    span = steps[-n:] if n else []
    known = [s for s in span if s is not None]
    if n and len(known) == n and all(a <= b for a, b in itertools.pairwise(known)):
        return f"step {known[0]:,}" if known[0] == known[-1] else f"steps {known[0]:,}–{known[-1]:,}"
    return f"last {n} value{'s' if n != 1 else ''}"


def grad_panel(v: WatchView, width: int) -> RenderableType:
    """Gradient-norm health (TELE-311): last value (3 decimals), level, 10-value sparkline + trend."""
    s = v.snapshot
    g = s.grad_norm if s is not None else GradNormSummary.empty()
    last = g.last
    if last is None:
        return _line(_dim("no grad_norm in train_step events yet"))
    level = g.level or "—"
    value = f"{last:.3f}" if math.isfinite(last) else num(last)
    first = _line("last ", (value, "bold"), "  ", (level, GRAD_STYLES.get(level, "")),
                  _dim(f"  max {num(g.max)}"))
    hist = g.history
    if g.source == "full_run":
        # The record's history is the last consecutive steps up to the step it was written at.
        at = g.record_step
        if at is not None and hist:
            window = f"step {at:,}" if len(hist) == 1 else f"steps {at - len(hist) + 1:,}–{at:,}"
        else:
            window = f"last {len(hist)} steps"
        source = " · part-run record" if g.partial_record else " · full-run record"
    else:
        window, source = _grad_window(len(hist), v.grad_steps), " · sampled"
    base = f"{g.sparkline} {g.trend or ''}  {window}"
    # In a narrow panel the source goes first, then the words of the clipped share; never the numbers.
    second = _line((g.sparkline, GRAD_STYLES.get(level, "")), f" {g.trend or ''}",
                   _dim(f"  {window}" + (source if len(base) + len(source) <= width else "")))
    tail = f"non-finite {g.nonfinite_count}"
    third = " · ".join(x for x in (g.clipped_text(), tail) if x)
    if len(third) > width:
        third = " · ".join(x for x in (g.clipped_text(compact=True), tail) if x)
    return Group(first, second, _line(_dim(third)))


def curves_panel(v: WatchView, width: int) -> RenderableType:
    """Loss and learning-rate sparklines over the whole run (downsampled to the width)."""
    s = v.snapshot
    if s is None or (not v.loss_series and not v.lr_series):
        return _line(_dim("no train_step loss/lr yet"))
    loss = s.loss
    loss_txt = f" {num(loss.last)}"
    lr_txt = f" {num(s.lr.last, 3)}"
    label_w = 5
    spark_w = max(4, width - label_w - max(len(loss_txt), len(lr_txt)))
    loss_spark = _spark(v.loss_series, spark_w) or "—"
    lr_spark = _spark(v.lr_series, spark_w) or "—"
    # Short runs draw one character per point; keep the numbers next to them, aligned.
    pad = max(len(loss_spark), len(lr_spark))
    lines = [
        _line("loss ", (loss_spark.ljust(pad), "magenta"), loss_txt),
        _line("lr   ", (lr_spark.ljust(pad), "blue"), lr_txt),
    ]
    spikes = loss.spikes
    nonfinite = loss.nonfinite_count
    at = f" @{loss.min_step}" if loss.min_step is not None else ""
    lines.append(_line(_dim(f"min {num(loss.min)}{at} · "),
                       (f"spikes {spikes} · NaN {nonfinite}", "yellow" if spikes or nonfinite else "dim")))
    return Group(*lines)


def _metric(m: dict[str, Any], key: str, digits: int = 4) -> str:
    return num(m.get(key), digits)


def eval_panel(v: WatchView, width: int) -> RenderableType:
    """Latest eval per split, then the train/held-out gaps (or why they are missing)."""
    s = v.snapshot
    if s is None or not s.evals:
        return _line(_dim("no eval events yet"))
    order = sorted(s.evals, key=lambda k: (k != "train", k))
    lines = []
    for split in order:
        e = s.evals[split]
        m = e["metrics"]
        parts: list[str | tuple[str, str]] = [(f"{split:<5}", "bold"), _dim(f" @{e['step'] if e['step'] is not None else '—'}")]
        for key, label in (("loss", "loss"), ("accuracy", "acc"), ("ppl", "ppl")):
            if m.get(key) is not None:
                parts.append(f"  {label} {_metric(m, key)}")
        lines.append(_line(*parts))
    gaps = s.gaps
    gparts: list[str | tuple[str, str]] = [("gap  ", "bold")]
    shown: list[tuple[str, str]] = []
    # The task's memorisation signal first, yellow at `monitor`'s threshold (docs/policy.md#core-rules):
    # the perplexity ratio for a language model, the accuracy gap for a classifier; the loss ratio is
    # information only (it explodes as the training loss approaches 0).
    gen = generalisation_summary(s)
    flag = "yellow" if gen["memorising"] else ""
    ppl_gap, acc_gap = gaps.get("ppl_gap"), gaps.get("acc_gap")
    if ppl_gap is not None:
        shown.append((f"ppl ×{ppl_gap:.3f}", flag if gen["signal"] == "ppl_gap" else ""))
    if acc_gap is not None:
        shown.append((f"acc Δ{acc_gap:+.3f}", flag if gen["signal"] == "acc_gap" else ""))
    if gaps.get("loss_gap") is not None:
        shown.append((f"loss ×{gaps['loss_gap']:.3f} info", "dim"))
    if gen["not_learning"]:
        shown.append((f"at chance {gen['chance_level']:.3f}", "yellow"))
    for i, item in enumerate(shown):
        gparts.append(item)
        if i < len(shown) - 1:
            gparts.append(" · ")
    if not shown:
        gparts.append(_dim("— " + "; ".join(s.gap_missing) if s.gap_missing else "—"))
    lines.append(_line(*gparts))
    return Group(*lines)


def guard_panel(v: WatchView, width: int) -> RenderableType:
    """Guard activity (snapshots, rollbacks, LR backoffs, lockout) and the spectral κ̃ risk."""
    s = v.snapshot
    lines = []
    g = s.guard if s is not None else GuardSummary.empty()
    if not g.enabled:
        lines.append(_line(_dim("guard: no guard events")))
    else:
        rb = g.rollbacks
        lines.append(_line(f"snaps {g.snapshots} · ",
                           (f"rollbacks {rb}", "yellow" if rb else ""),
                           f" · backoffs {g.lr_backoffs}"))
        lock = g.lockout
        detail: list[str | tuple[str, str]] = [("LOCKOUT" if lock else "lockout no", "bold red" if lock else "green")]
        if g.final_lr_scale is not None:
            detail.append(f" · lr ×{num(g.final_lr_scale, 3)}")
        last = g.last or {}
        if last.get("action"):
            at = f" @{last['step']}" if last.get("step") is not None else ""
            detail.append(_dim(f" · last {last['action']}{at}"))
        if g.integrity_status:
            detail.append(_dim(f" · {g.integrity_status}"))
        lines.append(_line(*detail))
    sp = s.spectral if s is not None else SpectralSummary.empty()
    if sp.n:
        risk = str(sp.risk_level or "")
        at = f" @{sp.step}" if sp.step is not None else ""
        # A neutral diagnostic: the level in words that do not sound like an alarm, no alarm colour.
        lines.append(_line("κ̃ ", (num(sp.kappa), "bold"), "  ", (neutral_word(risk), RISK_STYLES.get(risk.upper(), "")),
                           _dim(f"{at} · {sp.n} samples · diagnostic")))
    else:
        lines.append(_line(_dim("κ̃: no spectral events")))
    return Group(*lines)


def _type_summary(by_type: Any) -> str:
    if not isinstance(by_type, dict):
        return ""
    parts = []
    for name, stats in by_type.items():
        if isinstance(stats, dict):
            util = next((stats[k] for k in ("utilization_mean", "utilization", "mean_utilization")
                         if isinstance(stats.get(k), (int, float))), None)
            count = next((stats[k] for k in ("n_layers", "n_modules", "count", "n")
                          if isinstance(stats.get(k), int)), None)
            if util is not None:
                parts.append(f"{name} {num(util, 2)}" + (f" ×{count}" if count is not None else ""))
        elif isinstance(stats, (int, float)):
            parts.append(f"{name} {num(stats, 2)}")
    return "util " + " · ".join(parts) if parts else ""


def audit_panel(v: WatchView, width: int) -> RenderableType:
    """The latest ``lora_audit`` summary: suggested ranks, utilization, k@90%, parameters."""
    s = v.snapshot
    a = s.lora_audit if s is not None else None
    if not a:
        return Group(_line(_dim("no lora_audit event yet")),
                     _line(_dim("see: gradience audit --append")))
    r = f"r {s.r}" if s is not None and s.r else "r ?"
    lines = [
        _line((r, "bold"), " → suggested ", (num(a.suggested_r_global_median), "bold green"),
              _dim(" median"), " / ", num(a.suggested_r_global_90), _dim(" p90")),
        _line(f"{compact_count(a.total_lora_params)} params · util {num(a.utilization_mean, 2)}"
              f" · k90 p50 {num(a.energy_rank_90_p50, 3)}"),
    ]
    types = _type_summary(a.to_dict().get("by_type"))  # as recorded: other writers' shapes are shown too
    if types:
        lines.append(_line(_dim(types)))
    return Group(*lines)


def log_panel(v: WatchView, width: int, limit: int | None = None, wrap: bool = False) -> RenderableType:
    """Alerts and recommendations, newest first (``limit`` entries, then a count of the rest).

    ``wrap`` folds long messages onto more lines (static output) instead of cutting them.
    """
    if not v.log:
        return _line(_dim("no alerts or recommendations"))
    entries = v.log if limit is None else v.log[:limit]
    lines = []
    for e in entries:
        sev = e.get("severity", "info")
        step = f"@{e['step']}" if e.get("step") is not None else "@—"
        tag = "→" if e["kind"] == "recommendation" else "!"
        lines.append(_line(_dim(f"{step:>7} "), (f"{tag} {SEVERITY_TAGS.get(sev, sev[:4].upper())}",
                                                 SEVERITY_STYLES.get(sev, "")),
                           " ", (e["code"], "bold"), f" {e['message']}"))
        if wrap:
            lines[-1].no_wrap, lines[-1].overflow = False, "fold"
    hidden = v.n_log - len(entries)
    if hidden > 0:
        lines.append(_line(_dim(f"… {hidden} older")))
    return Group(*lines)


def issues_panel(v: WatchView, width: int, limit: int = 3) -> RenderableType:
    """Bad lines (newest first), file replaced/truncated notices, reading progress."""
    lines = []
    if not v.file_exists:
        lines.append(_line(("waiting for the file to appear", "yellow")))
    elif v.catching_up:
        pct = 100 * v.bytes_read / v.file_size if v.file_size else 100.0
        lines.append(_line(("reading ", "cyan"), f"{pct:.0f}% of {v.file_size / 1e6:.1f} MB"))
    if v.n_issues:
        lines.append(_line((f"{v.n_issues} bad line(s)", "yellow"), _dim(" newest first")))
        for issue in v.issues[:limit]:
            lines.append(_line(f"line {issue.line} ", (issue.kind, "yellow"), _dim(f" {issue.message}")))
    for notice in v.notices[:2]:
        lines.append(_line(("↻ ", "cyan"), notice))
    if v.partial_bytes and v.partial_age_s is not None and v.partial_age_s > 5:
        lines.append(_line(_dim(f"unfinished last line ({v.partial_bytes} B, {fmt_duration(v.partial_age_s)})")))
    if not lines:
        lines.append(_line(_dim("none")))
    return Group(*lines)


# id, title, builder: the app and --once show the same panels in this order.
PANELS: list[tuple[str, str, Callable[[WatchView, int], RenderableType]]] = [
    ("grad", "gradient norm", grad_panel),
    ("guard", "guard · spectral", guard_panel),
    ("curves", "loss · lr", curves_panel),
    ("eval", "eval", eval_panel),
    ("audit", "LoRA audit", audit_panel),
    ("issues", "telemetry issues", issues_panel),
    ("log", "alerts · recommendations (newest first)", log_panel),
]


# A static page reads top to bottom: training signals, then events, then file problems.
ONCE_ORDER = ("grad", "curves", "eval", "guard", "audit", "log", "issues")


def render_once(v: WatchView, width: int = 80, log_limit: int = 20) -> RenderableType:
    """The whole dashboard as one static renderable, ``width`` columns wide."""
    inner = max(20, width - 4)  # panel border + padding

    def panel(body: RenderableType, title: str) -> Panel:
        return Panel(body, title=title, title_align="left", box=box.ROUNDED, width=width, padding=(0, 1))

    parts: list[RenderableType] = [panel(banner(v, inner), f"gradience watch · {v.path}")]
    panels = {pid: (title, builder) for pid, title, builder in PANELS}
    for pid in ONCE_ORDER:
        title, builder = panels[pid]
        body = log_panel(v, inner, limit=log_limit, wrap=True) if pid == "log" else builder(v, inner)
        parts.append(panel(body, title))
    return Group(*parts)
