"""Panel bodies: the right words and numbers, within the width, and readable without colour."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.text import Text

from gradience.watch.render import (
    banner,
    compact_count,
    curves_panel,
    fmt_duration,
    grad_panel,
    guard_panel,
    issues_panel,
    log_panel,
    overall_health,
    render_once,
)
from gradience.watch.tail import WatchState, WatchView

from .runs import T0, full_run, line, run_start, train_step


def plain(r: RenderableType, width: int = 76) -> str:
    con = Console(width=width, file=io.StringIO(), no_color=True, color_system=None, legacy_windows=False)
    con.print(r)
    return con.file.getvalue()  # type: ignore[attr-defined]


def styled_spans(r: RenderableType) -> dict[str, str]:
    """text fragment -> style, for every styled fragment of a Group/Text."""
    out: dict[str, str] = {}
    texts = r.renderables if hasattr(r, "renderables") else [r]
    for t in texts:
        assert isinstance(t, Text)
        for span in t.spans:
            out[t.plain[span.start:span.end]] = str(span.style)
    return out


def view_of(tmp_path: Path, lines: list[bytes], now: float = T0 + 1000) -> WatchView:
    p = tmp_path / "run.jsonl"
    p.write_bytes(b"".join(lines))
    st = WatchState(p, clock=lambda: now)
    st.poll(budget_s=None)
    return st.view()


@pytest.mark.parametrize(("g", "level", "style"), [
    (0.05, "vanishing", "bold blue"),
    (0.1, "healthy", "green"),
    (5.0, "healthy", "green"),
    (5.01, "warning", "yellow"),
    (10.0, "warning", "yellow"),
    (12.3456, "critical", "bold red"),
])
def test_grad_panel_level_word_colour_and_three_decimals(tmp_path: Path, g: float, level: str, style: str) -> None:
    # the level is sustained (the median of the last 5 norms): the run has been at g for 5 steps
    v = view_of(tmp_path, [run_start(), *(train_step(s, T0 + s, grad_norm=1.0) for s in range(1, 6)),
                           *(train_step(s, T0 + s, grad_norm=g) for s in range(6, 11))])
    body = grad_panel(v, 36)
    text = plain(body)
    assert f"last {g:.3f}" in text and level in text
    assert styled_spans(body)[level] == style
    # the values move away from a flat history of 1.0: the arrow follows them
    assert ("↑" if g > 1 else "↓") in text.splitlines()[1]


def test_grad_sparkline_label_gives_the_step_span(tmp_path: Path) -> None:
    """The sparkline holds the last 10 logged grad norms: logged every 10 steps, that is steps 30–120."""
    v = view_of(tmp_path, [run_start(), *(train_step(s, T0 + s) for s in range(10, 121, 10))])
    second = plain(grad_panel(v, 40)).splitlines()[1]
    assert "steps 30–120" in second and "last 10 steps" not in second
    # Fewer values than the window: the span of what there is.
    v = view_of(tmp_path, [run_start(), *(train_step(s, T0 + s) for s in (5, 10, 15))])
    assert "steps 5–15" in plain(grad_panel(v, 40)).splitlines()[1]
    v = view_of(tmp_path, [run_start(), train_step(7, T0 + 7)])
    assert "step 7" in plain(grad_panel(v, 40)).splitlines()[1]
    # A train_step without grad_norm is not part of the window.
    lines = [run_start(), *(train_step(s, T0 + s) for s in range(1, 11)),
             line("train_step", 11, T0 + 11, loss=0.5, lr=1e-4)]
    assert "steps 1–10" in plain(grad_panel(view_of(tmp_path, lines), 40)).splitlines()[1]


def test_grad_sparkline_label_after_a_rollback_counts_values(tmp_path: Path) -> None:
    """Steps that go back (a guard rollback re-logs them) have no single span: say how many values."""
    lines = [run_start(), *(train_step(s, T0 + s) for s in range(1, 9)),
             *(train_step(s, T0 + 10 + s) for s in (5, 6))]
    second = plain(grad_panel(view_of(tmp_path, lines), 40)).splitlines()[1]
    assert "last 10 values" in second and "steps" not in second


def test_nonfinite_grad_norm_is_called_out(tmp_path: Path) -> None:
    v = view_of(tmp_path, [run_start(), train_step(1, T0 + 1, grad_norm=float("nan"))])
    text = plain(grad_panel(v, 36))
    assert "NaN" in text and "nonfinite" in text and "non-finite 1" in text


@pytest.mark.parametrize(("ending", "label"), [
    (None, "RUNNING"),
    (b"ok", "FINISHED OK"),
    (b"aborted", "ABORTED"),
    (b"error", "ERROR"),
])
def test_banner_states(tmp_path: Path, ending: bytes | None, label: str) -> None:
    lines = [run_start(), *(train_step(s, T0 + s) for s in range(1, 51))]
    if ending is not None:
        lines.append(line("run_end", 50, T0 + 60, status=ending.decode(), reason="guard lockout"
                          if ending == b"aborted" else None))
    v = view_of(tmp_path, lines, now=T0 + 70)
    text = plain(banner(v, 76))
    assert text.startswith(label)
    assert "step 50/200 (25%)" in text
    if ending is None:
        # running: elapsed is measured to now; the ETA uses the measured 1 step/s
        assert "elapsed 1m10s" in text and "ETA 2m30s" in text
        assert "last event 20s ago" not in text  # under the stale threshold
    else:
        assert "elapsed 1m00s" in text and "ETA" not in text
    if ending == b"aborted":
        assert "guard lockout" in text


def test_stale_running_run_is_flagged(tmp_path: Path) -> None:
    v = view_of(tmp_path, [run_start(), train_step(1, T0 + 1)], now=T0 + 600)
    assert "last event 9m59s ago" in plain(banner(v, 76))


def test_banner_waits_for_missing_file_and_missing_run(tmp_path: Path) -> None:
    st = WatchState(tmp_path / "nope.jsonl")
    st.poll()
    assert "WAITING" in plain(banner(st.view(), 76)) and "to appear" in plain(banner(st.view(), 76))
    v = view_of(tmp_path, [run_start("run-A")])
    v.requested_run_id, v.snapshot = "run-Q", None
    assert "for run 'run-Q'" in plain(banner(v, 76))


def test_health_is_the_grad_level_and_ignores_the_spectral_risk() -> None:
    # κ̃ levels fire in healthy early training and did not lead a blow-up: never health (docs/guard.md).
    assert overall_health("healthy", "STABLE")[0] == "OK"
    assert overall_health("healthy", "DANGER")[0] == "OK"
    assert overall_health("healthy", "INSTABILITY")[0] == "OK"
    assert overall_health("critical", "STABLE")[0] == "BAD"
    assert overall_health("nonfinite", None)[0] == "CRITICAL"
    assert overall_health("vanishing", "LEARNING")[0] == "OK"  # a converged run: information
    assert overall_health("warning", None)[0] == "WATCH"
    assert overall_health(None, None)[0] == "—"
    assert overall_health(None, "DANGER")[0] == "—"


def test_kappa_is_shown_as_a_neutral_diagnostic(tmp_path: Path) -> None:
    v = view_of(tmp_path, [
        run_start(),
        line("train_step", 10, T0 + 10, loss=0.5, lr=1e-4, grad_norm=0.8),
        line("metrics", 20, T0 + 20, kind="spectral", metrics={"kappa_tilde": 40.0, "risk_level": "INSTABILITY"}),
    ])
    head = plain(banner(v, 76))
    assert "health OK" in head and "INSTABILITY" not in head and "κ̃" not in head
    body = plain(guard_panel(v, 76))
    assert "κ̃ 40  volatile @20 · 1 samples · diagnostic" in body and "INSTABILITY" not in body
    styles = {str(span.style) for span in guard_panel(v, 76).renderables[-1].spans}
    assert not any("red" in st for st in styles), styles


def test_guard_panel_lockout(tmp_path: Path) -> None:
    v = view_of(tmp_path, [
        run_start(),
        line("alert", 5, T0 + 5, severity="error", code="GUARD_ROLLBACK", message="m", context={}),
        line("alert", 6, T0 + 6, severity="critical", code="GUARD_LOCKOUT", message="m", context={}),
        line("metrics", 6, T0 + 6, kind="guard", action="summary",
             metrics={"snapshots": 3, "rollbacks": 1, "lr_backoffs": 2, "final_lr_scale": 0.25}),
    ])
    body = guard_panel(v, 36)
    text = plain(body)
    assert "snaps 3" in text and "rollbacks 1" in text and "backoffs 2" in text
    assert "LOCKOUT" in text and "lr ×0.25" in text
    assert styled_spans(body)["LOCKOUT"] == "bold red"


def test_curves_use_the_whole_run(tmp_path: Path) -> None:
    v = view_of(tmp_path, [run_start(), *(train_step(s, T0 + s) for s in range(1, 301))])
    text = plain(curves_panel(v, 36))
    loss_line = next(ln for ln in text.splitlines() if ln.startswith("loss"))
    spark = loss_line.split()[1]
    assert spark[0] == "█" and spark[-1] == "▁"  # decaying loss, first to last
    assert "@300 · spikes 0" in text  # the minimum of a decaying loss is its last step


def test_log_newest_first_with_limit(tmp_path: Path) -> None:
    alerts = [line("alert", s, T0 + s, severity="warning", code=f"CODE_{s}", message="", context={})
              for s in range(1, 6)]
    v = view_of(tmp_path, [run_start(), *alerts])
    text = plain(log_panel(v, 76, limit=2))
    assert text.index("CODE_5") < text.index("CODE_4") and "CODE_3" not in text
    assert "… 3 older" in text


def test_issue_panel_shows_bad_lines(tmp_path: Path) -> None:
    v = view_of(tmp_path, [run_start(), b"{oops\n", train_step(1, T0 + 1)])
    text = plain(issues_panel(v, 36))
    assert "1 bad line(s)" in text and "line 2 malformed_json" in text


def test_once_fits_its_width_and_has_no_escape_codes(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")
    st = WatchState(p)
    st.poll(budget_s=None)
    for width in (60, 80, 120):
        out = plain(render_once(st.view(), width=width), width=width)
        assert "\x1b" not in out
        assert max(cell_len(ln) for ln in out.splitlines()) <= width


def test_formatters() -> None:
    assert fmt_duration(None) == "—" and fmt_duration(59.9) == "59s" and fmt_duration(3725) == "1h02m"
    assert fmt_duration(2 * 86400 + 3 * 3600) == "2d03h"
    assert compact_count(147456) == "147k" and compact_count(1234567) == "1.23M" and compact_count(None) == "—"


def test_static_log_wraps_long_messages_instead_of_cutting(tmp_path: Path) -> None:
    msg = "lower the learning rate and compare the gap " * 4 + "END"
    v = view_of(tmp_path, [run_start(), line("alert", 3, T0 + 3, severity="warning", code="C", message=msg,
                                             context={})])
    cut = plain(log_panel(v, 60), width=60)
    folded = plain(log_panel(v, 60, wrap=True), width=60)
    assert "END" not in cut and len(cut.splitlines()) == 1
    assert "END" in folded and " ".join(folded.split()).endswith(" ".join(msg.split()))
