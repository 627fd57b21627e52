"""`gradience watch`: follow a growing run.jsonl and show it as a terminal dashboard.

``tail`` (incremental follower + per-run state) and ``render`` (rich panels) need only
rich; ``app`` (the live textual UI) is imported only when the live dashboard runs.
"""

from .tail import FileFollower, RunHistory, SeriesBuffer, WatchState, WatchView

__all__ = ["FileFollower", "RunHistory", "SeriesBuffer", "WatchState", "WatchView"]
