"""Tiny BERT, RoBERTa and DistilBERT models built offline, with tokenizers trained on the sample.

They have the real architectures and tokenizers of each family (2 layers, hidden 32), so the
fine-tuning and extraction code paths of ``--model bert|roberta|distilbert`` run without the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from conftest import SAMPLE

FAMILIES = ("bert", "roberta", "distilbert")
SPECIALS_WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIALS_BPE = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def sample_texts() -> list[str]:
    t = pd.read_csv(SAMPLE)
    return [f"{s}: {x}" for s, x in zip(t["speaker"], t["text"])]


def _wordpiece_vocab(texts: list[str]) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=SPECIALS_WORDPIECE))
    return tok.get_vocab()


def _bpe(texts: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on ``texts``: its vocabulary and merges."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=SPECIALS_BPE)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tok.get_vocab(), merges


def build(family: str, directory: Path, seed: int = 0) -> Path:
    """Write a random tiny ``family`` model and its trained tokenizer to ``directory``."""
    from transformers import (
        AutoModel,
        BertConfig,
        BertTokenizer,
        DistilBertConfig,
        DistilBertTokenizer,
        RobertaConfig,
        RobertaTokenizer,
    )

    texts = sample_texts()
    if family == "roberta":
        vocab, merges = _bpe(texts)
        tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
        config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=vocab["<pad>"],
                               bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], type_vocab_size=1)
    else:
        vocab = _wordpiece_vocab(texts)
        cls = BertTokenizer if family == "bert" else DistilBertTokenizer
        tokenizer = cls(vocab=vocab)
        if family == "bert":
            config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128, pad_token_id=vocab["[PAD]"])
        else:
            config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                      max_position_embeddings=128, pad_token_id=vocab["[PAD]"])
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(str(directory))
    return directory
