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
class FrozenGraph:
    """A frozen graph and where each Keras weight went."""

    graph_def: Any
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


def _weights_by_layer(model: keras.Model) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]],
                                                     np.ndarray, np.ndarray, dict[str, str]]:
    """The CNN's weights by role, plus the Keras weight path -> const node map."""
    weight_map: dict[str, str] = {}
    try:
        embedding_layer = model.get_layer("embedding")
        output_layer = model.get_layer("output")
    except ValueError as exc:
        raise ModelError(f"model {model.name!r} is not a lifecycle CNN ({exc}).") from None
    embedding = np.asarray(embedding_layer.embeddings.numpy(), dtype=np.float32)
    weight_map[embedding_layer.embeddings.path] = "weights/embedding"
    convs = []
    for layer in model.layers:
        if layer.name.startswith("conv_"):
            width = int(layer.name.removeprefix("conv_"))
            kernel, bias = layer.kernel, layer.bias
            convs.append((width, np.asarray(kernel.numpy(), np.float32), np.asarray(bias.numpy(), np.float32)))
            weight_map[kernel.path] = f"weights/conv_{width}/kernel"
            weight_map[bias.path] = f"weights/conv_{width}/bias"
    if not convs:
        raise ModelError(f"model {model.name!r} has no conv_<width> layers; it is not a lifecycle CNN.")
    out_kernel = np.asarray(output_layer.kernel.numpy(), np.float32)
    out_bias = np.asarray(output_layer.bias.numpy(), np.float32)
    weight_map[output_layer.kernel.path] = "weights/output/kernel"
    weight_map[output_layer.bias.path] = "weights/output/bias"
    return embedding, convs, out_kernel, out_bias, weight_map


def freeze_model(model: keras.Model, max_len: int) -> FrozenGraph:
    """Write the CNN's inference path as a GraphDef whose weights are named Const nodes.

    Args:
        model: a model built by ``lifecycle.model.build_model`` (any precision; the graph computes in float32).
        max_len: ids per text, the placeholder's second dimension.

    Returns:
        The GraphDef, the weight map and the input dtype.
    """
    tf = tf_module()
    embedding, convs, out_kernel, out_bias, weight_map = _weights_by_layer(model)
    dtype = input_dtype_for(embedding.shape[0])
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(getattr(tf, dtype), [None, max_len], name=INPUT_NAME)
        table = tf.constant(embedding, name="weights/embedding")
        # Gather takes int32/int64 indices only; the narrow input keeps requests and the signature small.
        embedded = tf.gather(table, tf.cast(ids, tf.int32), name="embed")
        pooled = []
        for width, kernel, bias in convs:
            k = tf.constant(kernel, name=f"weights/conv_{width}/kernel")
            b = tf.constant(bias, name=f"weights/conv_{width}/bias")
            conv = tf.nn.conv1d(embedded, k, stride=1, padding="VALID", name=f"conv_{width}")
            act = tf.nn.relu(tf.nn.bias_add(conv, b), name=f"relu_{width}")
            pooled.append(tf.reduce_max(act, axis=1, name=f"pool_{width}"))
        features = pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=1, name="concat")
        w = tf.constant(out_kernel, name="weights/output/kernel")
        b = tf.constant(out_bias, name="weights/output/bias")
        logits = tf.nn.bias_add(tf.matmul(features, w), b, name="logits")
        tf.nn.softmax(logits, name=OUTPUT_NAME)
    return FrozenGraph(graph.as_graph_def(), weight_map, dtype, max_len)


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


def graph_tensors(graph_def: Any) -> dict[str, dict[str, Any]]:
    """Every weight constant of a graph: shape, dtype, storage and bytes (the manifest's ``tensors``)."""
    tf = tf_module()
    table: dict[str, dict[str, Any]] = {}
    for node in graph_def.node:
        if node.op != "Const" or not node.name.startswith("weights/"):
            continue
        tensor = node.attr["value"].tensor
        dtype = tf.dtypes.as_dtype(tensor.dtype)
        shape = [int(d.size) for d in tensor.tensor_shape.dim]
        table[node.name] = {
            "shape": shape,
            "dtype": dtype.name,
            "storage": dtype.name,
            "bytes": int(np.prod(shape, dtype=np.int64)) * dtype.size,
        }
    return table


def const_value(graph_def: Any, name: str) -> np.ndarray:
    """The value of one Const node, as numpy."""
    tf = tf_module()
    for node in graph_def.node:
        if node.name == name and node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor)
    raise ModelError(f"graph has no constant {name!r}.")
