"""The bench protocol end to end on a tiny random BERT + real SST-2 rows, through the CLI.

Same code path as the MiniLM bench (config → probe → audit → every strategy → eval → verdicts →
reports → resume), sized to run in about a minute on a busy 2-core CPU. The CLI runs in-process
(``gradience.cli.main.main``, the console-script entry point) so torch is imported once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from .helpers import tiny_bert_dir

pytestmark = pytest.mark.integration

STRATS = ["uniform_median", "uniform_p90", "per_layer", "budget", "truncate", "truncate_heal"]
BENCH_KEYS = {"schema", "name", "status", "created", "wall_seconds", "env", "config_hash", "config", "task",
              "seeds", "seeds_done", "probe", "variants", "audit", "verdicts", "summary"}
EVAL_KEYS = {"strategy", "seed", "config_hash", "plan", "plan_fingerprint", "metric", "correct", "n", "value",
             "ranks", "r_min", "r_max", "lora_params", "head_params", "retrained", "control", "train"}


def _config(tmp: Path, model: Path, sst2: Path, **task: object) -> Path:
    cfg = {
        "name": "tiny-sst2",
        "model": {"name": str(model), "max_length": 32},
        "task": {"name": "sst2", "data_dir": str(sst2), **task},
        "train": {"max_steps": 4, "batch_size": 8, "eval_batch_size": 64, "lr": 5e-3, "logging_steps": 2,
                  "seeds": [7], "train_samples": 32, "eval_samples": 40},
        "lora": {"probe_r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "compression": {"strategies": STRATS, "budget_fraction": 0.3, "heal_steps": 2},
        "runtime": {"device": "cpu", "threads": 1},
    }
    p = tmp / "bench.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_inproc(*args: str) -> Result:
    """``gradience ARGS`` in this process; returns exit code, stdout and stderr like a subprocess."""
    import contextlib
    import io

    from gradience.cli._output import console, err_console
    from gradience.cli.main import main

    console.cache_clear()
    err_console.cache_clear()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    console.cache_clear()
    err_console.cache_clear()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_inproc():
    return run_inproc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_bert_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, model_dir):
    from tests.conftest import shared_path

    tmp = tmp_path_factory.mktemp("bench")
    cfg = _config(tmp, model_dir, shared_path("data", "sst2"), quality_gate=0.0)
    out = tmp / "out"
    r = run_inproc("bench", "run", str(cfg), "--output", str(out), "--ci", "--json")
    return cfg, out, r


def test_run_writes_every_output_with_documented_keys(bench_run):
    _, out, r = bench_run
    assert r.returncode in (0, 1), r.stderr
    result = json.loads(r.stdout)
    # --ci: exit 1 exactly when the policy did not pass, with the reason on stderr.
    assert (r.returncode == 0) == (result["status"] == "PASS")
    if r.returncode == 1:
        assert "bench --ci" in r.stderr and result["reason"] in r.stderr
    for name in ("bench.json", "bench.md", "verdicts.json", "bench_aggregate.json", "bench_aggregate.md"):
        assert (out / name).is_file(), name
    bench = json.loads((out / "bench.json").read_text())
    assert BENCH_KEYS <= set(bench)
    assert bench["status"] == "done" and bench["seeds_done"] == [7]
    assert set(bench["variants"]) == set(STRATS)
    assert {"torch", "transformers", "peft", "python"} <= set(bench["env"])
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["status"] == result["status"] and set(verdicts["strategies"]) == set(STRATS)
    for v in ["probe", *STRATS]:
        vdir = out / "seed_7" / v
        ev = json.loads((vdir / "eval.json").read_text())
        if ev.get("same_as") == "probe":  # a control at the probe's rank reuses the probe's run
            assert ev["control"] and (vdir / ev["adapter"] / "adapter_model.safetensors").is_file()
        else:
            assert (vdir / "run.jsonl").is_file() and (vdir / "peft" / "adapter_model.safetensors").is_file(), v
        assert EVAL_KEYS <= set(ev), v
        assert ev["n"] == 40 and 0 <= ev["correct"] <= 40
    md = (out / "bench.md").read_text()
    assert "## Per seed" in md and "## Interpretation" in md and "uniform_median" in md
    agg_md = (out / "bench_aggregate.md").read_text()
    assert "| probe | r=8 |" in agg_md


def test_every_variant_records_its_real_ranks(bench_run):
    _, out, _ = bench_run
    audit = json.loads((out / "seed_7" / "probe" / "audit.json").read_text())
    probe = json.loads((out / "seed_7" / "probe" / "eval.json").read_text())
    assert set(probe["ranks"].values()) == {8} and len(probe["ranks"]) == 4  # 2 layers × query/value
    med = json.loads((out / "seed_7" / "uniform_median" / "eval.json").read_text())
    assert set(med["ranks"].values()) == {audit["summary"]["suggested_r_global_median"]}
    per_layer = json.loads((out / "seed_7" / "per_layer" / "eval.json").read_text())
    want = {k.removeprefix("base_model.model."): v for k, v in audit["per_module"]["ranks"].items()}
    assert per_layer["ranks"] == want  # read back from the trained adapter's tensors
    budget = json.loads((out / "seed_7" / "budget" / "eval.json").read_text())
    assert budget["lora_params"] <= audit["budget_params"]
    trunc = json.loads((out / "seed_7" / "truncate" / "eval.json").read_text())
    assert trunc["retrained"] is False and trunc["train"]["steps"] == 0
    assert 0 < trunc["train"]["compress"]["retained_energy_mean"] <= 1  # the SVD report is kept
    assert trunc["r_max"] <= probe["r_max"]
    # Parameter reduction: LoRA-only and with the head, both against the probe.
    row = json.loads((out / "bench.json").read_text())["variants"]["uniform_median"]["7"]
    assert row["reduction_lora"] == pytest.approx(1 - med["lora_params"] / probe["lora_params"])
    both = 1 - (med["lora_params"] + med["head_params"]) / (probe["lora_params"] + probe["head_params"])
    assert row["reduction_with_head"] == pytest.approx(both)
    assert probe["head_params"] > 0 and row["reduction_with_head"] < row["reduction_lora"]


def test_telemetry_of_a_variant_has_training_and_eval(bench_run):
    from gradience.telemetry import TelemetryReader

    _, out, _ = bench_run
    snap = TelemetryReader(out / "seed_7" / "per_layer" / "run.jsonl").summarize()
    assert snap.last_step == 4 and "test" in snap.evals
    assert snap.evals["test"]["metrics"]["n"] == 40


def test_resume_reuses_finished_variants_and_retrains_only_missing(bench_run, cli_inproc):
    cfg, out, _ = bench_run
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed_7/*/eval.json")}
    (out / "seed_7" / "budget" / "eval.json").unlink()  # as if interrupted during "budget"
    r = cli_inproc("bench", "run", str(cfg), "--output", str(out), "--json")
    assert r.returncode in (0, 1), r.stderr
    after = {p: p.stat().st_mtime_ns for p in out.glob("seed_7/*/eval.json")}
    redone = {p.parent.name for p in after if stamps.get(p) != after[p]}
    assert redone == {"budget"}
    assert len(after) == len(stamps)


def test_same_output_with_a_different_config_is_refused(bench_run, cli_inproc, tmp_path):
    cfg, out, _ = bench_run
    data = yaml.safe_load(cfg.read_text())
    data["train"]["lr"] = 1e-2
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    r = cli_inproc("bench", "run", str(other), "--output", str(out))
    assert r.returncode == 2 and "different config" in r.stderr and "Traceback" not in r.stderr


def test_report_and_aggregate_commands(bench_run, cli_inproc, tmp_path):
    _, out, _ = bench_run
    (out / "bench.md").unlink()
    r = cli_inproc("bench", "report", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "bench.md").is_file() and "uniform_median" in r.stdout
    r = cli_inproc("bench", "aggregate", str(out), "--output", str(tmp_path / "agg"), "--json")
    assert r.returncode == 0, r.stderr
    agg = json.loads(r.stdout)
    assert agg["seeds"] == [7] and set(agg["summary"]["strategies"]) == set(STRATS)
    assert (tmp_path / "agg" / "bench_aggregate.md").is_file()
    r = cli_inproc("bench", "report", str(tmp_path))
    assert r.returncode == 2 and "no bench.json" in r.stderr


def test_undertrained_probe_exits_1_with_reason(model_dir, sst2_dir, tmp_path, cli_inproc):
    cfg = _config(tmp_path, model_dir, sst2_dir, quality_gate=0.99)
    out = tmp_path / "out"
    r = cli_inproc("bench", "run", str(cfg), "--output", str(out), "--quiet")
    assert r.returncode == 1
    assert "UNDERTRAINED" in r.stderr and "quality gate 0.9900" in r.stderr
    assert not (out / "seed_7" / "uniform_median").exists()  # variants are not trained on a weak probe
    assert json.loads((out / "verdicts.json").read_text())["status"] == "UNDERTRAINED"


def test_module_alias_runs_the_same_command(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: -1}\ntask: {data_dir: /tmp}\n")
    r = subprocess.run([sys.executable, "-m", "gradience.bench.run_bench", str(bad), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "train.max_steps: must be >= 1" in r.stderr


def test_a_probe_seeds_another_bench_that_only_compresses_differently(bench_run, cli_inproc, tmp_path):
    import shutil

    cfg, out, _ = bench_run
    data = yaml.safe_load(cfg.read_text())
    data["compression"] = {"strategies": ["uniform_median"]}
    other = tmp_path / "alpha.yaml"
    other.write_text(yaml.safe_dump(data))
    out2 = tmp_path / "alpha"
    shutil.copytree(out / "seed_7" / "probe", out2 / "seed_7" / "probe")
    probe = json.loads((out / "seed_7" / "probe" / "eval.json").read_text())
    r = cli_inproc("bench", "run", str(other), "--output", str(out2), "--json", "--retrain-scaling", "keep_alpha")
    assert r.returncode in (0, 1), r.stderr
    bench = json.loads((out2 / "bench.json").read_text())
    assert bench["probe"]["7"]["correct"] == probe["correct"]  # reused, not retrained
    assert bench["retrain_scaling"] == "keep_alpha"
    row = bench["variants"]["uniform_median"]["7"]
    assert row["plan"]["alpha"] == 16 and row["plan"]["scaling"] == "keep_alpha"  # the probe's alpha at rank r
    # Another training setting is another probe: refused, as before.
    data["train"]["lr"] = 1e-2
    other.write_text(yaml.safe_dump(data))
    shutil.copytree(out / "seed_7" / "probe", tmp_path / "alpha3" / "seed_7" / "probe")
    r = cli_inproc("bench", "run", str(other), "--output", str(tmp_path / "alpha3"), "--quiet")
    assert r.returncode == 2 and "different bench config" in r.stderr


def test_retrain_scaling_flag_is_validated(tmp_path, cli_inproc):
    r = cli_inproc("bench", "run", str(tmp_path / "any.yaml"), "--output", str(tmp_path / "o"),
                   "--retrain-scaling", "sqrt")
    assert r.returncode == 2 and "keep_scale" in r.stderr


def test_eval_files_are_scored_and_named_in_bench_json(model_dir, sst2_dir, tmp_path, cli_inproc):
    held = tmp_path / "held_out.tsv"
    held.write_text("label\tsentence\n" + "".join(f"{i % 2}\tsentence number {i}\n" for i in range(30)))
    cfg = _config(tmp_path, model_dir, sst2_dir, quality_gate=0.0, eval_files=[str(held)])
    data = yaml.safe_load(cfg.read_text())
    data["compression"] = {"strategies": ["truncate"]}
    data["train"]["eval_samples"] = None
    cfg.write_text(yaml.safe_dump(data))
    r = cli_inproc("bench", "run", str(cfg), "--output", str(tmp_path / "out"), "--quiet")
    assert r.returncode in (0, 1), r.stderr
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert bench["probe"]["7"]["n"] == 30 and bench["data"]["n_eval"] == 30
    (info,) = bench["data"]["eval_files"]
    assert info == {"file": "held_out.tsv", "rows": 30, "bytes": held.stat().st_size, "sha256": info["sha256"]}
