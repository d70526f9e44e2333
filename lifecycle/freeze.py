"""Keras CNN -> one GraphDef of constants (the frozen form), and loading such a graph for inference.

The graph is written op by op from the model's weights rather than converted from a traced Keras function, so its
nodes have stable, readable names that restore and compress rely on:

    input_ids (Placeholder, the narrowest integer dtype that holds the vocabulary)
    weights/embedding, weights/conv_<w>/kernel, weights/conv_<w>/bias, weights/output/kernel, weights/output/bias
    probabilities (float32 softmax)

Loading refuses any op outside ``ALLOWED_OPS`` (a GraphDef can carry file and system ops), and runs the graph in a
session with Grappler's constant folding off: with it on, the first call folds every large weight constant again,
which is where the field report's 2700 ms first call and doubled RAM came from.

A weight is stored in one of three storages (float32, float16, int8 codes plus scales) and one of two layouts. Dense
is one Const of codes. Sparse (pruned weights) keeps only the nonzero codes plus a bitmask of where they go:

    <codes>/values  (Const, the storage's dtype, [nonzero])
    <codes>/mask    (Const uint8, [ceil(size / 8)], bit i % 8 of byte i // 8 set where element i is nonzero)
    <codes>/decode/...  RightShift, BitwiseAnd, Where, ScatterNd: the dense codes from the two constants
    <codes>         (Reshape) the dense codes, under the same name a dense layout gives its Const

where ``<codes>`` is the weight's name (float32), ``<name>/fp16`` or ``<name>/q``. The graph stays self-contained:
any TensorFlow import computes the same probabilities. ``GraphRunner`` does not run the decode per call (constant
folding is off, see above): it decodes each sparse tensor once with numpy and imports it as the dense Const, so a
loaded sparse graph is the dense graph, with the same per-call work and memory.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "Add", "Relu", "Max", "ConcatV2", "MatMul", "Softmax", "Mul", "Reshape",
    # The sparse layout's decode (bitmask -> positions -> dense codes); pure tensor arithmetic, no state or files.
    "RightShift", "BitwiseAnd", "Where", "ScatterNd",
})
LAYOUTS = ("dense", "sparse")
SPARSE_ENCODING = "bitmask"  # nonzero codes + 1 bit per element; see module docstring
# What a sparse tensor's decode nodes add to graph.pb (about 1.6 KB measured, with the weights' names): below this
# saving, the dense layout is the smaller file.
SPARSE_GRAPH_OVERHEAD = 2048


def encode_sparse(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sparse layout of an array: its nonzero values in row-major order and a little-endian packed bitmask."""
    flat = dense.reshape(-1)
    present = flat != 0
    return flat[present], np.packbits(present, bitorder="little")


def decode_sparse(values: np.ndarray, mask: np.ndarray, shape: Sequence[int], source: Path | str,
                  name: str) -> np.ndarray:
    """The dense array a sparse layout stands for; a values count that disagrees with the mask is a ModelError."""
    size = int(np.prod(shape, dtype=np.int64))
    values = np.asarray(values).reshape(-1)
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.size != (size + 7) // 8:
        raise ModelError(
            f"{source}: sparse tensor {name!r} has a {mask.dtype} mask of {mask.size} bytes; shape {list(shape)} "
            f"needs {(size + 7) // 8} uint8 bytes. The file is damaged or was edited: re-run the compress step."
        )
    if size % 8 and mask.reshape(-1)[-1] >> (size % 8):
        raise ModelError(
            f"{source}: sparse tensor {name!r} sets mask bits past its {size} elements. The file is damaged or was "
            "edited: re-run the compress step that wrote it."
        )
    # One byte per element, viewed as bool without a copy: this runs at every load, on the largest tensors.
    present = np.unpackbits(mask.reshape(-1), count=size, bitorder="little").view(bool)
    marked = int(np.count_nonzero(present))
    if marked != values.size:
        raise ModelError(
            f"{source}: sparse tensor {name!r} stores {values.size} values but its mask marks {marked} positions "
            f"(of {size}). The file is damaged or was edited: re-run the compress step that wrote it."
        )
    dense = np.zeros(size, dtype=values.dtype)
    dense[present] = values
    return dense.reshape(tuple(int(d) for d in shape))


def sparse_nbytes(dense: np.ndarray) -> int:
    """Bytes of an array in the sparse layout: its nonzero values plus one mask bit per element."""
    return int(np.count_nonzero(dense)) * dense.itemsize + (dense.size + 7) // 8


