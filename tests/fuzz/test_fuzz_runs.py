"""Structured fuzzing of the readers of training runs and bench inputs: telemetry JSONL, HF
``trainer_state.json``, bench YAML and labelled TSV folders (bench and demo).

Same property as ``test_fuzz_parsers.py``: any mutation of a valid file is read, or refused with a
:class:`GradienceError` (one line); the CLI exits 0, 1 or 2 with no traceback; the input is
byte-identical afterwards. Seeded and bounded by default, longer under ``-m slow``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from gradience.errors import GradienceError
from tests.fuzz import _mutations as mut
from tests.fuzz.test_fuzz_parsers import FAST, SLOW, _assert_cli, _fuzz, _refused_or_ok, _workdir

ROOT = Path(__file__).resolve().parents[2]


def _run_lines() -> list[bytes]:
    from gradience.telemetry import TelemetryWriter

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "run.jsonl"
        with TelemetryWriter(p, run_id="fuzz-run") as w:
            w.run_start({"model_name": "m", "lora": {"r": 8, "alpha": 16}, "training": {"max_steps": 4}},
                        {"loss_prior": 0.69})
            for s in range(1, 5):
                w.train_step(s, loss=1.0 / s, lr=1e-4, grad_norm=0.5)
            w.eval(4, split="test", metrics={"loss": 0.5, "accuracy": 0.8, "n": 16})
            w.alert("warning", "LR_JUMP", "x", step=3)
            w.metrics("lora_audit", {"utilization_mean": 0.2, "suggested_r_global_median": 4}, step=4)
        return p.read_bytes().splitlines(keepends=True)


LINES = _run_lines()


@st.composite
def run_file(draw: st.DrawFn) -> bytes:
    """The run with one line mutated structurally, or the whole file mutated at the byte level."""
    if draw(st.booleans()):
        i = draw(st.integers(0, len(LINES) - 1))
        line = draw(mut.structured(json.loads(LINES[i]))).replace(b"\n", b" ") + b"\n"
        return b"".join([*LINES[:i], line, *LINES[i + 1:]])
    return draw(mut.byte_level(b"".join(LINES)))


def telemetry(data: bytes) -> None:
    from gradience.telemetry import TelemetryReader

    with _workdir({"run.jsonl": data}) as d:
        _refused_or_ok(lambda: TelemetryReader(d / "run.jsonl").summarize())
        _assert_cli(["monitor", str(d / "run.jsonl"), "--json"])
        _assert_cli(["watch", str(d / "run.jsonl"), "--once"])
        _assert_cli(["report", str(d / "run.jsonl"), "--format", "md", "-o", "-"])


TRAINER_STATE: dict[str, Any] = {
    "global_step": 4, "max_steps": 4, "num_train_epochs": 1, "train_batch_size": 8,
    "log_history": [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4, "grad_norm": 0.5, "epoch": s / 4}
                    for s in range(1, 5)] + [{"step": 4, "eval_loss": 0.5, "eval_accuracy": 0.8},
                                             {"step": 4, "train_runtime": 1.0, "train_loss": 0.5}],
}


def trainer_state(data: bytes) -> None:
    from gradience.trackers.importer import import_events

    with _workdir({"trainer_state.json": data}) as d:
        _refused_or_ok(lambda: import_events(d / "trainer_state.json"))
        _assert_cli(["monitor", str(d / "trainer_state.json")])


def _bench_seed() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "configs" / "bench_minilm_sst2_smoke.yaml").read_text())


def bench_yaml(data: bytes) -> None:
    from gradience.bench.config import load_config

    with _workdir({"bench.yaml": data}) as d:
        _refused_or_ok(lambda: load_config(d / "bench.yaml"))


TSV = b"label\tsentence\n" + b"".join(b"%d\ta %s film\n" % (i % 2, b"good" if i % 2 else b"dull") for i in range(12))


def tsv_folder(data: bytes) -> None:
    from gradience.bench.config import load_config
    from gradience.bench.data import load_task_data
    from gradience.training.demo_data import load_tsv_dir

    cfg_text = (ROOT / "configs" / "bench_minilm_sst2_smoke.yaml").read_text()
    with _workdir({"data/train.tsv": data, "data/dev.tsv": TSV}) as d:
        _refused_or_ok(lambda: load_tsv_dir(d / "data", n_train=8, n_test=4))
        with tempfile.TemporaryDirectory() as t:
            cfg_path = Path(t) / "bench.yaml"
            cfg_path.write_text(cfg_text.replace("../../shared/data/sst2", str(d / "data")))
            cfg = load_config(cfg_path)
            _refused_or_ok(lambda: load_task_data(cfg.task, 8, 4, val_samples=2))


def _tb_seed() -> tuple[str, bytes]:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as t:
        w = SummaryWriter(t)
        for s in range(1, 6):
            w.add_scalar("train/loss", 1.0 / s, s)
            w.add_scalar("train/learning_rate", 1e-4, s)
        w.add_scalar("eval/accuracy", 0.8, 5)
        w.close()
        (f,) = list(Path(t).glob("events.out.tfevents.*"))
        return f.name, f.read_bytes()


TB_NAME, TB_BYTES = _tb_seed()


def tensorboard_log(data: bytes) -> None:
    from gradience.trackers.importer import import_events

    with _workdir({f"tb/{TB_NAME}": data}) as d:
        _refused_or_ok(lambda: import_events(d / "tb"))


FUZZERS: dict[str, Callable[[int], Callable[[], None]]] = {
    "TensorBoard log": lambda n: _fuzz(mut.byte_level(TB_BYTES), n, tensorboard_log),
    "telemetry JSONL": lambda n: _fuzz(run_file(), n, telemetry),
    "trainer_state.json": lambda n: _fuzz(mut.json_file(TRAINER_STATE), n, trainer_state),
    "bench YAML": lambda n: _fuzz(mut.yaml_file(_bench_seed()), n, bench_yaml),
    "labelled TSV folder": lambda n: _fuzz(mut.byte_level(TSV), n, tsv_folder),
}


@pytest.mark.parametrize("reader", sorted(FUZZERS))
def test_fuzz_run_reader(reader: str) -> None:
    FUZZERS[reader](max(FAST // 4, 20))()


@pytest.mark.slow
@pytest.mark.parametrize("reader", sorted(FUZZERS))
def test_fuzz_run_reader_long(reader: str) -> None:
    FUZZERS[reader](SLOW // 3)()


def test_the_property_fails_on_a_non_gradience_error() -> None:
    """Control: an exception that is not a GradienceError fails the property."""
    with pytest.raises(AssertionError):
        try:
            _refused_or_ok(lambda: (_ for _ in ()).throw(RecursionError("deep")))
        except RecursionError as exc:
            raise AssertionError("escaped") from exc
    assert _refused_or_ok(lambda: (_ for _ in ()).throw(GradienceError("x", path="f"))) == "refused"
