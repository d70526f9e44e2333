"""Helpers shared by test modules (importable as ``tests.helpers``)."""

from __future__ import annotations

from lifecycle.config import Config, load_config

SMALL = [
    "model.embedding_dim=32",
    "model.filters=16",
    "train.epochs=4",
    "train.patience=4",
    "train.batch_size=32",
]


def mr_config(*extra: str) -> Config:
    return load_config(None, ["name=mr-slice", "data.format=mr", "data.path=MR", "data.limit=800",
                              "tokenizer.kind=word", "tokenizer.max_len=40",
                              "tokenizer.word.word2vec.enabled=false", *SMALL, *extra])
