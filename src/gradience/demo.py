"""``python -m gradience.demo [OPTIONS]``: the same as ``gradience demo``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from .cli.main import main as cli_main

    cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
