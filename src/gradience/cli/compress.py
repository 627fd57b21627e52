"""`gradience compress`: parse options, run :func:`gradience.audit.compress.compress_adapter`, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._output import console, fmt_num, print_json, styled


@click.command(name="compress")
@click.option("--peft-dir", type=click.Path(path_type=Path), default=None,
              help="Input PEFT adapter directory (or a LoRA .safetensors file).")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Input single-file LoRA (kohya sd-scripts or diffusers .safetensors).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output directory (PEFT), or .safetensors file / directory (single-file formats); never the input.")
@click.option("--adapter-name", default=None, help="The adapter to compress when a folder holds several.")
@click.option("--rank", type=click.IntRange(min=1), default=None, help="Truncate every module to min(N, r).")
@click.option("--energy", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Per module the smallest rank keeping this fraction of Σσ² (energy, not norm).")
@click.option("--strategy", type=click.Choice(["uniform_median", "uniform_p90", "per_layer"]), default=None,
              help="Use the audit's suggested ranks.")
@click.option("--budget-params", type=click.IntRange(min=1), default=None,
              help="Per-module ranks keeping the most update energy within N LoRA parameters.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output directory.")
@click.option("--dry-run", is_flag=True, help="Report what would be kept; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (documented in docs/compress.md).")
def compress(peft_dir: Path | None, weights: Path | None, out: Path, adapter_name: str | None, rank: int | None,
             energy: float | None, strategy: str | None,
             budget_params: int | None, force: bool, dry_run: bool, as_json: bool) -> None:
    """Shrink a trained LoRA adapter exactly (best rank-k ΔW per module), without retraining.

    Writes adapter_config.json + adapter_model.safetensors that PEFT loads unchanged on the
    same base model; a kohya or diffusers LoRA file is written back in its own format. Verify the smaller adapter with an eval before you ship it.
    """
    from ..audit.compress import compress_adapter
    from ..errors import UsageError

    if (peft_dir is None) == (weights is None):
        raise UsageError("give the input as --peft-dir DIR or --weights FILE (one of them)")
    src = peft_dir if peft_dir is not None else weights
    assert src is not None
    rep = compress_adapter(src, out, rank=rank, energy=energy, strategy=strategy,
                           budget_params=budget_params, force=force, dry_run=dry_run,
                           adapter_name=adapter_name)
    if as_json:
        print_json(rep)
        return
    _print(rep)


def _print(rep: dict[str, Any]) -> None:
    from .audit import _shared_prefix, _table, name_column_width

    c = console()
    s = rep["summary"]
    how = {"rank": f"rank {s['rank']}", "energy": f"energy {s['energy']}",
           "budget_params": f"budget {fmt_num(s['budget_params'])} params"}.get(s["method"], f"strategy {s['method']}")
    c.print(styled(("Compress", "bold"), f" {s['input']} → {s['output']} ({how})"
                   f"{' [dry run: nothing written]' if s['dry_run'] else ''}"))
    prefix = _shared_prefix([m["name"] for m in rep["modules"]])
    if prefix:
        c.print(styled(("module names below are shown without their shared prefix ", "dim"), (prefix, "dim bold")))
    names = [m["name"][len(prefix):] for m in rep["modules"]]
    t = _table("Modules")
    for col in ("module", "r", "new\nr", "retained\nenergy", "spectral error\ns·σₖ₊₁"):
        # Numbers never wrap; on a narrow terminal the module name folds so the table fits.
        t.add_column(col, justify="left" if col == "module" else "right", overflow="fold",
                     no_wrap=col != "module",
                     min_width=name_column_width(max(map(len, names), default=6), c.width) if col == "module" else None)
    for name, m in zip(names, rep["modules"], strict=True):
        t.add_row(name, str(m["old_r"]), str(m["new_r"]), f"{100 * m['retained_energy']:.2f}%",
                  fmt_num(m["spectral_error"], 3))
    c.print(t)
    saved = 100 * s["params_saved_fraction"]
    c.print(f"parameters {fmt_num(s['params_before'])} → {fmt_num(s['params_after'])} ({saved:.1f}% fewer); "
            f"file {fmt_num(s['bytes_before'])} → {'~' if s['bytes_after_estimated'] else ''}{fmt_num(s['bytes_after'])} bytes")
    c.print(f"retained energy: min {100 * s['retained_energy_min']:.2f}%, mean {100 * s['retained_energy_mean']:.2f}%; "
            f"{s['n_truncated']}/{s['n_modules']} modules truncated"
            + (f", {s['n_untouched']} untouched (factors copied bit for bit)" if s["n_untouched"] else "")
            + f"; new r={s['r']} α={fmt_num(s['lora_alpha'])}"
            + (f", {len(rep['config']['rank_pattern'])} rank_pattern override(s)" if rep["config"]["rank_pattern"] else ""))
    if not s["dry_run"]:
        c.print("Next: evaluate the compressed adapter against the original before using it.")
