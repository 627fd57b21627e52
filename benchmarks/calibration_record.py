"""Record the calibration corpus: real training runs with Gradience telemetry at every step.

    python benchmarks/calibration_record.py                 # the whole corpus -> tests/data/calibration/
    python benchmarks/calibration_record.py --only amp_overflow --only divergence
    python benchmarks/calibration_record.py --quick --out /tmp/cal   # the reduced corpus of the slow test
    python benchmarks/calibration_record.py --list

Every run is recorded once, on CPU and offline, with ``GradienceCallback`` (or
``GradienceController`` for a plain loop): ``telemetry_interval=1``, κ̃ sampled every 5 steps,
**guard off** (the trajectory is the natural one; the guard is replayed offline from the
per-step loss and gradient-norm series), no adapter, audit or recommendations, and evaluations
of the held-out split (``test``) and a train subset of the same size (``train``) every 10–20
steps. Each run is one ``<name>.jsonl`` (plain telemetry v1, readable by ``gradience monitor``)
and one entry of ``manifest.json``::

    {"version": 1, "runs": [{"file": "sst2_b16_s0.jsonl", "profile": "sst2_b16", "seed": 0,
      "split": "fit", "labels": {"n_labels": 2, "majority_rate": 0.51}, "injected": [],
      "intent": "healthy", "notes": "...", ...}]}

``split`` is ``fit`` (rules may be tuned on these seeds) or ``test`` (the table is reported on
these). ``labels`` describes the held-out set: the number of labels and the rate of its most
frequent label (``null`` for the causal LM, whose eval reports a perplexity). ``injected``
lists the faults a ``FaultInjector`` fired (step, kind, case, factor). ``intent`` is what the
profile was built to be (``healthy``, ``not_learning``, ``memorisation``, ``diverges``,
``injected``), not the ground truth: the scorer derives that from the telemetry with the rules
in ``docs/calibration.md``. ``observed`` holds a few facts read back from the recorded file
(final accuracies, the divergence step by the ground-truth rule, non-finite steps).

Profiles (``--list`` prints them with their seeds, ``intent`` says what each is): on the bundled
all-MiniLM-L6-v2 (generated sentiment as in ``gradience demo``; real SST-2 from
``../shared/data/sst2`` at batch 16 and 4; warm-up + cosine + clipping; gradient accumulation;
a LR 10x too high at batch 4, whose classifier collapses to one class)
and on tiny models built from a config (a GPT-2 causal LM on generated text, multi-epoch
memorisation, fp16-style AMP with early overflow steps, a resumed run, a run with LR 0); failing
ones: every ``FAULT_CASES`` case injected once at steps 1, 5 and 10 on a tiny BERT, and real
divergences (the LR raised ×100 once the loss is low, clipping off). ``--quick`` records one seed of every
profile, and fewer steps for the MiniLM ones (``make test-slow`` checks it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "calibration"
SST2_DIR = REPO_ROOT.parent / "shared" / "data" / "sst2"
MANIFEST_VERSION = 1
KAPPA_INTERVAL = 5


# -- the ground-truth rule, as the scorer defines it (used here to check what was recorded) ----------
def divergence_step(losses: list[tuple[int, float]]) -> int | None:
    """The first step whose loss is non-finite, or >= 10x the median M of all earlier losses while
    the median of that step and the next four is also >= 10x M (step 1 only by being non-finite)."""
    def key(v: float) -> float:
        return math.inf if not math.isfinite(v) else v

    for i, (step, loss) in enumerate(losses):
        if not math.isfinite(loss):
            return step
        if i == 0:
            continue
        m = statistics.median(v for _, v in losses[:i])
        if loss >= 10 * m and statistics.median(key(v) for _, v in losses[i:i + 5]) >= 10 * m:
            return step
    return None


def read_run(path: Path) -> dict[str, Any]:
    """Facts of one recorded file: per-step losses / grad norms (last record of each step wins),
    evals, run_start and run_end events."""
    from gradience.telemetry.reader import TelemetryReader

    reader = TelemetryReader(path)
    events = list(reader.iter_events())
    steps: dict[int, dict[str, Any]] = {}
    evals: list[dict[str, Any]] = []
    starts, ends, spectral = [], [], []
    for e in events:
        kind = e.get("event")
        if kind == "train_step":
            steps[int(e["step"])] = e
        elif kind == "eval":
            evals.append(e)
        elif kind == "run_start":
            starts.append(e)
        elif kind == "run_end":
            ends.append(e)
        elif kind == "metrics" and e.get("kind") == "spectral":
            spectral.append(e)

    def num(v: Any) -> float:
        if v is None:
            return math.nan
        if isinstance(v, str):  # non-finite numbers may be written as strings
            return float(v.replace("Infinity", "inf"))
        return float(v)

    losses = [(s, num(e.get("loss"))) for s, e in sorted(steps.items()) if "loss" in e]
    grads = [(s, num(e.get("grad_norm"))) for s, e in sorted(steps.items()) if "grad_norm" in e]
    return {"events": events, "issues": [str(i) for i in reader.issues], "losses": losses, "grad_norms": grads,
            "evals": evals, "starts": starts, "ends": ends, "spectral": spectral,
            "n_train_step_events": sum(1 for e in events if e.get("event") == "train_step")}


def last_eval(evals: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    found = [e for e in evals if e.get("split") == split]
    return found[-1] if found else None


def observed(path: Path) -> dict[str, Any]:
    run = read_run(path)
    out: dict[str, Any] = {"steps": run["losses"][-1][0] if run["losses"] else 0,
                           "divergence_step": divergence_step(run["losses"]),
                           "nonfinite_loss_steps": sum(1 for _, v in run["losses"] if not math.isfinite(v)),
                           "nonfinite_grad_steps": sum(1 for _, v in run["grad_norms"] if not math.isfinite(v)),
                           "kappa_samples": len(run["spectral"])}
    finite = [v for _, v in run["losses"] if math.isfinite(v)]
    if finite:
        out["first_loss"] = round(run["losses"][0][1], 4) if math.isfinite(run["losses"][0][1]) else None
        out["max_finite_loss"] = round(max(finite), 4)
    for split in ("test", "train"):
        ev = last_eval(run["evals"], split)
        if ev is None:
            continue
        for key in ("accuracy", "loss", "ppl"):
            v = (ev.get("metrics") or {}).get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"{split}_{key}"] = round(float(v), 4)
    return out


# -- data ---------------------------------------------------------------------------------------------------
def label_stats(labels: list[int]) -> dict[str, Any]:
    counts: dict[int, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    return {"n_labels": max(2, len(counts)), "majority_rate": round(max(counts.values()) / len(labels), 4),
            "n_eval": len(labels)}


def sst2_examples(n_train: int, n_test: int, seed: int) -> tuple[list[Any], list[Any]]:
    from gradience.training.demo_data import load_tsv_dir

    if not SST2_DIR.is_dir():
        # Never silently skip: a corpus without its real-data runs would score a different table.
        raise SystemExit(f"SST-2 data not found at {SST2_DIR} (the repository's ../shared/data/sst2, "
                         "GLUE-style train.tsv and dev.tsv); it is required for the sst2 profiles")
    return load_tsv_dir(SST2_DIR, n_train=n_train, n_test=n_test, seed=seed)


class Rows:
    """Tokenised ``(text, label)`` examples as a map-style dataset (the Trainer's collator pads)."""

    def __init__(self, examples: list[Any], tokenizer: Any, max_length: int, labels: list[int] | None = None) -> None:
        enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
        ys = labels if labels is not None else [e.label for e in examples]
        self.labels = list(ys)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": ys[i]} for i in range(len(examples))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def accuracy(eval_pred: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


# -- models -------------------------------------------------------------------------------------------------
def tiny_tokenizer() -> Any:
    """A word-level BERT tokenizer over the generated task's vocabulary (no download). The vocabulary
    is passed as a dict: the installed tokenizer ignores a ``vocab_file`` keyword (every word would
    become ``[UNK]``)."""
    from transformers import BertTokenizerFast

    from gradience.training.demo_data import vocabulary

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocabulary())}, do_lower_case=True)
    assert tok("the film is wonderful.")["input_ids"].count(tok.unk_token_id) == 0
    return tok


