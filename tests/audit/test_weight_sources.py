"""Where the audit reads an adapter from: explicit --adapter-config/--weights, `.bin` state
dicts (torch.load with weights_only), the safetensors-over-.bin preference, and a refused
malicious pickle. The reference is always the same adapter audited from safetensors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradience.audit import audit_adapter
from gradience.audit.weights import SafetensorsFile

from ..conftest import shared_path

COMPARED = ("stable_rank", "effective_rank", "energy_rank_90", "delta_sigma_max", "delta_fro_norm")


def _rows(res) -> dict[str, dict]:
    return {row["name"]: row for row in res.to_dict(layers=True)["layers"]}


def _assert_same_audit(got, want, rtol: float = 1e-6) -> None:
    g, w = _rows(got), _rows(want)
    assert g.keys() == w.keys() and len(g) > 0
    for name in w:
        for key in COMPARED:
            assert g[name][key] == pytest.approx(w[name][key], rel=rtol), (name, key)
    assert got.summary["total_lora_params"] == want.summary["total_lora_params"]


def _without_paths(out: dict) -> dict:
    out["adapter"] = {k: v for k, v in out["adapter"].items() if not k.endswith("_path")}
    return out


def _save_bin(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """The compat adapter's tensors as a torch state dict (what save_pretrained writes with
    safe_serialization=False)."""
    with SafetensorsFile(src / "adapter_model.safetensors") as f:
        sd = {name: torch.from_numpy(np.array(f.read(name))).to(dtype) for name in f.names()}
    torch.save(sd, dst)


@pytest.fixture
def compat_adapter() -> Path:
    return shared_path("compat", "adapters", "tiny_lora")


def test_explicit_config_and_weights_in_different_folders(cli, compat_adapter, tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "w").mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", tmp_path / "conf" / "my_config.json")
    shutil.copy(compat_adapter / "adapter_model.safetensors", tmp_path / "w" / "final.safetensors")
    p = cli("audit", "--adapter-config", str(tmp_path / "conf" / "my_config.json"),
            "--weights", str(tmp_path / "w" / "final.safetensors"), "--json")
    assert p.returncode == 0, p.stderr
    q = cli("audit", "--peft-dir", str(compat_adapter), "--json")
    assert _without_paths(json.loads(p.stdout)) == _without_paths(json.loads(q.stdout))
    assert json.loads(p.stdout)["adapter"]["config_path"].endswith("my_config.json")
    # --weights alone finds adapter_config.json beside the weights, and says so when it is not there.
    shutil.copy(compat_adapter / "adapter_config.json", tmp_path / "w" / "adapter_config.json")
    r = cli("audit", "--weights", str(tmp_path / "w" / "final.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    assert _without_paths(json.loads(r.stdout)) == _without_paths(json.loads(q.stdout))
    (tmp_path / "w" / "adapter_config.json").unlink()
    e = cli("audit", "--weights", str(tmp_path / "w" / "final.safetensors"))
    assert e.returncode == 2 and e.stderr.count("\n") == 1
    assert "adapter_config.json" in e.stderr and "--adapter-config" in e.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bin_state_dict_audits_like_safetensors(compat_adapter, tmp_path, dtype):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", d)
    _save_bin(compat_adapter, d / "adapter_model.bin", dtype)
    got = audit_adapter(d)
    # The reference: the same values stored in the same dtype, read from safetensors.
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", ref)
    from safetensors.torch import save_file

    save_file(torch.load(d / "adapter_model.bin", weights_only=True), str(ref / "adapter_model.safetensors"))
    _assert_same_audit(got, audit_adapter(ref))
    if dtype == torch.float32:  # lossless: identical to the original adapter
        _assert_same_audit(got, audit_adapter(compat_adapter))


def test_safetensors_is_preferred_when_both_exist(compat_adapter, tmp_path):
    d = tmp_path / "both"
    shutil.copytree(compat_adapter, d)
    # A .bin that would audit differently (all factors doubled) must be ignored.
    with SafetensorsFile(d / "adapter_model.safetensors") as f:
        torch.save({n: torch.from_numpy(2 * np.array(f.read(n))) for n in f.names()}, d / "adapter_model.bin")
    _assert_same_audit(audit_adapter(d), audit_adapter(compat_adapter))
    res = audit_adapter(d, weights=d / "adapter_model.bin")
    row = next(iter(_rows(res).values()))
    ref_row = _rows(audit_adapter(compat_adapter))[row["name"]]
    assert row["delta_sigma_max"] == pytest.approx(4 * ref_row["delta_sigma_max"], rel=1e-6)


class _Payload:
    """Unpickling this would create a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(cli, compat_adapter, tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", d)
    marker = tmp_path / "pwned"
    with open(d / "adapter_model.bin", "wb") as fh:
        pickle.dump({"base_model.model.x.lora_A.weight": _Payload(str(marker))}, fh)
    before = (d / "adapter_model.bin").read_bytes()
    p = cli("audit", "--peft-dir", str(d))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "adapter_model.bin" in p.stderr and "refused" in p.stderr and "safetensors" in p.stderr
    assert not marker.exists()
    assert (d / "adapter_model.bin").read_bytes() == before


def test_bin_without_torch_names_the_extra(compat_adapter, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", d)
    _save_bin(compat_adapter, d / "adapter_model.bin", torch.float32)
    # Simulate an install without the hf extra: importing torch fails in the child.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from gradience.cli.main import main\n"
            f"sys.argv = ['gradience', 'audit', '--peft-dir', {str(d)!r}]\n"
            "main()\n")
    import subprocess

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "120"})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "torch" in p.stderr and "gradience[hf]" in p.stderr


def test_truncated_bin_is_one_line_naming_the_file(cli, compat_adapter, tmp_path):
    d = tmp_path / "trunc"
    d.mkdir()
    shutil.copy(compat_adapter / "adapter_config.json", d)
    _save_bin(compat_adapter, d / "adapter_model.bin", torch.float32)
    data = (d / "adapter_model.bin").read_bytes()
    (d / "adapter_model.bin").write_bytes(data[: len(data) // 2])
    p = cli("audit", "--peft-dir", str(d))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "adapter_model.bin" in p.stderr and "cannot load" in p.stderr
