"""Open the report in headless Chromium (no network): it parses, logs no console errors, and the
charts are actually painted (the screenshot has the series colours where the charts are)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from gradience.report import build_report, render_html

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
_NO_BROWSER = "no chromium on PATH (Debian: apt-get install -y chromium)"
# CI installs chromium (scripts/system-deps.sh): there a missing browser fails the tests instead.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason=f"!!! headless browser test SKIPPED: {_NO_BROWSER} !!!")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail(f"!!! {_NO_BROWSER} !!!")
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # type: ignore[arg-type]


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def _decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Minimal PNG decoder (8-bit RGB/RGBA, non-interlaced): width, height, channels, rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    w = h = 0
    channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = w * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, channels, rows


def _count_color(rows: list[bytes], channels: int, rgb: tuple[int, int, int], tol: int = 40) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), channels):
            if abs(row[i] - rgb[0]) + abs(row[i + 1] - rgb[1]) + abs(row[i + 2] - rgb[2]) <= tol:
                n += 1
    return n


def test_console_error_detection_works(tmp_path: Path) -> None:
    """Control: the stderr scan does see a console error, so a clean report run means something."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><script>console.error("control-error-marker")</script>')
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert any("control-error-marker" in ln for ln in _console_lines(r.stderr)), r.stderr[-2000:]


