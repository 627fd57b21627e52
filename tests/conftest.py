"""Shared fixtures. Tests that need ../shared find it relative to the repository root and
fail loudly (not skip) when it is missing in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


# Real-data suites (SST-2, files written by earlier releases) read ../shared, a folder beside the
# repository that CI provides and a plain clone does not have. Without CI they are skipped with this
# reason and listed in the summary; with CI set a missing folder fails loudly.
SHARED_SKIP = "real-data fixture not present"


def shared_path(*parts: str) -> Path:
    """Path under ../shared: fails the test with CI set, skips it (with the reason) otherwise."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        if os.environ.get("CI"):
            pytest.fail(f"required shared fixture missing: {p} (CI must provide ../shared beside the repo)")
        pytest.skip(f"{SHARED_SKIP}: ../shared/{'/'.join(parts)} (a clone without the sibling shared folder)")
    return p


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say which real-data suites did not run and why, so a green run on a plain clone is not misread."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if SHARED_SKIP in str(getattr(r, "longrepr", ""))]
    if not skipped:
        return
    needs: dict[str, set[str]] = {}
    for r in skipped:
        what = str(r.longrepr).split(f"{SHARED_SKIP}: ", 1)[-1].split(" ", 1)[0]
        needs.setdefault(r.nodeid.split("::")[0], set()).add(what)
    terminalreporter.write_sep("-", "real-data suites not run")
    terminalreporter.write_line(
        f"{len(skipped)} test(s) in {len(needs)} file(s) need ../shared (SST-2 and files written by earlier "
        f"releases), which is not beside this clone; CI provides it and fails if it is missing:")
    for f, paths in sorted(needs.items()):
        terminalreporter.write_line(f"  {f} (needs {', '.join(sorted(paths))})")


@pytest.fixture
def compat_dir() -> Path:
    return shared_path("compat")


@pytest.fixture
def sst2_dir() -> Path:
    return shared_path("data", "sst2")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            timeout: float = 600):
    """Run ``python -m gradience ARGS`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ)
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("TRANSFORMERS_OFFLINE", "1")
    full_env["COLUMNS"] = full_env.get("COLUMNS", "120")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "gradience", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
