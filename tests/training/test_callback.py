"""GradienceCallback with the real Trainer + PEFT on a tiny BERT: the flight record it writes."""

from __future__ import annotations

import json
import math

import pytest

from gradience.telemetry.reader import TelemetryReader

from .conftest import make_trainer, read_events

pytestmark = pytest.mark.integration


def _train(tmp_path, tok, steps=6, **cb_kwargs):
    from gradience import GradienceCallback

    cb = GradienceCallback(tmp_path / "run", dataset_name="sst2", telemetry_interval=2, **cb_kwargs)
    trainer = make_trainer(tmp_path, tok, [cb], steps=steps)
    trainer.train()
    return cb, trainer


def test_event_sequence_config_and_spine(tmp_path, tiny_tokenizer):
    cb, _ = _train(tmp_path, tiny_tokenizer)
    events = read_events(cb.path)
    names = [e["event"] for e in events]
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert len({e["run_id"] for e in events}) == 1
    # run_end is preceded by the recommendation, which follows the grad-norm summary.
    assert names[-2] == "recommendation"
    kinds = [e.get("kind") for e in events if e["event"] == "metrics"]
    assert "grad_norm" in kinds

    cfg = events[0]["config"]
    assert cfg["dataset_name"] == "sst2" and cfg["task_profile"] == "easy_classification"
    assert cfg["optimizer"]["name"] == "AdamW" and cfg["optimizer"]["lr"] == pytest.approx(5e-3)
    assert cfg["optimizer"]["weight_decay"] == 0.0 and cfg["optimizer"]["betas"] == [0.9, 0.999]
    assert cfg["lora"]["r"] == 4 and cfg["lora"]["alpha"] == 8 and cfg["lora"]["alpha_over_r"] == 2
    assert sorted(cfg["lora"]["target_modules"]) == ["query", "value"]
    assert cfg["lora"]["use_rslora"] is False and cfg["lora"]["use_dora"] is False
    tr = cfg["training"]
    assert (tr["seed"], tr["batch_size"], tr["gradient_accumulation"], tr["max_steps"]) == (0, 8, 1, 6)
    assert tr["max_grad_norm"] == 1.0 and tr["dtype"] == "fp32"
    meta = events[0]["meta"]
    assert meta["world_size"] == 1 and meta["framework"] == "transformers.Trainer"
    assert meta["torch_version"] and meta["transformers_version"] and meta["peft_version"]
    assert meta["resumed_from_step"] is None

    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 4, 6]
    for e in steps:
        assert math.isfinite(e["loss"]) and e["lr"] is not None and e["grad_norm"] > 0
        assert e["grad_norm_clipped"] <= min(e["grad_norm"], 1.0) + 1e-6
        assert e["epoch"] > 0
    assert "steps_per_second" in steps[-1]

    evals = [e for e in events if e["event"] == "eval"]
    assert {(e["step"], e["split"]) for e in evals} == {(3, "test"), (3, "train"), (6, "test"), (6, "train")}
    # The chance level: the classifier's label count and each eval set's majority-class rate.
    from gradience.training.demo_data import generate_sentiment
    from gradience.training.label_stats import majority_rate

    train_ex, test_ex = generate_sentiment(n_train=128, n_test=32, seed=0)
    chance = {"test": majority_rate(e.label for e in test_ex), "train": majority_rate(e.label for e in train_ex[:32])}
    assert cfg["n_labels"] == 2
    for e in evals:
        m = e["metrics"]
        assert {"loss", "accuracy", "n"} <= set(m)
        assert "ppl" not in m  # a classifier's cross-entropy is not a perplexity
        assert m["n"] == 32
        assert m["majority_rate"] == pytest.approx(chance[e["split"]])

    run_dir = tmp_path / "run"
    assert (run_dir / "peft" / "adapter_config.json").exists()
    args = json.loads((run_dir / "training" / "training_args.json").read_text())
    assert args["learning_rate"] == 5e-3 and args["max_steps"] == 6

    snap = TelemetryReader(cb.path).summarize()
    assert snap.status == "ok"
    assert snap.gaps["loss_gap"] is not None and snap.gaps["acc_gap"] is not None
    assert snap.gap_missing == []
    assert snap.grad_norm["summary"]["n"] == 6


def test_pre_clip_norm_is_measured_before_clipping(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1, recommend=False, audit=False)
    # A tiny max_grad_norm forces clipping on every step.
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb], steps=3, eval_steps=None, max_grad_norm=1e-3)
    trainer.train()
    steps = [e for e in read_events(cb.path) if e["event"] == "train_step"]
    assert len(steps) == 3
    for e in steps:
        assert e["grad_norm_clipped"] == pytest.approx(1e-3, rel=1e-3)
        assert e["grad_norm"] > 10 * e["grad_norm_clipped"]


def test_appends_never_truncates(tmp_path, tiny_tokenizer):
    cb1, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    before = cb1.path.read_bytes()
    cb2, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    after = cb2.path.read_bytes()
    assert after.startswith(before)
    reader = TelemetryReader(cb2.path)
    assert len(reader.runs()) == 2


def test_audit_is_appended_when_available(tmp_path, tiny_tokenizer):
    audit = pytest.importorskip("gradience.audit")
    if not hasattr(audit, "audit_adapter"):
        pytest.fail("gradience.audit.audit_adapter is missing")
    cb, _ = _train(tmp_path, tiny_tokenizer, steps=2)
    audits = [e for e in read_events(cb.path) if e["event"] == "metrics" and e["kind"] == "lora_audit"]
    assert len(audits) == 1
    assert TelemetryReader(cb.path).summarize().lora_audit is not None


