"""The demo's generated task: seeded, balanced, and with a test split that never repeats a
training sentence (so the memorisation gap the demo reports means something)."""

from __future__ import annotations

import pytest

from gradience.errors import UsageError
from gradience.training.demo_data import generate_sentiment, load_tsv_dir


def test_generated_task_is_deterministic_balanced_and_held_out():
    train, test = generate_sentiment(n_train=2000, n_test=256, seed=3)
    assert (train, test) == generate_sentiment(n_train=2000, n_test=256, seed=3)
    assert generate_sentiment(n_train=2000, n_test=256, seed=4)[0] != train
    assert len(train) == 2000 and len(test) == 256
    assert sum(e.label for e in train) == 1000 and sum(e.label for e in test) == 128
    assert not {e.text for e in train} & {e.text for e in test}
    # Labels follow the adjective's polarity, so the task is learnable and not noise.
    assert all(("dull" in e.text) <= (e.label == 0) for e in train + test)
    assert all(("brilliant" in e.text) <= (e.label == 1) for e in train + test)


def test_tsv_directory_subsets_and_errors(tmp_path):
    (tmp_path / "train.tsv").write_text("label\tsentence\n" + "".join(f"{i % 2}\tsent {i}\n" for i in range(50)))
    (tmp_path / "dev.tsv").write_text("label\tsentence\n1\tgood\n0\tbad\n")
    train, test = load_tsv_dir(tmp_path, n_train=10, n_test=5, seed=1)
    assert len(train) == 10 and len(test) == 2 and train == load_tsv_dir(tmp_path, n_train=10, seed=1)[0]
    (tmp_path / "dev.tsv").write_text("label\tsentence\npositive\tgood\n")
    with pytest.raises(UsageError, match="line 2: label 'positive' is not an integer"):
        load_tsv_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"expected train\.tsv and dev\.tsv"):
        load_tsv_dir(tmp_path / "empty")
