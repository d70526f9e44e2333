"""Growing a trained CNN for retraining: new labels widen the output layer, new words lengthen the embedding.

Every existing label id and token id keeps its weights exactly; only the added columns (output kernel and bias) and
rows (embedding) are initialised, as measured in the README's retraining section:

- labels (``LABEL_INIT = "glorot"``): each new class gets a Glorot-uniform kernel column (Keras' Dense default, for
  the widened layer) and bias 0. Measured against ``mean`` (each new column the mean of the old ones) and ``zeros``:
  ``mean`` keeps the parent's predictions exactly until training moves it (a new logit is the mean of the old ones,
  never above their maximum), but that is also why it learns slowly: the new class starts half the old logits' margin
  below the winner and Adam's bounded steps take many updates to close it (MR slice + TREC questions as a new label,
  2 epochs: new-label accuracy 0% with ``mean``, 80% ``zeros``, 88% ``glorot``; StackOverflow figures in the README).
- words: ``word2vec`` trains gensim word2vec on the new training texts (the config's window, epochs, sg, min_count;
  dimension = the embedding's) and maps those vectors into the model's embedding space with a ridge least-squares
  map fitted on the words both vocabularies share (centered, so the map carries the old rows' mean). The map's R^2
  on held-out shared words is reported, and below ``MIN_R2`` the map is not used: a task-trained embedding that
  started random is not a word2vec space (R^2 -0.04 on MR), while one that started from word2vec is, in part (0.17).
  New words without a word2vec vector (rarer than its min_count), every new word when the map is not used, and every
  new word with ``random`` get a random direction scaled to the mean norm of the old word rows. On MR (a rand-init
  model trained on half the training split, retrained on the other half, 914 new words) test accuracy was 75.1%
  without growth, 75.5% with random rows and 75.5% with mapped word2vec rows: within noise of each other.

Only numpy and gensim here; Keras is needed by :func:`grow_model` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import keras

    from lifecycle.config import Config, Word2VecConfig

log = logging.getLogger(__name__)

LABEL_INITS = ("mean", "glorot", "zeros")
LABEL_INIT = "glorot"
VOCAB_INITS = ("word2vec", "random")
EMBEDDING_PATH = "embedding/embeddings"
OUTPUT_KERNEL_PATH = "output/kernel"
OUTPUT_BIAS_PATH = "output/bias"
# Below this many shared words a (dim x dim) map is under-determined even with the ridge term: fall back to random.
MIN_SHARED_PER_DIM = 2
# A map that explains less of the held-out shared rows than this carries no information: its rows would only be the
# old rows' mean shrunk by the ridge term (measured: R^2 -0.04 on a rand-init MR model, whose mapped rows had 1/15 of
# the old rows' norm; 0.17 on a word2vec-initialised one), so random rows are used instead.
MIN_R2 = 0.05


@dataclass(frozen=True)
class RowInit:
    """New embedding rows and how they were made (the report goes to the manifest and MLflow)."""

    rows: np.ndarray
    method: str
    report: dict[str, Any] = field(default_factory=dict)


def new_output_columns(kernel: np.ndarray, bias: np.ndarray, count: int, init: str = LABEL_INIT,
                       seed: int = 13) -> tuple[np.ndarray, np.ndarray]:
    """Kernel columns ``(in, count)`` and biases ``(count,)`` for ``count`` new classes.

    Args:
        kernel: the output layer's ``(in, classes)`` kernel.
        bias: its ``(classes,)`` bias.
        count: classes to add.
        init: ``mean`` (each new column the mean of the old ones, bias likewise), ``glorot`` (Keras' Dense default
            for the widened layer, bias 0) or ``zeros``.
        seed: seed of ``glorot``.
    """
    if init not in LABEL_INITS:
        raise ConfigError(f"label init must be one of {', '.join(LABEL_INITS)}. Received: {init!r}.")
    fan_in, classes = kernel.shape
    if init == "mean":
        columns = np.repeat(kernel.mean(axis=1, keepdims=True), count, axis=1)
        return columns.astype(np.float32), np.full(count, bias.mean(), dtype=np.float32)
    if init == "glorot":
        limit = np.sqrt(6.0 / (fan_in + classes + count))
        columns = np.random.default_rng(seed).uniform(-limit, limit, size=(fan_in, count))
        return columns.astype(np.float32), np.zeros(count, dtype=np.float32)
    return np.zeros((fan_in, count), dtype=np.float32), np.zeros(count, dtype=np.float32)


def _old_word_rows(embedding: np.ndarray, n_special: int) -> np.ndarray:
    """The embedding's word rows (specials and all-zero rows left out): the scale new rows should match."""
    rows = embedding[n_special:]
    return rows[np.any(rows != 0, axis=1)]


