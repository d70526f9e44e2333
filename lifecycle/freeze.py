"""Keras CNN -> one GraphDef of constants (the frozen form), and loading such a graph for inference.

The graph is written op by op from the model's weights rather than converted from a traced Keras function, so its
nodes have stable, readable names that restore and compress rely on:

    input_ids (Placeholder, the narrowest integer dtype that holds the vocabulary)
    weights/embedding, weights/conv_<w>/kernel, weights/conv_<w>/bias, weights/output/kernel, weights/output/bias
    probabilities (float32 softmax)

Loading refuses any op outside ``ALLOWED_OPS`` (a GraphDef can carry file and system ops), and runs the graph in a
session with Grappler's constant folding off: with it on, the first call folds every large weight constant again,
which is where the field report's 2700 ms first call and doubled RAM came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.errors import ModelError
from lifecycle.model import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import keras

GRAPH_FILE = "graph.pb"
# Every op a frozen or compressed lifecycle graph may contain; anything else (ReadFile, WriteFile, PyFunc, ...) is
# refused at load time.
ALLOWED_OPS = frozenset({
    "Placeholder", "Const", "Identity", "Cast", "GatherV2", "Conv2D", "ExpandDims", "Squeeze", "BiasAdd", "AddV2",
    "Add", "Relu", "Max", "ConcatV2", "MatMul", "Softmax", "Mul", "Reshape", "SparseToDense", "ScatterNd",
})


@dataclass(frozen=True)
class StoredTensor:
    """One weight as a graph stores it: float32, float16, or int8 codes with float32 scales along one axis."""

    storage: str
    value: np.ndarray
    scale: np.ndarray | None = None
    axis: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes + (self.scale.nbytes if self.scale is not None else 0))

    def dequantize(self) -> np.ndarray:
        """The float32 values the graph computes with."""
        if self.storage == "int8":
            assert self.scale is not None
            return self.value.astype(np.float32) * self.scale
        return self.value.astype(np.float32)

    def nodes(self, name: str) -> list[str]:
        """The Const nodes holding this tensor in a graph."""
        return {"float32": [name], "float16": [f"{name}/fp16"], "int8": [f"{name}/q", f"{name}/scale"]}[self.storage]


Weights = dict[str, StoredTensor]


@dataclass(frozen=True)
class FrozenGraph:
    """A frozen graph, the weights it stores and where each Keras weight went."""

    graph_def: Any
    weights: Weights
    kernel_sizes: tuple[int, ...]
    weight_map: dict[str, str]
    input_dtype: str
    max_len: int


def input_dtype_for(vocab_size: int) -> str:
    """The narrowest integer dtype that holds every id (uint8, uint16, else int32)."""
    if vocab_size <= 2**8:
        return "uint8"
    if vocab_size <= 2**16:
        return "uint16"
    return "int32"


def keras_weights(model: keras.Model) -> tuple[Weights, tuple[int, ...], dict[str, str]]:
    """The CNN's weights as float32 stored tensors, its kernel widths, and the Keras path -> const name map."""
    try:
        embedding_layer = model.get_layer("embedding")
        output_layer = model.get_layer("output")
    except ValueError as exc:
        raise ModelError(f"model {model.name!r} is not a lifecycle CNN ({exc}).") from None
    pairs = [(embedding_layer.embeddings, "weights/embedding")]
    widths = []
    for layer in model.layers:
        if layer.name.startswith("conv_"):
            width = int(layer.name.removeprefix("conv_"))
            widths.append(width)
            pairs += [(layer.kernel, f"weights/conv_{width}/kernel"), (layer.bias, f"weights/conv_{width}/bias")]
    if not widths:
        raise ModelError(f"model {model.name!r} has no conv_<width> layers; it is not a lifecycle CNN.")
    pairs += [(output_layer.kernel, "weights/output/kernel"), (output_layer.bias, "weights/output/bias")]
    weights = {name: StoredTensor("float32", np.asarray(var.numpy(), dtype=np.float32)) for var, name in pairs}
    return weights, tuple(widths), {var.path: name for var, name in pairs}


