"""Structured fuzzing of every file reader behind audit, compress, check and report.

Property, per reader: for any mutation of a valid file (see ``_mutations``) the Python API either
succeeds or raises a :class:`GradienceError` subclass (anything else is a bug that the CLI would
report as an internal error, exit 70), the input files are byte-identical afterwards, and a refused
compress writes nothing. The CLI property (exit 0/1/2, one line on stderr) is checked in-process
on the same mutations.

The default run is seeded and bounded (``FAST`` examples per reader); ``make test-slow`` runs the
same properties with ``SLOW`` examples. Torch pickles run in a child process under an address-space
limit and a timeout: a forged pickle may ask for any amount of memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gradience.audit import audit_adapter
from gradience.audit.compress import compress_adapter
from gradience.audit.weights import open_weights
from gradience.errors import GradienceError
from gradience.policy.config_parse import load_config
from gradience.report.audit_view import load_audit_json
from tests.audit._formats import (
    KOHYA_META,
    diffusers_metadata,
    diffusers_tensors,
    kohya_modules,
    kohya_tensors,
    write_file,
)
from tests.fuzz import _mutations as mut

ROOT = Path(__file__).resolve().parents[2]
FAST = int(os.environ.get("GRADIENCE_FUZZ_EXAMPLES", "200"))
SLOW = 1_500
SEED = int(os.environ.get("GRADIENCE_FUZZ_SEED", "19"))  # another seed explores other cases

# -- seeds: small valid files of every kind --------------------------------------------------------
ADAPTER_CONFIG: dict[str, Any] = {
    "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
    "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"q_proj": 4.0}, "use_rslora": False, "use_dora": False,
    "fan_in_fan_out": False, "modules_to_save": None, "base_model_name_or_path": "tiny/model",
    "init_lora_weights": True, "target_parameters": [], "lora_dropout": 0.05, "task_type": "CAUSAL_LM",
}
TRAINING_ARGS: dict[str, Any] = {
    "learning_rate": 2e-4, "num_train_epochs": 3, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2, "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler_type": "linear",
    "warmup_ratio": 0.1, "optim": "adamw_torch", "bf16": True, "max_steps": -1, "seed": 42,
}
GRADIENCE_CONFIG: dict[str, Any] = {
    "model_name": "tiny/model", "dataset_name": "sst2", "task_profile": "easy_classification",
    "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "dropout": 0.05},
    "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.0},
    "training": {"epochs": 3, "batch_size": 8, "max_grad_norm": 1.0, "dtype": "bf16"},
}


def _peft_tensors() -> tuple[dict[str, Any], bytes]:
    """The header and body of a two-module PEFT adapter (F32 and BF16 tensors)."""
    rng = np.random.default_rng(0)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for i, (name, shape, dt) in enumerate((
            ("base_model.model.layers.0.q_proj.lora_A.weight", (2, 8), "F32"),
            ("base_model.model.layers.0.q_proj.lora_B.weight", (8, 2), "F32"),
            ("base_model.model.layers.0.v_proj.lora_A.weight", (4, 8), "BF16"),
            ("base_model.model.layers.0.v_proj.lora_B.weight", (8, 4), "BF16"))):
        x = rng.standard_normal(shape).astype(np.float32) * (i + 1)
        b = (x.view(np.uint32) >> 16).astype(np.uint16).tobytes() if dt == "BF16" else x.tobytes()
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    return header, b"".join(blobs)


PEFT_HEADER, PEFT_BODY = _peft_tensors()


def _single_file(kind: str) -> tuple[dict[str, Any], bytes]:
    """Header and body of a kohya or diffusers single-file LoRA written by the format builders."""
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "x.safetensors"
        if kind == "kohya":
            mods = dict(list(kohya_modules(rng, r=2).items())[:3])
            write_file(f, kohya_tensors(mods), KOHYA_META)
        else:
            mods2 = {"unet.down.0.to_q": (rng.standard_normal((2, 8)), rng.standard_normal((8, 2))),
                     "text_encoder.layers.0.q_proj": (rng.standard_normal((2, 8)), rng.standard_normal((8, 2)))}
            write_file(f, diffusers_tensors(mods2),
                       diffusers_metadata({"unet": {"r": 2, "lora_alpha": 4}, "text_encoder": {"r": 2, "lora_alpha": 2}}))
        raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


KOHYA_HEADER, KOHYA_BODY = _single_file("kohya")
DIFFUSERS_HEADER, DIFFUSERS_BODY = _single_file("diffusers")


# -- the property ------------------------------------------------------------------------------------
def _refused_or_ok(call: Callable[[], Any]) -> str:
    """Run ``call``: ``"ok"`` or ``"refused"`` (a GradienceError); any other exception fails the test."""
    try:
        call()
    except GradienceError as exc:
        line = exc.one_line()
        assert "\n" not in line and line.strip(), repr(line)
        return "refused"
    return "ok"


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def _workdir(files: dict[str, bytes]):
    """A temporary folder holding ``files``; asserts on exit that they are byte-identical and that
    nothing else appeared (no output, no cache, no temp file)."""
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        before = _snapshot(d)
        yield d
        assert _snapshot(d) == before, "an input file changed or a file was written"


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``gradience ARGV`` in this process: (exit code, stderr)."""
    from gradience.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code or 0
    return int(code), err.getvalue()


