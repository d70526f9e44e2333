"""The shallow CNN of Kim (2014): embedding -> Conv1D per width -> max-pool over time -> concat -> dropout -> softmax.

Layer names are stable (``embedding``, ``conv_<w>``, ``output``): freezing maps them to ``weights/...`` constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from lifecycle.config import ModelConfig, TrainConfig

INPUT_NAME = "input_ids"
OUTPUT_NAME = "probabilities"


def build_model(
    cfg: ModelConfig,
    train: TrainConfig,
    *,
    vocab_size: int,
    num_classes: int,
    max_len: int,
    embeddings: np.ndarray | None = None,
) -> keras.Model:
    """Build and compile the CNN.

    Args:
        cfg: sizes and embedding mode.
        train: learning rate, Adam epsilon and precision policy.
        vocab_size: rows of the embedding (ids 0..vocab_size-1; 0 is padding).
        num_classes: width of the softmax.
        max_len: ids per text; must be at least the widest kernel.
        embeddings: word2vec rows (vocab_size x embedding_dim) for ``static``/``non-static``.

    Returns:
        A compiled Keras model whose input is ``input_ids`` (int32) and output ``probabilities`` (float32).

    Raises:
        ConfigError: when the sizes cannot make a valid network.
    """
    tf_module()
    import keras

    if max_len < max(cfg.kernel_sizes):
        raise ConfigError(
            f"tokenizer.max_len ({max_len}) must be >= the widest model.kernel_sizes entry ({max(cfg.kernel_sizes)})."
            " Raise max_len or narrow the kernels."
        )
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes. Received: {num_classes}.")
    policy = {"float32": "float32", "mixed_bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[train.precision]

    if cfg.embedding_init != "rand" and (embeddings is None or embeddings.shape != (vocab_size, cfg.embedding_dim)):
        got = None if embeddings is None else embeddings.shape
        raise ConfigError(
            f"model.embedding_init={cfg.embedding_init} needs word2vec vectors of shape "
            f"({vocab_size}, {cfg.embedding_dim}). Received: {got}."
        )

    inputs = keras.Input(shape=(max_len,), dtype="int32", name=INPUT_NAME)
    embedding = keras.layers.Embedding(
        vocab_size,
        cfg.embedding_dim,
        # Kim 2014 draws unknown-word vectors from U[-a, a] with a = 0.25 (same variance as the pretrained ones).
        embeddings_initializer=keras.initializers.RandomUniform(-0.25, 0.25, seed=train.seed),
        trainable=cfg.embedding_init != "static",
        name="embedding",
        dtype=policy,
    )
    embedded = embedding(inputs)
    pooled = []
    for width in cfg.kernel_sizes:
        conv = keras.layers.Conv1D(cfg.filters, width, activation="relu", name=f"conv_{width}", dtype=policy)(embedded)
        pooled.append(keras.layers.GlobalMaxPooling1D(name=f"pool_{width}", dtype=policy)(conv))
    features = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="concat", dtype=policy)(pooled)
    features = keras.layers.Dropout(cfg.dropout, name="dropout", seed=train.seed)(features)
    constraint = keras.constraints.MaxNorm(cfg.max_norm, axis=0) if cfg.max_norm else None
    # The softmax stays float32 under mixed policies: probabilities in half precision lose the small classes.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_constraint=constraint, name="output", dtype="float32"
    )(features)
    model = keras.Model(inputs, outputs, name="kim_cnn")
    if cfg.embedding_init != "rand":
        # Assigned after building, not through a Constant initializer: that would copy the whole matrix into
        # model.keras's config.json (the field report's bloated-MetaGraph problem all over again).
        embedding.embeddings.assign(embeddings.astype("float32"))
    compile_model(model, train)
    return model


def compile_model(model: keras.Model, train: TrainConfig) -> None:
    """Compile with Adam (loss-scaled under float16) and sparse categorical cross-entropy."""
    import keras

    optimizer: Any = keras.optimizers.Adam(learning_rate=train.learning_rate, epsilon=train.adam_epsilon)
    if train.precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def weight_bytes(model: keras.Model) -> int:
    """Bytes of the model's weights alone (what a frozen graph carries)."""
    return int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights))


def optimizer_bytes(model: keras.Model) -> int:
    """Bytes of the optimizer's slots (Adam's moments, iteration counters) once built."""
    optimizer = model.optimizer
    if optimizer is None:
        return 0
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in optimizer.variables))


def count_params(model: keras.Model) -> int:
    """Total number of weights, trainable or not."""
    return int(sum(np.prod(w.shape) for w in model.weights))


def tensor_table(model: keras.Model) -> dict[str, dict[str, Any]]:
    """Every weight: shape, dtype, storage and bytes, keyed by its Keras path (the manifest's ``tensors``)."""
    table: dict[str, dict[str, Any]] = {}
    for weight in model.weights:
        dtype = np.dtype(weight.dtype)
        shape = [int(d) for d in weight.shape]
        table[weight.path] = {
            "shape": shape,
            "dtype": dtype.name,
            "storage": dtype.name,
            "bytes": int(np.prod(shape) * dtype.itemsize),
        }
    return table