def _dense(tf: Any, name: str, stored: StoredTensor) -> Any:
    """A float32 tensor named ``name`` computed from its stored form (a plain Const when stored as float32)."""
    if stored.storage == "float32":
        return tf.constant(stored.value, name=name)
    if stored.storage == "float16":
        return tf.cast(tf.constant(stored.value, name=f"{name}/fp16"), tf.float32, name=name)
    codes = tf.cast(tf.constant(stored.value, name=f"{name}/q"), tf.float32)
    return tf.multiply(codes, tf.constant(stored.scale, name=f"{name}/scale"), name=name)


def _embed(tf: Any, stored: StoredTensor, ids: Any) -> Any:
    """Embedding lookup that gathers the stored rows first, so a float16/int8 table stays small in memory."""
    name = "weights/embedding"
    if stored.storage == "float32":
        return tf.gather(tf.constant(stored.value, name=name), ids, name="embed")
    if stored.storage == "float16":
        rows = tf.gather(tf.constant(stored.value, name=f"{name}/fp16"), ids)
        return tf.cast(rows, tf.float32, name="embed")
    rows = tf.cast(tf.gather(tf.constant(stored.value, name=f"{name}/q"), ids), tf.float32)
    scales = tf.gather(tf.constant(stored.scale, name=f"{name}/scale"), ids)
    return tf.multiply(rows, scales, name="embed")


def emit_graph(weights: Weights, kernel_sizes: tuple[int, ...], max_len: int, input_dtype: str) -> Any:
    """The CNN's inference path as a GraphDef over stored weights (see the module docstring for node names)."""
    tf = tf_module()
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(getattr(tf, input_dtype), [None, max_len], name=INPUT_NAME)
        # Gather takes int32/int64 indices only; the narrow input keeps requests and the signature small.
        embedded = _embed(tf, weights["weights/embedding"], tf.cast(ids, tf.int32))
        pooled = []
        for width in kernel_sizes:
            kernel = _dense(tf, f"weights/conv_{width}/kernel", weights[f"weights/conv_{width}/kernel"])
            bias = _dense(tf, f"weights/conv_{width}/bias", weights[f"weights/conv_{width}/bias"])
            conv = tf.nn.conv1d(embedded, kernel, stride=1, padding="VALID", name=f"conv_{width}")
            act = tf.nn.relu(tf.nn.bias_add(conv, bias), name=f"relu_{width}")
            pooled.append(tf.reduce_max(act, axis=1, name=f"pool_{width}"))
        features = pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=1, name="concat")
        w = _dense(tf, "weights/output/kernel", weights["weights/output/kernel"])
        b = _dense(tf, "weights/output/bias", weights["weights/output/bias"])
        logits = tf.nn.bias_add(tf.matmul(features, w), b, name="logits")
        tf.nn.softmax(logits, name=OUTPUT_NAME)
    return graph.as_graph_def()


def freeze_model(model: keras.Model, max_len: int) -> FrozenGraph:
    """Write the CNN's inference path as a GraphDef whose weights are named float32 Const nodes.

    Args:
        model: a model built by ``lifecycle.model.build_model`` (any precision; the graph computes in float32).
        max_len: ids per text, the placeholder's second dimension.

    Returns:
        The GraphDef with its weights, kernel widths, weight map and input dtype.
    """
    weights, widths, weight_map = keras_weights(model)
    dtype = input_dtype_for(weights["weights/embedding"].shape[0])
    return FrozenGraph(emit_graph(weights, widths, max_len, dtype), weights, widths, weight_map, dtype, max_len)


