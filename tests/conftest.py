"""Shared fixtures. Tests that need ../shared find it relative to the repository root and
fail loudly (not skip) when it is missing in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared; fails the test (never skips) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"required shared fixture missing: {p} (CI must provide ../shared beside the repo)")
    return p


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
