"""Bench data: GLUE-style TSV loading, hub datasets, and the generated arithmetic set.

Nothing here imports torch. Tokenisation helpers take a tokenizer object and return plain
lists of token ids, so they are testable with any tokenizer.

Two task profiles:

* ``classification``: rows of ``(label: int, text: str)``; metric accuracy.
* ``causal_lm_answer``: rows of ``(question: str, answer: str)``; the model sees a prompt built
  from the question, generates greedily, and the first number it gives is compared with the
  gold number exactly (negative and decimal numbers parsed; ``2.50`` equals ``2.5``). The
  training loss covers only the answer tokens (response-only masking).
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "TaskData",
    "answers_match",
    "encode_causal_example",
    "extract_answer",
    "format_number",
    "format_prompt",
    "generate_arithmetic",
    "length_bucketed_batches",
    "load_task_data",
    "read_tsv",
    "sorted_by_length",
]

IGNORE_INDEX = -100  # label value the HF loss ignores: masks prompt and padding tokens
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Example:
    """One example. Classification: ``text`` + ``label``. Causal LM: ``text`` (question) + ``answer``."""

    text: str
    label: int | None = None
    answer: str | None = None


@dataclass
class TaskData:
    """Rows of one bench: ``train`` (trained on), ``val`` (the validation slice carved from the
    training file, scored only by the plateau rule), ``eval`` (scored, never used to choose)."""

    train: list[Example]
    eval: list[Example]
    source: str
    val: list[Example] = field(default_factory=list)
    eval_files: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "n_train": len(self.train), "n_val": len(self.val),
                             "n_eval": len(self.eval)}
        if self.eval_files:
            d["eval_files"] = list(self.eval_files)
        return d


# -- TSV -------------------------------------------------------------------------------------
def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read a tab-separated file with a header row; returns ``(header, rows)``.

    Quotes are not special (GLUE text contains bare ``"``). Blank lines are skipped.
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            rows = [r for r in reader if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise ConfigError("TSV file not found", path=path) from None
    except UnicodeDecodeError:
        raise ConfigError("TSV file is not UTF-8 text", path=path) from None
    except csv.Error as exc:  # e.g. a field past csv's size limit
        raise ConfigError(f"not a readable TSV file: {exc}", path=path,
                          hint="a header row, then tab-separated rows (label first)") from None
    if not header:
        raise ConfigError("TSV file is empty (a header row is required)", path=path)
    return [h.strip() for h in header], rows


def _split_file(data_dir: Path, split: str) -> Path:
    for name in (f"{split}.tsv", *(("dev.tsv", "validation.tsv") if split in ("dev", "validation") else ())):
        p = data_dir / name
        if p.is_file():
            return p
    raise ConfigError(f"no {split}.tsv in the task data directory", path=data_dir,
                      hint="a GLUE-style directory holds train.tsv and dev.tsv with a header row")


def _column(header: list[str], wanted: str | None, default_pos: int, aliases: tuple[str, ...], path: Path) -> int:
    if wanted is not None:
        if wanted not in header:
            raise ConfigError(f"column {wanted!r} not in header {header}", path=path)
        return header.index(wanted)
    for a in aliases:
        if a in header:
            return header.index(a)
    if len(header) <= default_pos:
        raise ConfigError(f"expected at least {default_pos + 1} columns, header is {header}", path=path)
    return default_pos


def _load_classification_tsv(path: Path, text_col: str | None, label_col: str | None,
                             num_labels: int) -> list[Example]:
    header, rows = read_tsv(path)
    # GLUE SST-2: label first, text second; the text header differs between files
    # ("sentence" in train, "content" in dev), so the position is the robust default.
    li = _column(header, label_col, 0, ("label",), path)
    ti = _column(header, text_col, 1 if li == 0 else 0, ("sentence", "content", "text"), path)
    out = []
    for lineno, row in enumerate(rows, start=2):
        if len(row) <= max(li, ti):
            raise ConfigError(f"line {lineno}: expected {len(header)} tab-separated columns", path=path)
        try:
            label = int(row[li])
        except ValueError:
            raise ConfigError(f"line {lineno}: label {row[li]!r} is not an integer", path=path) from None
        if not 0 <= label < num_labels:
            raise ConfigError(f"line {lineno}: label {label} outside 0..{num_labels - 1}", path=path,
                              hint="set task.num_labels")
        out.append(Example(text=row[ti], label=label))
    return out


def _load_qa_tsv(path: Path, text_col: str | None, label_col: str | None) -> list[Example]:
    header, rows = read_tsv(path)
    qi = _column(header, text_col, 0, ("question",), path)
    ai = _column(header, label_col, 1, ("answer",), path)
    out = []
    for lineno, row in enumerate(rows, start=2):
        if len(row) <= max(qi, ai):
            raise ConfigError(f"line {lineno}: expected {len(header)} tab-separated columns", path=path)
        out.append(Example(text=row[qi], answer=row[ai]))
    return out


def _load_hub(task: Any, split: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        # Not part of any gradience extra: offline benches use task.data_dir.
        raise ConfigError("task.dataset needs the 'datasets' package, which is not installed",
                          hint="pip install datasets, or use task.data_dir with a local TSV copy") from None
    try:
        ds = datasets.load_dataset(task.dataset, task.subset, split=split)
    except Exception as exc:  # the hub client raises many types; all mean "cannot load it"
        raise ConfigError(f"cannot load hub dataset {task.dataset!r} split {split!r}: {exc}",
                          hint="offline? use task.data_dir with a local TSV copy") from None
    if task.profile == "classification":
        tcol = task.text_column or next((c for c in ("sentence", "text", "content") if c in ds.column_names), None)
        lcol = task.label_column or "label"
        if tcol is None or lcol not in ds.column_names:
            raise ConfigError(f"hub dataset columns {ds.column_names}: set task.text_column / task.label_column")
        return [Example(text=str(r[tcol]), label=int(r[lcol])) for r in ds]
    qcol, acol = task.text_column or "question", task.label_column or "answer"
    return [Example(text=str(r[qcol]), answer=str(r[acol])) for r in ds]


def _load_eval_files(task: Any) -> tuple[list[Example], list[dict[str, Any]]]:
    rows: list[Example] = []
    info: list[dict[str, Any]] = []
    for name in task.eval_files:
        p = Path(name)
        if task.profile == "classification":
            got = _load_classification_tsv(p, task.text_column, task.label_column, task.num_labels)
        else:
            got = _load_qa_tsv(p, task.text_column, task.label_column)
        if not got:
            raise ConfigError("eval file has a header but no rows", path=p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]  # identifies the file without its path
        info.append({"file": p.name, "rows": len(got), "bytes": p.stat().st_size, "sha256": digest})
        rows += got
    return rows, info


DATA_DIR_HINT = ("point task.data_dir in the bench YAML at a GLUE-style folder holding train.tsv and dev.tsv "
                 "(a header, label first, text second; a relative path is relative to the YAML file); the "
                 "bundled configs read SST-2 from ../shared/data/sst2 beside the repository")


def check_data_dir(d: Path) -> None:
    """Refuse a ``task.data_dir`` that is missing or not a folder, naming it and the fix."""
    if not d.exists():
        raise ConfigError("task.data_dir does not exist", path=d, hint=DATA_DIR_HINT)
    if not d.is_dir():
        raise ConfigError("task.data_dir is not a directory", path=d, hint=DATA_DIR_HINT)


def load_task_data(task: Any, train_samples: int | None, eval_samples: int | None,
                   data_seed: int = 0, val_samples: int = 0) -> TaskData:
    """Load the train, validation and eval rows for a :class:`~gradience.bench.config.TaskConfig`.

    Training rows are shuffled with ``data_seed``; the first ``val_samples`` become the validation
    slice, and ``train_samples`` are taken from the rest, so every variant of every seed sees the
    same rows and never trains on the slice. The eval rows are ``task.eval_files`` (concatenated)
    or the eval split, the first ``eval_samples`` in file order (all when ``None``).
    """
    if task.data_dir:
        d = Path(task.data_dir)
        check_data_dir(d)
        tr_p, ev_p = _split_file(d, task.train_split), _split_file(d, task.eval_split)
        if task.profile == "classification":
            train = _load_classification_tsv(tr_p, task.text_column, task.label_column, task.num_labels)
            ev = _load_classification_tsv(ev_p, task.text_column, task.label_column, task.num_labels)
        else:
            train = _load_qa_tsv(tr_p, task.text_column, task.label_column)
            ev = _load_qa_tsv(ev_p, task.text_column, task.label_column)
        source = str(d)
    elif task.dataset:
        train, ev = _load_hub(task, task.train_split), _load_hub(task, task.eval_split)
        source = f"hub:{task.dataset}" + (f"/{task.subset}" if task.subset else "")
    elif task.profile == "causal_lm_answer":
        rows = generate_arithmetic(task.arithmetic_examples, seed=1234)
        n_eval = max(1, len(rows) // 5)
        train, ev = rows[n_eval:], rows[:n_eval]
        source = f"generated:arithmetic(n={task.arithmetic_examples})"
    else:  # pragma: no cover - the config validator rejects this
        raise ConfigError("task needs data_dir or dataset")
    files: list[dict[str, Any]] = []
    if getattr(task, "eval_files", None):
        ev, files = _load_eval_files(task)
    if not train or not ev:
        raise ConfigError(f"empty split (train={len(train)}, eval={len(ev)})", path=source)
    rng = random.Random(data_seed)
    train = list(train)
    rng.shuffle(train)
    if val_samples >= len(train):
        raise ConfigError(f"train.val_samples={val_samples} leaves no training rows ({len(train)} in the file)")
    val, train = train[:val_samples], train[val_samples:]
    if train_samples is not None:
        train = train[:train_samples]
    if eval_samples is not None:
        ev = ev[:eval_samples]
    return TaskData(train=train, eval=ev, source=source, val=val, eval_files=files)


# -- batching ---------------------------------------------------------------------------------
def length_bucketed_batches(lengths: list[int], batch_size: int, n_batches: int, seed: int,
                            window: int = 64) -> list[list[int]]:
    """``n_batches`` batches of row indices whose rows have similar lengths.

    Each pass shuffles all rows with ``seed`` (and the pass number), cuts the order into windows
    of ``window`` batches, sorts each window by length and cuts it into batches; the batches of a
    pass are shuffled again, so the order of lengths is random while each batch pads little. Every
    row is used once per pass, as with a shuffled epoch. ``lengths[i]`` is row ``i``'s token count.
    """
    if batch_size < 1 or not lengths:
        raise ValueError("length_bucketed_batches needs rows and batch_size >= 1")
    out: list[list[int]] = []
    n = len(lengths)
    span = batch_size * max(1, window)
    epoch = 0
    while len(out) < n_batches:
        rng = random.Random(f"{seed}:{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for lo in range(0, n, span):
            chunk = sorted(order[lo:lo + span], key=lambda i: lengths[i])
            batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        # A short last batch of a pass would change the effective learning rate; drop it.
        batches = [b for b in batches if len(b) == batch_size] or batches
        rng.shuffle(batches)
        out += batches
        epoch += 1
    return out[:n_batches]


def sorted_by_length(rows: list[Example], lengths: list[int]) -> list[Example]:
    """Rows ordered by token count, for evaluation batches that pad little (counts do not depend on order)."""
    return [rows[i] for i in sorted(range(len(rows)), key=lambda i: lengths[i])]


# -- arithmetic (causal LM answer accuracy) ---------------------------------------------------
def format_number(x: Decimal) -> str:
    """Shortest plain decimal text: ``Decimal('2.50') -> '2.5'``, ``-0 -> '0'``."""
    x = x.normalize()
    if x == 0:
        return "0"
    s = format(x, "f")
    return s


def generate_arithmetic(n: int, seed: int = 0) -> list[Example]:
    """``n`` GSM8K-style word-free arithmetic questions with exact answers.

    Mixes addition, subtraction and multiplication of small integers (negatives included)
    and one-decimal numbers, so answers exercise negative and decimal parsing.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 3:  # decimals
            a = Decimal(rng.randint(-99, 99)) / 10
            b = Decimal(rng.randint(-99, 99)) / 10
        else:
            a, b = Decimal(rng.randint(-20, 20)), Decimal(rng.randint(-20, 20))
        op = rng.choice("+-*") if kind != 3 else rng.choice("+-")
        val = a + b if op == "+" else a - b if op == "-" else a * b
        q = f"What is {format_number(a)} {op} {format_number(b)}?"
        out.append(Example(text=q, answer=format_number(val)))
    return out


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _to_decimal(tok: str) -> Decimal | None:
    try:
        return Decimal(tok.replace(",", ""))
    except InvalidOperation:
        return None


