"""Hostile adapter files: every parser bounds itself, and each refusal is the project's own error.

The two CLI cases quoted in the robustness issue (a 200,000-deep ``adapter_config.json`` value and a
100,000-deep safetensors header) used to escape as ``RecursionError`` (exit 70); the rest check the
same parsers at the API level, where a caller gets a :class:`GradienceError` subclass.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from gradience.audit.adapter_config import load_adapter_config
from gradience.audit.weights import SafetensorsFile, TorchBinFile
from gradience.errors import AdapterFormatError, ConfigError, GradienceError
from gradience.policy.config_parse import load_config
from gradience.policy.model_modules import names_from_checkpoint
from gradience.report.audit_view import load_audit_json


def write_safetensors(path: Path, header: object, body: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def make_adapter(d: Path, config: object | None = None, header: object | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else {"r": 2, "lora_alpha": 4, "peft_type": "LORA", "target_modules": ["q"]}
    (d / "adapter_config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    body = np.arange(16, dtype=np.float32).tobytes()
    hdr = header if header is not None else {
        "base_model.model.q.lora_A.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        "base_model.model.q.lora_B.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]},
    }
    write_safetensors(d / "adapter_model.safetensors", hdr, body)
    return d


def _one_line_exit_2(p) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "internal error" not in p.stderr


def test_deep_adapter_config_is_refused_by_audit_and_check(cli, tmp_path):
    deep = '{"r": ' + "[" * 200_000 + "]" * 200_000 + "}"
    d = make_adapter(tmp_path / "a", config=deep)
    before = (d / "adapter_config.json").read_bytes()
    for args in (("audit", "--peft-dir", str(d)), ("check", "--peft-dir", str(d))):
        p = cli(*args)
        _one_line_exit_2(p)
        assert "adapter_config.json" in p.stderr and "nests deeper than" in p.stderr
    assert (d / "adapter_config.json").read_bytes() == before
    with pytest.raises(ConfigError, match="nests deeper"):
        load_adapter_config(d / "adapter_config.json")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_config(peft=d / "adapter_config.json")


def test_deep_safetensors_header_is_refused_by_audit(cli, tmp_path):
    d = make_adapter(tmp_path / "a")
    write_safetensors(d / "adapter_model.safetensors", b"[" * 100_000 + b"]" * 100_000)
    p = cli("audit", "--peft-dir", str(d))
    _one_line_exit_2(p)
    assert "adapter_model.safetensors" in p.stderr and "nests deeper" in p.stderr
    with pytest.raises(AdapterFormatError, match="nests deeper"):
        SafetensorsFile(d / "adapter_model.safetensors")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "1" * 400, "1" * 5000])
def test_non_finite_or_oversized_numbers_in_adapter_config(tmp_path, value):
    p = tmp_path / "adapter_config.json"
    p.write_text('{"r": 8, "lora_alpha": ' + value + ', "peft_type": "LORA"}')
    with pytest.raises(ConfigError):
        load_adapter_config(p)
    p.write_text('{"r": 8, "rank_pattern": {"q": ' + value + '}, "peft_type": "LORA"}')
    with pytest.raises(ConfigError):
        load_adapter_config(p)


def _entry(shape, start, end, dtype="F32"):
    return {"t.lora_A.weight": {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}}


@pytest.mark.parametrize("header, why", [
    (_entry([2**32, 2**32, 2**32], 0, 0), "byte range"),  # the element count wraps to 0 in int64
    (_entry([-1, -4], 0, 16), "malformed"),
    (_entry("24", 0, 32), "malformed"),
    (_entry([2, 4], 0, 10**30), "byte range"),
    (_entry([2, 4], 0.0, 32.0), "malformed"),
    (_entry([1] * 40, 0, 4), "malformed"),
    (_entry([2, 4], 0, 32, dtype=["F32"]), "malformed"),
    ({"__metadata__": ["x"], **_entry([2, 4], 0, 32)}, "__metadata__"),
    ({"__metadata__": {"k": {"deep": 1}}, **_entry([2, 4], 0, 32)}, "__metadata__"),
    (b'{"a": 1' + b"1" * 5000 + b"}", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
])
def test_forged_safetensors_headers_are_adapter_format_errors(tmp_path, header, why):
    f = write_safetensors(tmp_path / "x.safetensors", header, bytes(64))
    with pytest.raises(AdapterFormatError, match=why):
        SafetensorsFile(f)


def test_corrupt_bin_is_called_corrupt_not_dangerous(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.bin"
    torch.save({"q.lora_A.weight": torch.zeros(2, 4)}, good)
    raw = good.read_bytes()
    for name, data in (("trunc.bin", raw[: len(raw) // 2]), ("noise.bin", b"\x80\x02garbage-bytes"),
                       ("text.bin", b"hello")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AdapterFormatError, match="corrupt") as exc:
            TorchBinFile(tmp_path / name)
        assert "could run code" not in str(exc.value)


def test_flipped_bit_in_a_torch_function_name_is_corrupt(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.bin"
    torch.save({"q.lora_A.weight": torch.zeros(2, 4)}, good)
    raw = good.read_bytes()
    i = raw.find(b"_rebuild_tensor_v2")
    assert i > 0
    (tmp_path / "flip.bin").write_bytes(raw[:i] + b"_rebuild_tenzor_v2" + raw[i + 18:])
    with pytest.raises(AdapterFormatError, match="corrupt") as exc:
        TorchBinFile(tmp_path / "flip.bin")
    assert "could run code" not in str(exc.value)


class _Obj:
    pass


def test_pickle_of_objects_is_still_refused_as_code(tmp_path):
    pytest.importorskip("torch")
    f = tmp_path / "obj.bin"
    with open(f, "wb") as fh:
        pickle.dump({"q.lora_A.weight": _Obj()}, fh)
    with pytest.raises(AdapterFormatError, match="could run code"):
        TorchBinFile(f)


def test_deep_audit_json_and_shard_index_are_gradience_errors(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    a = tmp_path / "audit.json"
    a.write_text('{"layers": ' + deep + "}")
    with pytest.raises(GradienceError, match="nests deeper"):
        load_audit_json(a)
    m = tmp_path / "model"
    m.mkdir()
    (m / "model.safetensors.index.json").write_text('{"weight_map": ' + deep + "}")
    with pytest.raises(GradienceError, match="nests deeper"):
        names_from_checkpoint(m)
    (m / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    with pytest.raises(GradienceError, match="shard index"):
        names_from_checkpoint(m)


def test_deep_yaml_training_args_are_refused(tmp_path):
    y = tmp_path / "training_args.yaml"
    y.write_text("a: " + "[" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_config(training=y)


# Found by tests/fuzz: each escaped as an internal error (exit 70) or left a file behind.
@pytest.mark.parametrize("key, value", [
    ("target_parameters", True), ("target_modules", 3), ("modules_to_save", {"a": 1}),
    ("use_rslora", "yes"), ("base_model_name_or_path", ["m"]), ("init_lora_weights", 1.5),
])
def test_wrong_types_in_adapter_config_are_config_errors(tmp_path, key, value):
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, key: value}
    p = tmp_path / "adapter_config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=key):
        load_adapter_config(p)


def test_null_in_a_pattern_is_refused_by_check(cli, tmp_path):
    d = make_adapter(tmp_path / "a", config={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"],
                                             "alpha_pattern": {"q": None}})
    _one_line_exit_2(cli("check", "--peft-dir", str(d)))


def test_huge_scale_is_measured_without_overflow(tmp_path):
    from gradience.audit import audit_adapter

    d = make_adapter(tmp_path / "a", config={"peft_type": "LORA", "r": 2, "lora_alpha": 1e300,
                                             "target_modules": ["q"]})
    audit_adapter(d, udr=False)  # the energy sums overflow to inf instead of raising OverflowError


def test_refused_compress_leaves_no_output_folder(tmp_path):
    from gradience.audit.compress import compress_adapter

    d = make_adapter(tmp_path / "a")
    raw = bytearray((d / "adapter_model.safetensors").read_bytes())
    raw[-32:-28] = np.array([np.nan], dtype=np.float32).tobytes()  # a NaN in lora_B
    (d / "adapter_model.safetensors").write_bytes(bytes(raw))
    out = tmp_path / "new" / "deeper"
    with pytest.raises(AdapterFormatError, match="NaN"):
        compress_adapter(d, out, rank=1)
    assert not (tmp_path / "new").exists()


def test_rank_pattern_value_as_a_string_is_read_as_a_number_by_check(cli, tmp_path):
    d = make_adapter(tmp_path / "a", config={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"],
                                             "rank_pattern": {"q": "9" * 50}})
    p = cli("check", "--peft-dir", str(d))
    assert p.returncode in (0, 1, 2) and "internal error" not in p.stderr, p.stderr


def test_chart_ticks_survive_values_at_the_float_limits():
    from gradience.report.svg import _log_ticks, nice_ticks

    assert nice_ticks(-1e308, 1e308) == [-1e308, 1e308]
    assert nice_ticks(1e16, 1e16 + 2) == [1e16]  # a step below float spacing: bounded, not endless
    assert _log_ticks(1e300, 1.7e308)[-1] == 1e308
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
