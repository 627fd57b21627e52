"""`gradience demo`: the golden path in one command (train, then check / monitor / audit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._output import console, fmt_num, print_json, styled

FOLLOW_UP = (
    ("check", "gradience check --task sst2 --peft-dir {out}/peft --training-dir {out}/training"),
    ("monitor", "gradience monitor {out}/run.jsonl --verbose"),
    ("audit", "gradience audit --peft-dir {out}/peft --top-wasteful 10 --append {out}/run.jsonl"),
    ("watch", "gradience watch {out}/run.jsonl"),
    ("report", "gradience report {out}/run.jsonl --peft-dir {out}/peft -o {out}/report.html"),
)


def _rule(title: str) -> None:
    c = console()
    c.print("=" * 60)
    c.print(title)
    c.print("=" * 60)


def _run_view(title: str, argv: list[str]) -> None:
    """Run a real gradience command in this process and show its output."""
    from .main import app

    c = console()
    c.rule(styled((f"gradience {' '.join(argv[:1])}", "bold"), f"  ({title})"))
    try:
        app.main(argv, prog_name="gradience", standalone_mode=False)
    except click.exceptions.Exit:
        pass  # commands that exit 0/1 through click after printing
    except SystemExit:
        pass  # a gating exit code (1) is a finding, not a failure of the demo


@click.command(name="demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Output directory (run.jsonl is appended to, never overwritten).")
@click.option("--steps", type=click.IntRange(min=1), default=120, show_default=True, help="Optimizer steps.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, mps).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, init and order.")
@click.option("--model", default=None, help="Hub id or local path (default: the bundled all-MiniLM-L6-v2).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="GLUE-style TSV directory (train.tsv, dev.tsv; label first). Default: generated sentences.")
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank r.")
@click.option("--guard", is_flag=True, help="Enable the training guard (snapshots, rollback, LR backoff).")
@click.option("--inject-nan", is_flag=True, help="Inject NaN into a LoRA weight at --inject-step.")
@click.option("--inject-inf", is_flag=True, help="Inject +Inf into a LoRA weight at --inject-step.")
@click.option("--inject-spike", is_flag=True, help="Multiply the loss by 100 at --inject-step.")
@click.option("--inject-grad-explosion", is_flag=True, help="Multiply every gradient by 1e6 at --inject-step.")
@click.option("--persistent", is_flag=True, help="Repeat the injected fault at every step from --inject-step on.")
@click.option("--inject-step", type=click.IntRange(min=1), default=50, show_default=True,
              help="Optimizer step at which the fault is injected.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON (no views).")
def demo(out: Path, steps: int, device: str, seed: int, model: str | None, data_dir: Path | None, rank: int,
         guard: bool, inject_nan: bool, inject_inf: bool, inject_spike: bool, inject_grad_explosion: bool,
         persistent: bool, inject_step: int, as_json: bool) -> None:
    """Fine-tune LoRA on the bundled model offline, then show check, monitor and audit.

    Trains LoRA (query/value) on all-MiniLM-L6-v2 with a generated sentiment task on CPU in
    about 25 seconds on 2 cores (17 s of training), writing OUT/run.jsonl, OUT/peft/
    and OUT/training/training_args.json. A second run into the same OUT is appended to its run.jsonl.
    """
    from ..errors import UsageError
    from ..training.demo import DemoOptions, run_demo, validate_options

    chosen = [(flag, kind, label) for flag, kind, label in (
        (inject_nan, "nan_param", "NaN"), (inject_inf, "inf_param", "Inf"), (inject_spike, "loss_spike", "spike"),
        (inject_grad_explosion, "grad_explosion", "grad explosion")) if flag]
    if len(chosen) > 1:
        raise UsageError("choose one of --inject-nan, --inject-inf, --inject-spike, --inject-grad-explosion")
    if persistent and not chosen:
        raise UsageError("--persistent needs an --inject-* option")
    inject, label = (chosen[0][1], chosen[0][2]) if chosen else (None, None)
    opts = DemoOptions(out=out, steps=steps, device=device, seed=seed, model=model, data_dir=data_dir, rank=rank,
                       guard=guard, inject=inject, inject_step=inject_step, persistent=persistent)
    validate_options(opts)
    c = console()
    if as_json:
        result = run_demo(opts)
        print_json(_result_dict(result))
        return
    _rule("GRADIENCE DEMO")
    c.print(f"  Guard:       {guard}")
    if label is not None:
        c.print(f"  Inject {label}:  True @ step {inject_step}{' (persistent)' if persistent else ''}")
    c.print(f"  Model:   {model or 'all-MiniLM-L6-v2 (bundled)'}")
    c.print(f"  Data:    {data_dir or 'generated sentiment sentences'}")
    c.print(f"  LoRA:    r={rank}, targets query/value   Steps: {steps}   Device: {device}   Seed: {seed}")
    c.print(f"  Output:  {out}")
    result = _train_with_progress(opts, label)
    _rule("RESULTS")
    c.print(f"  Duration:  {result.duration_s:.1f} s")
    c.print(f"  Success:   {result.status == 'ok'}")
    c.print(f"  Status:    {result.status}   steps: {result.steps}   run_id: {result.run_id}")
    if result.reason:
        c.print(f"  Reason:    {result.reason}")
    if result.guard is not None:
        g = result.guard
        c.print("🛡️  Guard:")
        c.print(f"  Integrity: {g['integrity_status']}")
        c.print(f"  Rollbacks: {g['rollbacks']}")
        c.print(f"  Recoveries: {g['recoveries']}")
        c.print(f"  LR scale:  {g['final_lr_scale']:g}   snapshots: {g['snapshots']} "
                f"({g['snapshot_bytes'] / 1e6:.2f} MB held)")
    for split in ("train", "test"):
        m = result.final_eval.get(split)
        if m:
            c.print(f"  {split:<5} eval: loss {fmt_num(m.get('loss'))}  accuracy {fmt_num(m.get('accuracy'))}  "
                    f"n {fmt_num(m.get('n'))}")
    c.print(f"  Wrote:     {result.run_jsonl}, {result.peft_dir}/, {result.training_dir}/training_args.json")
    o = str(out)
    _run_view("pre-flight review of the configuration",
              ["check", "--task", "sst2", "--peft-dir", f"{o}/peft", "--training-dir", f"{o}/training"])
    _run_view("post-flight summary of the run", ["monitor", str(result.run_jsonl), "--verbose"])
    _run_view("spectral audit of the trained adapter", ["audit", "--peft-dir", f"{o}/peft", "--top-wasteful", "10"])
    c.rule(styled(("next", "bold")))
    for _, cmd in FOLLOW_UP:
        c.print(f"  {cmd.format(out=o)}")


def _train_with_progress(opts: Any, label: str | None) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..training.demo import run_demo

    with Progress(TextColumn("  training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console(), transient=False) as bar:
        task = bar.add_task("train", total=opts.steps)

        def progress(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total)

        def on_inject(step: int, injector: Any) -> None:
            if len(injector.injected_steps) == 1:
                bar.console.print(f"🔥 INJECTING {label} at step {step}...")
                bar.console.print(f"   Corrupted: {injector.target_name}")

        return run_demo(opts, progress=progress, on_inject=on_inject)


def _result_dict(result: Any) -> dict[str, Any]:
    return {
        "out": str(result.out),
        "run_jsonl": str(result.run_jsonl),
        "peft_dir": str(result.peft_dir),
        "training_dir": str(result.training_dir),
        "run_id": result.run_id,
        "steps": result.steps,
        "duration_s": result.duration_s,
        "status": result.status,
        "final_eval": result.final_eval,
        "reason": result.reason,
        "guard": result.guard,
        "injected_steps": result.injected_steps,
        "injected_target": result.injected_target,
    }