def extract_answer(text: str) -> Decimal | None:
    """The answer number in a generation or a gold answer; ``None`` when there is none.

    GSM8K convention first (the number after ``####``), then after "answer is", else the first
    number on the first non-empty line (the prompt asks for the answer right away).
    """
    for marker in ("####", "answer is"):
        idx = text.lower().rfind(marker)
        if idx >= 0:
            m = _NUM.search(text, idx + len(marker))
            if m:
                return _to_decimal(m.group(0))
    for line in text.splitlines():
        if line.strip():
            m = _NUM.search(line)
            return _to_decimal(m.group(0)) if m else None
    return None


def answers_match(generated: str, gold: str) -> bool:
    """Exact numeric match: ``-3`` == ``-3.0``; no number generated is a miss."""
    g, p = extract_answer(gold), extract_answer(generated)
    return g is not None and p is not None and g == p


def encode_causal_example(tokenizer: Any, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """Token ids for prompt + " answer" + EOS, with labels masked to the answer only.

    Returns ``{"input_ids", "attention_mask", "labels"}`` (lists of equal length ≤ max_length);
    prompt positions carry :data:`IGNORE_INDEX` so the loss is response-only.
    """
    prompt_ids = tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None:
        answer_ids = [*answer_ids, eos]
    # Keep the answer whole; cut the prompt from the left if the pair is too long.
    keep_prompt = max(0, max_length - len(answer_ids))
    prompt_ids = prompt_ids[-keep_prompt:] if keep_prompt else []
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
