"""Our torch-free restatement of PEFT's matching rules agrees with PEFT's own functions
(``check_target_module_exists``, ``get_pattern_key``) on thousands of generated module names and
target / exclude / layers / pattern configurations."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

peft = pytest.importorskip("peft")

from peft.tuners.tuners_utils import check_target_module_exists  # noqa: E402
from peft.utils.other import get_pattern_key  # noqa: E402

from gradience.audit.naming import pattern_key  # noqa: E402
from gradience.policy.peft_match import resolve, target_match  # noqa: E402

COMPONENTS = ["model", "layers", "h", "transformer", "encoder", "block", "self_attn", "attn", "mlp", "q_proj",
              "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj", "c_attn", "c_proj", "dense",
              "experts", "lm_head", "0", "1", "2", "3", "10", "layer"]
LEAVES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj", "c_attn", "c_proj",
          "dense", "lm_head"]
REGEXES = [r".*\.(q|v)_proj", r"model\.layers\.\d+\.self_attn\..*", r".*mlp.*", r".*proj", r"(?!.*lm_head).*_proj",
           r"layers\.1\..*", r".*\.1\..*", r"q_proj", r".*\.[0-2]\.(mlp|attn)\..*"]
PATTERN_KEYS = ["q_proj", "self_attn.q_proj", r"layers\.1\..*", "^q_proj", "q_proj$", r"\d\.mlp\.up_proj", "mlp",
                r".*proj", "model.layers.0.self_attn.v_proj", "1.mlp", "c_.*", "(q|k)_proj", "layers.10.mlp.up_proj"]


def _names(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        depth = rng.randint(1, 6)
        parts = [rng.choice(COMPONENTS) for _ in range(depth - 1)] + [rng.choice(LEAVES)]
        out.append(".".join(parts))
    return out


def _config(rng: random.Random) -> dict:
    kind = rng.random()
    if kind < 0.35:
        target = rng.choice(REGEXES)
    else:
        target = rng.sample(LEAVES, rng.randint(1, 3))
        if rng.random() < 0.3:
            target.append(rng.choice(["self_attn.q_proj", "mlp.up_proj", "1.mlp.down_proj", "attn.c_proj"]))
    exclude = None
    r = rng.random()
    if r < 0.25:
        exclude = rng.sample(LEAVES, rng.randint(1, 2))
    elif r < 0.4:
        exclude = rng.choice([r".*mlp.*", r".*\.0\..*", r"model\..*"])
    layers = None
    pattern = None
    if not isinstance(target, str) and rng.random() < 0.3:
        layers = rng.choice([1, [0, 1], [2, 3, 10], []])
        pattern = rng.choice([None, "layers", ["h", "layers"], "block"])
    mts = rng.choice([None, None, ["lm_head"], ["mlp"]])
    return {"target_modules": target, "exclude_modules": exclude, "layers_to_transform": layers,
            "layers_pattern": pattern, "modules_to_save": mts}


def _theirs(cfg: dict, key: str):
    ns = SimpleNamespace(target_parameters=None, **cfg)
    got = check_target_module_exists(ns, key)
    if type(got).__name__ == "_ExcludedModule":
        return None
    return bool(got)


def test_target_matching_agrees_with_peft_on_generated_names():
    rng = random.Random(0)
    compared = 0
    for _ in range(300):
        cfg = _config(rng)
        for key in _names(rng, 20):
            assert target_match(key, **cfg) == _theirs(cfg, key), (cfg, key)
            compared += 1
    assert compared == 6000


def test_pattern_keys_agree_with_peft_get_pattern_key():
    rng = random.Random(1)
    for _ in range(500):
        keys = rng.sample(PATTERN_KEYS, rng.randint(1, 5))
        for name in _names(rng, 10):
            ours = pattern_key(keys, name)
            assert get_pattern_key(keys, name) == (ours if ours is not None else name), (keys, name)


def test_resolution_matches_peft_on_a_real_model():
    """The modules PEFT wraps (with their r and α) in a tiny LLaMA equal our resolution from its names."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    names_of = None
    cases = [
        {"target_modules": ["q_proj", "v_proj", "up_proj"], "rank_pattern": {"v_proj": 2, r"layers\.1\..*": 8},
         "alpha_pattern": {"^q_proj": 100, "v_proj": 256}},
        {"target_modules": r".*\.(q|k|down)_proj", "exclude_modules": [r"down_proj"], "rank_pattern": {"q_proj": 2}},
        {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [0, 2], "alpha_pattern": {"2.mlp.down_proj": 1}},
        {"target_modules": "all-linear", "exclude_modules": ["gate_proj", "up_proj", "down_proj"]},
    ]
    for case in cases:
        model = transformers.LlamaForCausalLM(cfg)
        if names_of is None:
            names_of = [n for n, m in model.named_modules() if n and isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **case))
        theirs = {n.removeprefix("base_model.model."): (m.r["default"], m.lora_alpha["default"])
                  for n, m in pm.named_modules() if isinstance(m, LoraLayer)}
        ours = resolve(names_of, r=4, alpha=8, **case).targeted
        assert ours == theirs, case