def tiny_bert(tok: Any, seed: int, rank: int = 4) -> Any:
    """A 2-layer BERT (hidden 32) from a config: LoRA on query/value, the word embeddings trained
    in full (``modules_to_save``; with random frozen embeddings the model learns nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return get_peft_model(BertForSequenceClassification(cfg),
                          LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"],
                                     lora_dropout=0.0, task_type="SEQ_CLS", modules_to_save=["word_embeddings"]))


def minilm(seed: int, rank: int = 8) -> tuple[Any, Any]:
    """The bundled all-MiniLM-L6-v2 with a fresh 2-label head, LoRA r=8 on query/value."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gradience.training.demo import resolve_model_path

    path = resolve_model_path(None)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank,  # type: ignore[arg-type]
                      lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS")
    return get_peft_model(model, lora), tok


MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


# -- one Trainer run ----------------------------------------------------------------------------------------
@dataclass
class TrainerRun:
    model: Any
    tokenizer: Any
    train: Any
    test: Any
    train_eval: Any
    steps: int
    batch: int = 16
    lr: float = 5e-4
    seed: int = 0
    eval_every: int = 15
    max_grad_norm: float = 0.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    grad_accum: int = 1
    collator: Any = None
    compute_metrics: Any = accuracy
    model_name: str = MINILM_NAME
    dataset_name: str = "sst2"
    task_profile: str | None = "easy_classification"
    extra_callbacks: list[Any] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)


