"""`gradience bench`: prove suggested ranks on real data across seeds.

Parsing and printing only; the protocol lives in :mod:`gradience.bench`. Torch is imported
only by ``bench run`` once the config is valid, so ``--help`` and config errors are fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..bench.config import RETRAIN_SCALINGS
from ..bench.protocol import Reporter
from ..errors import UsageError
from ._output import console, err_console, fmt_num, print_json, styled
from .main import COMMANDS


def _parse_seeds(values: tuple[str, ...]) -> list[int] | None:
    if not values:
        return None
    seeds: list[int] = []
    for v in values:
        for part in v.replace(" ", ",").split(","):
            if not part:
                continue
            try:
                seeds.append(int(part))
            except ValueError:
                raise UsageError(f"--seeds: {part!r} is not an integer", hint="e.g. --seeds 42,43,44") from None
    return seeds


class RichReporter(Reporter):
    """Progress on stderr: one bar over all optimizer steps (ETA) plus the current variant × seed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.jobs = 0
        self.done = 0
        self.current = ""

    def start(self, total_units: int, jobs: int) -> None:
        self.jobs = jobs
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=err_console(), transient=False)
        self.progress.start()
        self.task = self.progress.add_task("bench", total=total_units)

    def _describe(self) -> str:
        return f"[{self.done}/{self.jobs}] {self.current}"

    def job_start(self, seed: int, variant: str, units: int, reused: bool) -> None:
        self.current = f"seed {seed} · {variant}" + (" (reused)" if reused else "")
        if self.progress is not None:
            self.progress.update(self.task, description=self._describe())

    def advance(self, units: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, units)

    def job_done(self, seed: int, variant: str, record: dict[str, Any], reused: bool) -> None:
        self.done += 1
        line = (f"seed {seed} · {variant}: {record['metric']} {record['value']:.4f} "
                f"({record['correct']}/{record['n']}), ranks {record.get('r_min')}–{record.get('r_max')}, "
                f"{record.get('lora_params'):,} LoRA params" + (" [reused]" if reused else ""))
        if self.progress is not None:
            self.progress.console.print(line)
            self.progress.update(self.task, description=self._describe())
        elif self.enabled:
            err_console().print(line)

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(styled((message, "yellow")))
        else:
            sys.stderr.write(message + "\n")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _short_ranks(label: str) -> str:
    return label.replace("r=", "").split(" (")[0]


def _print_summary(summary: dict[str, Any], verdicts: dict[str, Any], metric: str, title: str) -> None:
    """Cross-seed table: ranks, LoRA params, reduction (LoRA only / with head), mean metric, Δ mean/worst."""
    from rich import box
    from rich.table import Table

    from ..bench.report import _ordered

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
              collapse_padding=True)
    # Headers break onto two lines and the variant name folds, so at 80 columns no number is cut.
    cols = [("variant", "left"), ("ranks", "left"), ("LoRA\nparams", "right"), ("saved\n%", "right"),
            (metric.replace("_", " ").replace(" ", "\n", 1), "right"), ("Δ pt\nmean/worst", "right"),
            ("verdict", "left")]
    for col, just in cols:
        if col == "variant":
            t.add_column(col, justify=just, overflow="fold", min_width=8)  # type: ignore[arg-type]
        else:
            t.add_column(col, justify=just, no_wrap=True, overflow="fold")  # type: ignore[arg-type]
    rows: list[tuple[Any, ...]] = []
    p = summary.get("probe", {})
    rows.append(("probe", _short_ranks(p.get("ranks", "—")),
              fmt_num(round(p["lora_params"]) if p.get("lora_params") else None), "—",
              "—" if p.get("mean_value") is None else f"{100 * p['mean_value']:.2f}", "—", "reference"))
    colors = {"PASS": "green", "FAIL": "red", "UNDERTRAINED": "yellow", "CONTROL": "dim", "INCOMPLETE": "yellow"}
    strategies = summary.get("strategies", {})
    for name in _ordered(strategies):
        s = strategies[name]
        v = s.get("verdict") or "—"
        red, redh = s.get("reduction_lora"), s.get("reduction_with_head")
        saved = "—" if red is None else f"{100 * red:.1f}/{100 * (redh or 0):.1f}"
        dm, dw = s.get("mean_delta_points"), s.get("worst_delta_points")
        delta = "—" if dm is None else f"{dm:+.2f}/{dw:+.2f}"
        rows.append((name, _short_ranks(s["ranks"]),
                     fmt_num(round(s["lora_params"]) if s.get("lora_params") else None), saved,
                     "—" if s.get("mean_value") is None else f"{100 * s['mean_value']:.2f}", delta,
                     styled((v, colors.get(v, "white")), f" ({s.get('pass_fraction') or '—'})")))
    for row in rows:
        t.add_row(*row)
    t.caption = "saved % = fewer LoRA params / fewer incl. task head; Δ pt = mean / worst seed vs the probe"
    t.caption_justify = "left"
    c = console()
    # Never cut a number: below the width the numbers need (the variant name folded to 8) the table
    # is drawn wider than the terminal, which soft-wraps it (nothing lost) instead of dropping columns.
    widths = [max([len(str(getattr(r[i], "plain", r[i]))) for r in rows]
                  + [len(h) for h in cols[i][0].split("\n")]) for i in range(1, len(cols))]
    need = 8 + sum(widths) + 2 * len(widths) + 2
    if need <= c.width:
        c.print(t)
    else:  # (Console.print caps a width at the terminal's: draw on a console as wide as needed)
        from rich.console import Console

        Console(width=need, file=c.file, force_terminal=c.is_terminal, no_color=c.no_color or c.color_system is None,
                highlight=False, markup=False, soft_wrap=True).print(t)
    status = str(verdicts.get("status"))
    c.print(styled("verdict: ", (status, colors.get(status, "white")), f" — {verdicts.get('reason')}"))


