"""Pure SVG chart primitives: strings in, strings out, no JavaScript, no network.

Every chart is a standalone ``<svg class="chart" data-chart=NAME data-points=N>`` element
that renders the same on screen, in print and in a headless browser. Text is escaped
here, so callers may pass any label. Coordinates are rounded to 0.1 px to keep pages small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = [
    "PALETTE",
    "Band",
    "Marker",
    "Series",
    "VLine",
    "bar_chart",
    "esc",
    "fmt_tick",
    "heatmap",
    "line_chart",
    "nice_ticks",
    "timeline",
]

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#64748b")
FONT = "font-family=\"system-ui,-apple-system,'Segoe UI',Roboto,sans-serif\""


def esc(text: object) -> str:
    """Escape any value for SVG/HTML text and attributes."""
    return escape(str(text), quote=True)


def _r(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def fmt_tick(v: float) -> str:
    """Compact tick label: ``0.001`` → ``1e-3``, ``25000`` → ``25k``, ``0.25`` → ``0.25``."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a < 1e-2:
        mant, exp = f"{v:.1e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 × 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    if not math.isfinite(raw) or raw <= 0:  # a span past the float range (values from a damaged file)
        return [lo, hi]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    t = start
    # bounded: where step is below the spacing of floats near t (1e16 + 0.5), t would not move
    while t <= hi + step * 1e-9 and len(ticks) <= 4 * max(1, n) + 4:
        ticks.append(round(t, 12))
        t += step
    return list(dict.fromkeys(ticks))


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), min(math.ceil(math.log10(hi)), 308)  # 10.0 ** 309 overflows
    mults = (1,) if b - a > 3 else (1, 2, 5) if b - a > 1 else (1, 2, 3, 5, 7)
    out = [m * 10.0 ** k for k in range(a, b + 1) for m in mults]
    return [t for t in out if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        if log:
            lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        if hi <= lo:
            pad = abs(lo) * 0.05 if lo else 1.0
            lo, hi = (lo / 1.5, hi * 1.5) if log else (lo - pad, hi + pad)
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log
        self._l0 = math.log10(lo) if log else lo
        self._l1 = math.log10(hi) if log else hi

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, 1e-300))
        return self.a + (v - self._l0) / (self._l1 - self._l0) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if not self.log:
            return nice_ticks(self.lo, self.hi, n)
        ticks = _log_ticks(self.lo, self.hi)
        if len(ticks) < 3:  # less than a decade: round linear values, still placed on the log axis
            ticks = [t for t in nice_ticks(self.lo, self.hi, 4) if t > 0]
        return ticks


