"""Corpus + tokenizer -> padded id arrays and label ids per split (the input of ``train.fit``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lifecycle.corpus import Corpus, Examples
from lifecycle.errors import DataError

if TYPE_CHECKING:
    from tokenization.base import Tokenizer


@dataclass(frozen=True)
class Arrays:
    """Token ids and label ids of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class EncodedCorpus:
    """The three splits as arrays, with the label names (label id = index)."""

    train: Arrays
    validation: Arrays
    test: Arrays
    labels: tuple[str, ...]


def encode_examples(examples: Examples, tokenizer: Tokenizer, labels: tuple[str, ...], max_len: int,
                    source: str = "data") -> Arrays:
    """Token ids (n x max_len, int32) and label ids (n, int32); unknown labels are a DataError."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for label in examples.labels if label not in index})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise DataError(
            f"{source}: labels {shown} are not among the model's {len(labels)} labels ({', '.join(labels[:8])}"
            f"{', ...' if len(labels) > 8 else ''}). Relabel the data or retrain with those classes."
        )
    x = tokenizer.encode(list(examples.texts), max_len).astype(np.int32, copy=False)
    y = np.fromiter((index[label] for label in examples.labels), dtype=np.int32, count=len(examples))
    return Arrays(x, y)


def encode_corpus(corpus: Corpus, tokenizer: Tokenizer, max_len: int) -> EncodedCorpus:
    """Encode every split of a corpus with one tokenizer."""
    return EncodedCorpus(
        train=encode_examples(corpus.train, tokenizer, corpus.labels, max_len, corpus.source),
        validation=encode_examples(corpus.validation, tokenizer, corpus.labels, max_len, corpus.source),
        test=encode_examples(corpus.test, tokenizer, corpus.labels, max_len, corpus.source),
        labels=corpus.labels,
    )


def training_encoder(examples: Examples, tokenizer: Tokenizer, labels: tuple[str, ...], max_len: int,
                     dropout: float) -> Callable[[int], Arrays] | None:
    """The training split re-encoded with BPE-dropout for each epoch (``train.fit``'s ``train_for_epoch``), or None
    when ``dropout`` is 0 or the tokenizer has no dropout (word vocabularies).

    Only the training split goes through it: validation, test and serving keep ``tokenizer.encode``'s ids.
    """
    if dropout <= 0 or getattr(tokenizer, "encode_with_dropout", None) is None:
        return None
    fixed = encode_examples(examples, tokenizer, labels, max_len)  # the labels (and their check) once
    return dropout_encoder(examples.texts, fixed.y, tokenizer, max_len, dropout)


def dropout_encoder(texts: Sequence[str], y: np.ndarray, tokenizer: Tokenizer, max_len: int,
                    dropout: float) -> Callable[[int], Arrays] | None:
    """``texts`` re-encoded with BPE-dropout for each epoch, with the targets ``y`` unchanged (label ids, or a
    distilled student's label-and-soft-target rows); None when ``dropout`` is 0 or the tokenizer has no dropout."""
    encode = getattr(tokenizer, "encode_with_dropout", None)
    if dropout <= 0 or encode is None:
        return None
    texts = list(texts)

    def for_epoch(epoch: int) -> Arrays:
        return Arrays(encode(texts, max_len, dropout).astype(np.int32, copy=False), y)

    return for_epoch


def word_dropout_encoder(base: Arrays, for_epoch: Callable[[int], Arrays] | None, rate: float,
                         seed: int) -> Callable[[int], Arrays] | None:
    """The training arrays of each epoch (``for_epoch``'s, else ``base``) with each token id past the specials read
    as unk with probability ``rate``, drawn from ``seed`` and the epoch (``train.word_dropout``); ``for_epoch``
    itself when ``rate`` is 0."""
    from tokenization.base import N_SPECIAL, UNK

    if rate <= 0:
        return for_epoch

    def with_unks(epoch: int) -> Arrays:
        arrays = for_epoch(epoch) if for_epoch is not None else base
        rng = np.random.default_rng([seed, epoch])
        x = np.array(arrays.x, dtype=np.int32, copy=True)
        x[(x >= N_SPECIAL) & (rng.random(x.shape) < rate)] = UNK
        return Arrays(x, arrays.y)

    return with_unks
