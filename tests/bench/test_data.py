"""Bench data: SST-2 TSV (header names differ between files), arithmetic set, answer parsing, masking."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gradience.bench.config import config_from_dict
from gradience.bench.data import (
    IGNORE_INDEX,
    answers_match,
    encode_causal_example,
    extract_answer,
    generate_arithmetic,
    load_task_data,
)
from gradience.errors import ConfigError


def test_sst2_train_and_dev_headers_differ_but_both_load(sst2_dir):
    head_train = (sst2_dir / "train.tsv").open().readline().split("\t")
    head_dev = (sst2_dir / "dev.tsv").open().readline().split("\t")
    assert head_train[1].strip() == "sentence" and head_dev[1].strip() == "content"
    cfg = config_from_dict({"task": {"data_dir": str(sst2_dir)}, "train": {"train_samples": 50}})
    data = load_task_data(cfg.task, 50, None, data_seed=0)
    assert len(data.train) == 50 and len(data.eval) == 872
    assert {e.label for e in data.eval} == {0, 1}
    assert all(e.text and "\t" not in e.text for e in data.eval)
    # The text column is the sentence, not the label.
    assert not any(e.text in ("0", "1") for e in data.train)
    # Same data seed, same subset; another seed, another order.
    again = load_task_data(cfg.task, 50, None, data_seed=0)
    other = load_task_data(cfg.task, 50, None, data_seed=1)
    assert again.train == data.train and other.train != data.train


def test_bad_tsv_rows_are_config_errors(tmp_path):
    (tmp_path / "train.tsv").write_text("label\tsentence\n1\tgood\nx\tbad label\n")
    (tmp_path / "dev.tsv").write_text("label\tcontent\n0\tfine\n")
    cfg = config_from_dict({"task": {"data_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="line 3: label 'x' is not an integer"):
        load_task_data(cfg.task, None, None)
    (tmp_path / "train.tsv").write_text("label\tsentence\n7\tgood\n")
    with pytest.raises(ConfigError, match=r"label 7 outside 0\.\.1"):
        load_task_data(cfg.task, None, None)
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(ConfigError, match=r"no dev\.tsv"):
        load_task_data(cfg.task, None, None)


def test_arithmetic_set_is_deterministic_and_answers_are_correct():
    rows = generate_arithmetic(40, seed=3)
    assert rows == generate_arithmetic(40, seed=3)
    assert any(r.answer.startswith("-") for r in rows) and any("." in r.answer for r in rows)
    for r in rows:
        expr = r.text.removeprefix("What is ").removesuffix("?")
        a, op, b = expr.split(" ")
        val = {"+": Decimal(a) + Decimal(b), "-": Decimal(a) - Decimal(b), "*": Decimal(a) * Decimal(b)}[op]
        assert Decimal(r.answer) == val


@pytest.mark.parametrize("text, expected", [
    (" -12\nQuestion: ...", Decimal("-12")),
    (" 3.50", Decimal("3.5")),
    ("-0.7 and then 5", Decimal("-0.7")),
    ("so 4 apples... #### -1,234", Decimal("-1234")),
    ("The answer is 2.25.", Decimal("2.25")),
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_answers_match_is_numeric_and_exact():
    assert answers_match(" 2.50", "2.5") and answers_match("-3", "-3.0")
    assert not answers_match("3", "-3") and not answers_match("", "0") and not answers_match("2.51", "2.5")


class CharTok:
    """A stand-in tokenizer: one id per character, EOS = 1."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_response_only_masking():
    enc = encode_causal_example(CharTok(), "What is 1 + 1?", "2", max_length=64)
    prompt_len = len("Question: What is 1 + 1?\nAnswer:")
    assert enc["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert enc["labels"][prompt_len:] == [ord(" "), ord("2"), 1]
    assert enc["input_ids"][prompt_len:] == [ord(" "), ord("2"), 1]
    # Too long: the prompt is cut from the left, the answer survives.
    short = encode_causal_example(CharTok(), "What is 1 + 1?", "-10.5", max_length=10)
    assert len(short["input_ids"]) == 10
    assert [t for t in short["labels"] if t != IGNORE_INDEX] == [ord(c) for c in " -10.5"] + [1]


def test_hub_dataset_without_the_datasets_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    cfg = config_from_dict({"task": {"dataset": "glue", "subset": "sst2", "eval_split": "validation"}})
    with pytest.raises(ConfigError, match="needs the 'datasets' package") as exc:
        load_task_data(cfg.task, None, None)
    assert "task.data_dir" in exc.value.one_line()


def test_length_bucketed_batches_use_every_row_once_per_pass_and_pad_less():
    import random

    from gradience.bench.data import length_bucketed_batches

    rng = random.Random(3)
    lengths = [rng.randint(3, 60) for _ in range(640)]
    batches = length_bucketed_batches(lengths, 32, 20, seed=7, window=4)
    assert len(batches) == 20 and all(len(b) == 32 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(640))  # one pass: every row exactly once
    assert batches == length_bucketed_batches(lengths, 32, 20, seed=7, window=4)
    assert batches != length_bucketed_batches(lengths, 32, 20, seed=8, window=4)
    # Padding: each batch is as wide as its longest row. Bucketed batches pad far less than random ones.
    shuffled = list(range(640))
    rng.shuffle(shuffled)
    random_width = sum(max(lengths[i] for i in shuffled[j:j + 32]) for j in range(0, 640, 32))
    bucketed_width = sum(max(lengths[i] for i in b) for b in batches)
    assert bucketed_width < 0.75 * random_width
    # More batches than one pass: a second, differently shuffled pass follows.
    longer = length_bucketed_batches(lengths, 32, 30, seed=7, window=4)
    assert longer[:20] == batches and len(longer) == 30


def test_validation_slice_is_carved_from_train_and_disjoint(sst2_dir):
    cfg = config_from_dict({"task": {"data_dir": str(sst2_dir)}})
    data = load_task_data(cfg.task, 300, 10, data_seed=0, val_samples=100)
    assert len(data.val) == 100 and len(data.train) == 300 and len(data.eval) == 10
    assert not {id(e) for e in data.val} & {id(e) for e in data.train}
    whole = load_task_data(cfg.task, 400, 10, data_seed=0)
    assert data.val == whole.train[:100] and data.train == whole.train[100:]  # carved before the train cut
    assert data.describe()["n_val"] == 100


def test_eval_files_replace_the_eval_split_and_are_named_with_sizes(tmp_path, sst2_dir):
    held = tmp_path / "held.tsv"
    held.write_text("label\tsentence\n1\ta fine film\n0\ta dull one\n0\tnot good\n")
    cfg = config_from_dict({"task": {"data_dir": str(sst2_dir), "eval_files": [str(held)]}})
    data = load_task_data(cfg.task, 10, None)
    assert [e.label for e in data.eval] == [1, 0, 0]
    (info,) = data.describe()["eval_files"]
    assert info["file"] == "held.tsv" and info["rows"] == 3 and info["bytes"] == held.stat().st_size
    bad = config_from_dict({"task": {"data_dir": str(sst2_dir), "eval_files": [str(tmp_path / "nope.tsv")]}})
    with pytest.raises(ConfigError, match="TSV file not found"):
        load_task_data(bad.task, 10, None)
