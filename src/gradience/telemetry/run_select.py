"""Which run of a file a ``--run-id`` names: the one home of that rule for monitor, watch and report.

A file can hold several runs (resumes, a demo run twice into one folder). Commands show the first
8 characters of a run id; ``--run-id`` accepts the full id or any prefix that names exactly one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import GradienceError

__all__ = ["match_run_id", "resolve_run_id"]


def match_run_id(requested: str, run_ids: Sequence[str]) -> list[str]:
    """Run ids that ``requested`` names: ``[requested]`` on an exact match, else every id it prefixes."""
    if requested in run_ids:
        return [requested]
    return [r for r in run_ids if r.startswith(requested)] if requested else []


def resolve_run_id(requested: str | None, run_ids: Sequence[str], path: str | Path) -> str:
    """The run to show: the latest (last of ``run_ids``) when none is requested, else the one run
    ``requested`` names (full id or unique prefix).

    Raises:
        GradienceError: no run in the file, no run with that id or prefix, or a prefix shared by
            several runs (the message lists them).
    """
    if not run_ids:
        raise GradienceError("no runs in the file", path=path)
    if requested is None:
        return run_ids[-1]
    found = match_run_id(requested, run_ids)
    if len(found) == 1:
        return found[0]
    if found:
        raise GradienceError(f"run id prefix {requested!r} matches {len(found)} runs", path=path,
                             hint=f"give more characters: {', '.join(found[:5])}")
    raise GradienceError(f"run id {requested!r} not found", path=path,
                         hint=f"runs in this file: {', '.join(list(run_ids)[-5:])}")
