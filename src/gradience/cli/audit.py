"""`gradience audit`: parse options, run :func:`gradience.audit.audit_adapter`, print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import GradienceError, UsageError
from ..numfmt import pct as _pct
from ._output import console, fmt_num, print_json, styled

if TYPE_CHECKING:
    from ..audit import AuditResult


@click.command(name="audit")
@click.option("--peft-dir", type=click.Path(path_type=Path), help="PEFT adapter directory (adapter_config.json + weights).")
@click.option("--adapter-config", type=click.Path(path_type=Path), help="Explicit adapter_config.json.")
@click.option("--weights", type=click.Path(path_type=Path), help="Explicit weights file (.safetensors or .bin).")
@click.option("--adapter-name", default=None,
              help="The adapter to audit when a folder or file holds several (never merged).")
@click.option("--initial-adapter", type=click.Path(path_type=Path), default=None,
              help="For a PiSSA/OLoRA/CorDA/LoftQ adapter: the adapter saved right after get_peft_model; "
                   "the audit then measures the learned update s·(B·A − B₀·A₀).")
@click.option("--top-wasteful", type=click.IntRange(min=0), default=10, show_default=True,
              help="Show the N modules with the most unused parameters.")
@click.option("--top-singular-values", type=click.IntRange(min=0), default=0,
              help="Keep the top K singular values of B·A per module (JSON rows, unscaled).")
@click.option("--layers", "show_layers", is_flag=True, help="Include every module (a `layers` list in JSON).")
@click.option("--suggest-per-layer", is_flag=True, help="Print the PEFT-ready per-module rank_pattern/alpha_pattern.")
@click.option("--budget-params", type=click.IntRange(min=1), default=None,
              help="Allocate per-module ranks that keep the most energy within N LoRA parameters.")
@click.option("--energy", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Allocate per-module ranks that keep this fraction of the total update energy.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (documented in docs/audit.md).")
@click.option("--append", "append_to", type=click.Path(path_type=Path),
              help="Append the summary as a metrics(kind=lora_audit) event to the last run in RUN.jsonl.")
@click.option("--base-model", help="Base model directory or hub id (local cache) for UDR/SDI.")
@click.option("--base-norms-cache", type=click.Path(path_type=Path), help="Directory caching base-weight norms.")
@click.option("--no-udr", is_flag=True, help="Skip UDR/SDI even when the base model is available.")
def audit(peft_dir: Path | None, adapter_config: Path | None, weights: Path | None, adapter_name: str | None,
          initial_adapter: Path | None, top_wasteful: int,
          top_singular_values: int, show_layers: bool, suggest_per_layer: bool, budget_params: int | None,
          energy: float | None, as_json: bool, append_to: Path | None, base_model: str | None,
          base_norms_cache: Path | None, no_udr: bool) -> None:
    """Audit a LoRA adapter's spectrum for wasted rank (exact, from the factors).

    Reports stable/effective rank, utilization, energy ranks, suggested ranks with their
    parameter savings, where the update energy sits, and UDR against the base weights.
    """
    from ..audit import audit_adapter

    if budget_params is not None and energy is not None:
        raise UsageError("--budget-params and --energy are alternatives; give one")
    if no_udr and base_model is not None:
        raise UsageError("--no-udr contradicts --base-model")
    run_id = None
    if append_to is not None:
        run_id = _last_run(append_to)

    progress = None
    status = None
    if not as_json and sys.stderr.isatty():
        from ._output import err_console

        status = err_console().status("auditing adapter…")
        status.start()

        def progress(done: int, total: int) -> None:
            assert status is not None
            status.update(f"auditing adapter… {done}/{total} modules")

    try:
        res = audit_adapter(peft_dir, adapter_config=adapter_config, weights=weights,
                            top_singular_values=top_singular_values, base_model=base_model,
                            base_norms_cache=base_norms_cache, udr=not no_udr, budget_params=budget_params,
                            energy=energy, progress=progress, adapter_name=adapter_name,
                            initial_adapter=initial_adapter)
    finally:
        if status is not None:
            status.stop()

    if append_to is not None:
        from ..telemetry import TelemetryWriter

        with TelemetryWriter(append_to, run_id=run_id) as w:
            w.metrics(kind="lora_audit", metrics=res.summary.to_dict())

    if as_json:
        print_json(res.to_dict(layers=show_layers))
        return
    _print_report(res, top_wasteful, show_layers, suggest_per_layer, append_to)


def _last_run(path: Path) -> str:
    from ..telemetry import TelemetryReader

    run_id = TelemetryReader(path).last_run_id()
    if run_id is None:
        raise GradienceError("no run in the telemetry file to append to", path=path,
                             hint="append to a run.jsonl written by a training run (it starts with run_start)")
    return run_id


def _table(title: str) -> Any:
    """A compact table (no vertical rules, one space between columns) so the module tables
    fit an 80-column terminal without folding names."""
    from rich import box
    from rich.table import Table

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                 collapse_padding=True, show_edge=False)


def _print_report(res: AuditResult, top_n: int, show_layers: bool, per_layer: bool, appended: Path | None) -> None:
    from rich.table import Table

    c = console()
    s = res.summary
    a = res.adapter
    where = a["config_path"].rsplit("/", 1)[0] if a["config_path"] else a["weights_path"]
    fmt = ("", "") if a["format"] == "peft" else (f"  ({a['format']} file)", "dim")
    c.print(styled(("LoRA audit", "bold"), "  ", str(where), fmt))
    c.print(f"  {s.n_layers} modules · {fmt_num(s.total_lora_params)} LoRA parameters · r={s.r} "
            f"α={fmt_num(s.lora_alpha)}{' · rsLoRA' if s.use_rslora else ''}{' · DoRA' if s.use_dora else ''}"
            f" · {'/'.join(a['dtype'])}")
    c.print()
    t = Table(title="Summary", show_header=False, title_justify="left", box=None, pad_edge=False)
    t.add_column(style="dim")
    t.add_column(justify="right")
    for label, values in (("stable rank mean / median", (s.stable_rank_mean, s.stable_rank_median)),
                          ("stable rank (param-weighted)", (s.stable_rank_weighted_mean,)),
                          ("effective rank mean", (s.effective_rank_mean,)),
                          ("utilization mean (stable rank / r)", (s.utilization_mean,)),
                          ("energy rank @90% p50 / p90", (s.energy_rank_90_p50, s.energy_rank_90_p90)),
                          ("‖ΔW‖₂ mean / p90", (s.delta_sigma_max_scaled_mean, s.delta_sigma_max_scaled_p90)),
                          ("‖ΔW‖_F mean / p90", (s.delta_frob_norm_scaled_mean, s.delta_frob_norm_scaled_p90))):
        t.add_row(label, " / ".join(fmt_num(v, 3) for v in values))
    c.print(t)
    c.print()

    bt = _table("By module type")
    for col in ("type", "modules", "params", "stable\nrank", "util", "k@90\np50", "suggested\nr", "energy\nshare"):
        bt.add_column(col, justify="left" if col == "type" else "right")
    for typ, row in (s.by_type or {}).items():
        bt.add_row(typ, str(row.n), fmt_num(row.params), fmt_num(row.stable_rank_mean, 3),
                   fmt_num(row.utilization_mean, 3), fmt_num(row.energy_rank_90_p50, 3),
                   fmt_num(row.suggested_r_median), _pct(row.energy_share))
    c.print(bt)
    c.print()

    prefix = _shared_prefix([r.name for r in res.layers])
    if prefix and (top_n > 0 or show_layers):
        c.print(styled(("module names below are shown without their shared prefix ", "dim"), (prefix, "dim bold")))

    def short(name: str) -> str:
        return name[len(prefix):] if prefix else name

    if top_n > 0:
        wasteful = res.top_wasteful(top_n)
        wt = _table(f"Most wasteful modules (top {top_n}: params × (1 − utilization))")
        name_w = max([len(short(r.name)) for r in wasteful] + [6])
        for col in ("module", "type", "r", "params", "stable\nrank", "util", "k@90", "suggested\nr"):
            # The name keeps its width where the terminal has room (folded past name_column_width);
            # numbers are short. The table always fits the terminal.
            wt.add_column(col, justify="left" if col in ("module", "type") else "right", overflow="fold",
                          min_width=name_column_width(name_w, c.width) if col == "module" else None)
        for r in wasteful:
            wt.add_row(short(r.name), r.module_type, str(r.r), fmt_num(r.params), fmt_num(r.stable_rank, 3),
                       fmt_num(r.utilization, 3), str(r.energy_rank_90), str(r.suggested_r))
        c.print(wt)
        if show_layers:
            c.print()

    if show_layers:
        lt = _table("All modules")
        cols = ["module", "type", "r", "scale", "shape", "stable\nrank", "util", "eff\nrank", "k@90\n/95/99", "‖ΔW‖₂"]
        has_udr = any(r.udr is not None for r in res.layers)
        if has_udr:
            cols.append("UDR")
        for col in cols:
            # Numbers never wrap; on a narrow terminal the module name folds instead.
            lt.add_column(col, justify="left" if col in ("module", "type", "shape") else "right",
                          overflow="fold", no_wrap=col != "module")
        for r in res.layers:
            shape = "×".join(map(str, r.shape or []))
            if r.stable_rank is None:
                lt.add_row(short(r.name), r.module_type, str(r.r), fmt_num(r.scale, 3), shape,
                           styled(("non-finite", "red")), *[""] * (len(cols) - 6))
                continue
            cells = [short(r.name), r.module_type, str(r.r), fmt_num(r.scale, 3), shape,
                     fmt_num(r.stable_rank, 3), fmt_num(r.utilization, 3), fmt_num(r.effective_rank, 3),
                     f"{r.energy_rank_90}/{r.energy_rank_95}/{r.energy_rank_99}",
                     fmt_num(r.delta_sigma_max, 3)]
            if has_udr:
                cells.append(fmt_num(r.udr, 3))
            lt.add_row(*cells)
        c.print(lt)

    c.print()
    c.print(styled(("Suggested ranks", "bold"), " (≥ 90% of each module's update energy; verify with an eval)"))
    before = s.total_lora_params
    for label, rank, after in (("global median", s.suggested_r_global_median, s.suggested_params_global_median),
                               ("global p90", s.suggested_r_global_90, s.suggested_params_global_90)):
        if rank is None or after is None:
            continue
        saved = 1 - after / before if before else 0.0
        c.print(f"  {label:14s} r={rank:<4d} {fmt_num(after)} params ({_pct(saved)} fewer)")
    pl = res.per_layer
    if pl:
        c.print(f"  {'per module':14s} default r={pl['r']}, {len(pl['rank_pattern'])} override(s): "
                f"{fmt_num(pl['params_after'])} params ({_pct(pl['params_saved_fraction'])} fewer); every module "
                "keeps ≥ 90% of its own energy (compress --strategy per_layer)")
        if per_layer:
            import json

            frag = {"r": pl["r"], "lora_alpha": pl["lora_alpha"], "rank_pattern": pl["rank_pattern"],
                    "alpha_pattern": pl["alpha_pattern"]}
            c.print("  LoraConfig fields (keep each module's scale):")
            c.print(json.dumps(frag, indent=2), highlight=False)
    al = res.allocation
    if al:
        what = (f"budget {fmt_num(al['budget_params'])} params" if al["budget_params"] is not None
                else f"energy target {_pct(al['energy_target'])}")
        how = ("the whole adapter keeps the share of its update energy asked for, the rank going to the modules "
               "that hold it" if al["budget_params"] is None else
               "the ranks that keep the most update energy within the budget")
        # The greedy allocation stopped at an energy target is the same as stopping at its parameter count.
        opt = f"--budget-params {al['budget_params'] if al['budget_params'] is not None else al['params_after']}"
        c.print(f"  {'allocation':14s} {what}: {fmt_num(al['params_after'])} params "
                f"({_pct(al['params_saved_fraction'])} fewer), keeps {_pct(al['energy_kept'])} of the update energy; "
                f"default r={al['r']}, {len(al['rank_pattern'])} override(s) (see --json for the patterns); "
                f"{how} (compress {opt})")
        if pl:
            c.print("  per module and allocation answer different questions: the first holds every module to "
                    "90% of its own energy, the second only the total, so it can give less rank to modules "
                    "that carry little of it.")

    c.print()
    c.print(styled(("Where the update energy sits", "bold")))
    if s.energy_hhi is not None:
        tops = ", ".join(f"{x.layer} {_pct(x.energy_share)}" for x in s.top_layers or [])
        c.print(f"  top layers: {tops}")
        c.print(f"  top 10% of modules hold {_pct(s.top10pct_energy_share)}; concentration HHI "
                f"{fmt_num(s.energy_hhi, 3)} (even spread = {fmt_num(1 / max(s.n_modules_measured or 0, 1), 3)})")
    else:
        c.print("  no update energy (all modules are zero)")

    c.print()
    if s.n_layers_with_udr:
        c.print(styled(("UDR", "bold"), f" vs {s.udr_base_model} ({s.n_layers_with_udr}/{s.n_layers} modules): "
                       f"median {fmt_num(s.udr_median, 3)}, p90 {fmt_num(s.udr_p90, 3)}, max {fmt_num(s.udr_max, 3)}; "
                       f"{_pct(s.fraction_udr_gt_0_1)} > 0.1, {_pct(s.fraction_udr_gt_0_3)} > 0.3  ",
                       ("(<0.1 small perturbation, ~1 comparable to the base, >3 the adapter dominates)", "dim")))
    else:
        c.print(styled(("UDR", "bold"), f" skipped: {s.udr_skipped_reason}"))

    issues = s.issues or []
    c.print()
    if issues:
        c.print(styled(("Issues", "bold")))
        colors = {"error": "red", "warning": "yellow", "info": "cyan"}
        for it in issues:
            col = colors.get(it.severity or "info", "white")
            c.print(styled("  ", (str(it.severity), col), f" {it.code}: ", str(it.message)))
    else:
        c.print(styled(("No issues found.", "green")))
    if appended is not None:
        c.print(f"\nAppended metrics(kind=lora_audit) to {appended}")


def name_column_width(longest: int, width: int) -> int:
    """Minimum width of a table's module-name column: the whole name up to 48 characters, but never
    more than a third of the terminal, so the numeric columns (which never wrap) still fit."""
    return max(6, min(longest, 48, width // 3))


def _shared_prefix(names: list[str]) -> str:
    """The dotted prefix every module name shares (``"bert.encoder."``), so tables fit 80 columns.

    Each shortened name keeps at least two segments (``layer.0.attention.self.query`` stays readable).
    """
    if len(names) < 2:
        return ""
    split = [n.split(".") for n in names]
    keep = min(len(p) for p in split) - 2
    common: list[str] = []
    for i, segs in enumerate(zip(*split, strict=False)):
        if len(common) >= keep or any(seg != segs[0] for seg in segs):
            break
        # Keep "layer.5" together: never cut between a container name and its index.
        if any(len(p) > i + 1 and p[i + 1].isdigit() for p in split):
            break
        common.append(segs[0])
    return ".".join(common) + "." if common else ""