@dataclass(frozen=True)
class StoredTensor:
    """One weight as a graph stores it: float32, float16, or int8 codes with float32 scales along one axis.

    ``value`` is always the dense array of stored codes, whatever the layout; ``layout`` says how the graph file holds
    them (``dense``: one Const; ``sparse``: nonzero values plus a bitmask) and ``nbytes`` counts the bytes it holds.
    """

    storage: str
    value: np.ndarray
    scale: np.ndarray | None = None
    axis: int | None = None
    layout: str = "dense"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ModelError(f"layout must be one of {', '.join(LAYOUTS)}. Received: {self.layout!r}.")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)

    @property
    def nbytes(self) -> int:
        scale = self.scale.nbytes if self.scale is not None else 0
        return int((sparse_nbytes(self.value) if self.layout == "sparse" else self.value.nbytes) + scale)

    def dequantize(self) -> np.ndarray:
        """The float32 values the graph computes with."""
        if self.storage == "int8":
            assert self.scale is not None
            return self.value.astype(np.float32) * self.scale
        return self.value.astype(np.float32)

    def codes_node(self, name: str) -> str:
        """The node whose output is the dense stored codes (a Const when dense, the decode's Reshape when sparse)."""
        return {"float32": name, "float16": f"{name}/fp16", "int8": f"{name}/q"}[self.storage]

    def nodes(self, name: str) -> list[str]:
        """The Const nodes holding this tensor in a graph."""
        codes = self.codes_node(name)
        held = [f"{codes}/values", f"{codes}/mask"] if self.layout == "sparse" else [codes]
        return held + ([f"{name}/scale"] if self.storage == "int8" else [])


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


def _codes(tf: Any, name: str, stored: StoredTensor) -> Any:
    """The dense stored codes as a graph tensor named ``stored.codes_node(name)``: one Const, or the sparse decode."""
    node = stored.codes_node(name)
    if stored.layout == "dense":
        return tf.constant(stored.value, name=node)
    values, mask = encode_sparse(stored.value)
    size = stored.value.size
    bits = tf.bitwise.right_shift(
        tf.reshape(tf.constant(mask, name=f"{node}/mask"), tf.constant([-1, 1], name=f"{node}/decode/column"),
                   name=f"{node}/decode/bytes"),
        tf.constant(np.arange(8, dtype=np.uint8), name=f"{node}/decode/shifts"), name=f"{node}/decode/shifted")
    flags = tf.bitwise.bitwise_and(bits, tf.constant(np.uint8(1), name=f"{node}/decode/one"),
                                   name=f"{node}/decode/bits")
    flat = tf.reshape(flags, tf.constant([-1], name=f"{node}/decode/flat_shape"), name=f"{node}/decode/flat")
    # Padding bits past ``size`` are zero, so every position Where finds is inside the tensor.
    positions = tf.where(flat, name=f"{node}/decode/positions")
    dense = tf.scatter_nd(positions, tf.constant(values, name=f"{node}/values"),
                          tf.constant([size], dtype=tf.int64, name=f"{node}/decode/size"),
                          name=f"{node}/decode/scatter")
    return tf.reshape(dense, tf.constant(stored.shape, dtype=tf.int64, name=f"{node}/decode/shape"), name=node)


def _dense(tf: Any, name: str, stored: StoredTensor) -> Any:
    """A float32 tensor named ``name`` computed from its stored form (the codes themselves when float32)."""
    codes = _codes(tf, name, stored)
    if stored.storage == "float32":
        return codes
    if stored.storage == "float16":
        return tf.cast(codes, tf.float32, name=name)
    return tf.multiply(tf.cast(codes, tf.float32), tf.constant(stored.scale, name=f"{name}/scale"), name=name)


def _embed(tf: Any, stored: StoredTensor, ids: Any) -> Any:
    """Embedding lookup that gathers the stored rows first, so a float16/int8 table stays small in memory."""
    name = "weights/embedding"
    table = _codes(tf, name, stored)
    if stored.storage == "float32":
        return tf.gather(table, ids, name="embed")
    if stored.storage == "float16":
        return tf.cast(tf.gather(table, ids), tf.float32, name="embed")
    rows = tf.cast(tf.gather(table, ids), tf.float32)
    scale = tf.constant(stored.scale, name=f"{name}/scale")
    if np.ndim(stored.scale) == 0:  # one scale for the table (int8:embedding=table)
        return tf.multiply(rows, scale, name="embed")
    return tf.multiply(rows, tf.gather(scale, ids), name="embed")


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
    """Every weight: logical shape and dtype, storage, layout, stored bytes, its Const nodes (``tensors``)."""
    return {
        name: {
            "shape": list(stored.shape),
            "dtype": "float32",
            "storage": stored.storage,
            "layout": stored.layout,
            **({"encoding": SPARSE_ENCODING} if stored.layout == "sparse" else {}),
            "bytes": stored.nbytes,
            "nodes": stored.nodes(name),
            "nonzero": int(np.count_nonzero(stored.value)),
            "sparsity": float(1.0 - np.count_nonzero(stored.value) / max(stored.value.size, 1)),
            **({"axis": stored.axis} if stored.axis is not None else {}),
        }
        for name, stored in weights.items()
    }


