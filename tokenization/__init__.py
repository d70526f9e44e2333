"""Stand-alone tokenizers (BPE via youtokentome, word-level with word2vec vectors); never imports TensorFlow or MLflow.

youtokentome and gensim are imported only when a bpe tokenizer or word2vec is actually used.
"""

from tokenization.base import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    CoverageStats,
    Tokenizer,
    coverage_stats,
    load_tokenizer,
    tokenizer_bytes,
    tokenizer_vectors,
    train_tokenizer,
)
from tokenization.bpe import BPETokenizer
from tokenization.word import WordTokenizer

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
