"""Load a version for prediction: its tokenizer plus the model it carries, behind one ``Predictor`` interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.artifacts import KERAS_FILE, Version
from lifecycle.errors import ModelError


@dataclass(frozen=True)
class Prediction:
    """One text's label, its probability, and the top-k (label, probability) pairs."""

    text: str
    label: str
    probability: float
    top: tuple[tuple[str, float], ...]


class Predictor:
    """A version's tokenizer and model, loaded once, predicting batches of raw texts."""

    def __init__(self, version: Version) -> None:
        from tokenization.base import load_tokenizer

        self.version = version
        self.labels = version.labels
        self.max_len = version.max_len
        self.tokenizer = load_tokenizer(version.tokenizer_dir)
        if version.kind != "checkpoint":
            raise ModelError(
                f"{version.path}: kind {version.kind!r} cannot be loaded for prediction by this lifecycle build "
                "(checkpoint versions only)."
            )
        from lifecycle.backend import tf_module

        tf_module()
        import keras

        self.model: Any = keras.saving.load_model(version.path / KERAS_FILE, compile=False)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Class probabilities, one row per text."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        ids = self.tokenizer.encode(list(texts), self.max_len)
        return np.asarray(self.model.predict(ids, batch_size=batch_size, verbose=0), dtype=np.float32)

    def predict(self, texts: Sequence[str], top_k: int = 1) -> list[Prediction]:
        """Labels with their probabilities, best first."""
        probabilities = self.predict_proba(texts)
        k = max(1, min(top_k, len(self.labels)))
        results = []
        for text, row in zip(texts, probabilities, strict=True):
            order = np.argsort(-row)[:k]
            top = tuple((self.labels[i], float(row[i])) for i in order)
            results.append(Prediction(text, top[0][0], top[0][1], top))
        return results
