"""The bench table never cuts a number or a header: at 80 columns it fits (headers on two lines, the
variant name folded); narrower, it is drawn wider than the terminal rather than dropping anything."""

from __future__ import annotations

import io
import re

import pytest

SUMMARY = {
    "probe": {"lora_params": 294912.0, "mean_value": 0.8309633, "ranks": "r=32"},
    "strategies": {
        name: {"lora_params": 29184.0, "mean_value": 0.8341743, "ranks": "r=1–7 (median 3)", "verdict": verdict,
               "pass_fraction": "5/5", "reduction_lora": 0.9010417, "reduction_with_head": 0.8986952,
               "mean_delta_points": 0.3211009, "worst_delta_points": -0.4587156}
        for name, verdict in (("uniform_median", "FAIL"), ("uniform_p90", "CONTROL"),
                              ("truncate_budget_heal", "PASS"))},
}


@pytest.mark.parametrize("width", [60, 80, 120])
def test_no_number_or_header_is_cut(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    from rich.console import Console

    import gradience.cli.bench as bench_cli

    buf = io.StringIO()
    monkeypatch.setattr(bench_cli, "console", lambda: Console(file=buf, width=width, soft_wrap=True, markup=False,
                                                              highlight=False))
    bench_cli._print_summary(SUMMARY, {"status": "PASS", "reason": "ok"}, "accuracy", "bench t")
    out = buf.getvalue()
    assert "…" not in out
    for text in ("294,912", "29,184", "90.1/89.9", "83.42", "+0.32/-0.46", "CONTROL (5/5)", "accuracy", "params",
                 "mean/worst"):
        assert text in out, (text, out)
    names = re.sub(r"\s+", "", "".join(ln.split()[0] if ln.split() else "" for ln in out.splitlines()))
    assert "truncate_budget_heal" in names or "truncate_budget_heal" in out  # folded across lines, all letters kept
    if width >= 80:
        rows = [ln for ln in out.splitlines() if "─" in ln or "(5/5)" in ln or "mean/worst" in ln]
        assert max(len(ln) for ln in rows) <= width