def test_crash_is_recorded_as_error(tmp_path, tiny_tokenizer):
    from transformers import TrainerCallback

    from gradience import GradienceCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise RuntimeError("boom")

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1)
    trainer = make_trainer(tmp_path, tiny_tokenizer, [cb, Boom()], steps=4, eval_steps=None)
    with pytest.raises(RuntimeError):
        trainer.train()
    # What the process-level hook does when the exception propagates out of train().
    import sys

    sys.excepthook(RuntimeError, RuntimeError("boom"), None)
    snap = TelemetryReader(cb.path).summarize()
    assert snap.status == "error" and "boom" in snap.reason


def _tiny(kind, vocab=64):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    bert = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32)
    return {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2,
                                                   n_positions=32, bos_token_id=0, eos_token_id=0)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=1, num_attention_heads=2)),
        "bert_mlm": lambda: BertForMaskedLM(bert),
        "bert_cls": lambda: BertForSequenceClassification(bert),
        "t5": lambda: T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=16, d_ff=32, d_kv=8,
                                                          num_layers=1, num_heads=2)),
    }[kind]()


@pytest.mark.parametrize(("kind", "task_type", "causal"), [
    ("gpt2", None, True), ("llama", None, True), ("gpt2", "CAUSAL_LM", True), ("gpt2", "no_peft", True),
    ("bert_mlm", None, False), ("bert_cls", "SEQ_CLS", False), ("t5", None, False),
    ("t5", "SEQ_2_SEQ_LM", False), ("bert_mlm", "no_peft", False),
])
def test_causal_lm_detection(kind, task_type, causal):
    from peft import LoraConfig, get_peft_model

    from gradience.training.config_snapshot import is_causal_lm

    model = _tiny(kind)
    if task_type != "no_peft":
        targets = {"gpt2": ["c_attn"], "llama": ["q_proj"], "t5": ["q"]}.get(kind, ["query"])
        model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, task_type=task_type,
                                                 fan_in_fan_out=kind == "gpt2"))
    assert is_causal_lm(model) is causal


def test_causal_lm_records_ppl_on_train_steps_and_evals(tmp_path, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForLanguageModeling,
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
    )

    from gradience import GradienceCallback
    from gradience.training.demo_data import generate_sentiment

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=2,
                                       n_positions=64, bos_token_id=0, eos_token_id=0))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    train, test = generate_sentiment(n_train=64, n_test=16, seed=0)

    def rows(examples):
        enc = tiny_tokenizer([e.text for e in examples], truncation=True, max_length=32)
        return [{k: v[i] for k, v in enc.items() if k != "token_type_ids"} for i in range(len(examples))]

    cb = GradienceCallback(tmp_path / "run", telemetry_interval=1, spectral_enabled=False, audit=False,
                           recommend=False)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8,
                             learning_rate=5e-3, eval_strategy="steps", eval_steps=3, logging_strategy="no",
                             save_strategy="no", report_to=[], disable_tqdm=True, seed=0, use_cpu=True)
    Trainer(model=model, args=args, train_dataset=rows(train),
            eval_dataset={"test": rows(test), "train": rows(train[:16])},
            data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False), callbacks=[cb]).train()
    events = read_events(cb.path)
    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e in steps:
        assert e["ppl"] == pytest.approx(math.exp(e["loss"]), rel=1e-12)
    evals = {e["split"]: e["metrics"] for e in events if e["event"] == "eval"}
    assert set(evals) == {"test", "train"}
    for m in evals.values():
        assert m["ppl"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
        assert "majority_rate" not in m  # no class labels in a language-modelling set
    assert events[0]["config"]["n_labels"] is None  # GPT-2's default num_labels means nothing here
    assert TelemetryReader(cb.path).summarize().gaps["ppl_gap"] == pytest.approx(
        evals["test"]["ppl"] / evals["train"]["ppl"])


def test_resumed_run_keeps_its_run_id_and_records_where_it_resumed(tmp_path, tiny_tokenizer):
    from gradience import GradienceCallback

    def callback():
        return GradienceCallback(tmp_path / "run", telemetry_interval=1, guard_enabled=True,
                                 spectral_enabled=False, audit=False, recommend=False)

    first = callback()
    make_trainer(tmp_path, tiny_tokenizer, [first], steps=3, eval_steps=None, save_strategy="steps",
                 save_steps=3).train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert checkpoint.is_dir()
    second = callback()
    make_trainer(tmp_path, tiny_tokenizer, [second], steps=6, eval_steps=None).train(
        resume_from_checkpoint=str(checkpoint))

    events = read_events(second.path)
    starts = [e for e in events if e["event"] == "run_start"]
    assert len(starts) == 2 and len({e["run_id"] for e in events}) == 1
    assert starts[0]["meta"]["resumed_from_step"] is None and starts[1]["meta"]["resumed_from_step"] == 3
    assert second.recorder.run_id == first.recorder.run_id
    after = events[events.index(starts[1]):]
    assert [e["step"] for e in after if e["event"] == "train_step"] == [4, 5, 6]
    # The guard's first snapshot of the resumed segment is the state it resumed from.
    snaps = [e["metrics"]["snapshot_step"] for e in after if e.get("kind") == "guard" and e["action"] == "snapshot"]
    assert snaps[0] == 3
    reader = TelemetryReader(second.path)
    assert reader.runs() == [first.recorder.run_id]
    snap = reader.summarize()
    assert snap.status == "ok" and snap.last_step == 6 and snap.max_steps == 6
