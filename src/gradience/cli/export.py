"""`gradience export`: write a telemetry run to TensorBoard or MLflow."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GradienceError, UsageError


@click.command(name="export")
@click.argument("run_file", metavar="RUN.jsonl", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["tensorboard", "mlflow"]), required=True,
              help="The tracker to write to.")
@click.argument("destination", metavar="DEST")
@click.option("--run-id", default=None, help="Which run of the file (default: the run that started last).")
@click.option("--experiment", default="gradience", show_default=True, help="MLflow experiment name.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(run_file: Path, target: str, destination: str, run_id: str | None, experiment: str,
           as_json: bool) -> None:
    """Write RUN.jsonl's scalars, evals, guard/κ̃ events, alerts and audit to a tracker.

    DEST is a TensorBoard log directory (--to tensorboard) or an MLflow tracking URI
    (--to mlflow; e.g. sqlite:///mlflow.db, MLflow's default local store). Keys follow the
    trackers' conventions: train/…, eval/<split>/…, gradience/… (docs/trackers.md).

    \b
    Examples:
      gradience export runs/demo/run.jsonl --to tensorboard runs/demo/tb
      gradience export runs/demo/run.jsonl --to mlflow sqlite:///mlflow.db
    """
    from ..telemetry.reader import TelemetryReader
    from ..trackers.export import (
        export_mlflow,
        export_tensorboard,
        iter_run,
        run_params,
        tracker_points,
    )
    from ._output import console, print_json, styled

    path = run_file / "run.jsonl" if run_file.is_dir() else run_file
    if not path.is_file():
        raise GradienceError("telemetry file not found", path=path, hint="give a run.jsonl or its run directory")
    everything = list(TelemetryReader(path).iter_events())
    if not any(e.get("event") in ("run_start", "train_step", "eval") for e in everything):
        raise UsageError("no telemetry events to export", path=path,
                         hint="give a Gradience run.jsonl (or convert a log first with `gradience import`)")
    events = list(iter_run(everything, run_id, path))
    points, notes = tracker_points(events)
    start = next((e for e in events if e.get("event") == "run_start"), None)
    rid = events[0].get("run_id")
    if target == "tensorboard":
        dest = Path(destination)
        if not destination.strip():
            raise UsageError("the TensorBoard log directory is empty", hint="give a directory, e.g. runs/demo/tb")
        if dest.exists() and not dest.is_dir():
            raise UsageError("the TensorBoard destination exists and is not a directory", path=dest,
                             hint="give a log directory (new or existing); TensorBoard writes event files into it")
        n = export_tensorboard(points, notes, dest)
        where = destination
    else:
        where = export_mlflow(points, notes, destination, experiment=experiment, run_name=f"gradience-{rid}"[:60],
                              params=run_params(start))
        n = len(points)
    if as_json:
        print_json({"to": target, "destination": destination, "run_id": rid, "scalars": n, "notes": len(notes),
                    "keys": sorted({p.key for p in points}), "mlflow_run_id": where if target == "mlflow" else None})
        return
    console().print(styled(("exported", "green"), f" run {rid} to {target} ({n} scalars, {len(notes)} notes) → {where}"))