def random_rows(embedding: np.ndarray, count: int, seed: int, n_special: int = 4) -> np.ndarray:
    """``count`` rows in random directions, each scaled to the mean norm of the old word rows."""
    old = _old_word_rows(embedding, n_special)
    norm = float(np.linalg.norm(old, axis=1).mean()) if len(old) else 0.25 * np.sqrt(embedding.shape[1] / 3)
    directions = np.random.default_rng(seed).standard_normal((count, embedding.shape[1]))
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    return (directions * norm).astype(np.float32)


def fit_linear_map(source: np.ndarray, target: np.ndarray, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` minimising ``|source @ M + b - target|^2 + lam * |M|^2``, centered ridge regression whose ``lam`` is
    ``ridge`` times the mean eigenvalue of the centered source's Gram matrix (scale-free)."""
    mean_x, mean_y = source.mean(axis=0), target.mean(axis=0)
    x, y = source - mean_x, target - mean_y
    gram = x.T @ x
    gram += ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12) * np.eye(gram.shape[0])
    matrix = np.linalg.solve(gram, x.T @ y)
    return matrix, mean_y - mean_x @ matrix


def word2vec_rows(embedding: np.ndarray, vocab: Sequence[str], new_words: Sequence[str],
                  token_lists: Sequence[Sequence[str]], w2v: Word2VecConfig, seed: int,
                  n_special: int = 4) -> RowInit:
    """Rows for ``new_words`` from word2vec trained on ``token_lists``, mapped into the embedding's space.

    The map is a ridge least-squares fit from word2vec vectors to the old rows of the shared words (words in both
    ``vocab`` and word2vec); 10% of the shared words (at least one) are held out to report the fit's R^2, then the
    map is refitted on all of them. New words without a vector, or too few shared words to fit a map, get
    :func:`random_rows`.
    """
    from tokenization.word import train_word2vec

    dim = embedding.shape[1]
    trained = train_word2vec(token_lists, w2v.model_copy(update={"dim": dim}), seed=seed)
    index = {word: i for i, word in enumerate(vocab)}
    shared = [word for word in vocab[n_special:] if word in trained]
    report: dict[str, Any] = {"word2vec_words": len(trained), "shared_words": len(shared),
                              "min_shared": MIN_SHARED_PER_DIM * dim}
    rows = random_rows(embedding, len(new_words), seed, n_special)
    if len(shared) < MIN_SHARED_PER_DIM * dim:
        report["note"] = (f"only {len(shared)} words shared with word2vec (< {MIN_SHARED_PER_DIM * dim}): every new "
                          "row is random, scaled to the old rows' norm")
        log.warning("vocabulary growth: %s", report["note"])
        return RowInit(rows, "random", report)
    x = np.stack([trained[word] for word in shared]).astype(np.float64)
    y = embedding[[index[word] for word in shared]].astype(np.float64)
    held = np.random.default_rng(seed).permutation(len(shared))
    cut = max(1, len(shared) // 10)
    matrix, offset = fit_linear_map(x[held[cut:]], y[held[cut:]])
    predicted = x[held[:cut]] @ matrix + offset
    residual = float(np.sum((y[held[:cut]] - predicted) ** 2))
    total = float(np.sum((y[held[:cut]] - y[held[:cut]].mean(axis=0)) ** 2))
    report["heldout_r2"] = 1.0 - residual / total if total > 0 else 0.0
    if report["heldout_r2"] < MIN_R2:
        report["note"] = (f"the word2vec -> embedding map explains {report['heldout_r2']:.2f} of held-out shared "
                          f"rows' variance (< {MIN_R2}): every new row is random, scaled to the old rows' norm")
        log.warning("vocabulary growth: %s", report["note"])
        return RowInit(rows, "random", report)
    matrix, offset = fit_linear_map(x, y)
    with_vector = [i for i, word in enumerate(new_words) if word in trained]
    if with_vector:
        mapped = np.stack([trained[new_words[i]] for i in with_vector]).astype(np.float64) @ matrix + offset
        rows[with_vector] = mapped.astype(np.float32)
    old_norm = np.linalg.norm(_old_word_rows(embedding, n_special), axis=1)
    report.update({"rows_from_word2vec": len(with_vector), "rows_random": len(new_words) - len(with_vector),
                   "mean_norm_old": float(old_norm.mean()) if len(old_norm) else 0.0,
                   "mean_norm_new": float(np.linalg.norm(rows, axis=1).mean()) if len(rows) else 0.0})
    return RowInit(rows, "word2vec", report)


def new_embedding_rows(embedding: np.ndarray, vocab: Sequence[str], new_words: Sequence[str],
                       token_lists: Sequence[Sequence[str]], init: str, w2v: Word2VecConfig, seed: int) -> RowInit:
    """Rows for ``new_words``: ``word2vec`` (see :func:`word2vec_rows`) or ``random`` (see :func:`random_rows`)."""
    if init not in VOCAB_INITS:
        raise ConfigError(f"--vocab-init must be one of {', '.join(VOCAB_INITS)}. Received: {init!r}.")
    if len(vocab) != embedding.shape[0]:
        raise ModelError(f"the tokenizer has {len(vocab)} ids but the embedding {embedding.shape[0]} rows; they do not "
                         "belong together. Re-freeze the version from its checkpoint.")
    if init == "random" or not new_words:
        return RowInit(random_rows(embedding, len(new_words), seed), "random")
    return word2vec_rows(embedding, vocab, new_words, token_lists, w2v, seed)


def grow_model(model: keras.Model, cfg: Config, max_len: int, *, rows: np.ndarray | None = None,
               columns: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Model:
    """A copy of the CNN with ``rows`` appended to its embedding and ``columns`` (kernel, bias) to its output layer.

    Every other weight is copied as it is; the embedding keeps its trainable flag. The returned model is compiled
    with the config's optimizer (fresh Adam slots).
    """
    from lifecycle.model import build_model

    old = {weight.path: weight.numpy() for weight in model.weights}
    if EMBEDDING_PATH not in old or OUTPUT_KERNEL_PATH not in old:
        raise ModelError(f"model {model.name!r} is not a lifecycle CNN (no {EMBEDDING_PATH} or {OUTPUT_KERNEL_PATH}).")
    if rows is not None:
        old[EMBEDDING_PATH] = np.concatenate([old[EMBEDDING_PATH], rows.astype(np.float32)])
    if columns is not None:
        old[OUTPUT_KERNEL_PATH] = np.concatenate([old[OUTPUT_KERNEL_PATH], columns[0]], axis=1)
        old[OUTPUT_BIAS_PATH] = np.concatenate([old[OUTPUT_BIAS_PATH], columns[1]])
    vocab_size, classes = old[EMBEDDING_PATH].shape[0], old[OUTPUT_KERNEL_PATH].shape[1]
    grown = build_model(cfg.model.model_copy(update={"embedding_init": "rand"}), cfg.train, vocab_size=vocab_size,
                        num_classes=classes, max_len=max_len)
    for weight in grown.weights:
        if weight.path not in old or tuple(weight.shape) != old[weight.path].shape:
            raise ModelError(f"cannot grow {model.name!r}: weight {weight.path} has no source of shape "
                             f"{tuple(weight.shape)}.")
        weight.assign(old[weight.path])
    grown.get_layer("embedding").trainable = model.get_layer("embedding").trainable
    return grown


def grow_masks(masks: Mapping[str, np.ndarray], rows: int, columns: int) -> dict[str, np.ndarray]:
    """Pruning masks for the grown model: added rows and columns are free to train (True)."""
    out = dict(masks)
    if rows and EMBEDDING_PATH in out:
        mask = out[EMBEDDING_PATH]
        out[EMBEDDING_PATH] = np.concatenate([mask, np.ones((rows, mask.shape[1]), dtype=bool)])
    if columns and OUTPUT_KERNEL_PATH in out:
        mask = out[OUTPUT_KERNEL_PATH]
        out[OUTPUT_KERNEL_PATH] = np.concatenate([mask, np.ones((mask.shape[0], columns), dtype=bool)], axis=1)
    return out