def tensor_manifest(weights: Weights) -> dict[str, dict[str, Any]]:
    """Every weight: logical shape and dtype, storage, stored bytes, its Const nodes (the manifest's ``tensors``)."""
    return {
        name: {
            "shape": list(stored.shape),
            "dtype": "float32",
            "storage": stored.storage,
            "bytes": stored.nbytes,
            "nodes": stored.nodes(name),
            "sparsity": float(1.0 - np.count_nonzero(stored.value) / max(stored.value.size, 1)),
            **({"axis": stored.axis} if stored.axis is not None else {}),
        }
        for name, stored in weights.items()
    }


def read_weights(graph_def: Any, tensors: dict[str, dict[str, Any]], source: Path | str) -> Weights:
    """The stored weights of a graph, read by the storage the manifest records (restore never guesses)."""
    tf = tf_module()
    consts = {node.name: node for node in graph_def.node if node.op == "Const"}

    def value(node_name: str) -> np.ndarray:
        if node_name not in consts:
            raise ModelError(f"{source}: the manifest names constant {node_name!r}, which the graph lacks.")
        return tf.make_ndarray(consts[node_name].attr["value"].tensor)

    weights: Weights = {}
    for name, meta in tensors.items():
        storage = meta["storage"]
        if storage == "float32":
            weights[name] = StoredTensor(storage, value(name))
        elif storage == "float16":
            weights[name] = StoredTensor(storage, value(f"{name}/fp16"))
        elif storage == "int8":
            weights[name] = StoredTensor(storage, value(f"{name}/q"), value(f"{name}/scale"), meta.get("axis"))
        else:
            raise ModelError(f"{source}: tensor {name!r} has unknown storage {storage!r}.")
        if list(weights[name].shape) != list(meta["shape"]):
            raise ModelError(
                f"{source}: tensor {name!r} has shape {weights[name].shape}, manifest says {meta['shape']}."
            )
    return weights


def graph_ops(graph_def: Any) -> set[str]:
    """The op types a GraphDef uses."""
    return {node.op for node in graph_def.node}


def check_allowed(graph_def: Any, source: Path | str) -> None:
    """Refuse a graph holding any op outside ``ALLOWED_OPS``, or missing the input or output node."""
    forbidden = sorted(graph_ops(graph_def) - ALLOWED_OPS)
    if forbidden:
        raise ModelError(
            f"{source}: graph uses op(s) outside the allow-list: {', '.join(forbidden)}. A lifecycle graph never "
            "needs them; refusing to load it."
        )
    names = {node.name for node in graph_def.node}
    for required in (INPUT_NAME, OUTPUT_NAME):
        if required not in names:
            raise ModelError(f"{source}: graph has no {required!r} node; it is not a lifecycle frozen graph.")


def read_graph(path: Path) -> Any:
    """Parse a GraphDef file, with a clear error when it is not one."""
    tf = tf_module()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ModelError(f"{path}: not a GraphDef ({type(exc).__name__}). The file is damaged; re-freeze.") from None
    return graph_def


class GraphRunner:
    """An imported frozen graph in its own session (constant folding off), warmed up, GraphDef dropped."""

    def __init__(self, graph_def: Any, source: Path | str, max_len: int, input_dtype: str) -> None:
        tf = tf_module()
        from tensorflow.core.protobuf import rewriter_config_pb2

        check_allowed(graph_def, source)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto()
        rewrite = config.graph_options.rewrite_options
        # Folding would copy every weight constant once more at the first run (time and RAM).
        rewrite.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        self.input = self.graph.get_tensor_by_name(f"{INPUT_NAME}:0")
        self.output = self.graph.get_tensor_by_name(f"{OUTPUT_NAME}:0")
        self.max_len = max_len
        self.np_dtype = np.dtype(input_dtype)
        self.run(np.zeros((1, max_len), dtype=np.int32))  # warm-up: the user's first call is not the slow one

    def run(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of padded id rows."""
        return np.asarray(self.session.run(self.output, {self.input: ids.astype(self.np_dtype, copy=False)}))

    def close(self) -> None:
        self.session.close()

