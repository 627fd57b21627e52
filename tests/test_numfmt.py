"""One number rule for the terminal commands, the dashboard and the report."""

from __future__ import annotations

import math

import pytest

from gradience.cli._output import fmt_num
from gradience.numfmt import num, pct
from gradience.report import _fmt as report_fmt
from gradience.watch import render as watch_render


@pytest.mark.parametrize(("value", "text"), [
    (None, "—"), (True, "yes"), (False, "no"), (0, "0"), (1234567, "1,234,567"), (-42, "-42"),
    (0.0, "0"), (0.06646, "0.06646"), (0.5, "0.5"), (1.972, "1.972"), (12.3456, "12.35"), (999.94, "999.9"),
    (1234.5, "1,234"), (123456.7, "123,457"), (2.5e6, "2.50e+06"), (1e-4, "1.00e-04"), (-3.2e-5, "-3.20e-05"),
    (math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), ("text", "text"),
])
def test_the_rule(value, text):
    assert num(value) == text


def test_every_surface_uses_it():
    values = [None, 3, 0.0001234, 0.25, 17.5, 4321.0, 7.7e7, math.nan, -math.inf]
    for v in values:
        assert fmt_num(v) == report_fmt.num(v) == num(v)
        assert watch_render.num(v) == num(v, inf="Inf")
    assert watch_render.num(math.inf) == "Inf" and fmt_num(math.inf) == "Infinity"
    assert fmt_num(0.123456, 3) == report_fmt.num(0.123456, 3) == "0.123"


def test_pct():
    assert pct(0.917) == "91.7%" and pct(None) == "—" and pct(math.nan) == "—" and pct(1.0, 0) == "100%"