@dataclass
class Series:
    """A line: ``xs``/``ys`` (NaN breaks the line); optional ``lo``/``hi`` envelope band."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None
    dashed: bool = False
    points: bool = False  # draw a dot on each point (sparse series such as evals)


@dataclass
class Band:
    """A horizontal shaded region ``y0..y1`` with a label (e.g. a health level)."""

    y0: float
    y1: float
    color: str
    label: str = ""


@dataclass
class Marker:
    """A point marker; ``y=None`` pins it to the top edge (e.g. a non-finite value)."""

    x: float
    y: float | None
    shape: str = "circle"  # circle | x | triangle | diamond
    color: str = "#dc2626"
    title: str = ""


@dataclass
class VLine:
    x: float
    color: str = "#dc2626"
    title: str = ""
    dashed: bool = True


@dataclass
class _Frame:
    width: int
    height: int
    left: int = 64
    right: int = 16
    top: int = 30
    bottom: int = 38
    parts: list[str] = field(default_factory=list)

    @property
    def x0(self) -> int:
        return self.left

    @property
    def x1(self) -> int:
        return self.width - self.right

    @property
    def y0(self) -> int:
        return self.height - self.bottom

    @property
    def y1(self) -> int:
        return self.top


def _open(name: str, width: int, height: int, title: str, n_points: int, extra: str = "") -> str:
    return (f'<svg class="chart" data-chart="{esc(name)}" data-points="{n_points}"{extra} '
            f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{esc(title)}" {FONT} font-size="11">'
            f"<title>{esc(title)}</title>")


def _path(xs: Sequence[float], ys: Sequence[float], sx: _Scale, sy: _Scale) -> str:
    d: list[str] = []
    pen_up = True
    for x, y in zip(xs, ys, strict=True):
        if y is None or not math.isfinite(y) or not math.isfinite(x) or (sy.log and y <= 0):
            pen_up = True
            continue
        d.append(("M" if pen_up else "L") + _r(sx(x)) + "," + _r(sy(y)))
        pen_up = False
    return "".join(d)


def _envelope(xs: Sequence[float], lo: Sequence[float], hi: Sequence[float], sx: _Scale, sy: _Scale) -> list[str]:
    """Closed polygons for each run of finite (lo, hi) pairs."""
    polys: list[str] = []
    run: list[tuple[float, float, float]] = []

    def flush() -> None:
        if len(run) >= 2:
            top = [f"{_r(sx(x))},{_r(sy(h))}" for x, _, h in run]
            bot = [f"{_r(sx(x))},{_r(sy(lv))}" for x, lv, _ in reversed(run)]
            polys.append(" ".join(top + bot))
        run.clear()

    for x, lv, h in zip(xs, lo, hi, strict=True):
        ok = all(v is not None and math.isfinite(v) for v in (x, lv, h)) and not (sy.log and (lv <= 0 or h <= 0))
        if ok:
            run.append((x, lv, h))
        else:
            flush()
    flush()
    return polys


def _marker(shape: str, x: float, y: float, color: str, title: str) -> str:
    t = f"<title>{esc(title)}</title>" if title else ""
    c = esc(color)
    if shape == "x":
        s = 4
        return (f'<g class="marker" stroke="{c}" stroke-width="2">{t}<line x1="{_r(x - s)}" y1="{_r(y - s)}" '
                f'x2="{_r(x + s)}" y2="{_r(y + s)}"/><line x1="{_r(x - s)}" y1="{_r(y + s)}" x2="{_r(x + s)}" '
                f'y2="{_r(y - s)}"/></g>')
    if shape == "triangle":
        s = 5
        return (f'<polygon class="marker" fill="{c}" points="{_r(x)},{_r(y - s)} {_r(x - s)},{_r(y + s * 0.8)} '
                f'{_r(x + s)},{_r(y + s * 0.8)}">{t}</polygon>')
    if shape == "diamond":
        s = 5
        return (f'<polygon class="marker" fill="{c}" points="{_r(x)},{_r(y - s)} {_r(x + s)},{_r(y)} '
                f'{_r(x)},{_r(y + s)} {_r(x - s)},{_r(y)}">{t}</polygon>')
    return f'<circle class="marker" cx="{_r(x)}" cy="{_r(y)}" r="3.5" fill="{c}">{t}</circle>'


def _axis_labels(p: list[str], f: _Frame, x_label: str, y_label: str) -> None:
    """Axis titles: x centred under the plot, y rotated along the left edge."""
    if x_label:
        p.append(f'<text x="{(f.x0 + f.x1) / 2:.0f}" y="{f.height - 6}" text-anchor="middle" fill="#374151">'
                 f"{esc(x_label)}</text>")
    if y_label:
        cy = (f.y0 + f.y1) / 2
        p.append(f'<text x="14" y="{cy:.0f}" text-anchor="middle" fill="#374151" '
                 f'transform="rotate(-90 14 {cy:.0f})">{esc(y_label)}</text>')


def _axes(f: _Frame, sx: _Scale, sy: _Scale, x_label: str, y_label: str, y_fmt: Callable[[float], str]) -> None:
    p = f.parts
    for t in sy.ticks():
        y = sy(t)
        if f.y1 - 0.5 <= y <= f.y0 + 0.5:
            p.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{_r(y)}" y2="{_r(y)}" stroke="#e5e7eb"/>'
                     f'<text x="{f.x0 - 6}" y="{_r(y + 3.5)}" text-anchor="end" fill="#4b5563">{esc(y_fmt(t))}</text>')
    xt = sx.ticks(6)
    whole = [t for t in xt if float(t).is_integer()]
    # x is a step or an index in every line chart: no ticks at 2.5 when whole numbers will do.
    for t in whole if len(whole) >= 2 else xt:
        x = sx(t)
        if f.x0 - 0.5 <= x <= f.x1 + 0.5:
            p.append(f'<line x1="{_r(x)}" x2="{_r(x)}" y1="{f.y0}" y2="{f.y0 + 4}" stroke="#6b7280"/>'
                     f'<text x="{_r(x)}" y="{f.y0 + 16}" text-anchor="middle" fill="#4b5563">{esc(fmt_tick(t))}</text>')
    p.append(f'<rect x="{f.x0}" y="{f.y1}" width="{f.x1 - f.x0}" height="{f.y0 - f.y1}" fill="none" stroke="#9ca3af"/>')
    _axis_labels(p, f, x_label, y_label)


def _legend_layout(x0: int, x1: int, items: Sequence[tuple[str, str, str]]) -> list[tuple[int, int]]:
    """(x, row) for each legend item, wrapping onto new rows when a row is full."""
    pos, x, row = [], x0, 0
    for label, _, _ in items:
        w = 26 + int(6.2 * len(label))
        if x > x0 and x + w > x1:
            x, row = x0, row + 1
        pos.append((x, row))
        x += w
    return pos


def _legend(f: _Frame, items: Sequence[tuple[str, str, str]]) -> None:
    """Legend in the top margin: (label, colour, kind) with kind line|dashed|band|marker[:shape]."""
    for (label, color, kind), (x, row) in zip(items, _legend_layout(f.x0, f.x1, items), strict=True):
        c = esc(color)
        yc = 15 + 16 * row
        if kind == "band":
            f.parts.append(f'<rect x="{x}" y="{yc - 5}" width="14" height="10" fill="{c}" fill-opacity="0.35"/>')
        elif kind.startswith("marker"):
            shape = kind.partition(":")[2] or "circle"
            f.parts.append(_marker(shape, x + 7, yc, color, ""))
        elif kind == "dashed":
            f.parts.append(f'<line x1="{x}" x2="{x + 14}" y1="{yc}" y2="{yc}" stroke="{c}" stroke-width="2" '
                           'stroke-dasharray="4 2"/>')
        else:
            f.parts.append(f'<line x1="{x}" x2="{x + 14}" y1="{yc}" y2="{yc}" stroke="{c}" stroke-width="2.5"/>')
        f.parts.append(f'<text x="{x + 18}" y="{yc + 4}" fill="#374151">{esc(label)}</text>')


def line_chart(
    name: str,
    series: Sequence[Series],
    *,
    title: str = "",
    width: int = 760,
    height: int = 250,
    x_label: str = "step",
    y_label: str = "",
    y_log: bool = False,
    bands: Sequence[Band] = (),
    markers: Sequence[Marker] = (),
    vlines: Sequence[VLine] = (),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    y_fmt: Callable[[float], str] = fmt_tick,
    legend_extra: Sequence[tuple[str, str, str]] = (),
) -> str:
    """A line chart over steps: series (with optional min/max envelopes), horizontal bands,
    point markers and vertical event lines. Returns one ``<svg>`` element.

    The y range covers the finite data (and the markers), not the bands, so a band far off
    the data does not flatten the curves; ``y_log`` ignores values ≤ 0.
    """
    legend: list[tuple[str, str, str]] = [(b.label, b.color, "band") for b in bands if b.label]
    legend += [(s.name, s.color or PALETTE[i % len(PALETTE)], "dashed" if s.dashed else "line")
               for i, s in enumerate(series)]
    legend += list(legend_extra)
    rows = 1 + max((r for _, r in _legend_layout(64, width - 16, legend)), default=0)
    f = _Frame(width, height + 16 * (rows - 1), top=14 + 16 * rows)
    height = f.height
    xs_all = [x for s in series for x in s.xs if math.isfinite(x)] + [m.x for m in markers] + [v.x for v in vlines]
    ys_all: list[float] = []
    for s in series:
        for seq in (s.ys, s.lo or (), s.hi or ()):
            ys_all.extend(v for v in seq if v is not None and math.isfinite(v) and (not y_log or v > 0))
    ys_all.extend(m.y for m in markers if m.y is not None and math.isfinite(m.y) and (not y_log or m.y > 0))
    n_points = sum(len(s.ys) for s in series)
    if x_range is None:
        x_range = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if y_range is None:
        if ys_all:
            lo, hi = min(ys_all), max(ys_all)
            if not y_log:
                flat = hi - lo <= 1e-9 * max(abs(hi), abs(lo))  # constant up to float noise
                pad = (abs(hi) * 0.1 or 1.0) if flat else (hi - lo) * 0.06
                data_min = lo
                lo, hi = lo - pad, hi + pad
                if data_min >= 0 > lo:
                    lo = 0.0  # non-negative data: do not show a negative axis
            else:
                lo, hi = lo / 1.25, hi * 1.25
            y_range = (lo, hi)
        else:
            y_range = (0.1, 10.0) if y_log else (0.0, 1.0)
    sx = _Scale(x_range[0], x_range[1], f.x0, f.x1)
    sy = _Scale(y_range[0], y_range[1], f.y0, f.y1, log=y_log)
    parts = f.parts
    parts.append(_open(name, width, height, title or name, n_points))
    clip = f"clip-{esc(name)}"
    parts.append(f'<defs><clipPath id="{clip}"><rect x="{f.x0}" y="{f.y1}" width="{f.x1 - f.x0}" '
                 f'height="{f.y0 - f.y1}"/></clipPath></defs>')
    for band in bands:
        y_top, y_bot = sy(min(max(band.y1, sy.lo), sy.hi)), sy(min(max(band.y0, sy.lo), sy.hi))
        if y_bot - y_top > 0.5:
            parts.append(f'<rect class="band" x="{f.x0}" y="{_r(y_top)}" width="{f.x1 - f.x0}" '
                         f'height="{_r(y_bot - y_top)}" fill="{esc(band.color)}" fill-opacity="0.13">'
                         f"<title>{esc(band.label)}</title></rect>")
    _axes(f, sx, sy, x_label, y_label, y_fmt)
    parts.append(f'<g clip-path="url(#{clip})">')
    for v in vlines:
        x = _r(sx(v.x))
        dash = ' stroke-dasharray="4 3"' if v.dashed else ""
        parts.append(f'<line class="vline" x1="{x}" x2="{x}" y1="{f.y1}" y2="{f.y0}" stroke="{esc(v.color)}" '
                     f'stroke-width="1.2"{dash}><title>{esc(v.title)}</title></line>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        if s.lo is not None and s.hi is not None:
            for poly in _envelope(s.xs, s.lo, s.hi, sx, sy):
                parts.append(f'<polygon class="envelope" points="{poly}" fill="{esc(color)}" fill-opacity="0.18"/>')
        d = _path(s.xs, s.ys, sx, sy)
        if d:
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            parts.append(f'<path class="series" data-series="{esc(s.name)}" d="{d}" fill="none" '
                         f'stroke="{esc(color)}" stroke-width="1.8" stroke-linejoin="round"{dash}/>')
        if s.points:
            for px, py in zip(s.xs, s.ys, strict=True):
                if py is not None and math.isfinite(py) and (not y_log or py > 0):
                    parts.append(f'<circle cx="{_r(sx(px))}" cy="{_r(sy(py))}" r="2.8" fill="{esc(color)}">'
                                 f"<title>{esc(s.name)} @ {fmt_tick(px)}: {py:.4g}</title></circle>")
    parts.append("</g>")
    for m in markers:
        y = f.y1 + 6 if m.y is None or not math.isfinite(m.y) else min(max(sy(m.y), f.y1), f.y0)
        parts.append(_marker(m.shape, sx(m.x), y, m.color, m.title))
    _legend(f, legend)
    parts.append("</svg>")
    return "".join(parts)


def _lerp_color(stops: Sequence[tuple[int, int, int]], t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    u = t - i
    a, b = stops[i], stops[i + 1]
    return "#" + "".join(f"{round(a[k] + (b[k] - a[k]) * u):02x}" for k in range(3))


# Perceptually ordered light→dark blue-green ramp (readable in greyscale print).
_RAMP = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))


def heatmap(
    name: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: Callable[[float], str] = lambda v: f"{v:.2f}",
    cell_w: int = 64,
    cell_h: int = 20,
    cell_titles: Sequence[Sequence[str]] | None = None,
) -> str:
    """A row × column grid coloured by value (light = low, dark = high), value printed in
    each cell; ``None`` cells are grey with a dash. Returns one ``<svg>`` element."""
    cell_w = max(cell_w, 7 * max((len(c) for c in cols), default=0) + 12)
    finite = [v for row in values for v in row if v is not None and math.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    span = (hi - lo) or 1.0
    label_w = max(40, 7 * max((len(r) for r in rows), default=4) + 12)
    head_h = 40
    width = label_w + cell_w * max(1, len(cols)) + 70
    height = head_h + cell_h * max(1, len(rows)) + 12
    p = [_open(name, width, height, title or name, len(finite))]
    for j, c in enumerate(cols):
        x = label_w + j * cell_w + cell_w / 2
        p.append(f'<text x="{_r(x)}" y="{head_h - 8}" text-anchor="middle" fill="#374151">{esc(c)}</text>')
    for i, r in enumerate(rows):
        y = head_h + i * cell_h
        p.append(f'<text x="{label_w - 6}" y="{_r(y + cell_h / 2 + 4)}" text-anchor="end" fill="#374151">{esc(r)}</text>')
        for j in range(len(cols)):
            v = values[i][j] if j < len(values[i]) else None
            x = label_w + j * cell_w
            tip = cell_titles[i][j] if cell_titles else f"{r} / {cols[j]}"
            if v is None or not math.isfinite(v):
                p.append(f'<rect x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="#f3f4f6">'
                         f'<title>{esc(tip)}: n/a</title></rect><text x="{_r(x + cell_w / 2)}" '
                         f'y="{_r(y + cell_h / 2 + 4)}" text-anchor="middle" fill="#9ca3af">—</text>')
                continue
            t = (v - lo) / span
            fill = _lerp_color(_RAMP, t)
            ink = "#ffffff" if t > 0.55 else "#111827"
            p.append(f'<rect class="cell" x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="{fill}">'
                     f"<title>{esc(tip)}: {esc(fmt(v))}</title></rect>"
                     f'<text x="{_r(x + cell_w / 2)}" y="{_r(y + cell_h / 2 + 4)}" text-anchor="middle" '
                     f'fill="{ink}">{esc(fmt(v))}</text>')
    # Colour scale legend on the right.
    lx = label_w + cell_w * max(1, len(cols)) + 16
    steps = 24
    bar_h = max(40, cell_h * max(1, len(rows)))
    for k in range(steps):
        yk = head_h + bar_h * (1 - (k + 1) / steps)
        p.append(f'<rect x="{lx}" y="{_r(yk)}" width="12" height="{_r(bar_h / steps + 0.5)}" '
                 f'fill="{_lerp_color(_RAMP, (k + 0.5) / steps)}"/>')
    p.append(f'<text x="{lx + 16}" y="{head_h + 8}" fill="#4b5563">{esc(fmt(hi))}</text>'
             f'<text x="{lx + 16}" y="{_r(head_h + bar_h)}" fill="#4b5563">{esc(fmt(lo))}</text>')
    p.append("</svg>")
    return "".join(p)


def bar_chart(
    name: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    width: int = 760,
    height: int = 220,
    color: str = PALETTE[0],
    colors: Sequence[str] | None = None,
    x_label: str = "",
    y_label: str = "",
    y_fmt: Callable[[float], str] = fmt_tick,
) -> str:
    """Vertical bars, one per label (a histogram when labels are bin ranges)."""
    f = _Frame(width, height, top=16)
    finite = [v for v in values if math.isfinite(v)]
    hi = max(finite) if finite else 1.0
    sy = _Scale(0.0, hi * 1.08 if hi > 0 else 1.0, f.y0, f.y1)
    p = f.parts
    p.append(_open(name, width, height, title or name, len(finite)))
    for t in sy.ticks(4):
        y = sy(t)
        p.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{_r(y)}" y2="{_r(y)}" stroke="#e5e7eb"/>'
                 f'<text x="{f.x0 - 6}" y="{_r(y + 3.5)}" text-anchor="end" fill="#4b5563">{esc(y_fmt(t))}</text>')
    n = max(1, len(labels))
    slot = (f.x1 - f.x0) / n
    bw = max(2.0, slot * 0.78)
    every = max(1, math.ceil(n * 46 / (f.x1 - f.x0)))  # thin out crowded labels
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = f.x0 + i * slot + (slot - bw) / 2
        if math.isfinite(v):
            y = sy(max(v, 0.0))
            c = colors[i] if colors else color
            p.append(f'<rect class="bar" x="{_r(x)}" y="{_r(y)}" width="{_r(bw)}" height="{_r(f.y0 - y)}" '
                     f'fill="{esc(c)}"><title>{esc(label)}: {esc(y_fmt(v))}</title></rect>')
        if i % every == 0:
            p.append(f'<text x="{_r(x + bw / 2)}" y="{f.y0 + 14}" text-anchor="middle" fill="#4b5563">'
                     f"{esc(label)}</text>")
    p.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{f.y0}" y2="{f.y0}" stroke="#9ca3af"/>')
    _axis_labels(p, f, x_label, y_label)
    p.append("</svg>")
    return "".join(p)


def timeline(
    name: str,
    rows: Sequence[tuple[str, str, Sequence[tuple[float, str]]]],
    *,
    x_range: tuple[float, float],
    title: str = "",
    width: int = 760,
    row_h: int = 24,
) -> str:
    """Event strips over steps: one row per ``(label, color, [(step, tooltip), ...])``."""
    label_w = 96
    f = _Frame(width, 30 + row_h * max(1, len(rows)) + 30, left=label_w, top=14, bottom=30)
    sx = _Scale(x_range[0], x_range[1], f.x0, f.x1)
    p = f.parts
    p.append(_open(name, width, f.height, title or name, sum(len(r[2]) for r in rows)))
    for i, (label, color, events) in enumerate(rows):
        yc = f.y1 + i * row_h + row_h / 2
        p.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{_r(yc)}" y2="{_r(yc)}" stroke="#e5e7eb"/>'
                 f'<text x="{f.x0 - 8}" y="{_r(yc + 4)}" text-anchor="end" fill="#374151">{esc(label)}</text>')
        for x, tip in events:
            px = sx(x)
            p.append(f'<rect class="event" x="{_r(px - 1.5)}" y="{_r(yc - row_h * 0.35)}" width="3" '
                     f'height="{_r(row_h * 0.7)}" fill="{esc(color)}"><title>{esc(tip)}</title></rect>')
    xt = sx.ticks(6)
    whole = [t for t in xt if float(t).is_integer()]
    # x is a step or an index in every line chart: no ticks at 2.5 when whole numbers will do.
    for t in whole if len(whole) >= 2 else xt:
        x = sx(t)
        p.append(f'<line x1="{_r(x)}" x2="{_r(x)}" y1="{f.y0}" y2="{f.y0 + 4}" stroke="#6b7280"/>'
                 f'<text x="{_r(x)}" y="{f.y0 + 16}" text-anchor="middle" fill="#4b5563">{esc(fmt_tick(t))}</text>')
    p.append(f'<line x1="{f.x0}" x2="{f.x1}" y1="{f.y0}" y2="{f.y0}" stroke="#9ca3af"/>')
    p.append(f'<text x="{(f.x0 + f.x1) / 2:.0f}" y="{f.height - 4}" text-anchor="middle" fill="#374151">step</text>')
    p.append("</svg>")
    return "".join(p)
