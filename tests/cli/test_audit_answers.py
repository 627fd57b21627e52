"""`audit --suggest-per-layer --energy` prints two per-module answers; each says what it guarantees and
names the compress command that writes it, and that command writes exactly the parameters printed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np

from tests.audit._helpers import make_adapter
from tests.conftest import run_cli


def _adapter(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    modules = {}
    for layer in range(4):
        for name, decay in (("q_proj", 0.3), ("v_proj", 0.9)):
            r = 8
            a = rng.standard_normal((r, 32)) * (decay ** np.arange(r))[:, None] * (layer + 1)
            b = rng.standard_normal((48, r))
            modules[f"model.layers.{layer}.self_attn.{name}"] = (a, b)
    d = tmp_path / "adapter"
    make_adapter(d, modules, r=8, alpha=16)
    return d


def test_each_answer_names_its_guarantee_and_the_command_that_writes_it(tmp_path: Path) -> None:
    d = _adapter(tmp_path)
    res = run_cli("audit", "--peft-dir", str(d), "--suggest-per-layer", "--energy", "0.9")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "answer different questions" in out
    for label in ("per module", "allocation"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(label))
        params = int(re.search(r"([\d,]+) params \(", line).group(1).replace(",", ""))
        cmd = re.search(r"\(compress (--[^)]*)\)\s*$", line).group(1)
        comp = run_cli("compress", "--peft-dir", str(d), "--out", str(tmp_path / label.replace(" ", "_")),
                       *shlex.split(cmd), "--dry-run", "--json")
        assert comp.returncode == 0, comp.stderr
        assert json.loads(comp.stdout)["summary"]["params_after"] == params, (label, cmd)