def gradience_config(work: Path, r: TrainerRun, notes: str) -> Any:
    from gradience import GradienceConfig, SpectralConfig

    return GradienceConfig(out_dir=str(work), telemetry_interval=1, guard=None,
                           spectral=SpectralConfig(interval=KAPPA_INTERVAL), save_adapter=False, audit=False,
                           recommend=False, model_name=r.model_name, dataset_name=r.dataset_name,
                           task_profile=r.task_profile, notes=notes)


def make_trainer(work: Path, r: TrainerRun, callbacks: list[Any], **arg_overrides: Any) -> Any:
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(**{
        "output_dir": str(work / "trainer"), "max_steps": r.steps, "per_device_train_batch_size": r.batch,
        "per_device_eval_batch_size": 64, "gradient_accumulation_steps": r.grad_accum, "learning_rate": r.lr,
        "weight_decay": 0.0, "lr_scheduler_type": r.scheduler, "warmup_steps": r.warmup_steps,
        "max_grad_norm": r.max_grad_norm, "eval_strategy": "steps", "eval_steps": r.eval_every,
        "logging_strategy": "no", "save_strategy": "no", "report_to": [], "disable_tqdm": True, "seed": r.seed,
        "data_seed": r.seed, "use_cpu": True, "dataloader_num_workers": 0, **r.args, **arg_overrides})
    trainer = Trainer(model=r.model, args=args, train_dataset=r.train,
                      eval_dataset={"test": r.test, "train": r.train_eval},
                      data_collator=r.collator or DataCollatorWithPadding(r.tokenizer),
                      compute_metrics=r.compute_metrics, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_trainer(work: Path, r: TrainerRun, notes: str, injector: Any = None) -> None:
    """Train with the Gradience callback; an ``injector`` (FaultInjector) records each firing
    through it (``metrics(kind="fault_injection")``)."""
    from gradience import GradienceCallback

    cb = GradienceCallback(config=gradience_config(work, r, notes))
    faults = [injector.callback(monitor=cb)] if injector is not None else []
    make_trainer(work, r, [cb, *faults, *r.extra_callbacks]).train()


# -- profiles -------------------------------------------------------------------------------------------------
@dataclass
class Recorded:
    """What a profile function returns besides the telemetry file (``work/run.jsonl``)."""

    labels: dict[str, Any] | None
    notes: str
    injected: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Profile:
    name: str
    intent: str
    fn: Callable[[Path, int, bool], Recorded]
    fit: list[int]
    test: list[int]
    description: str
    minilm: bool = False


def _minilm_run(seed: int, *, sst2: bool, steps: int, batch: int, lr: float = 5e-4, n_eval: int = 128,
                **kw: Any) -> tuple[TrainerRun, dict[str, Any]]:
    model, tok = minilm(seed)
    if sst2:
        train_ex, test_ex = sst2_examples(2000, n_eval, seed)
        dataset = "sst2"
    else:
        from gradience.training.demo_data import generate_sentiment

        train_ex, test_ex = generate_sentiment(n_train=2000, n_test=n_eval, seed=seed)
        dataset = "gradience-synthetic-sentiment"
    r = TrainerRun(model=model, tokenizer=tok, train=Rows(train_ex, tok, 64), test=Rows(test_ex, tok, 64),
                   train_eval=Rows(train_ex[:n_eval], tok, 64), steps=steps, batch=batch, lr=lr, seed=seed,
                   dataset_name=dataset, **kw)
    return r, label_stats([e.label for e in test_ex])


def p_demo(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 100
    r, labels = _minilm_run(seed, sst2=False, steps=steps, batch=16, eval_every=10 if quick else 20, scheduler="linear",
                            warmup_steps=max(1, steps // 10), max_grad_norm=1.0)
    notes = (f"gradience demo settings: MiniLM + LoRA r=8, generated sentiment, batch 16, lr 5e-4 linear with "
             f"{max(1, steps // 10)} warm-up steps, clipping 1.0, {steps} steps")
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_sst2_b16(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 120
    r, labels = _minilm_run(seed, sst2=True, steps=steps, batch=16, eval_every=10 if quick else 15)
    notes = f"MiniLM + LoRA r=8, real SST-2, batch 16, lr 5e-4 constant, no clipping, {steps} steps"
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_sst2_b4(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 120
    r, labels = _minilm_run(seed, sst2=True, steps=steps, batch=4, eval_every=10 if quick else 15)
    notes = f"MiniLM + LoRA r=8, real SST-2, batch 4, lr 5e-4 constant, no clipping, {steps} steps"
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_collapse(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 120
    r, labels = _minilm_run(seed, sst2=True, steps=steps, batch=4, lr=5e-3, eval_every=10 if quick else 15)
    notes = (f"MiniLM + LoRA r=8, real SST-2, batch 4, lr 5e-3 constant (10x the sane 5e-4), no clipping, "
             f"{steps} steps: the classifier collapses to one class")
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_warmup_cosine(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 120
    warm = max(1, steps // 10)
    r, labels = _minilm_run(seed, sst2=True, steps=steps, batch=16, eval_every=10 if quick else 15, scheduler="cosine",
                            warmup_steps=warm, max_grad_norm=1.0)
    notes = (f"MiniLM + LoRA r=8, real SST-2, batch 16, lr 5e-4 cosine with {warm} warm-up steps, "
             f"clipping 1.0, {steps} steps")
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_grad_accum(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 20 if quick else 80
    r, labels = _minilm_run(seed, sst2=True, steps=steps, batch=4, grad_accum=4, eval_every=10 if quick else 20,
                            max_grad_norm=1.0)
    notes = (f"MiniLM + LoRA r=8, real SST-2, batch 4 x gradient accumulation 4 (16 samples per step), lr 5e-4 "
             f"constant, clipping 1.0, {steps} steps")
    run_trainer(work, r, notes)
    return Recorded(labels, notes, extra={"samples_per_step": 16, "grad_accum": 4})


def _tiny_run(seed: int, *, steps: int, n_train: int = 512, n_test: int = 128, batch: int = 16, lr: float = 5e-3,
              **kw: Any) -> tuple[TrainerRun, dict[str, Any]]:
    from gradience.training.demo_data import generate_sentiment

    tok = tiny_tokenizer()
    train_ex, test_ex = generate_sentiment(n_train=n_train, n_test=n_test, seed=seed)
    r = TrainerRun(model=tiny_bert(tok, seed), tokenizer=tok, train=Rows(train_ex, tok, 32),
                   test=Rows(test_ex, tok, 32), train_eval=Rows(train_ex[:n_test], tok, 32), steps=steps,
                   batch=batch, lr=lr, seed=seed, model_name="tiny-bert-2x32 (config)",
                   dataset_name="gradience-synthetic-sentiment", **kw)
    return r, label_stats([e.label for e in test_ex])


def p_no_learning(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 100
    r, labels = _tiny_run(seed, steps=steps, lr=0.0, eval_every=10)
    notes = f"tiny BERT + LoRA r=4 (+ word embeddings), generated sentiment, learning rate 0 (nothing is learnt), {steps} steps"
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_memorisation(work: Path, seed: int, quick: bool) -> Recorded:
    steps = 120
    r, labels = _tiny_run(seed, steps=steps, n_train=16, n_test=64, batch=8, lr=1e-2, eval_every=20)
    r.train_eval = r.train  # all 16 training sentences
    notes = (f"tiny BERT + LoRA r=4 (+ word embeddings), 16 generated training sentences for {steps} steps (batch 8: "
             f"{steps * 8 // 16} epochs), lr 1e-2 constant; test = held-out templates")
    run_trainer(work, r, notes)
    return Recorded(labels, notes)


def p_resume(work: Path, seed: int, quick: bool) -> Recorded:
    from transformers import TrainerCallback

    from gradience import GradienceCallback

    steps, save_at, kill_at = 90, 40, 50

    class Kill(Exception):
        pass

    class Killer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == kill_at:
                raise Kill

    notes = (f"tiny BERT + LoRA r=4 (+ word embeddings), generated sentiment, {steps} steps; checkpoint at step {save_at}, the "
             f"process dies at step {kill_at} (no run_end), the run resumes from the checkpoint into the same "
             f"file (steps {save_at + 1}-{kill_at} are trained and recorded twice)")
    r, labels = _tiny_run(seed, steps=steps, eval_every=10)
    cb = GradienceCallback(config=gradience_config(work, r, notes))
    trainer = make_trainer(work, r, [cb, Killer()], save_strategy="steps", save_steps=save_at)
    try:
        trainer.train()
    except Kill:
        # What a killed process leaves: the events written so far, no run_end, no exit hooks.
        sup = cb.supervisor
        assert sup is not None and sup.recorder is not None
        sup.recorder.writer.close()
        sup._remove_exit_hooks()
        cb._cleanup()
    else:  # pragma: no cover
        raise RuntimeError("the resume profile's first segment was not interrupted")
    r2, _ = _tiny_run(seed, steps=steps, eval_every=10)
    cb2 = GradienceCallback(config=gradience_config(work, r2, notes))
    make_trainer(work, r2, [cb2], save_strategy="steps", save_steps=save_at).train(
        resume_from_checkpoint=str(work / "trainer" / f"checkpoint-{save_at}"))
    return Recorded(labels, notes, extra={"checkpoint_step": save_at, "killed_at_step": kill_at})


def p_amp_overflow(work: Path, seed: int, quick: bool) -> Recorded:
    """A plain loop with CPU autocast float16 and a GradScaler whose first steps overflow."""
    import torch
    from transformers import DataCollatorWithPadding

    from gradience import GradienceConfig, GradienceController, SpectralConfig
    from gradience.training.demo_data import generate_sentiment
    from gradience.training.label_stats import majority_rate

    steps = 120
    init_scale = 2.0 ** 24
    tok = tiny_tokenizer()
    train_ex, test_ex = generate_sentiment(n_train=512, n_test=128, seed=seed)
    train, test, train_eval = Rows(train_ex, tok, 32), Rows(test_ex, tok, 32), Rows(train_ex[:128], tok, 32)
    model = tiny_bert(tok, seed)
    collate = DataCollatorWithPadding(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    notes = (f"tiny BERT + LoRA r=4 (+ word embeddings), generated sentiment, plain loop with CPU autocast float16 and a GradScaler "
             f"(init scale 2^24): the first steps overflow and are skipped by the scaler; clipping 1.0, "
             f"{steps} steps")
    cfg = GradienceConfig(out_dir=str(work), telemetry_interval=1, guard=None,
                          spectral=SpectralConfig(interval=KAPPA_INTERVAL), save_adapter=False, audit=False,
                          recommend=False, model_name="tiny-bert-2x32 (config)",
                          dataset_name="gradience-synthetic-sentiment", task_profile="easy_classification",
                          notes=notes)
    ctl = GradienceController(config=cfg)
    ctl.initialize(model, optimizer=opt, scaler=scaler, max_steps=steps,
                   meta={"amp": {"dtype": "float16", "grad_scaler": True, "init_scale": init_scale}})
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    skipped: list[int] = []

    def evaluate(step: int) -> None:
        model.eval()
        for split, rows in (("test", test), ("train", train_eval)):
            losses, correct, n = [], 0, 0
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                for i in range(0, len(rows), 64):
                    b = collate([rows[j] for j in range(i, min(i + 64, len(rows)))])
                    out = model(**b)
                    losses.append(float(out.loss.float()) * len(b["labels"]))
                    correct += int((out.logits.argmax(-1) == b["labels"]).sum())
                    n += len(b["labels"])
            ctl.log_eval(step, split, {"loss": sum(losses) / n, "accuracy": correct / n, "n": n,
                                       "majority_rate": majority_rate(rows.labels)})
        model.train()

    model.train()
    for step in range(1, steps + 1):
        if not order:
            order = torch.randperm(len(train), generator=g).tolist()
        idx, order = order[:16], order[16:]
        batch = collate([train[i] for i in idx])
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        pre = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        if not math.isfinite(float(pre)):
            skipped.append(step)
        ctl.step(step, loss, model, grad_norm=pre, epoch=step * 16 / len(train))
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if scaler.get_scale() < scale:
            assert step in skipped
        if step % 15 == 0 or step == steps:
            evaluate(step)
    ctl.finalize()
    return Recorded(label_stats([e.label for e in test_ex]), notes, extra={"amp_skipped_steps": skipped})


def p_causal_lm(work: Path, seed: int, quick: bool) -> Recorded:
    """A 2-layer GPT-2 built from a config, LoRA, on generated text with a word-level vocabulary."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradience.training.demo_data import generate_sentiment, vocabulary

    steps = 120
    vocab = vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    pad, eos, unk = ids["[PAD]"], ids["[SEP]"], ids["[UNK]"]

    def encode(text: str) -> list[int]:
        out = []
        for w in text.lower().replace("'", " ' ").replace("?", " ?").replace(",", " ,").replace(":", " :") \
                .replace(".", " .").replace("!", " !").split():
            out.append(ids.get(w, unk))
        return [*out, eos]

    # Train and test: the same templates, different sentences (a healthy LM generalises).
    train_ex, _ = generate_sentiment(n_train=1024, n_test=2, seed=seed)
    test_ex, _ = generate_sentiment(n_train=128, n_test=2, seed=1000 + seed)

    class LMRows:
        def __init__(self, examples: list[Any]) -> None:
            self.rows = [{"input_ids": encode(e.text)} for e in examples]

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return self.rows[i]

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = max(len(r["input_ids"]) for r in rows)
        inp = torch.full((len(rows), n), pad, dtype=torch.long)
        att = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            inp[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            att[i, :len(r["input_ids"])] = 1
        labels = inp.masked_fill(att == 0, -100)
        return {"input_ids": inp, "attention_mask": att, "labels": labels}

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=eos,
                     eos_token_id=eos, pad_token_id=pad)
    model = get_peft_model(GPT2LMHeadModel(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj"],
                                                             fan_in_fan_out=True, lora_dropout=0.0,
                                                             task_type="CAUSAL_LM"))
    notes = (f"tiny GPT-2 (2 layers, 64 wide, from a config) + LoRA r=8 on c_attn/c_proj, causal LM on generated "
             f"sentences with a word-level vocabulary ({len(vocab)} words), batch 16, lr 1e-2 linear with warm-up, "
             f"clipping 1.0, {steps} steps; test = other sentences from the same templates")
    r = TrainerRun(model=model, tokenizer=None, train=LMRows(train_ex), test=LMRows(test_ex),
                   train_eval=LMRows(train_ex[:128]), steps=steps, batch=16, lr=1e-2, seed=seed,
                   eval_every=15, max_grad_norm=1.0, scheduler="linear",
                   warmup_steps=max(1, steps // 10), collator=collate, compute_metrics=None,
                   model_name="tiny-gpt2-2x64 (config)", dataset_name="gradience-synthetic-text",
                   task_profile="generation")
    run_trainer(work, r, notes)
    return Recorded({"n_labels": None, "majority_rate": None, "n_eval": len(test_ex), "vocab_size": len(vocab)},
                    notes)


# -- failing runs ---------------------------------------------------------------------------------------------
FAULT_STEPS = (1, 5, 10)


def fault_run(work: Path, seed: int, case: str, step: int, quick: bool) -> Recorded:
    from gradience.training.faults import FAULT_CASES, FaultInjector

    kind, factor, _ = FAULT_CASES[case]
    steps = step + 10
    r, labels = _tiny_run(seed, steps=steps, eval_every=10, max_grad_norm=1.0)
    inj = FaultInjector(kind, step, factor=factor)
    notes = (f"tiny BERT + LoRA r=4 (+ word embeddings), generated sentiment, lr 5e-3, clipping 1.0; {case} ({kind}, factor {factor:g}) "
             f"injected once at step {step}, guard off (a non-finite weight stays non-finite)")
    run_trainer(work, r, notes, injector=inj)
    return Recorded(labels, notes, injected=[{"step": s, "kind": kind, "case": case, "factor": factor}
                                             for s in inj.injected_steps])


def p_divergence(work: Path, seed: int, quick: bool) -> Recorded:
    """The tiny BERT trains at a sane LR until its loss is low, then the LR is raised x100 with no
    clipping: the loss jumps from ~0.01 to ~1-3 and stays there (the model is destroyed)."""
    from transformers import TrainerCallback

    steps, boost_step, boost, lr = 115, 90, 100.0, 3e-2

    class Boost(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                          lr_scheduler: Any = None, **kw: Any) -> None:
            if state.global_step + 1 == boost_step:
                lr_scheduler.base_lrs = [b * boost for b in lr_scheduler.base_lrs]
                for g in optimizer.param_groups:
                    g["lr"] *= boost

    r, labels = _tiny_run(seed, steps=steps, eval_every=10, lr=lr)
    r.extra_callbacks = [Boost()]
    notes = (f"tiny BERT + LoRA r=4 (+ word embeddings), generated sentiment, lr {lr:g} constant, no clipping; the "
             f"LR is raised x{boost:g} from step {boost_step} ({steps} steps)")
    run_trainer(work, r, notes)
    return Recorded(labels, notes, extra={"lr_boost": {"step": boost_step, "factor": boost, "base_lr": lr}})


def _fault_profile(case: str, step: int) -> Callable[[Path, int, bool], Recorded]:
    return lambda work, seed, quick: fault_run(work, seed, case, step, quick)


def profiles() -> list[Profile]:
    from gradience.training.faults import FAULT_CASES

    out = [
        Profile("demo", "healthy", p_demo, [0, 1], [2], "gradience demo: MiniLM, generated sentiment", minilm=True),
        Profile("sst2_b16", "healthy", p_sst2_b16, [0, 1], [2], "MiniLM, real SST-2, batch 16", minilm=True),
        Profile("sst2_b4", "healthy", p_sst2_b4, [0], [1], "MiniLM, real SST-2, batch 4", minilm=True),
        Profile("collapse", "not_learning", p_collapse, [0], [1], "MiniLM, SST-2, batch 4, LR 10x too high",
                minilm=True),
        Profile("warmup_cosine", "healthy", p_warmup_cosine, [0], [1], "MiniLM, SST-2, warm-up + cosine + clipping",
                minilm=True),
        Profile("grad_accum", "healthy", p_grad_accum, [0], [1], "MiniLM, SST-2, batch 4 x accumulation 4",
                minilm=True),
        Profile("causal_lm", "healthy", p_causal_lm, [0, 1], [2], "tiny GPT-2 causal LM on generated text"),
        Profile("memorisation", "memorisation", p_memorisation, [0, 1], [2],
                "tiny BERT, 16 examples, many epochs"),
        Profile("amp_overflow", "healthy", p_amp_overflow, [0, 1], [2],
                "tiny BERT, float16 autocast + GradScaler, early overflow steps skipped"),
        Profile("resume", "healthy", p_resume, [0, 1], [2], "tiny BERT, killed and resumed from a checkpoint"),
        Profile("no_learning", "not_learning", p_no_learning, [0, 1], [2], "tiny BERT, learning rate 0"),
        Profile("divergence", "diverges", p_divergence, [0, 1, 2], [3, 4, 5], "tiny BERT, LR x100 mid-run, no clipping"),
    ]
    for case in FAULT_CASES:
        for step in FAULT_STEPS:
            out.append(Profile(f"fault_{case}_at{step}", "injected", _fault_profile(case, step), [0], [1],
                               f"tiny BERT, {case} injected at step {step}"))
    return out


def profile_group(name: str) -> str:
    return "fault" if name.startswith("fault_") else name


# -- driver ---------------------------------------------------------------------------------------------------
def record_one(prof: Profile, seed: int, split: str, out: Path, quick: bool) -> dict[str, Any]:
    name = f"{prof.name}_s{seed}"
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        rec = prof.fn(work, seed, quick)
        duration = time.perf_counter() - t0
        src = work / "run.jsonl"
        dest = out / f"{name}.jsonl"
        shutil.copyfile(src, dest)
    facts = observed(dest)
    entry: dict[str, Any] = {"file": dest.name, "profile": profile_group(prof.name), "variant": prof.name,
                             "seed": seed, "split": split, "intent": prof.intent, "labels": rec.labels,
                             "injected": rec.injected, "notes": rec.notes, **rec.extra, "observed": facts,
                             "record_seconds": round(duration, 1)}
    if "test_accuracy" in facts:
        quality = f"test/train acc {facts['test_accuracy']:.3f}/{facts.get('train_accuracy', math.nan):.3f}"
    else:
        quality = f"test/train ppl {facts.get('test_ppl', math.nan):.2f}/{facts.get('train_ppl', math.nan):.2f}"
    print(f"  {name:<30} {split:<4} {duration:6.1f}s  steps {facts['steps']:>3}  {quality}  "
          f"divergence {facts['divergence_step']}  non-finite loss/grad {facts['nonfinite_loss_steps']}/"
          f"{facts['nonfinite_grad_steps']}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus directory (default tests/data/calibration)")
    p.add_argument("--only", action="append", default=[],
                   help="record only this profile (repeatable; 'fault' = every fault case; a fault variant "
                        "such as fault_nan_loss_at5 also works); other manifest entries are kept")
    p.add_argument("--quick", action="store_true", help="a reduced corpus: one seed per profile, fewer steps")
    p.add_argument("--list", action="store_true", help="print the profiles and exit")
    a = p.parse_args(argv)

    profs = profiles()
    if a.list:
        for prof in profs:
            print(f"{prof.name:<32} {prof.intent:<13} fit {prof.fit} test {prof.test}  {prof.description}")
        return 0
    known = {prof.name for prof in profs} | {profile_group(prof.name) for prof in profs}
    unknown = [o for o in a.only if o not in known]
    if unknown:
        p.error(f"unknown profile(s) {unknown}; see --list")
    selected = [prof for prof in profs if not a.only or prof.name in a.only or profile_group(prof.name) in a.only]

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")

    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    old: list[dict[str, Any]] = []
    if a.only and manifest_path.exists():
        old = json.loads(manifest_path.read_text())["runs"]
    elif manifest_path.exists():
        # A whole corpus replaces the previous one: no file of a run it no longer has stays behind.
        for e in json.loads(manifest_path.read_text())["runs"]:
            (out / e["file"]).unlink(missing_ok=True)
    chosen = {prof.name for prof in selected}
    runs = [e for e in old if e.get("variant", e["profile"]) not in chosen]

    t_all = time.perf_counter()
    print(f"recording {'quick ' if a.quick else ''}calibration corpus into {out}", flush=True)
    for prof in selected:
        plan = [(s, "fit") for s in prof.fit] + [(s, "test") for s in prof.test]
        if a.quick:
            plan = plan[:1]
        for seed, split in plan:
            runs.append(record_one(prof, seed, split, out, a.quick))
            # Save as we go: an interrupted recording keeps what it has.
            write_manifest(manifest_path, runs, profs, quick=a.quick)
    write_manifest(manifest_path, runs, profs, quick=a.quick)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"{len(runs)} runs in the manifest, {size / 1e6:.2f} MB; recorded in {time.perf_counter() - t_all:.0f}s",
          flush=True)
    return 0


def write_manifest(path: Path, runs: list[dict[str, Any]], profs: list[Profile], *, quick: bool) -> None:
    order = {prof.name: i for i, prof in enumerate(profs)}
    runs.sort(key=lambda e: (order.get(e.get("variant", e["profile"]), 999), e["split"] != "fit", e["seed"]))
    doc = {"version": MANIFEST_VERSION, "quick": quick, "kappa_interval": KAPPA_INTERVAL, "telemetry_interval": 1,
           "guard": None, "runs": runs}
    path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
