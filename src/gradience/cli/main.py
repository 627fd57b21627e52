"""The ``gradience`` command group.

Subcommands are imported only when invoked, so ``gradience --help`` (and every core
command) starts without importing torch, transformers, textual or any heavy module.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Any

import click

from .._version import __version__
from ..errors import GradienceError

# name -> (module path, attribute, one-line help shown by `gradience --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("gradience.cli.demo", "demo", "Fine-tune LoRA on the bundled model offline and show every view."),
    "check": ("gradience.cli.check", "check", "Pre-flight: review a LoRA/training configuration before you train."),
    "monitor": ("gradience.cli.monitor", "monitor", "Post-flight: summarise a run.jsonl with recommendations."),
    "audit": ("gradience.cli.audit", "audit", "Audit a LoRA adapter's spectrum for wasted rank (and UDR)."),
    "compress": ("gradience.cli.compress", "compress", "Shrink a trained LoRA adapter exactly, without retraining."),
    "bench": ("gradience.cli.bench", "bench", "Prove suggested ranks on real data across seeds."),
    "watch": ("gradience.cli.watch", "watch", "Live terminal dashboard for a run.jsonl."),
    "report": ("gradience.cli.report", "report", "Render a run (and its adapter audit) as a self-contained HTML page."),
    "import": ("gradience.cli.import_", "import_", "Read an HF trainer_state.json or TensorBoard log into telemetry."),
    "export": ("gradience.cli.export", "export", "Write a run to TensorBoard or MLflow (train/…, eval/…, gradience/…)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(c for c in super().list_commands(ctx) if c not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = entry
        return getattr(import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="gradience")
def app() -> None:
    """Gradience: a telemetry-first monitor for LoRA/PEFT fine-tuning.

    Observe first, recommend conservatively, always verify with eval.
    """


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"gradience: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _click_line(exc: click.ClickException) -> str:
    """Click's own error as one line; a usage error names the command's --help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError):
        where = ctx.command_path if ctx is not None else "gradience"
        message += f" — see '{where} --help'"
    return message


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: expected errors become one line on stderr and exit 2."""
    try:
        return app.main(args=argv, prog_name="gradience", standalone_mode=False)
    except GradienceError as exc:
        _fail(exc.one_line(), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # bare `gradience`: the help text is the answer
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # README.md#the-golden-path: usage errors are one line on stderr and exit 2 (click's own would print four).
        _fail(_click_line(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        finally:
            sys.exit(0)
    except SystemExit:
        raise
    except Exception as exc:
        if os.environ.get("GRADIENCE_DEBUG"):
            raise
        what = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        _fail(f"internal error: {type(exc).__name__}: {what[:300]} (this is a bug; rerun with GRADIENCE_DEBUG=1 "
              "for the traceback and please report it)", 70)
    return None
