"""Keras CNN -> one GraphDef of constants (the frozen form), and loading such a graph for inference.

The graph is written op by op from the model's weights rather than converted from a traced Keras function, so its
nodes have stable, readable names that restore and compress rely on:

    input_ids (Placeholder, the narrowest integer dtype that holds the vocabulary)
    weights/embedding, weights/conv_<w>/kernel, weights/conv_<w>/bias, weights/output/kernel, weights/output/bias
    probabilities (float32 softmax)

Loading refuses any op outside ``ALLOWED_OPS`` (a GraphDef can carry file and system ops), and runs the graph in a
session with Grappler's constant folding off: with it on, the first call folds every large weight constant again,
which is where the field report's 2700 ms first call and doubled RAM came from.

A weight is stored in one of the storages and layouts of ``lifecycle.storage`` (float32, float16, int8 codes plus
scales; dense or sparse), which also names its nodes and writes them; this module only wires them into the CNN.
``GraphRunner`` decodes each sparse tensor once at load (``storage.densify_sparse``), so a loaded sparse graph is the
dense graph, with the same per-call work and memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.errors import ModelError
from lifecycle.model import INPUT_NAME, OUTPUT_NAME
from lifecycle.storage import StoredTensor, Weights, densify_sparse, emit_embedding, emit_float, tensor_entry

if TYPE_CHECKING:
    import keras

GRAPH_FILE = "graph.pb"
# Every op a frozen or compressed lifecycle graph may contain; anything else (ReadFile, WriteFile, PyFunc, ...) is
# refused at load time.
ALLOWED_OPS = frozenset({
    "Placeholder", "Const", "Identity", "Cast", "GatherV2", "Conv2D", "ExpandDims", "Squeeze", "BiasAdd", "AddV2",
    "Add", "Relu", "Max", "ConcatV2", "MatMul", "Softmax", "Mul", "Reshape",
    # The sparse layout's decode (bitmask -> positions -> dense codes); pure tensor arithmetic, no state or files.
    "RightShift", "BitwiseAnd", "Where", "ScatterNd",
})


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


def emit_graph(weights: Weights, kernel_sizes: tuple[int, ...], max_len: int, input_dtype: str) -> Any:
    """The CNN's inference path as a GraphDef over stored weights (see the module docstring for node names)."""
    tf = tf_module()
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(getattr(tf, input_dtype), [None, max_len], name=INPUT_NAME)
        # Gather takes int32/int64 indices only; the narrow input keeps requests and the signature small.
        embedded = emit_embedding(tf, weights["weights/embedding"], tf.cast(ids, tf.int32))
        pooled = []
        for width in kernel_sizes:
            kernel = emit_float(tf, f"weights/conv_{width}/kernel", weights[f"weights/conv_{width}/kernel"])
            bias = emit_float(tf, f"weights/conv_{width}/bias", weights[f"weights/conv_{width}/bias"])
            conv = tf.nn.conv1d(embedded, kernel, stride=1, padding="VALID", name=f"conv_{width}")
            act = tf.nn.relu(tf.nn.bias_add(conv, bias), name=f"relu_{width}")
            pooled.append(tf.reduce_max(act, axis=1, name=f"pool_{width}"))
        features = pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=1, name="concat")
        w = emit_float(tf, "weights/output/kernel", weights["weights/output/kernel"])
        b = emit_float(tf, "weights/output/bias", weights["weights/output/bias"])
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
    """Every weight: logical shape and dtype, storage, layout, stored bytes, its Const nodes (``tensors``)."""
    return {name: tensor_entry(name, stored) for name, stored in weights.items()}


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


HOSTED_BYTES = 1 << 16  # constants at least this large are held in variables by GraphRunner


def _host_in_variables(graph_def: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Turn each large Const node into an uninitialised variable of the same name, dtype and shape.

    A Const's value lives in its NodeDef, and a TF1 session keeps several NodeDef copies (the graph, the execution
    state, the executor's kernels): measured on a 9 MB int8 model, +47 MB after the first run. A variable holds its
    value once. The graph's own ops and names are unchanged; only where the weights are kept differs.

    Returns:
        The rewritten GraphDef (a copy) and the values to assign, by node name.
    """
    tf = tf_module()
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    values: dict[str, np.ndarray] = {}
    for node in out.node:
        if node.op != "Const" or node.attr["value"].tensor.ByteSize() < HOSTED_BYTES:
            continue
        tensor = node.attr["value"].tensor
        values[node.name] = tf.make_ndarray(tensor)
        dtype, shape = node.attr["dtype"].type, tensor.tensor_shape
        node.op = "VariableV2"
        node.ClearField("attr")
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(shape)
        node.attr["container"].s = b""
        node.attr["shared_name"].s = b""
    return out, values


def session_config() -> Any:
    """A session that runs the frozen graph as written: no Grappler, no classic constant folding.

    With Grappler's constant folding on, the first call folds every weight constant again (the field report's
    2700 ms first call and doubled RAM); its other passes still cost 1.8-2.9 s at the first call of a 37 MB float32
    graph, and the classic graph optimizer folds int8 kernels back into float32 copies. The graph is already minimal
    (written op by op; ``fold`` is the offline pass), so nothing is lost by turning them all off.
    """
    tf = tf_module()
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    config.graph_options.optimizer_options.do_constant_folding = False
    return config


class GraphRunner:
    """An imported frozen graph in its own session (constant folding off), warmed up, GraphDef dropped.

    Sparse-layout tensors are decoded once at load (``densify_sparse``), so serving one costs what the dense graph
    costs per call and in memory.
    """

    def __init__(self, graph_def: Any, source: Path | str, max_len: int, input_dtype: str) -> None:
        tf = tf_module()

        check_allowed(graph_def, source)
        # Sparse tensors are decoded here, once: with folding off, the graph's own decode would run on every call.
        graph_def = densify_sparse(graph_def, source)
        graph_def, values = _host_in_variables(graph_def)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
            feeds = {}
            assigns = []
            for name, array in values.items():
                slot = tf.compat.v1.placeholder(array.dtype, array.shape)
                assigns.append(tf.compat.v1.assign(self.graph.get_tensor_by_name(f"{name}:0"), slot).op)
                feeds[slot] = array
        del graph_def
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config())
        if assigns:
            self.session.run(assigns, feeds)
        del feeds, values
        self.input = self.graph.get_tensor_by_name(f"{INPUT_NAME}:0")
        self.output = self.graph.get_tensor_by_name(f"{OUTPUT_NAME}:0")
        self.max_len = max_len
        self.np_dtype = np.dtype(input_dtype)
        self.run(np.zeros((1, max_len), dtype=np.int32))  # warm-up: the user's first call is not the slow one
        from lifecycle.procstat import release_free_memory

        release_free_memory()

    def run(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of padded id rows."""
        return np.asarray(self.session.run(self.output, {self.input: ids.astype(self.np_dtype, copy=False)}))

    def close(self) -> None:
        self.session.close()

