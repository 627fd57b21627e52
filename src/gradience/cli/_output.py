"""Printing helpers shared by commands: rich console (created lazily) and stable JSON."""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..numfmt import num
from ..telemetry.encoding import dumps_pretty

if TYPE_CHECKING:
    from rich.console import Console


@lru_cache(maxsize=1)
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


@lru_cache(maxsize=1)
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


dumps_json = dumps_pretty  # strict JSON, sorted keys, indented (shared with files written by commands)


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


# One number format for every surface (terminal, dashboard, report): see gradience.numfmt.
fmt_num = num
