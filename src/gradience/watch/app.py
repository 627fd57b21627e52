"""The textual app behind ``gradience watch`` (needs the ``tui`` extra).

Layout for an 80×24 terminal: a two-line status banner, three rows of two bordered panels
(5 lines each), the alert/recommendation log taking the remaining height (scrollable),
and a one-line footer with the keys. Larger terminals give the extra room to the log.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

from rich.console import RenderableType
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from .render import PANELS, banner, issues_panel, log_panel
from .tail import WatchState, WatchView

__all__ = ["WatchApp"]

HELP_TEXT = """\
[b]gradience watch[/b] follows a run.jsonl as it grows.

[b]Keys[/b]
  q      quit
  p      pause / resume following the file
  r      every alert and recommendation in full (Esc closes)
  ?      show / hide this help
  ↑ ↓    scroll the alerts log (Tab or click to focus it)

[b]Panels[/b]
  banner      state, step / max steps, elapsed, rate, ETA; health =
              worst of the grad-norm level and the spectral κ̃ risk
  grad norm   last value, level (<0.1 vanishing, ≤5 healthy, ≤10
              warning, >10 critical), last 10 logged values + trend
  loss · lr   sparklines over the whole run
  eval        latest metrics per split; gaps test/train
  guard       snapshots, rollbacks, LR backoffs, lockout; κ̃ risk
  LoRA audit  suggested ranks from the latest lora_audit event
  issues      bad lines, replaced/truncated file, read progress

Press ? or Esc to close."""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 74; height: auto; max-height: 22; border: round $accent;
                          padding: 0 1; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help-text")


class LogScreen(ModalScreen[None]):
    """Every alert and recommendation of the run, newest first, with its whole message (the log
    panel cuts long messages to one row). Scrolls with ↑ ↓ / PgUp PgDn; Esc, r or q closes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,r,q", "dismiss", "close")]
    DEFAULT_CSS = """
    LogScreen { align: center middle; }
    LogScreen > VerticalScroll { width: 100%; height: 100%; border: round $accent; background: $surface;
                                 border-title-color: $text-accent; }
    LogScreen Static { padding: 0 1; }
    """

    def __init__(self, view: WatchView) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        scroll = VerticalScroll()
        scroll.border_title = "alerts · recommendations in full (newest first) — Esc closes"
        with scroll:
            yield Static(log_panel(self.view, 0, wrap=True), id="full-log")

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()


class PanelWidget(Widget):
    """A bordered panel whose body is a pure function of the app's current view."""

    DEFAULT_CSS = """
    PanelWidget { border: round $primary-darken-1; border-title-color: $text-accent;
                  padding: 0 1; height: 5; width: 1fr; }
    """

    def __init__(self, builder: Callable[[WatchView, int], RenderableType], title: str | None, *,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.builder = builder
        if title:
            self.border_title = title

    def render(self) -> RenderableType:
        app = self.app
        if not isinstance(app, WatchApp):
            raise TypeError("PanelWidget draws the view of the WatchApp it is mounted in")
        return self.builder(app.view, max(10, self.content_size.width))


class WatchApp(App[None]):
    """Live dashboard over a :class:`~gradience.watch.tail.WatchState`.

    Args:
        state: the follower/accumulator (already pointed at the file).
        refresh: seconds between polls of the file.
    """

    TITLE = "gradience watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("p", "toggle_pause", "pause/resume"),
        Binding("r", "full_log", "full log"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]
    CSS = """
    Screen { layout: vertical; }
    #banner { height: 2; border: none; padding: 0 1; background: $boost; }
    .row { height: 5; }
    #log-scroll { height: 1fr; min-height: 3; border: round $primary-darken-1;
                  border-title-color: $text-accent; }
    #log { height: auto; border: none; padding: 0 1; }
    """

    def __init__(self, state: WatchState, refresh: float = 1.0) -> None:
        super().__init__()
        self.state = state
        self.refresh_s = refresh
        self.view: WatchView = state.view()
        self._catching_up = False

    def compose(self) -> ComposeResult:
        builders = {pid: (title, fn) for pid, title, fn in PANELS}
        yield PanelWidget(banner, None, id="banner")
        for left, right in (("grad", "guard"), ("curves", "eval"), ("audit", "issues")):
            with Horizontal(classes="row"):
                for pid in (left, right):
                    title, fn = builders[pid]
                    if pid == "issues":
                        fn = partial(issues_panel, limit=2)
                    yield PanelWidget(fn, title, id=pid)
        scroll = VerticalScroll(id="log-scroll")
        scroll.border_title = builders["log"][0]
        with scroll:
            yield PanelWidget(builders["log"][1], None, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.poll_file()
        self.set_interval(self.refresh_s, self.poll_file)

    def poll_file(self) -> None:
        """Read what was appended (bounded time slice) and redraw."""
        self.state.poll(budget_s=0.05)
        self.redraw()
        # A big backlog (a long finished run): keep reading in slices without waiting for
        # the next interval, yielding to the event loop in between so keys still work.
        if not self.state.follower.caught_up and not self.state.paused and not self._catching_up:
            self._catching_up = True
            self.call_later(self._continue)

    def _continue(self) -> None:
        self._catching_up = False
        self.poll_file()

    def redraw(self) -> None:
        self.view = self.state.view()
        for widget in self.query(PanelWidget):
            widget.refresh(layout=widget.id == "log")

    def action_toggle_pause(self) -> None:
        paused = self.state.toggle_pause()
        self.notify("paused: the file is not read until you press p" if paused else "following the file again",
                    timeout=2)
        self.poll_file()

    def action_full_log(self) -> None:
        self.push_screen(LogScreen(self.state.view()))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
