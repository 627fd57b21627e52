"""Second task profile: causal-LM answer accuracy on the generated arithmetic set.

A hidden-32 GPT-2 and a character tokenizer built here; the bench trains with response-only
loss, generates greedily and scores exact numeric matches. The test checks the plumbing and the
masking, not that a 2-layer random model learns arithmetic.
"""

from __future__ import annotations

import json

import pytest

from gradience.bench.config import config_from_dict
from gradience.bench.data import IGNORE_INDEX, load_task_data

from .helpers import tiny_causal_dir

pytestmark = pytest.mark.integration


def _cfg(model, **train):
    return config_from_dict({
        "name": "tiny-arith",
        "model": {"name": str(model), "max_length": 48},
        "task": {"name": "arithmetic", "profile": "causal_lm_answer", "metric": "exact_match",
                 "arithmetic_examples": 60, "max_new_tokens": 6, "quality_gate": 0.0},
        "train": {"max_steps": 3, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-2, "logging_steps": 1,
                  "seeds": [3], "eval_samples": 12, **train},
        "lora": {"probe_r": 4, "alpha": 8, "target_modules": ["c_attn"]},
        "compression": {"strategies": ["uniform_median", "truncate"]},
        "runtime": {"device": "cpu", "threads": 1},
    })


def test_collator_masks_the_prompt_and_padding(tmp_path):
    from transformers import AutoTokenizer

    from gradience.bench.train import _collator

    model = tiny_causal_dir(tmp_path)
    cfg = _cfg(model)
    tok = AutoTokenizer.from_pretrained(model)
    rows = load_task_data(cfg.task, None, 4).eval
    batch = _collator(tok, cfg)(rows[:3])
    labels, ids = batch["labels"], batch["input_ids"]
    for i, ex in enumerate(rows[:3]):
        kept = [int(t) for t in labels[i] if t != IGNORE_INDEX]
        assert tok.decode(kept[:-1]) .replace(" ", "") == ex.answer  # only the answer (+EOS) is learned
        assert kept[-1] == tok.eos_token_id
        n_real = int(batch["attention_mask"][i].sum())
        assert all(int(t) == IGNORE_INDEX for t in labels[i][n_real:])  # padding masked
        assert int(ids[i][0]) != tok.pad_token_id  # right padding for training


def test_causal_bench_runs_and_scores_exact_match(tmp_path):
    from gradience.bench.protocol import run_bench

    cfg = _cfg(tiny_causal_dir(tmp_path))
    outcome = run_bench(cfg, tmp_path / "out", device="cpu")
    probe = json.loads((tmp_path / "out" / "seed_3" / "probe" / "eval.json").read_text())
    assert probe["metric"] == "exact_match" and probe["n"] == 12 and 0 <= probe["correct"] <= 12
    assert probe["head_params"] == 0  # a causal LM has no task head
    assert set(outcome.bench["variants"]) == {"uniform_median", "truncate"}
    assert outcome.verdicts["probe"]["gate"] == 0.0


def test_evaluate_scores_a_model_that_answers_correctly(tmp_path, monkeypatch):
    """Greedy decode → first number → exact match, with a stub model that 'knows' the answers."""
    import torch
    from transformers import AutoTokenizer

    from gradience.bench import train as T

    model_dir = tiny_causal_dir(tmp_path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    cfg = _cfg(model_dir)
    rows = load_task_data(cfg.task, None, 6).eval
    answers = {r.text: r.answer for r in rows}

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.prompts: list[str] = []

        def forward(self, input_ids, attention_mask=None, labels=None):
            return type("O", (), {"loss": torch.tensor(1.0)})()

        def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
            outs = []
            for row in input_ids:
                text = tok.decode([int(t) for t in row if int(t) != tok.pad_token_id])
                q = text.split("Question: ")[1].split("\n")[0]
                ans = answers[q]
                # Every other answer is written with a trailing zero or is wrong in sign.
                gen = f" {ans}0\n" if "." in ans else f" {ans}\n"
                if q == rows[0].text:
                    gen = " 99999\n"
                outs.append(torch.cat([row, torch.tensor(tok(gen, add_special_tokens=False)["input_ids"])]))
            width = max(len(o) for o in outs)
            return torch.stack([torch.nn.functional.pad(o, (0, width - len(o)), value=tok.pad_token_id)
                                for o in outs])

    m = T.evaluate_model(Stub(), tok, rows, cfg)
    assert m["n"] == 6 and m["correct"] == 5 and m["exact_match"] == pytest.approx(5 / 6)
