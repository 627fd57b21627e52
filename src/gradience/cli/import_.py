"""`gradience import`: read an HF output_dir / trainer_state.json or a TensorBoard log into telemetry v1."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError


@click.command(name="import")
@click.argument("source", metavar="SOURCE", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="The telemetry file to write (default: gradience-import.jsonl beside SOURCE).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def import_(source: Path, output: Path | None, force: bool, as_json: bool) -> None:
    """Read a run trained without Gradience into a telemetry v1 file.

    SOURCE is an HF Trainer output_dir (its trainer_state.json, or its newest checkpoint's), a
    trainer_state.json, or a TensorBoard log directory (transformers' TensorBoardCallback, or a
    `gradience export`). monitor, watch and report also take SOURCE directly.

    \b
    Examples:
      gradience import out/ -o runs/imported.jsonl
      gradience import out/runs/Nov29_12-00-00_host
    """
    from ..trackers.importer import import_events, write_import
    from ._output import console, print_json, styled

    kind, events = import_events(source)
    if output is None:
        base = source if source.is_dir() else source.parent
        output = base / "gradience-import.jsonl"
    # Never overwrite what is being imported: the source file, or an existing file inside the source
    # folder other than an earlier import (trainer_state.json, event files, checkpoints).
    src, out = source.resolve(), output.resolve()
    inside = src.is_dir() and src in out.parents and out.exists() and out.name != "gradience-import.jsonl"
    if out == src or inside:
        raise UsageError("the output would overwrite the log being imported", path=output,
                         hint="write the telemetry somewhere else, e.g. -o runs/imported.jsonl")
    if output.is_dir():
        raise UsageError("the output is a directory", path=output, hint="give a file name, e.g. -o runs/imported.jsonl")
    if output.exists() and not force:
        raise UsageError("the output file exists", path=output, hint="choose another --output, or add --force")
    if output.exists():
        output.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    write_import(events, output)
    counts = {name: sum(1 for e in events if e["event"] == name) for name in ("train_step", "eval")}
    if as_json:
        print_json({"source": str(source), "format": kind, "output": str(output), **counts})
        return
    console().print(styled(("imported", "green"), f" {source} ({kind}: {counts['train_step']} train steps, "
                           f"{counts['eval']} evals) → {output}"))