def _assert_cli(argv: list[str]) -> int:
    code, err = run_cli(argv)
    assert code in (0, 1, 2), (code, err[-500:])
    assert "Traceback" not in err and "internal error" not in err, err[-500:]
    if code == 2:
        assert err.count("\n") == 1, err
    return code


_SETTINGS = dict(deadline=None, database=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def _fuzz(strategy: st.SearchStrategy[bytes], n: int, body: Callable[[bytes], None]) -> Callable[[], None]:
    @seed(SEED)
    @settings(max_examples=n, **_SETTINGS)
    @given(strategy)
    def run(data: bytes) -> None:
        body(data)

    return run


# -- readers -------------------------------------------------------------------------------------------
def _adapter_files(config: bytes | None = None, weights: bytes | None = None, config_name: str = "adapter_config.json",
                   ) -> dict[str, bytes]:
    return {config_name: config if config is not None else json.dumps(ADAPTER_CONFIG).encode(),
            "adapter_model.safetensors": weights if weights is not None else mut.safetensors_bytes(PEFT_HEADER, PEFT_BODY)}


def adapter_config_json(data: bytes) -> None:
    with _workdir(_adapter_files(config=data)) as d:
        _refused_or_ok(lambda: audit_adapter(d, udr=False))
        _refused_or_ok(lambda: load_config(peft=d / "adapter_config.json"))


def adapter_config_yaml(data: bytes) -> None:
    with _workdir({"adapter_config.yaml": data}) as d:
        _refused_or_ok(lambda: load_config(peft=d / "adapter_config.yaml"))
        _refused_or_ok(lambda: load_config(peft_dir=d))


def training_args(data: bytes, suffix: str) -> None:
    with _workdir({f"training_args{suffix}": data}) as d:
        _refused_or_ok(lambda: load_config(training=d / f"training_args{suffix}"))


def gradience_config(data: bytes, suffix: str) -> None:
    with _workdir({f"gradience{suffix}": data}) as d:
        _refused_or_ok(lambda: load_config(config=d / f"gradience{suffix}"))


def peft_weights(data: bytes) -> None:
    with _workdir(_adapter_files(weights=data)) as d:
        if _refused_or_ok(lambda: audit_adapter(d, udr=False)) == "ok":
            _refused_or_ok(lambda: _read_all(d / "adapter_model.safetensors"))
        _refused_or_ok(lambda: compress_adapter(d, d / "out", rank=1, dry_run=True))


def _read_all(path: Path) -> None:
    src = open_weights(path)
    try:
        for name in src.names():
            src.read(name)
    finally:
        src.close()


def single_file(data: bytes) -> None:
    with _workdir({"lora.safetensors": data}) as d:
        _refused_or_ok(lambda: audit_adapter(weights=d / "lora.safetensors", udr=False))
        _refused_or_ok(lambda: compress_adapter(d / "lora.safetensors", d / "small.safetensors", rank=1,
                                                dry_run=True))


def audit_json(data: bytes) -> None:
    with _workdir({"audit.json": data}) as d:
        _refused_or_ok(lambda: load_audit_json(d / "audit.json"))


def _audit_json_seed() -> dict[str, Any]:
    with _workdir(_adapter_files()) as d:
        res = audit_adapter(d, udr=False)
    return {"summary": res.summary.to_dict() if hasattr(res.summary, "to_dict") else dict(vars(res.summary)),
            "layers": [r.to_dict() if hasattr(r, "to_dict") else dict(vars(r)) for r in res.layers][:2]}


def _diffusers_meta_variants() -> st.SearchStrategy[bytes]:
    """A diffusers file whose ``lora_adapter_metadata`` JSON string is mutated."""
    packed = json.loads(DIFFUSERS_HEADER["__metadata__"]["lora_adapter_metadata"])

    def wrap(meta: bytes) -> bytes:
        header = dict(DIFFUSERS_HEADER)
        header["__metadata__"] = {**header["__metadata__"], "lora_adapter_metadata": meta.decode("utf-8", "replace")}
        return mut.safetensors_bytes(header, DIFFUSERS_BODY)

    return mut.json_file(packed).map(wrap)


SHARD_INDEX: dict[str, Any] = {"metadata": {"total_size": 1024},
                               "weight_map": {"model.layers.0.self_attn.q_proj.weight": "model-00001.safetensors",
                                              "model.layers.0.mlp.up_proj.weight": "model-00002.safetensors"}}


def shard_index(data: bytes) -> None:
    """``check --model DIR`` reads the module names from a checkpoint's shard index."""
    from gradience.policy.model_modules import names_from_checkpoint

    with _workdir({"model.safetensors.index.json": data}) as d:
        _refused_or_ok(lambda: names_from_checkpoint(d))


FUZZERS: dict[str, Callable[[int], Callable[[], None]]] = {
    "shard index": lambda n: _fuzz(mut.json_file(SHARD_INDEX), n, shard_index),
    "adapter_config.json": lambda n: _fuzz(mut.json_file(ADAPTER_CONFIG), n, adapter_config_json),
    "adapter_config.yaml": lambda n: _fuzz(mut.yaml_file(ADAPTER_CONFIG), n, adapter_config_yaml),
    "training_args.json": lambda n: _fuzz(mut.json_file(TRAINING_ARGS), n, lambda b: training_args(b, ".json")),
    "training_args.yaml": lambda n: _fuzz(mut.yaml_file(TRAINING_ARGS), n, lambda b: training_args(b, ".yaml")),
    "gradience config .json": lambda n: _fuzz(mut.json_file(GRADIENCE_CONFIG), n,
                                              lambda b: gradience_config(b, ".json")),
    "gradience config .yaml": lambda n: _fuzz(mut.yaml_file(GRADIENCE_CONFIG), n,
                                              lambda b: gradience_config(b, ".yaml")),
    "PEFT safetensors": lambda n: _fuzz(mut.safetensors_file(PEFT_HEADER, PEFT_BODY), n, peft_weights),
    "kohya safetensors": lambda n: _fuzz(mut.safetensors_file(KOHYA_HEADER, KOHYA_BODY), n, single_file),
    "diffusers safetensors": lambda n: _fuzz(mut.safetensors_file(DIFFUSERS_HEADER, DIFFUSERS_BODY), n,
                                             single_file),
    "diffusers metadata": lambda n: _fuzz(_diffusers_meta_variants(), n, single_file),
    "audit JSON": lambda n: _fuzz(mut.json_file(_audit_json_seed()), n, audit_json),
}


@pytest.mark.parametrize("reader", sorted(FUZZERS))
def test_fuzz_reader_raises_only_gradience_errors(reader: str) -> None:
    FUZZERS[reader](FAST)()


@pytest.mark.slow
@pytest.mark.parametrize("reader", sorted(FUZZERS))
def test_fuzz_reader_long(reader: str) -> None:
    FUZZERS[reader](SLOW)()


# -- the CLI, in-process, on the same mutations ----------------------------------------------------------
def cli_adapter(config: bytes | None, weights: bytes | None) -> None:
    with _workdir(_adapter_files(config=config, weights=weights)) as d:
        _assert_cli(["audit", "--peft-dir", str(d), "--no-udr"])
        _assert_cli(["check", "--peft-dir", str(d)])
        with tempfile.TemporaryDirectory() as o:
            out = Path(o) / "small"
            if _assert_cli(["compress", "--peft-dir", str(d), "--rank", "1", "--out", str(out)]) == 2:
                assert not out.exists(), "a refused compress wrote its output"


_CLI = st.one_of(mut.json_file(ADAPTER_CONFIG).map(lambda b: (b, None)),
                 mut.safetensors_file(PEFT_HEADER, PEFT_BODY).map(lambda b: (None, b)))


def _cli_fuzz(n: int) -> Callable[[], None]:
    return _fuzz(_CLI, n, lambda pair: cli_adapter(*pair))  # type: ignore[arg-type]


def test_fuzz_cli_exits_0_1_or_2_and_writes_nothing_on_refusal() -> None:
    _cli_fuzz(max(FAST // 2, 10))()


@pytest.mark.slow
def test_fuzz_cli_long() -> None:
    _cli_fuzz(SLOW // 3)()


# -- torch pickles: in a child under an address-space limit and a timeout ---------------------------------
def _bin_seed() -> bytes:
    import torch

    with tempfile.TemporaryDirectory() as t:
        f = Path(t) / "adapter_model.bin"
        torch.save({"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8),
                    "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(8, 2)}, f)
        return f.read_bytes()


def bin_fuzz(n: int) -> None:
    """Entry point of the child: mutated ``.bin`` adapters through the audit."""
    raw = _bin_seed()

    def body(data: bytes) -> None:
        files = {"adapter_config.json": json.dumps({**ADAPTER_CONFIG, "rank_pattern": {}, "alpha_pattern": {}}).encode(),
                 "adapter_model.bin": data}
        with _workdir(files) as d:
            _refused_or_ok(lambda: audit_adapter(d, udr=False))

    _fuzz(mut.byte_level(raw), n, body)()


def run_limited(code: str, *, mem_bytes: int, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -c code`` from the repository root, under RLIMIT_AS = ``mem_bytes`` and ``timeout``."""
    prelude = ("import resource\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({mem_bytes}, {mem_bytes}))\n")
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


BIN_MEM = 6 << 30  # torch's import alone maps a few GiB of address space


@pytest.mark.parametrize("n", [pytest.param(max(FAST // 2, 10), id="fast"),
                               pytest.param(SLOW // 3, id="long", marks=pytest.mark.slow)])
def test_fuzz_torch_pickles_in_a_limited_child(n: int) -> None:
    pytest.importorskip("torch")
    p = run_limited(f"from tests.fuzz.test_fuzz_parsers import bin_fuzz\nbin_fuzz({n})\n", mem_bytes=BIN_MEM,
                    timeout=60 + n)
    assert p.returncode == 0, p.stderr[-3000:]


# -- report --audit: the audit JSON rendered into both report formats ---------------------------------------
RUN_FILE = ROOT / "tests" / "data" / "calibration" / "demo_s0.jsonl"


def _cli_audit_json() -> dict[str, Any]:
    """What ``gradience audit --json --layers --top-singular-values 16`` prints for the seed adapter."""
    from gradience.cli.main import main

    with _workdir(_adapter_files()) as d:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["audit", "--peft-dir", str(d), "--no-udr", "--json", "--layers", "--top-singular-values", "16"])
    return json.loads(out.getvalue())


def report_with_audit(data: bytes) -> None:
    with _workdir({"run.jsonl": RUN_FILE.read_bytes(), "audit.json": data}) as d:
        _assert_cli(["report", str(d / "run.jsonl"), "--audit", str(d / "audit.json"), "--format", "md", "-o", "-"])
        with tempfile.TemporaryDirectory() as o:
            out = Path(o) / "r.html"
            if _assert_cli(["report", str(d / "run.jsonl"), "--audit", str(d / "audit.json"), "-o", str(out)]) == 2:
                assert not out.exists(), "a refused report wrote its output"


def _report_fuzz(n: int) -> Callable[[], None]:
    return _fuzz(mut.json_file(_cli_audit_json()), n, report_with_audit)


def test_fuzz_report_audit_json() -> None:
    _report_fuzz(max(FAST // 4, 10))()


@pytest.mark.slow
def test_fuzz_report_audit_json_long() -> None:
    _report_fuzz(SLOW // 3)()
