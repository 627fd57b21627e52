"""`gradience watch`: live terminal dashboard (textual) or a static rendering (``--once``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import GradienceError, UsageError, require
from ._output import console, err_console, print_json


def _resolve(path: Path) -> Path:
    # A run directory is accepted for its run.jsonl, like every writer names it.
    return path / "run.jsonl" if path.is_dir() else path


@click.command(name="watch")
@click.argument("run_file", metavar="RUN.jsonl", type=click.Path(path_type=Path))
@click.option("--run-id", default=None, help="Follow this run id (default: the run that started last).")
@click.option("--refresh", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between reads of the file.")
@click.option("--once", is_flag=True, help="Print one static rendering to stdout and exit (no TTY needed).")
@click.option("--json", "as_json", is_flag=True,
              help="With --once (implied): print the snapshot, histories and issues as JSON.")
@click.option("--width", default=None, type=click.IntRange(min=40, max=400),
              help="Columns for --once (default: the terminal width, or $COLUMNS, capped at 120).")
def watch(run_file: Path, run_id: str | None, refresh: float, once: bool, as_json: bool, width: int | None) -> None:
    """Live terminal dashboard for a run.jsonl (also while training writes it).

    RUN.jsonl may not exist yet (the dashboard waits for it) and may be a run directory
    holding run.jsonl. Keys: q quit, p pause/resume, ? help. When stdout or stdin is not a
    terminal (a pipe, a CI log) it prints the static rendering, as with --once.
    """
    from ..watch.tail import WatchState

    path = _resolve(run_file)
    if not (once or as_json) and not (sys.stdout.isatty() and sys.stdin.isatty()):
        # A live UI cannot draw into a pipe or a CI log: print the static view instead.
        err_console().print("gradience watch: not a terminal, printing one static rendering (--once)",
                            style="dim", highlight=False)
        once = True
    if once or as_json:
        if not run_file.exists():
            raise GradienceError("telemetry file not found", path=path,
                                 hint="check the path, or drop --once to wait for the file to appear")
        from ..trackers.importer import resolve_input

        path = resolve_input(run_file)  # telemetry as it is; an HF / TensorBoard log through an import
        state = WatchState(path, run_id=run_id)
        try:
            state.poll(budget_s=None)
        except OSError as exc:
            raise GradienceError(f"cannot read telemetry file: {exc.strerror}", path=path) from None
        state.finish()
        if run_id is not None:  # full id or unique prefix (one-line error when unknown or ambiguous)
            from ..telemetry.run_select import resolve_run_id

            if not state.run_ids:
                raise UsageError(f"run id {run_id!r} not found", path=path, hint="runs in this file: none")
            resolve_run_id(run_id, state.run_ids, path)
        view = state.view()
        if as_json:
            print_json(view.to_dict())
            return
        from ..watch.render import render_once

        con = console()
        if width is not None and width != con.width:
            from rich.console import Console

            con = Console(width=width, highlight=False, soft_wrap=False, markup=False)
        con.print(render_once(view, width=width or min(con.width, 120)))
        return

    if run_file.exists():
        from ..trackers.importer import detect_source, resolve_input

        found = detect_source(run_file)
        if found is not None and found[0] != "telemetry":
            path = resolve_input(run_file)  # an HF / TensorBoard log: its state now (an import)
    if path.exists() and not path.is_file():
        raise GradienceError("expected a telemetry file", path=path)
    require("textual", "tui", "gradience watch")
    from ..watch.app import WatchApp

    WatchApp(WatchState(path, run_id=run_id), refresh=refresh).run()
