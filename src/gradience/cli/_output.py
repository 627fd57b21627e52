"""Printing helpers shared by commands: rich console (created lazily) and stable JSON."""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..numfmt import num
from ..telemetry.encoding import dumps_pretty

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


# markup=False: run ids, model names, paths and messages come from users and files, and rich would
# read `sweep[/]lr` or `runs/exp[lr=1e-4]` as markup (a MarkupError, or text silently eaten). Styled
# output is built from rich Text (see `styled`), never from markup in a string.
# soft_wrap: a printed line is never broken by Gradience. Commands the tool tells you to run and the
# paths it names stay on one line at any width (the terminal may soft-wrap a long line, which pastes
# intact); tables still lay out to the width. Prose is wrapped on purpose by `wrap_text`, which keeps
# commands and paths whole.
@lru_cache(maxsize=1)
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False)


@lru_cache(maxsize=1)
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line of output from plain strings and ``(text, style)`` pairs, e.g.
    ``styled(("LoRA audit", "bold"), "  ", path)``: every string is printed as it is (never read as
    markup), so a path or run id holding ``[/]`` cannot break or restyle the line."""
    from rich.text import Text

    return Text.assemble(*parts)


_NBSP = "\u00a0"


def wrap_text(text: str, width: int, first: str = "", indent: int = 0) -> list[str]:
    """``first + text`` wrapped to ``width`` columns with a hanging indent of ``indent`` spaces.

    Breaks only between words: a word (a path, a module name) is never cut, and a `backticked`
    span (a command, a key with its value) is never split, so everything the text tells a user to
    run can be pasted as printed. A span wider than ``width`` stays on one longer line.
    """
    import textwrap

    parts = text.split("`")
    if len(parts) % 2 == 1:  # paired backticks: glue each quoted span into one unbreakable word
        text = "`".join(p.replace(" ", _NBSP) if i % 2 else p for i, p in enumerate(parts))
    lines = textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=" " * indent,
                          break_on_hyphens=False, break_long_words=False) or [first.rstrip()]
    return [ln.replace(_NBSP, " ") for ln in lines]


dumps_json = dumps_pretty  # strict JSON, sorted keys, indented (shared with files written by commands)


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


# One number format for every surface (terminal, dashboard, report): see gradience.numfmt.
fmt_num = num
