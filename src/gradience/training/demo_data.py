"""Data for ``gradience demo``: generated sentiment sentences, or a GLUE-style TSV directory.

The generated task ships no third-party text: sentences are assembled from templates and
word lists written for this project, seeded, with *held-out templates* for the test split
so the test sentences are never copies of training sentences (a memorisation gap stays
meaningful). Labels: 1 positive, 0 negative.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["Example", "generate_sentiment", "load_tsv_dir", "vocabulary"]

_SUBJECTS = ["the film", "this movie", "the story", "the acting", "the soundtrack", "the ending", "the script",
             "the cast", "the director's work", "the dialogue", "the pacing", "the plot", "the camera work",
             "the lead performance", "the second half", "the opening scene"]
_POSITIVE = ["wonderful", "moving", "delightful", "brilliant", "charming", "gripping", "superb", "heartfelt",
             "clever", "beautiful", "funny", "memorable", "inspired", "warm", "excellent", "thrilling"]
_NEGATIVE = ["dull", "tedious", "clumsy", "boring", "awful", "lifeless", "forgettable", "messy", "shallow",
             "bland", "painful", "confused", "weak", "tiresome", "predictable", "flat"]
_INTENSIFIERS = ["", "really ", "truly ", "quite ", "remarkably ", "utterly ", "surprisingly "]

# {s} subject, {a} adjective, {i} intensifier. Train and test templates never overlap.
_TRAIN_TEMPLATES = [
    "{s} is {i}{a}.",
    "i found {s} {i}{a}.",
    "honestly, {s} was {i}{a}.",
    "{s} felt {i}{a} from start to finish.",
    "what a {a} experience: {s} is {i}{a}.",
    "everyone agreed that {s} was {i}{a}.",
    "{s}? {i}{a}, in a word.",
    "by the end, {s} seemed {i}{a}.",
]
_TEST_TEMPLATES = [
    "my friends thought {s} was {i}{a}.",
    "overall, {s} comes across as {i}{a}.",
    "it is hard to deny that {s} is {i}{a}.",
    "{s} turned out {i}{a}.",
]


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def _sentence(rng: random.Random, templates: list[str], label: int) -> str:
    words = _POSITIVE if label == 1 else _NEGATIVE
    return rng.choice(templates).format(s=rng.choice(_SUBJECTS), a=rng.choice(words), i=rng.choice(_INTENSIFIERS))


def generate_sentiment(n_train: int = 2000, n_test: int = 256, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Balanced, shuffled (train, test) lists; the test split uses only held-out templates."""
    rng = random.Random(seed)
    train = [Example(_sentence(rng, _TRAIN_TEMPLATES, i % 2), i % 2) for i in range(n_train)]
    test = [Example(_sentence(rng, _TEST_TEMPLATES, i % 2), i % 2) for i in range(n_test)]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def vocabulary() -> list[str]:
    """Every word the generated task can produce (BERT special tokens first, then sorted words
    and punctuation): a word-level vocabulary for tiny models in tests and benchmarks."""
    words: set[str] = set()
    for lst in (_SUBJECTS, _POSITIVE, _NEGATIVE, _INTENSIFIERS, _TRAIN_TEMPLATES, _TEST_TEMPLATES):
        for item in lst:
            for w in item.replace("{", " ").replace("}", " ").replace("'", " ' ").split():
                words.add(w.strip(".,:?!").lower())
    words |= {".", ",", ":", "?", "!", "'"}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(w for w in words if w)]


def _read_tsv(path: Path) -> list[Example]:
    try:
        return _read_tsv_rows(path)
    except UnicodeDecodeError as exc:
        raise UsageError(f"not UTF-8 text (byte {exc.start})", path=path, hint="save the TSV as UTF-8") from None
    except csv.Error as exc:  # e.g. a field past csv's size limit: not a sentence file
        raise UsageError(f"not a readable TSV: {exc}", path=path,
                         hint="expected a header row, then `label<TAB>text` rows") from None


def _read_tsv_rows(path: Path) -> list[Example]:
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise UsageError("empty TSV file", path=path, hint="expected a header row, then `label<TAB>text` rows")
        for lineno, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise UsageError(f"line {lineno}: expected `label<TAB>text`", path=path)
            try:
                label = int(row[0])
            except ValueError:
                raise UsageError(f"line {lineno}: label {row[0]!r} is not an integer", path=path,
                                 hint="the first column must be the label (GLUE-style TSV)") from None
            out.append(Example(row[1], label))
    return out


def load_tsv_dir(data_dir: str | Path, n_train: int = 2000, n_test: int = 256,
                 seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``train.tsv`` and ``dev.tsv`` (or ``test.tsv``) from a GLUE-style directory, label first.

    A seeded random subset of ``n_train`` / ``n_test`` rows is taken from each file.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError("data directory not found", path=root, hint="pass a directory with train.tsv and dev.tsv")
    train_path = root / "train.tsv"
    test_path = next((root / n for n in ("dev.tsv", "test.tsv", "validation.tsv") if (root / n).exists()), None)
    if not train_path.exists() or test_path is None:
        raise UsageError("expected train.tsv and dev.tsv (or test.tsv) in the data directory", path=root)
    rng = random.Random(seed)
    train, test = _read_tsv(train_path), _read_tsv(test_path)
    if not train or not test:
        raise UsageError("a TSV split has no rows", path=root)
    rng.shuffle(train)
    rng.shuffle(test)
    return train[:n_train], test[:n_test]
