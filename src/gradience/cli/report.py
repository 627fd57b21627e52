"""`gradience report`: render a run.jsonl (and an adapter audit) as HTML or Markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError


@click.command(name="report")
@click.argument("run_file", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--audit", "audit_path", type=click.Path(path_type=Path), default=None,
              help="Audit JSON from `gradience audit --json --layers --top-singular-values 16` (per-module "
                   "heatmaps, spectra and rank/alpha patterns).")
@click.option("--peft-dir", type=click.Path(path_type=Path), default=None,
              help="Audit this PEFT adapter directory now instead of reading --audit.")
@click.option("-o", "--output", type=str, default=None,
              help="Output file (default: report.html / report.md beside RUN_FILE; '-' for stdout).")
@click.option("--run-id", default=None, help="Which run of the file (default: the run that started last).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True,
              help="html: self-contained page with charts; md: Markdown summary with the same numbers.")
@click.option("--max-points", type=click.IntRange(20, 5000), default=400, show_default=True,
              help="Most points per curve (longer runs are bucketed: mean line + min/max band).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON (path, bytes, sections).")
def report(run_file: Path, audit_path: Path | None, peft_dir: Path | None, output: str | None, run_id: str | None,
           fmt: str, max_points: int, as_json: bool) -> None:
    """Render RUN_FILE (a telemetry run.jsonl) as a self-contained HTML page or a Markdown summary.

    \b
    Examples:
      gradience report runs/demo/run.jsonl -o runs/demo/report.html
      gradience report runs/demo/run.jsonl --peft-dir runs/demo/peft
      gradience audit --peft-dir runs/demo/peft --json --layers --top-singular-values 16 > audit.json
      gradience report run.jsonl --audit audit.json --format md -o -
    """
    from ..report import build_report, render_html, render_markdown, resolve_output, write_report
    from ._output import console, print_json, styled

    if audit_path is not None and peft_dir is not None:
        raise UsageError("give either --audit or --peft-dir, not both")
    if output == "-" and as_json:
        raise UsageError("--json describes a written file; it cannot be combined with -o -")
    from ..trackers.importer import resolve_input

    source = resolve_input(run_file)  # telemetry as it is; an HF / TensorBoard log through an import
    out = resolve_output(run_file, output, fmt, protected=[p for p in (audit_path,) if p is not None])
    rep = build_report(source, run_id=run_id, audit_path=audit_path, peft_dir=peft_dir, max_points=max_points)
    text = render_html(rep) if fmt == "html" else render_markdown(rep)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    n_bytes = write_report(text, out)
    if as_json:
        print_json({
            "output": str(out),
            "format": fmt,
            "bytes": n_bytes,
            "run_id": rep.run.run_id,
            "status": rep.snapshot.status,
            "audit_source": rep.audit.source if rep.audit else None,
            "recommendations": len(rep.recommendations),
            "recommendation_source": rep.rec_source,
            "telemetry_issues": len(rep.run.issues),
        })
        return
    size = f"{n_bytes / 1024:.1f} KB" if n_bytes >= 1024 else f"{n_bytes} B"
    console().print(styled(("wrote", "green"), f" {out} ({size}) — run {rep.run.run_id}, status {rep.snapshot.status}"))