def read_weights(graph_def: Any, tensors: dict[str, dict[str, Any]], source: Path | str) -> Weights:
    """The stored weights of a graph, read by the storage and layout the manifest records (restore never guesses)."""
    tf = tf_module()
    consts = {node.name: node for node in graph_def.node if node.op == "Const"}

    def value(node_name: str) -> np.ndarray:
        if node_name not in consts:
            raise ModelError(f"{source}: the manifest names constant {node_name!r}, which the graph lacks.")
        return tf.make_ndarray(consts[node_name].attr["value"].tensor)

    weights: Weights = {}
    for name, meta in tensors.items():
        storage, layout = meta["storage"], meta.get("layout", "dense")  # manifests before sparse layouts: dense
        if storage not in ("float32", "float16", "int8"):
            raise ModelError(f"{source}: tensor {name!r} has unknown storage {storage!r}.")
        if layout not in LAYOUTS:
            raise ModelError(f"{source}: tensor {name!r} has unknown layout {layout!r} (manifest field "
                             f"tensors.{name}.layout); this lifecycle reads {', '.join(LAYOUTS)}.")
        if layout == "sparse" and meta.get("encoding", SPARSE_ENCODING) != SPARSE_ENCODING:
            raise ModelError(f"{source}: tensor {name!r} has sparse encoding {meta['encoding']!r}; this lifecycle "
                             f"reads {SPARSE_ENCODING!r}. Upgrade lifecycle to load this version.")
        codes_node = StoredTensor(storage, np.zeros(0)).codes_node(name)
        if layout == "sparse":
            codes = decode_sparse(value(f"{codes_node}/values"), value(f"{codes_node}/mask"), meta["shape"], source,
                                  name)
        elif meta.get("folded_into"):  # the fold step moved it into a consumer's constant: same values, reshaped
            codes = value(meta["folded_into"])
            if codes.size != int(np.prod(meta["shape"])):
                raise ModelError(f"{source}: constant {meta['folded_into']!r} holds {codes.size} values; tensor "
                                 f"{name!r} needs {int(np.prod(meta['shape']))}. The version is damaged; re-freeze.")
            codes = codes.reshape(meta["shape"])
        else:
            codes = value(codes_node)
        scale = value(f"{name}/scale") if storage == "int8" else None
        weights[name] = StoredTensor(storage, codes, scale, meta.get("axis") if scale is not None else None, layout)
        if list(weights[name].shape) != list(meta["shape"]):
            raise ModelError(
                f"{source}: tensor {name!r} has shape {weights[name].shape}, manifest says {meta['shape']}."
            )
        held = [meta["folded_into"]] if meta.get("folded_into") else weights[name].nodes(name)
        if "nodes" in meta and list(meta["nodes"]) != held:
            raise ModelError(f"{source}: manifest field tensors.{name}.nodes is {meta['nodes']}; storage {storage} "
                             f"with layout {layout} is held in {held}. Re-write the version.")
    return weights


def densify_sparse(graph_def: Any, source: Path | str) -> Any:
    """The same graph with every sparse-layout tensor decoded once into a dense Const (its decode nodes dropped).

    A sparse tensor is recognised by its node names (module docstring) and its decode is checked to be exactly the
    one ``emit_graph`` writes, so nothing else is rewritten. Returns ``graph_def`` itself when nothing is sparse; the
    argument is never modified.
    """
    tf = tf_module()
    nodes = {node.name: node for node in graph_def.node}
    bases = [name.removesuffix("/mask") for name, node in nodes.items()
             if node.op == "Const" and name.endswith("/mask") and f"{name.removesuffix('/mask')}/values" in nodes]
    if not bases:
        return graph_def
    dropped: set[str] = set()
    for base in bases:
        decode = {name for name in nodes if name.startswith(f"{base}/decode/")}
        node = nodes.get(base)
        if (node is None or node.op != "Reshape"
                or list(node.input) != [f"{base}/decode/scatter", f"{base}/decode/shape"]
                or nodes[f"{base}/values"].op != "Const" or f"{base}/decode/shape" not in decode
                or nodes[f"{base}/decode/shape"].op != "Const"):
            raise ModelError(f"{source}: sparse tensor {base!r} (nodes {base}/values, {base}/mask) is not decoded "
                             "the way lifecycle writes it; refusing to load an edited graph. Re-run compress.")
        dropped |= decode | {f"{base}/values", f"{base}/mask"}

    def array(node_name: str) -> np.ndarray:
        return tf.make_ndarray(nodes[node_name].attr["value"].tensor)

    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in dropped:
            continue
        if node.name in bases:
            # One tensor decoded at a time and written straight into the new Const, to keep the load's peak low.
            dense = decode_sparse(array(f"{node.name}/values"), array(f"{node.name}/mask"),
                                  array(f"{node.name}/decode/shape"), source, node.name)
            const = out.node.add(name=node.name, op="Const", device=node.device)
            const.attr["dtype"].type = tf.as_dtype(dense.dtype).as_datatype_enum
            tensor = const.attr["value"].tensor
            tensor.dtype = const.attr["dtype"].type
            tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in dense.shape)
            tensor.tensor_content = dense.tobytes()
            del dense
            continue
        if any(ref.lstrip("^").split(":")[0] in dropped for ref in node.input):
            raise ModelError(f"{source}: node {node.name!r} reads a sparse tensor's decode internals; refusing to "
                             "load an edited graph. Re-run compress.")
        out.node.add().CopyFrom(node)
    return out


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