@click.group(name="bench", help=COMMANDS["bench"][2] + "\n\nTrain a high-rank probe, audit it, retrain the "
             "suggested smaller ranks (and truncate the probe by SVD, then optionally train it a few steps), and "
             "judge every variant across seeds "
             "with the safe-uniform policy.")
def bench() -> None:
    pass


@bench.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Output directory; re-running with the same one resumes (finished variants are reused).")
@click.option("--smoke", is_flag=True, help="Apply the config's runtime.smoke overrides (tiny and fast).")
@click.option("--ci", is_flag=True, help="Exit 1 unless the policy passes.")
@click.option("--device", default=None, help="auto (default: the config's runtime.device), cpu, cuda, cuda:N, mps.")
@click.option("--seeds", multiple=True, help="Override the config's seeds, e.g. --seeds 42,43,44.")
@click.option("--retrain-scaling", type=click.Choice(RETRAIN_SCALINGS), default=None,
              help="Override compression.retrain_scaling: how a retrained variant's alpha follows its rank.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome (status, summary, verdicts) as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def run_cmd(config: Path, output: Path, smoke: bool, ci: bool, device: str | None, seeds: tuple[str, ...],
            retrain_scaling: str | None, as_json: bool, quiet: bool) -> None:
    """Run (or resume) a bench from a YAML CONFIG."""
    from ..bench.config import load_config
    from ..bench.protocol import check_output_dir, run_bench

    cfg = load_config(config)
    if smoke:
        if not cfg.runtime.smoke:
            raise UsageError("--smoke: this config has no runtime.smoke overrides",
                             hint="add e.g. runtime: {smoke: {train: {max_steps: 8, seeds: [42]}}}")
        cfg = cfg.with_smoke()
    parsed = _parse_seeds(seeds)
    if parsed is not None:
        cfg = cfg.with_seeds(parsed)
    if retrain_scaling is not None:
        cfg.compression.retrain_scaling = retrain_scaling  # a choice click has validated
    check_output_dir(output, cfg)
    if cfg.task.data_dir:  # before any progress is drawn: a missing data folder is the commonest first error
        from ..bench.data import check_data_dir

        check_data_dir(Path(cfg.task.data_dir))
    t0 = time.time()
    reporter = RichReporter(enabled=not quiet and not as_json)
    outcome = run_bench(cfg, output, device=device or "auto", reporter=reporter)
    wall = time.time() - t0
    if as_json:
        print_json({"status": outcome.status, "reason": outcome.reason, "output": str(outcome.output),
                    "wall_seconds": round(wall, 1), "summary": outcome.bench.get("summary"),
                    "verdicts": outcome.verdicts})
    else:
        _print_summary(outcome.bench.get("summary", {}), outcome.verdicts, cfg.task.metric,
                       f"bench {cfg.name}: seeds {outcome.bench.get('seeds_done')}")
        console().print(f"outputs in {output}/ (bench.json, bench.md, verdicts.json, bench_aggregate.md); "
                        f"wall {wall:.0f} s")
    if outcome.status == "UNDERTRAINED":
        sys.stderr.write(f"gradience: bench: UNDERTRAINED: {outcome.reason}\n")
        sys.exit(1)
    if ci and outcome.status != "PASS":
        sys.stderr.write(f"gradience: bench --ci: {outcome.status}: {outcome.reason}\n")
        sys.exit(1)


@bench.command("aggregate")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for bench_aggregate.json and bench_aggregate.md.")
@click.option("--json", "as_json", is_flag=True, help="Print bench_aggregate.json to stdout too.")
def aggregate_cmd(dirs: tuple[Path, ...], output: Path, as_json: bool) -> None:
    """Merge bench outputs of one config (e.g. seeds run separately) and re-judge across all seeds."""
    from ..bench.protocol import _write_json
    from ..bench.report import aggregate, load_bench, render_aggregate_md

    benches = [load_bench(d) for d in dirs]
    agg = aggregate(benches, sources=[str(d) for d in dirs])
    output.mkdir(parents=True, exist_ok=True)
    _write_json(output / "bench_aggregate.json", agg)
    (output / "bench_aggregate.md").write_text(render_aggregate_md(agg), encoding="utf-8")
    if as_json:
        print_json(agg)
    else:
        _print_summary(agg["summary"], agg["verdicts"], (agg.get("task") or {}).get("metric", "metric"),
                       f"aggregate of {len(dirs)} bench(es): seeds {agg['seeds']}")
        console().print(f"wrote {output}/bench_aggregate.json and bench_aggregate.md")


@bench.command("report")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print bench.json's summary and verdicts as JSON.")
def report_cmd(directory: Path, as_json: bool) -> None:
    """Re-render bench.md (and the aggregate) from a bench output DIRECTORY's bench.json."""
    from ..bench.report import load_bench, write_outputs

    b = load_bench(directory)
    write_outputs(directory if directory.is_dir() else directory.parent, b, b["verdicts"])
    if as_json:
        print_json({"status": b["verdicts"]["status"], "reason": b["verdicts"]["reason"],
                    "summary": b["summary"], "verdicts": b["verdicts"]})
    else:
        _print_summary(b["summary"], b["verdicts"], b["task"]["metric"], f"bench {b.get('name')}")
        console().print(f"re-rendered {directory}/bench.md")
