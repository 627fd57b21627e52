"""A bench whose data folder is missing fails at once, in one line naming the folder it looked for
and how to point the config at a TSV folder; nothing is trained and no output is written."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO_ROOT, run_cli


def test_missing_data_dir_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "deep" / "bench.yaml"
    cfg.parent.mkdir()
    shutil.copy(REPO_ROOT / "configs" / "bench_minilm_sst2_smoke.yaml", cfg)
    res = run_cli("bench", "run", str(cfg), "--output", str(tmp_path / "out"), env={"COLUMNS": "80"})
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gradience: error:")]
    assert len(lines) == 1, res.stderr
    looked_for = (cfg.parent / "../../shared/data/sst2").resolve()
    assert str(looked_for) in lines[0] and "task.data_dir" in lines[0] and "train.tsv and dev.tsv" in lines[0]
    assert "steps" not in res.stderr  # failed before any progress bar
    assert not (tmp_path / "out" / "bench.json").exists()
