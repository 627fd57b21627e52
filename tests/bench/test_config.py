"""Bench config: strict YAML validation (unknown keys, wrong types name the key), seeds, smoke."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradience.bench.config import STRATEGIES, config_from_dict, load_config
from gradience.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bench.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_config_loads_and_smoke_overrides_apply():
    cfg = load_config(REPO / "configs" / "bench_minilm_sst2.yaml")
    assert cfg.model.name == "bundled:minilm"
    assert cfg.train.seeds == [42, 43, 44, 45, 46]
    assert set(cfg.compression.strategies) <= set(STRATEGIES) and "truncate_heal" in cfg.compression.strategies
    assert Path(cfg.task.data_dir, "train.tsv").is_file()  # resolved relative to the config file
    smoke = cfg.with_smoke()
    assert list(smoke.compression.strategies) == list(STRATEGIES)  # --smoke exercises every strategy
    assert smoke.train.seeds == [42] and smoke.train.max_steps < cfg.train.max_steps
    assert smoke.config_hash() != cfg.config_hash()
    # Untouched sections survive the merge.
    assert smoke.lora.probe_r == cfg.lora.probe_r and smoke.train.lr == cfg.train.lr


def test_shipped_smoke_variant_file_loads():
    cfg = load_config(REPO / "configs" / "bench_minilm_sst2_smoke.yaml")
    assert cfg.train.max_steps <= 20 and len(cfg.train.seeds) == 1


@pytest.mark.parametrize("text, key", [
    ("train:\n  max_stpes: 3\n", "train.max_stpes"),
    ("lora:\n  rank: 8\n", "lora.rank"),
    ("extra_section: {}\n", "extra_section"),
    ("runtime:\n  smoke:\n    train:\n      max_stepz: 1\n", "train.max_stepz"),
])
def test_unknown_keys_are_errors_naming_the_key(tmp_path, text, key):
    p = _write(tmp_path, "task:\n  data_dir: /nonexistent\n" + text if not text.startswith("task") else text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert f"unknown key '{key}'" in exc.value.one_line()
    assert str(p) in exc.value.one_line()


@pytest.mark.parametrize("section, body, key", [
    ("train", "max_steps: ten", "train.max_steps"),
    ("train", "max_steps: 1.5", "train.max_steps"),
    ("train", "seeds: 42", "train.seeds"),
    ("train", "seeds: [1, two]", "train.seeds[1]"),
    ("lora", "target_modules: query", "lora.target_modules"),
    ("lora", "probe_r: true", "lora.probe_r"),
    ("train", "lr: fast", "train.lr"),
])
def test_wrong_types_name_the_key(section, body, key):
    data = {"task": {"data_dir": "x"}, section: dict([body.split(": ", 1)])}
    import yaml

    data[section] = yaml.safe_load(body)
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert exc.value.one_line().startswith(f"{key}: expected")


def test_numbers_in_yaml_forms_are_accepted(tmp_path):
    cfg = load_config(_write(tmp_path, """\
        task: {data_dir: /tmp}
        train: {lr: 1e-3, max_steps: 5, seeds: [1, 2, 3]}
        lora: {alpha: 16}
    """))
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.lora.alpha, float)
    assert cfg.train.seeds == [1, 2, 3]


@pytest.mark.parametrize("data, key", [
    ({"task": {"data_dir": "x"}, "train": {"seeds": []}}, "train.seeds"),
    ({"task": {"data_dir": "x"}, "train": {"seeds": [1, 1]}}, "train.seeds"),
    ({"task": {"data_dir": "x"}, "compression": {"strategies": ["uniform_mean"]}}, "compression.strategies"),
    ({"task": {"data_dir": "x", "profile": "regression"}}, "task.profile"),
    ({"task": {"data_dir": "x", "metric": "exact_match"}}, "task.metric"),
    ({"task": {}}, "task"),
    ({"task": {"data_dir": "x", "dataset": "glue"}}, "task"),
    ({"task": {"data_dir": "x"}, "train": {"max_steps": 0}}, "train.max_steps"),
    ({"task": {"data_dir": "x"}, "compression": {"budget_fraction": 1.5}}, "compression.budget_fraction"),
])
def test_semantic_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert exc.value.one_line().startswith(f"{key}:")


def test_model_forms_and_hub_task():
    cfg = config_from_dict({"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
                            "task": {"dataset": "glue", "subset": "sst2", "eval_split": "validation"}})
    assert cfg.task.dataset == "glue" and cfg.model.name.startswith("sentence-transformers/")
    causal = config_from_dict({"task": {"name": "arithmetic", "profile": "causal_lm_answer",
                                        "metric": "exact_match"}})
    assert causal.task.data_dir is None  # the generated arithmetic set


def test_seed_override_and_hash_ignores_seeds():
    cfg = config_from_dict({"task": {"data_dir": "x"}})
    other = cfg.with_seeds([7, 8])
    assert other.train.seeds == [7, 8] and cfg.train.seeds == [42]
    assert other.config_hash() == cfg.config_hash()
    changed = config_from_dict({"task": {"data_dir": "x"}, "train": {"lr": 5e-4}})
    assert changed.config_hash() != cfg.config_hash()


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- a list\n"))


def test_cli_bad_config_exits_2_without_importing_torch(tmp_path, cli):
    p = _write(tmp_path, "task: {data_dir: /tmp}\ntrain: {max_steps: many}\n")
    r = cli("bench", "run", str(p), "--output", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "train.max_steps: expected int" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_help_and_validation_do_not_import_torch():
    code = ("import sys; from gradience.cli.main import main\n"
            "from gradience.bench.config import load_config\n"
            f"load_config({str(REPO / 'configs' / 'bench_minilm_sst2.yaml')!r})\n"
            "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "run" in r.stdout and "aggregate" in r.stdout and "report" in r.stdout


def test_smoke_flag_without_smoke_overrides_is_a_usage_error(tmp_path, cli):
    p = _write(tmp_path, "task: {data_dir: /tmp}\n")
    r = cli("bench", "run", str(p), "--output", str(tmp_path / "out"), "--smoke")
    assert r.returncode == 2 and "no runtime.smoke overrides" in r.stderr


def test_bad_seeds_option_is_a_usage_error(tmp_path, cli):
    p = _write(tmp_path, "task: {data_dir: /tmp}\n")
    r = cli("bench", "run", str(p), "--output", str(tmp_path / "out"), "--seeds", "1,x")
    assert r.returncode == 2 and "--seeds: 'x' is not an integer" in r.stderr


@pytest.mark.parametrize(("section", "value", "match"), [
    ("compression", {"retrain_scaling": "sqrt"}, "compression.retrain_scaling: must be one of keep_scale"),
    ("compression", {"heal_steps": 0}, "compression.heal_steps: must be >= 1"),
    ("train", {"plateau_every": 10}, "train.plateau_every: the plateau rule scores a validation slice"),
    ("train", {"plateau_patience": 0, "val_samples": 5}, "train.plateau_patience: must be >= 1"),
    ("task", {"data_dir": "x", "eval_files": []}, "task.eval_files: needs at least one file"),
])
def test_new_keys_are_validated(section, value, match):
    data = {"task": {"data_dir": "x"}}
    data.setdefault(section, {}).update(value)
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_eval_files_resolve_relative_to_the_config(tmp_path):
    (tmp_path / "held.tsv").write_text("label\tsentence\n1\tgood\n")
    p = _write(tmp_path, """
        task: {data_dir: ., eval_files: [held.tsv]}
        compression: {retrain_scaling: rslora}
    """)
    cfg = load_config(p)
    assert cfg.task.eval_files == [str((tmp_path / "held.tsv").resolve())]
    assert cfg.compression.retrain_scaling == "rslora"
