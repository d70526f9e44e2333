"""Frozen or compressed constants -> a trainable Keras CNN (float32 tf.Variables), checked against the graph.

Every stored tensor is read as the manifest says it is stored (``storage.read_weights``: float32, float16, int8 codes
with scales; pruned zeros stay zeros), dequantized exactly as the graph does it (``StoredTensor.dequantize``, each
storage's own), and assigned to the Keras weight that ``weight_map.json``
names, so nothing is matched by guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.errors import ModelError

if TYPE_CHECKING:
    import keras

    from lifecycle.config import Config
    from lifecycle.freeze import FrozenGraph


@dataclass(frozen=True)
class Restored:
    """A restored model and the pruning masks found in its weights (True where a weight may change)."""

    model: keras.Model
    masks: dict[str, np.ndarray]


def restore_model(frozen: FrozenGraph, cfg: Config, num_classes: int) -> Restored:
    """Rebuild the CNN from a frozen graph's stored weights as trainable variables.

    Args:
        frozen: the graph and its stored weights (``workflows.load_graph_version``).
        cfg: the version's resolved config (architecture, optimizer settings, embedding mode).
        num_classes: width of the softmax.

    Raises:
        ModelError: when a stored tensor's shape does not fit the architecture, or a Keras weight has no source.
    """
    from lifecycle.model import build_model

    embedding = frozen.weights["weights/embedding"]
    vocab_size, dim = embedding.shape
    # A ``dim:R`` step narrows the embedding below the config's width (compress.reduce_dim): the stored width wins.
    if dim > cfg.model.embedding_dim or tuple(frozen.kernel_sizes) != tuple(cfg.model.kernel_sizes):
        raise ModelError(
            f"stored weights (embedding dim {dim}, kernels {list(frozen.kernel_sizes)}) do not fit the config "
            f"(model.embedding_dim {cfg.model.embedding_dim}, kernel_sizes {list(cfg.model.kernel_sizes)})."
        )
    # Built as "rand" and then assigned: the stored values replace any initialisation, word2vec included.
    model_cfg = cfg.model.model_copy(update={"embedding_init": "rand", "embedding_dim": int(dim)})
    model = build_model(model_cfg, cfg.train, vocab_size=vocab_size, num_classes=num_classes,
                        max_len=frozen.max_len)
    by_path = {weight.path: weight for weight in model.weights}
    masks: dict[str, np.ndarray] = {}
    for keras_path, const_name in frozen.weight_map.items():
        if keras_path not in by_path:
            raise ModelError(f"weight_map names Keras weight {keras_path!r}, which the rebuilt model lacks.")
        if const_name not in frozen.weights:
            raise ModelError(f"weight_map maps {keras_path!r} to {const_name!r}, which the graph does not store.")
        value = frozen.weights[const_name].dequantize()
        target = by_path[keras_path]
        if tuple(target.shape) != value.shape:
            raise ModelError(f"{const_name} has shape {value.shape}; the CNN needs {tuple(target.shape)} for "
                             f"{keras_path}.")
        target.assign(value)
        if not const_name.endswith("/bias"):
            masks[keras_path] = value != 0
    missing = sorted(set(by_path) - set(frozen.weight_map))
    if missing:
        raise ModelError(f"no stored value for Keras weight(s) {', '.join(missing)}; the graph cannot be mapped.")
    model.get_layer("embedding").trainable = cfg.model.embedding_init != "static"
    return Restored(model, masks)


def restored_difference(restored: Restored, frozen: FrozenGraph, ids: np.ndarray) -> float:
    """Largest absolute difference between the restored model's and the graph's probabilities on ``ids``."""
    from lifecycle.freeze import GraphRunner

    runner = GraphRunner(frozen.graph_def, "restored graph", frozen.max_len, frozen.input_dtype)
    try:
        expected = runner.run(ids)
    finally:
        runner.close()
    got: Any = restored.model(ids.astype(np.int32), training=False)
    return float(np.max(np.abs(np.asarray(got) - expected)))
