"""``python -m gradience.bench.run_bench CONFIG --output DIR ...``: an alias of ``gradience bench run``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from ..cli.main import main as cli_main

    cli_main(["bench", "run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
