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
    """One text's label, its probability, and the top-k (label, probability) pairs.

    ``abstained``: the top probability is under the abstain threshold, so ``label`` is ``calibration.UNKNOWN``
    while ``probability`` and ``top`` still show the model's best guesses.
    """

    text: str
    label: str
    probability: float
    top: tuple[tuple[str, float], ...]
    abstained: bool = False


RUNTIMES = ("auto", "litert", "graph")


class Predictor:
    """A version's tokenizer and model, loaded once, predicting batches of raw texts.

    ``runtime`` picks the model form of a frozen or compressed version: ``auto`` (default) uses the LiteRT serving
    form when the version has one and graph.pb otherwise; ``litert`` requires the serving form (and never imports
    TensorFlow); ``graph`` runs graph.pb in a TensorFlow session. Checkpoints always run in Keras.

    For a process holding many models (``lifecycle serve``): ``max_batch`` caps the rows of one LiteRT interpreter
    call (None: ``litert.DEFAULT_MAX_BATCH``), since the interpreter's memory grows with the largest batch it has run;
    ``lean_tokenizer`` loads a bpe tokenizer lean (``tokenization.factory.load_tokenizer``: the same ids, 3.9 MB instead
    of 10-11 MB for 30,000 tokens, more CPU per new word).

    Probabilities are calibrated: the version's temperature (manifest ``calibration.temperature``, 1 for versions
    made without one) is applied to whatever the runtime returns, as ``softmax(log(p) / T)``, in every method;
    ``calibrated=False`` on ``predict_ids``/``predict_proba`` gives the model's own. ``abstain_threshold`` is the
    version's default threshold for ``predict`` (manifest ``calibration.abstain_threshold``, else None).
    """

    def __init__(self, version: Version, runtime: str = "auto", threads: int | None = None,
                 max_batch: int | None = None, lean_tokenizer: bool = False) -> None:
        from lifecycle.calibration import abstain_threshold_of, temperature_of
        from tokenization.factory import load_tokenizer

        if runtime not in RUNTIMES:
            raise ModelError(f"runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}.")
        self.version = version
        self.labels = version.labels
        self.max_len = version.max_len
        self.temperature = temperature_of(version.manifest)
        self.abstain_threshold = abstain_threshold_of(version.manifest)
        self.tokenizer = load_tokenizer(version.tokenizer_dir, lean=lean_tokenizer)
        self.runtime = self._pick_runtime(version, runtime)
        self._run = self._load_model(version, self.runtime, threads, max_batch)
        # Warm-up through the tokenizer as well (its first encode compiles patterns, allocates buffers), so the
        # user's first call costs what the following ones do.
        for _ in range(2):
            self.predict_proba(["warm up"])

    @staticmethod
    def _pick_runtime(version: Version, runtime: str) -> str:
        if version.kind == "checkpoint":
            if runtime == "litert":
                raise ModelError(f"{version.path}: a checkpoint has no serving form; freeze it first "
                                 "(`lifecycle freeze`), or use --runtime auto.")
            return "keras"
        serving = version.manifest.serving
        if runtime == "litert" and not serving:
            raise ModelError(f"{version.path}: this version has no serving form (made before serving forms "
                             "existed); re-freeze or compress it again, or use --runtime graph.")
        if runtime == "auto":
            return "litert" if serving else "graph"
        return runtime

    @staticmethod
    def _load_model(version: Version, runtime: str, threads: int | None, max_batch: int | None) -> Any:
        """A function from padded ids to probabilities, for the version's kind and the chosen runtime."""
        dtype = version.manifest.input.dtype if version.manifest.input else "int32"
        if runtime == "litert":
            from lifecycle.litert import DEFAULT_MAX_BATCH, LiteRunner

            return LiteRunner(version.path / version.manifest.serving.file, version.max_len, dtype, threads,
                              max_batch or DEFAULT_MAX_BATCH).run
        from lifecycle.backend import tf_module

        tf_module()
        if version.kind == "checkpoint":
            import keras

            model = keras.saving.load_model(version.path / KERAS_FILE, compile=False)

            def run(ids: np.ndarray) -> np.ndarray:
                # predict() sets up a data pipeline per call (~100 ms); a direct call is what serving would do.
                if len(ids) <= 1024:
                    return np.asarray(model(ids, training=False))
                return model.predict(ids, batch_size=256, verbose=0)

            run(np.zeros((1, version.max_len), dtype=np.int32))  # warm-up, as the graph loader does
            return run
        if version.kind in ("frozen", "compressed"):
            from lifecycle.freeze import GRAPH_FILE, GraphRunner, read_graph

            path = version.path / GRAPH_FILE
            runner = GraphRunner(read_graph(path), path, version.max_len, dtype)
            return runner.run
        raise ModelError(f"{version.path}: a {version.kind!r} version holds no model to predict with.")

    def predict_ids(self, ids: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Class probabilities for padded id rows (temperature-scaled unless ``calibrated`` is False)."""
        from lifecycle.calibration import apply_temperature

        if len(ids) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        raw = np.asarray(self._run(ids), dtype=np.float32)
        return apply_temperature(raw, self.temperature) if calibrated else raw

    def predict_proba(self, texts: Sequence[str], calibrated: bool = True) -> np.ndarray:
        """Class probabilities, one row per text."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.predict_ids(self.tokenizer.encode(list(texts), self.max_len), calibrated)

    def predict(self, texts: Sequence[str], top_k: int = 1, abstain: float | None = None) -> list[Prediction]:
        """Labels with their (calibrated) probabilities, best first.

        A text whose top probability is under ``abstain`` (default: the version's ``abstain_threshold``; 0: never)
        gets the label ``calibration.UNKNOWN``, its probabilities and top-k unchanged.
        """
        from lifecycle.calibration import UNKNOWN, abstains

        probabilities = self.predict_proba(texts)
        refused = abstains(probabilities, self.abstain_threshold if abstain is None else abstain)
        k = max(1, min(top_k, len(self.labels)))
        results = []
        for text, row, no in zip(texts, probabilities, refused, strict=True):
            order = np.argsort(-row)[:k]
            top = tuple((self.labels[i], float(row[i])) for i in order)
            results.append(Prediction(text, UNKNOWN if no else top[0][0], top[0][1], top, bool(no)))
        return results
