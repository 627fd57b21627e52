"""SVG primitives: escaping, gaps for non-finite values, log scales, heatmap cells."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from gradience.report.svg import Marker, Series, bar_chart, fmt_tick, heatmap, line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def test_labels_are_escaped_and_svg_is_well_formed() -> None:
    evil = '<script>alert("x")</script> & co'
    svg = line_chart("t", [Series(evil, [0, 1, 2], [1.0, 2.0, 3.0])], title=evil,
                     markers=[Marker(1, 2.0, "x", title=evil)])
    assert "<script>" not in svg
    root = ET.fromstring(svg)  # parses: every attribute and text node is escaped
    assert root.get("data-points") == "3"
    assert root.find(f"{NS}title").text == evil


def test_nan_breaks_the_line_and_log_scale_skips_nonpositive() -> None:
    svg = line_chart("t", [Series("s", [0, 1, 2, 3, 4], [1.0, 2.0, math.nan, 3.0, 4.0])])
    d = ET.fromstring(svg).find(f".//{NS}path[@class='series']").get("d")
    assert d.count("M") == 2 and d.count("L") == 2
    svg_log = line_chart("t", [Series("s", [0, 1, 2], [0.0, 10.0, 100.0])], y_log=True)
    d = ET.fromstring(svg_log).find(f".//{NS}path[@class='series']").get("d")
    assert d.count("M") == 1 and d.count("L") == 1  # the 0 point is dropped on a log axis


def test_heatmap_cells_and_missing_values() -> None:
    svg = heatmap("h", ["layer 0", "layer 1"], ["q", "v"], [[0.1, None], [0.5, 0.9]], vmin=0, vmax=1)
    root = ET.fromstring(svg)
    cells = root.findall(f".//{NS}rect[@class='cell']")
    assert len(cells) == 3
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "0.90" in texts and "—" in texts


def test_bar_chart_heights_are_proportional() -> None:
    root = ET.fromstring(bar_chart("b", ["a", "b"], [1.0, 2.0]))
    bars = root.findall(f".//{NS}rect[@class='bar']")
    h = [float(b.get("height")) for b in bars]
    assert h[1] == __import__("pytest").approx(2 * h[0], rel=0.02)


def test_ticks_and_labels() -> None:
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]
    assert fmt_tick(0.0001) == "1e-4" and fmt_tick(25000) == "25k" and fmt_tick(0.25) == "0.25"


def test_constant_series_is_drawn_flat() -> None:
    """Float noise in bucket means of a constant (e.g. lr) must not become visible wiggles."""
    ys = [1e-4 * (1 + k * 1e-15) for k in range(50)]
    d = ET.fromstring(line_chart("t", [Series("lr", list(range(50)), ys)])).find(f".//{NS}path").get("d")
    y_coords = {pt.split(",")[1] for pt in d.replace("M", "L").split("L") if pt}
    assert len(y_coords) == 1


def test_x_axis_ticks_are_whole_numbers_when_x_is_a_step_or_index() -> None:
    import re

    svg = line_chart("s", [Series("a", [float(i) for i in range(1, 17)], [float(i) for i in range(1, 17)])],
                     x_label="index i", y_log=True)
    x_ticks = re.findall(r'text-anchor="middle" fill="#4b5563">([^<]+)</text>', svg)
    assert x_ticks and all("." not in t for t in x_ticks), x_ticks
