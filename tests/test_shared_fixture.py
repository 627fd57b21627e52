"""A plain clone has no ../shared: the real-data suites are skipped and named in the summary, while
CI (which provides the folder) fails loudly when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

_USES_SHARED = '''
from tests.conftest import shared_path


def test_reads_sst2():
    assert shared_path("data", "sst2").is_dir()


def test_needs_nothing():
    assert True
'''


def _clone_without_shared(tmp_path: Path) -> Path:
    repo = tmp_path / "clone" / "repo"  # no tmp_path/clone/shared beside it
    (repo / "tests").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_real_data.py").write_text(_USES_SHARED)
    (repo / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    return repo


def _pytest(repo: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=120)


def test_clone_without_shared_passes_and_names_the_suites_that_did_not_run(tmp_path: Path) -> None:
    res = _pytest(_clone_without_shared(tmp_path), ci=False)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "1 passed, 1 skipped" in res.stdout
    assert "real-data suites not run" in res.stdout
    assert "tests/test_real_data.py" in res.stdout.split("real-data suites not run", 1)[1]
    assert "../shared/data/sst2" in res.stdout


def test_with_ci_set_a_missing_shared_folder_fails_loudly(tmp_path: Path) -> None:
    res = _pytest(_clone_without_shared(tmp_path), ci=True)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "required shared fixture missing" in res.stdout and "1 failed, 1 passed" in res.stdout
