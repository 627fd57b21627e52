"""Task-profile inference and target-module classification."""

from __future__ import annotations

import pytest

from gradience.policy import classify_target, infer_task_profile, summarize_targets
from gradience.telemetry.schema import TaskProfile

HARD, EASY, UNK = TaskProfile.HARD_REASONING, TaskProfile.EASY_CLASSIFICATION, TaskProfile.UNKNOWN


@pytest.mark.parametrize(("name", "want"), [
    ("gsm8k", HARD), ("openai/gsm8k", HARD), ("SVAMP", HARD), ("hendrycks_math", HARD), ("aqua_rat", HARD),
    ("asdiv", HARD), ("MultiArith", HARD), ("proofwriter", HARD), ("my-reasoning-set", HARD),
    ("sst2", EASY), ("glue/sst2", EASY), ("SST-2", EASY), ("mnli", EASY), ("glue_qqp", EASY), ("qnli", EASY),
    ("super_glue/rte", EASY), ("cola", EASY), ("mrpc", EASY), ("imdb-sentiment", EASY),
    ("text_classification", EASY),
    # hard reasoning wins when both appear
    ("math_classification", HARD),
    # substrings inside other words do not count
    ("assistant_chat", UNK), ("chocolate_reviews", UNK), ("shorter_texts", UNK), ("aftermath", UNK),
    ("wikitext", UNK), ("", UNK), (None, UNK),
])
def test_infer_task_profile(name: str | None, want: TaskProfile) -> None:
    assert infer_task_profile(name) is want


@pytest.mark.parametrize(("name", "want"), [
    ("q_proj", {"attn"}), ("v_proj", {"attn"}), ("query", {"attn"}), ("q_lin", {"attn"}), ("c_attn", {"attn"}),
    ("query_key_value", {"attn"}), ("q", {"attn"}), ("out_proj", {"attn"}),
    ("up_proj", {"mlp"}), ("down_proj", {"mlp"}), ("c_fc", {"mlp"}), ("fc1", {"mlp"}), ("lin1", {"mlp"}),
    ("wi_0", {"mlp"}), ("dense_h_to_4h", {"mlp"}), ("intermediate.dense", {"mlp"}),
    ("attention.output.dense", {"attn"}), ("mlp.c_proj", {"mlp"}), ("attn.c_proj", {"attn"}),
    ("c_proj", {"attn", "mlp"}), ("dense", {"attn", "mlp"}), ("all-linear", {"attn", "mlp"}),
    (r".*\.(q_proj|v_proj)$", {"attn"}), (r".*(up_proj|q_proj)", {"attn", "mlp"}),
    ("lm_head", set()), ("embed_tokens", set()),
])
def test_classify_target(name: str, want: set[str]) -> None:
    assert set(classify_target(name)) == want


def test_summarize_targets_groups() -> None:
    s = summarize_targets(["q_proj", "up_proj", "c_proj", "foo"])
    assert (s.attn, s.mlp, s.ambiguous, s.unrecognised) == (["q_proj"], ["up_proj"], ["c_proj"], ["foo"])
    assert s.has_attn and s.has_mlp and not s.attention_only
    only = summarize_targets(["q_proj", "v_proj"])
    assert only.attention_only and not only.has_mlp
    assert summarize_targets(None).empty
    assert summarize_targets("all-linear").ambiguous == ["all-linear"]
