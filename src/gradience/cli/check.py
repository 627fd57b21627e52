"""`gradience check`: pre-flight review of a LoRA/training configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ._output import console, fmt_num, print_json, styled

if TYPE_CHECKING:
    from rich.console import Console

    from ..telemetry.schema import ConfigSnapshot, Recommendation

SEVERITY_STYLE = {"critical": "bold white on red", "error": "bold red", "warning": "yellow", "info": "cyan"}
FAIL_ON = ("warning", "error", "critical")


def _wrapped(con: Console, first: str, text: str, indent: int, style_span: tuple[int, int, str] | None = None) -> None:
    """Print ``first + text`` wrapped to the console width with a hanging indent (no trailing spaces);
    commands in backticks and paths are never split (``_output.wrap_text``)."""
    from rich.text import Text

    from ._output import wrap_text

    for i, line in enumerate(wrap_text(text, max(40, con.width), first, indent)):
        t = Text(line)
        if i == 0 and style_span is not None:
            t.stylize(style_span[2], style_span[0], style_span[1])
        con.print(t, soft_wrap=True)


def render_recommendations(con: Console, recs: Sequence[dict[str, Any]], *, verbose: bool) -> None:
    """Print recommendations (already sorted); ``verbose`` adds why, confidence and evidence.

    Each is one block: ``SEVERITY  action`` then the message, wrapped with a hanging indent.
    """
    if not recs:
        con.print("  (none)")
        return
    for r in recs:
        sev = str(r["severity"])
        head = f"  {sev.upper():<8} {r['action']}"
        con.print(_header(head, sev), soft_wrap=True)
        _wrapped(con, "      ", str(r["message"]), 6)
        if verbose:
            if r.get("rationale"):
                _wrapped(con, "      why: ", str(r["rationale"]), 11)
            con.print(f"      confidence {float(r.get('confidence', 0)):.2f} · scope {r.get('scope', '')}",
                      soft_wrap=True)
            ev = r.get("evidence") or {}
            if ev:
                _wrapped(con, "      evidence: ", ", ".join(f"{k}={_short(v)}" for k, v in ev.items()), 16)


def _header(head: str, sev: str) -> Any:
    from rich.text import Text

    t = Text(head)
    t.stylize(SEVERITY_STYLE.get(sev, ""), 2, 2 + len(sev))
    t.stylize("bold", 11)
    return t


def _short(v: Any) -> str:
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in list(v)[:10]) + (", …" if len(v) > 10 else "") + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in list(v.items())[:10]) + "}"
    return str(v)


def fails(recs: Sequence[dict[str, Any]], fail_on: str | None) -> bool:
    """True when a recommendation at or above ``fail_on`` severity fired."""
    if not fail_on:
        return False
    from ..telemetry.schema import Severity

    limit = Severity.parse(fail_on).rank
    return any(Severity.parse(r["severity"]).rank >= limit for r in recs)


def build_check_json(cfg: ConfigSnapshot, recs: Sequence[Recommendation]) -> dict[str, Any]:
    """The ``--json`` object: ``{config, recommendations}``."""
    return {"config": cfg.to_dict(), "recommendations": [r.to_dict() for r in recs]}


def render_check_text(con: Console, obj: dict[str, Any], *, verbose: bool) -> None:
    """Render the ``build_check_json`` object as text."""
    cfg = obj["config"]
    lora, opt, tr = cfg.get("lora") or {}, cfg.get("optimizer") or {}, cfg.get("training") or {}
    extras = cfg.get("extras") or {}
    con.print(styled(("Configuration", "bold")))
    _wrapped(con, "  ", f"model {cfg.get('model_name') or '—'} · dataset {cfg.get('dataset_name') or '—'}", 4)
    profile, source = cfg.get("task_profile"), extras.get("task_profile_source", "given")
    if profile in (None, "unknown"):  # say why and what to pass, once (not "unknown (unknown …)")
        _wrapped(con, "  ", f"profile unknown: {source}; pass `--task NAME` (e.g. sst2, gsm8k) for the "
                 "task-specific rules", 4)
    else:
        _wrapped(con, "  ", f"profile {profile} ({source})", 4)
    targets = lora.get("target_modules")
    _wrapped(con, "  ", f"LoRA r={fmt_num(lora.get('r'))} α={fmt_num(lora.get('alpha'))} "
             f"α/r={fmt_num(lora.get('alpha_over_r'))} dropout={fmt_num(lora.get('dropout'))}"
             + (" rsLoRA" if lora.get("use_rslora") else "") + (" DoRA" if lora.get("use_dora") else "")
             + f" · targets {', '.join(targets) if targets else '—'}", 4)
    _wrapped(con, "  ", f"optimizer {opt.get('name') or '—'} lr={fmt_num(opt.get('lr'))} "
             f"weight_decay={fmt_num(opt.get('weight_decay'))}", 4)
    # HF: max_steps > 0 overrides num_train_epochs, so show the epochs only when they decide the length.
    length = (f"max_steps={fmt_num(tr.get('max_steps'))}" if tr.get("max_steps")
              else f"epochs={fmt_num(tr.get('epochs'))}")
    _wrapped(con, "  ", f"training max_grad_norm={fmt_num(tr.get('max_grad_norm'))} "
             f"batch={fmt_num(tr.get('batch_size'))}×{fmt_num(tr.get('gradient_accumulation'))} "
             f"{length} dtype={tr.get('dtype') or '—'}", 4)
    if verbose and extras.get("sources"):
        _wrapped(con, "  sources: ", ", ".join(extras["sources"]), 4)
    con.print()
    con.print(styled(("Recommendations", "bold"), " (most severe first)"))
    render_recommendations(con, obj["recommendations"], verbose=verbose)


@click.command(name="check")
@click.argument("config", required=False, type=click.Path(path_type=str))
@click.option("--peft", "peft", type=click.Path(path_type=str), help="PEFT adapter_config (.json/.yaml).")
@click.option("--training", "training", type=click.Path(path_type=str),
              help="HF TrainingArguments dump (args.to_dict() as .json/.yaml).")
@click.option("--peft-dir", type=click.Path(path_type=str), help="Directory with adapter_config.{json,yaml,yml}.")
@click.option("--training-dir", type=click.Path(path_type=str),
              help="Directory with training_args.{json,yaml,yml}.")
@click.option("--task", "--dataset", "dataset", metavar="NAME",
              help="Dataset/task name; also used to infer the task profile (sst2, gsm8k, ...).")
@click.option("--model", metavar="NAME_OR_DIR",
              help="Base model name, or a local checkpoint whose module names check resolves the targets against.")
@click.option("--task-profile", type=click.Choice(["easy_classification", "hard_reasoning", "generation", "unknown"]),
              help="Task profile (default: inferred from the dataset name).")
@click.option("--optimizer", metavar="NAME", help="Optimizer name (e.g. adamw_torch).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--weight-decay", type=float, help="Weight decay.")
@click.option("--r", "r", type=int, help="LoRA rank.")
@click.option("--alpha", type=float, help="LoRA alpha.")
@click.option("--targets", metavar="A,B,...", help="LoRA target modules, comma-separated.")
@click.option("--notes", help="Free-form notes stored with the config.")
@click.option("--verbose", "-v", is_flag=True, help="Show why, confidence and evidence for each recommendation.")
@click.option("--json", "as_json", is_flag=True, help="Print {config, recommendations} as JSON.")
@click.option("--fail-on", type=click.Choice(FAIL_ON),
              help="Exit 1 when a recommendation at or above this severity fired (for CI).")
@click.pass_context
def check(ctx: click.Context, config: str | None, peft: str | None, training: str | None, peft_dir: str | None,
          training_dir: str | None, dataset: str | None, model: str | None, task_profile: str | None,
          optimizer: str | None, lr: float | None, weight_decay: float | None, r: int | None, alpha: float | None,
          targets: str | None, notes: str | None, verbose: bool, as_json: bool, fail_on: str | None) -> None:
    """Pre-flight: review a LoRA/training configuration before you train.

    CONFIG may be a PEFT adapter_config, an HF TrainingArguments dump, a Gradience config
    (JSON or YAML), a run.jsonl, or a directory holding adapter_config.* / training_args.*.
    Options override what the files say.

    \b
    Examples:
      gradience check --task sst2 --peft-dir runs/demo/peft --training-dir runs/demo/training
      gradience check --task gsm8k --lr 3e-4 --r 64 --targets q_proj,v_proj,up_proj --fail-on warning
    """
    from ..policy import check_config, load_config

    overrides = {"dataset_name": dataset, "model_name": model, "task_profile": task_profile, "optimizer": optimizer,
                 "lr": lr, "weight_decay": weight_decay, "r": r, "alpha": alpha, "target_modules": targets,
                 "notes": notes}
    cfg = load_config(config, peft=peft, training=training, peft_dir=peft_dir, training_dir=training_dir,
                      overrides=overrides)
    obj = build_check_json(cfg, check_config(cfg))
    if as_json:
        print_json(obj)
    else:
        render_check_text(console(), obj, verbose=verbose)
    if fails(obj["recommendations"], fail_on):
        ctx.exit(1)
