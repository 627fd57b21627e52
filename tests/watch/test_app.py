"""The textual dashboard, driven headless with textual's pilot at 80×24."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("textual", reason="the tui extra (textual) is part of the dev install; install gradience[tui]")

from gradience.telemetry.writer import TelemetryWriter
from gradience.watch.app import WatchApp
from gradience.watch.tail import WatchState

from .runs import T0, full_run, run_start, train_step

SIZE = (80, 24)
REFRESH = 0.05


def screen_text(app: WatchApp) -> str:
    """The composed screen as plain text, one line per terminal row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def settle(pilot, seconds: float = 4 * REFRESH) -> None:  # type: ignore[no-untyped-def]
    await pilot.pause(seconds)


async def wait_for(app: WatchApp, pilot, needle: str, timeout: float = 30.0,  # type: ignore[no-untyped-def]
                   absent: bool = False) -> str:
    """Poll the screen until ``needle`` shows (or, with ``absent``, is gone; the interval timer
    drives the updates). The timeout is generous: it only matters on a loaded CI machine, a pass
    returns at once."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    text = screen_text(app)
    while (needle in text) is absent and loop.time() < end:
        await pilot.pause(REFRESH)
        text = screen_text(app)
    return text


def test_crafted_run_fills_every_panel_within_80x24(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")

    async def go() -> str:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            return await wait_for(app, pilot, "q quit")

    text = asyncio.run(go())
    rows = text.splitlines()
    assert len(rows) == 24
    for title in ("gradient norm", "guard · spectral", "loss · lr", "eval", "LoRA audit", "telemetry issues",
                  "alerts · recommendations"):
        assert title in text, title
    assert rows[0].lstrip().startswith("FINISHED OK  step 120/200 (60%)")
    # κ̃ is a neutral diagnostic: its WARNING level no longer turns the health word (false alarm gone).
    assert "health OK (grad healthy)" in rows[1] and "κ̃" not in rows[1]
    for expected in ("last 0.500  healthy", "snaps 1 · rollbacks 1 · backoffs 1", "train @120  loss 0.21",
                     "gap  acc Δ+0.070 · loss ×1.667 info", "r 16 → suggested 4 median / 8 p90", "147k params · util 0.21 · k90 p50 3", "GUARD_ROLLBACK",
                     "GRAD_NORM_WARNING", "compress_rank", "q quit"):
        assert expected in text, expected
    # newest first: the recommendation (step 120) is above the rollback (step 100)
    assert text.index("compress_rank") < text.index("GUARD_ROLLBACK") < text.index("GRAD_NORM_WARNING")


def test_appended_lines_update_the_screen(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    w = TelemetryWriter(p, run_id="live-run")
    w.run_start({"model_name": "tiny-bert", "training": {"max_steps": 100}})
    for s in range(1, 6):
        w.train_step(s, loss=2.0 - 0.01 * s, lr=1e-4, grad_norm=0.5)

    async def go() -> tuple[str, str]:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            before = await wait_for(app, pilot, "step 5/100")
            for s in range(6, 41):
                w.train_step(s, loss=2.0 / s, lr=1e-4 * (1 - s / 100), grad_norm=0.5 + s / 10)
            after = await wait_for(app, pilot, "step 40/100")
            return before, after

    before, after = asyncio.run(go())
    w.close()
    assert "RUNNING  step 5/100 (5%)" in before
    assert "RUNNING  step 40/100 (40%)" in after

    def row(text: str, prefix: str) -> str:
        return next(r for r in text.splitlines() if r.strip("│ ").startswith(prefix))

    assert row(before, "loss") != row(after, "loss")
    assert "last 4.500  healthy" in after  # grad norm 0.5 + 40/10


def test_malformed_line_is_an_issue_not_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1))

    async def go() -> str:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, "step 1/200")
            with open(p, "ab") as f:
                f.write(b'{"schema": "gradience.vnext.telemetry/v1", "ts": oops}\n')
                f.write(train_step(2, T0 + 2))
            text = await wait_for(app, pilot, "bad line")
            assert app.is_running
            return text

    text = asyncio.run(go())
    assert "1 bad line(s)" in text and "line 3 malformed_json" in text
    assert "step 2/200" in text  # the good line after it still counted


def test_pause_and_resume(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    p.write_bytes(run_start() + train_step(1, T0 + 1))

    async def go() -> tuple[str, str]:
        # A clock a few seconds after the events: the run is live, not stalled.
        app = WatchApp(WatchState(p, clock=lambda: T0 + 10), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, "step 1/200")
            await pilot.press("p")
            with open(p, "ab") as f:
                f.write(train_step(9, T0 + 9))
            await settle(pilot, 6 * REFRESH)
            paused = screen_text(app)
            await pilot.press("p")
            resumed = await wait_for(app, pilot, "step 9/200")
            return paused, resumed

    paused, resumed = asyncio.run(go())
    assert paused.splitlines()[0].lstrip().startswith("⏸ PAUSED  RUNNING")
    assert "step 1/200" in paused and "step 9/200" not in paused
    assert "step 9/200" in resumed and "PAUSED" not in resumed.splitlines()[0]


def test_help_opens_and_closes_and_q_quits(tmp_path: Path) -> None:
    p = full_run(tmp_path / "run.jsonl")

    async def go() -> tuple[str, str, bool]:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(app, pilot, "q quit")
            await pilot.press("question_mark")
            shown = await wait_for(app, pilot, "pause / resume following the file")
            await pilot.press("escape")
            hidden = await wait_for(app, pilot, "pause / resume following the file", absent=True)
            await pilot.press("q")
            await settle(pilot)
            return shown, hidden, app.is_running

    shown, hidden, running = asyncio.run(go())
    assert "pause / resume following the file" in shown
    assert "pause / resume following the file" not in hidden and "FINISHED OK" in hidden
    assert running is False


def test_waits_for_a_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "later" / "run.jsonl"

    async def go() -> tuple[str, str]:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            waiting = await wait_for(app, pilot, "WAITING")
            full_run(p.parent / "tmp.jsonl")
            p.parent.joinpath("tmp.jsonl").rename(p)
            return waiting, await wait_for(app, pilot, "FINISHED OK")

    (tmp_path / "later").mkdir()
    waiting, done = asyncio.run(go())
    assert "for the file to appear" in waiting
    assert "FINISHED OK  step 120/200" in done


def _screen_colours(app: WatchApp) -> set[tuple[int, int, int]]:
    """Every foreground/background colour on the composed screen (after textual's line filters)."""
    out = set()
    for strip in app.screen._compositor.render_strips():
        for seg in strip:
            if seg.style is None:
                continue
            for c in (seg.style.color, seg.style.bgcolor):
                if c is not None:
                    t = c.get_truecolor()
                    out.add((t.red, t.green, t.blue))
    return out


@pytest.mark.parametrize("no_color", [False, True])
def test_live_app_without_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_color: bool) -> None:
    """NO_COLOR (textual's monochrome mode) draws the live dashboard in greys only, with every word that
    carries the meaning of a colour still there; the run without NO_COLOR is the control."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    p = full_run(tmp_path / "run.jsonl")

    async def go() -> tuple[bool, str, set[tuple[int, int, int]], str]:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            # Wait for the last line drawn (the footer), not a fixed time: a loaded machine is slower.
            text = await wait_for(app, pilot, "q quit")
            colours = _screen_colours(app)
            await pilot.press("question_mark")
            shown = await wait_for(app, pilot, "pause / resume following the file")
            colours |= _screen_colours(app)
            await pilot.press("escape")
            await pilot.press("q")
            await settle(pilot)
            return app.no_color, text, colours, shown

    mono, text, colours, help_text = asyncio.run(go())
    assert mono is no_color
    hues = {c for c in colours if len(set(c)) > 1}
    if no_color:
        assert hues == set(), sorted(hues)
    else:
        assert hues, "control: the coloured dashboard should have coloured cells"
    for word in ("FINISHED OK", "health OK", "grad healthy", "κ̃ 14.25  changing", "last 0.500  healthy",
                 "rollbacks 1", "lockout no", "WARN GRAD_NORM_WARNING", "ERR  GUARD_ROLLBACK", "q quit"):
        assert word in text, word
    assert "pause / resume following the file" in help_text


def test_r_shows_every_recommendation_in_full(tmp_path: Path) -> None:
    """The log panel cuts a long message to one row; `r` opens every entry with its whole text."""
    from .runs import line

    p = full_run(tmp_path / "run.jsonl")
    tail = ("keep the best checkpoint, then stop earlier, lower the learning rate or the rank, and re-check "
            "the held-out split before trusting the final numbers END-OF-MESSAGE")
    with p.open("ab") as f:
        f.write(line("recommendation", 120, T0 + 200, "run-A", recommendations=[
            {"severity": "warning", "action": "memorization_detected", "message": tail}]))

    async def go() -> tuple[str, str, str]:
        app = WatchApp(WatchState(p), refresh=REFRESH)
        async with app.run_test(size=SIZE) as pilot:
            before = await wait_for(app, pilot, "q quit")
            await pilot.press("r")
            full = await wait_for(app, pilot, "END-OF-MESSAGE")
            await pilot.press("escape")
            after = await wait_for(app, pilot, "END-OF-MESSAGE", absent=True)
            return before, full, after

    before, full, after = asyncio.run(go())
    assert "END-OF-MESSAGE" not in before  # cut in the panel
    assert "END-OF-MESSAGE" in full and "memorization_detected" in full and "compress_rank" in full
    assert "END-OF-MESSAGE" not in after and "FINISHED OK" in after
