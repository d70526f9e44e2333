"""Helpers shared by test modules (importable as ``tests.helpers``)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

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


def new_mr_csv(data_dir: Path, path: Path, n: int, extra_rows: Iterable[tuple[str, str]] = ()) -> Path:
    """The last n lines of each MR file as a labelled CSV (new data the slice model was not trained on), then
    ``extra_rows`` (text, label)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for suffix, label in (("pos", "positive"), ("neg", "negative")):
            lines = (data_dir / "MR" / f"rt-polarity.{suffix}").read_bytes().split(b"\n")[-n - 1:-1]
            writer.writerows([line.decode("cp1252").strip(), label] for line in lines)
        writer.writerows(extra_rows)
    return path