def test_report_renders_in_headless_chromium(guarded_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(guarded_run)))
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert _console_lines(r.stderr) == [], _console_lines(r.stderr)
    dom = r.stdout
    charts = dict(re.findall(r'data-chart="([^"]+)" data-points="(\d+)"', dom))
    assert {"loss", "lr", "grad_norm", "guard"} <= set(charts), charts
    assert all(int(v) > 0 for v in charts.values()), charts
    assert dom.count('class="series"') >= 3  # loss, lr, grad-norm lines made it into the browser's DOM

    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    keep = os.environ.get("GRADIENCE_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    w, h, ch, rows = _decode_png(shot.read_bytes())
    assert (w, h) == (1000, 1400)
    # The series blue (#2563eb) is painted: the loss and lr lines are several hundred pixels long.
    assert _count_color(rows, ch, (0x25, 0x63, 0xEB)) > 800
    # The guard's red rollback lines and the × marker are painted too.
    assert _count_color(rows, ch, (0xDC, 0x26, 0x26)) > 40


def _svg(dom: str, name: str) -> str:
    m = re.search(rf'<svg [^>]*data-chart="{name}"[^>]*>.*?</svg>', dom, re.S)
    assert m, f"chart {name} missing from the browser's DOM"
    return m.group(0)


def test_audited_report_draws_heatmaps_spectra_and_udr(healthy_run: Path, audit_file: Path, tmp_path: Path) -> None:
    """The audit section's charts (heatmaps, spectra, UDR histogram) parse and paint in Chromium."""
    html = render_html(build_report(healthy_run, audit_path=audit_file))
    page = tmp_path / "audited.html"
    page.write_text(html)
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert _console_lines(r.stderr) == [], _console_lines(r.stderr)
    dom = r.stdout
    charts = dict(re.findall(r'data-chart="([^"]+)" data-points="(\d+)"', dom))
    # 4 layers × 3 modules; 6 spectra of 16 values; 7 UDR bins.
    assert {k: charts.get(k) for k in ("heat_utilization", "heat_k90", "spectra", "udr")} == {
        "heat_utilization": "12", "heat_k90": "12", "spectra": "96", "udr": "7"}, charts
    assert _svg(dom, "heat_utilization").count('class="cell"') == 12
    assert _svg(dom, "heat_k90").count('class="cell"') == 12
    spectra = _svg(dom, "spectra")
    assert spectra.count('class="series"') == 6 and spectra.count("<circle") >= 96
    assert _svg(dom, "udr").count('class="bar"') == 7

    # Paint check on the same page with everything but the audit charts hidden, so they fit one screen.
    only = tmp_path / "audit-charts.html"
    only.write_text(html.replace("</head>", "<style>nav,h1,.sub,footer,section:not(#audit),"
                                            "#audit>:not(figure):not(h3){display:none}</style></head>", 1))
    shot = tmp_path / "audit.png"
    r = _chromium(tmp_path, "--window-size=1000,1100", f"--screenshot={shot}", only.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    keep = os.environ.get("GRADIENCE_REPORT_AUDIT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    _, _, ch, rows = _decode_png(shot.read_bytes())
    # Heatmaps: the darkest ramp colour fills the k@90% cell of layer 3 / dense (and the legend's top).
    assert _count_color(rows, ch, (8, 48, 107), tol=30) > 800
    # Spectra: the most used (solid, #1d4ed8) and least used (dashed, #c2410c) lines.
    assert _count_color(rows, ch, (0x1D, 0x4E, 0xD8), tol=30) > 300
    assert _count_color(rows, ch, (0xC2, 0x41, 0x0C), tol=30) > 200
    # UDR histogram: green (< 0.1), cyan (0.1–1), amber (1–3) and red (> 3) bars.
    for rgb in ((0x16, 0xA3, 0x4A), (0x08, 0x91, 0xB2), (0xD9, 0x77, 0x06), (0xDC, 0x26, 0x26)):
        assert _count_color(rows, ch, rgb, tol=30) > 1000, rgb


# Layout probe run inside Chromium on a copy of the page (the report itself has no scripts; its CSP
# forbids them, so the copy drops that one meta tag). It records where the things a person opens the
# page for are, and every word of an overview card that the browser laid out over two lines.
_PROBE = """<script>
(() => {
const topOf = s => { const e = document.querySelector(s); return e ? e.getBoundingClientRect().top : 1e9; };
const bottomOf = s => { const e = document.querySelector(s); return e ? e.getBoundingClientRect().bottom : 1e9; };
const broken = [];
document.querySelectorAll('.kpi').forEach(card => {
  const walk = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    for (const m of n.data.matchAll(/\\S+/g)) {
      const r = document.createRange(); r.setStart(n, m.index); r.setEnd(n, m.index + m[0].length);
      const lines = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
      if (lines.size > 1) broken.push(m[0]);
    }
  }
});
document.body.setAttribute('data-probe', JSON.stringify({status: bottomOf('.badge'), health: bottomOf('#health + .kpis'),
  loss_top: topOf('svg[data-chart="loss"]'), loss_bottom: bottomOf('svg[data-chart="loss"]'),
  config: topOf('#configuration'), broken: broken}));
})();
</script>"""


def _probe(tmp_path: Path, html: str, name: str) -> dict:
    import json as _json

    page = tmp_path / name
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    page.write_text(html.replace("</body>", _PROBE + "</body>"))
    r = _chromium(tmp_path, "--window-size=1280,800", "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-probe="([^"]*)"', r.stdout)
    assert m, "layout probe did not run"
    return _json.loads(m.group(1).replace("&quot;", '"'))


def test_word_break_probe_sees_a_broken_word(tmp_path: Path) -> None:
    """Control: a card too narrow for its word, with the old anywhere-wrapping, is reported."""
    html = ('<!DOCTYPE html><html><body><div class="kpi" style="width:60px;overflow-wrap:anywhere">'
            "easy_classification</div></body></html>")
    assert _probe(tmp_path, html, "control.html")["broken"] == ["easy_classification"]


def test_first_screen_shows_status_loss_curve_and_health(tmp_path: Path) -> None:
    """At 1280×800 the first screenful holds the status, the health summary and the whole loss curve;
    the configuration table is below it, and no overview card breaks a word."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import CONFIG, write_healthy

    long_names = {**CONFIG, "model_name": "sentence-transformers/all-MiniLM-L6-v2-finetuned-sst2-long-name",
                  "dataset_name": "glue_sst2_validation_matched_and_mismatched"}
    run = write_healthy(tmp_path / "run.jsonl", config=long_names)
    p = _probe(tmp_path, render_html(build_report(run)), "first.html")
    assert p["status"] < 800 and p["health"] < 800, p
    assert p["loss_top"] < p["loss_bottom"] <= 800, p
    assert p["config"] > 800, p
    assert p["broken"] == [], p
