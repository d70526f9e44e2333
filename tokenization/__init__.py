"""Stand-alone tokenizers (BPE via youtokentome, word-level with word2vec vectors); never imports TensorFlow, MLflow
or lifecycle.

youtokentome and gensim are imported only when a bpe tokenizer or word2vec is actually used. The names below are
loaded on first access, so ``import tokenization.errors`` (what lifecycle's error hierarchy needs at start-up) does
not import numpy or the tokenizer modules.

Modules: ``base`` (the Tokenizer protocol, the saved format, shared helpers), ``bpe`` and ``word`` (the two kinds),
``factory`` (train or load a tokenizer by kind), ``settings`` (what training reads), ``errors``, ``vocab``
(numpy-only vocabulary helpers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenization.base import (
        BOS,
        EOS,
        PAD,
        SPECIAL_TOKENS,
        UNK,
        CoverageStats,
        Tokenizer,
        coverage_stats,
        tokenizer_bytes,
        tokenizer_vectors,
    )
    from tokenization.bpe import BPETokenizer
    from tokenization.factory import load_tokenizer, train_tokenizer
    from tokenization.word import WordTokenizer

_HOMES = {
    "BOS": "base",
    "EOS": "base",
    "PAD": "base",
    "SPECIAL_TOKENS": "base",
    "UNK": "base",
    "CoverageStats": "base",
    "Tokenizer": "base",
    "coverage_stats": "base",
    "tokenizer_bytes": "base",
    "tokenizer_vectors": "base",
    "BPETokenizer": "bpe",
    "WordTokenizer": "word",
    "load_tokenizer": "factory",
    "train_tokenizer": "factory",
}

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "BPETokenizer",
    "CoverageStats",
    "Tokenizer",
    "WordTokenizer",
    "coverage_stats",
    "load_tokenizer",
    "tokenizer_bytes",
    "tokenizer_vectors",
    "train_tokenizer",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tokenization' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tokenization.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
