"""Foreign Kim CNNs into lifecycle: a TF1-style frozen GraphDef (.pb) or a TFLite flatbuffer -> our CNN's weights.

Two readers return the same :class:`ForeignCNN` (float32 weights in our layout, how the file stored each one, and a
runner of the foreign model for the fidelity check):

- :func:`read_frozen_graph`: a graph like the field report's (cnn-text-classification-tf): placeholders ``input_x``
  (int32 ``[None, L]``) and ``dropout_keep_prob``, an embedding ``[V, D]`` gathered and expanded to ``[None, L, D, 1]``,
  one Conv2D per width with kernels ``[w, D, 1, F]``, max-pool over time, concat, ``output/W`` ``[n*F, C]`` and
  ``output/b``, outputs ``output/scores`` (logits) and/or ``output/predictions`` (argmax). The node names come from a
  mapping file (:class:`ImportMapping`); the graph is refused if it holds an op outside ``FOREIGN_GRAPH_OPS`` or lacks
  a node the mapping names.
- :func:`read_tflite`: a flatbuffer the TFLite converter made from a Keras CNN (float32, float16, or dynamic-range
  int8). Constants are read through ai_edge_litert's tensor API (``get_tensor_details`` / ``get_tensor``; int8 codes
  dequantized with their per-channel or per-tensor ``quantization_parameters``). Which tensor is which is read off the
  ops (the GATHER's table, each CONV_2D's filter ``[F, 1, w, D]`` and bias, the one FULLY_CONNECTED's ``[C, in]``
  weights and bias, the CONCATENATION's input order); a mapping file may name tensors instead when the ops are
  ambiguous.

The conv features enter the output layer in the order the foreign graph concatenates them, so that order (traced
through the graph, not assumed) becomes our ``kernel_sizes`` order.

The tokenizer (:func:`import_tokenizer`): a lifecycle tokenizer directory (``tokenizer.json``; its ids are the
graph's), or a foreign ``vocab.txt`` (UTF-8, one token per line, line i = the graph's id i) whose pad and unk tokens the
mapping names; it becomes a lifecycle word tokenizer (pad, unk, bos, eos at 0-3, the other words after them in their
old order) and the embedding rows are permuted to match.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifecycle import fidelity
from lifecycle.config import WordConfig, read_yaml, validate_schema
from lifecycle.errors import ConfigError, ModelError, TokenizerError

if TYPE_CHECKING:
    import keras

    from lifecycle.config import Config

log = logging.getLogger(__name__)

FORMATS = {".pb": "tf1-graph", ".tflite": "tflite"}
# Ops a foreign frozen Kim CNN may hold: its inference path (gather, conv, pool, dense, argmax/softmax) and the
# TF1 dropout's arithmetic (a random mask scaled by keep_prob, fed 1.0 here). No file, system, queue or variable op.
FOREIGN_GRAPH_OPS = frozenset({
    "Placeholder", "PlaceholderWithDefault", "Const", "Identity", "GatherV2", "Gather", "ExpandDims", "Squeeze",
    "Reshape", "Conv2D", "BiasAdd", "Add", "AddV2", "Relu", "MaxPool", "Max", "ConcatV2", "Concat", "MatMul", "ArgMax",
    "Softmax", "Mul", "RealDiv", "Sub", "Shape", "RandomUniform", "GreaterEqual", "SelectV2", "Select", "Cast",
    "Floor", "StridedSlice", "Pack", "Fill", "Transpose",
})
# The same for TFLite: what the converter emits for a Keras Kim CNN in float32, float16 or dynamic-range int8
# (LESS/ADD/SELECT_V2 are Keras' handling of negative ids before the GATHER).
FOREIGN_LITE_OPS = frozenset({
    "GATHER", "EXPAND_DIMS", "CONV_2D", "RESHAPE", "SQUEEZE", "REDUCE_MAX", "MAX_POOL_2D", "CONCATENATION",
    "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE", "LESS", "ADD", "SELECT_V2", "CAST", "RELU", "ARG_MAX", "TRANSPOSE",
    "MUL",
})
# How close the restored model must come to the foreign one, by the weakest storage in the file (see fidelity.IMPORT).
BOUNDS = fidelity.IMPORT
CHECK_ROWS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvNames(_Strict):
    kernel: str = Field(description="Conv kernel: [w, D, 1, F] (TF1 Conv2D) or [w, D, F] (.pb); tensor name (.tflite).")
    bias: str = Field(description="Conv bias [F].")


class DenseNames(_Strict):
    kernel: str = Field(description="Output weights: [n*F, C] (.pb) or [C, n*F] (.tflite).")
    bias: str = Field(description="Output bias [C].")


class VocabSpec(_Strict):
    pad: str | None = Field(None, description="Token of the padding id in vocab.txt (default: the first line's).")
    unk: str | None = Field(None, description="Token unknown words map to (default: <UNK> if present, else pad).")
    lowercase: bool = Field(True, description="Lower-case text before tokenizing, as the foreign model did.")
    token_pattern: str = Field(WordConfig().token_pattern, description="Regular expression that finds the tokens.")


class ImportMapping(_Strict):
    """What a mapping YAML holds (every node name optional for .tflite, where the ops tell them apart)."""

    labels: tuple[str, ...] = Field(min_length=2, description="Class names in the order of the output's columns.")
    input: str | None = Field(None, description=".pb: the ids placeholder, e.g. input_x.")
    output: tuple[str, ...] = Field((), description=".pb: output node(s), e.g. [output/scores, output/predictions]: "
                                    "kind read from the op (ArgMax: predictions, Softmax: probabilities, else logits).")
    dropout: tuple[str, ...] = Field((), description=".pb: keep-probability placeholder(s), fed 1.0.")
    embedding: str | None = Field(None, description="Embedding [V, D].")
    conv: dict[int, ConvNames] = Field(default_factory=dict, description="Per filter width: kernel and bias.")
    dense: DenseNames | None = Field(None, description="Output layer: kernel and bias.")
    max_len: int | None = Field(None, ge=1, description="Ids per text (default: the input's shape).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                             description="Config / registered model name (default: the model file's stem).")
    dropout_rate: float = Field(0.5, ge=0, lt=1, description="Dropout of the rebuilt CNN when it is retrained.")
    tokenizer: VocabSpec = VocabSpec()
    config: dict[str, Any] = Field(default_factory=dict, description="More lifecycle config (data, train, tracking) "
                                   "for the imported version; the architecture comes from the model file.")

    @field_validator("output", "dropout", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


def load_mapping(path: Path) -> ImportMapping:
    """Read and check a mapping YAML; errors name the file, the key and the value received."""
    if not path.is_file():
        raise ConfigError(f"{path}: mapping file not found (--mapping). Pass the YAML that names the model's labels "
                          "and nodes (README: Importing a TF1 frozen graph or a TFLite model).")
    return validate_schema(ImportMapping, read_yaml(path), str(path),
                           f"Allowed: {', '.join(ImportMapping.model_fields)} (see README: import).",
                           "the class names, in the output's column order")


@dataclass
class ForeignCNN:
    """A foreign Kim CNN's weights in our layout (float32), how its file stored them, and a runner of the original.

    ``run`` maps padded ids in the foreign model's own numbering to ``{kind: outputs}`` (kinds: logits,
    probabilities, predictions).
    """

    source: Path
    format: str
    embedding: np.ndarray
    kernel_sizes: tuple[int, ...]
    conv_kernels: tuple[np.ndarray, ...]  # [w, D, F] each, in ``kernel_sizes`` order
    conv_biases: tuple[np.ndarray, ...]
    dense_kernel: np.ndarray  # [n*F, C]
    dense_bias: np.ndarray
    max_len: int
    input_dtype: str
    storage: dict[str, str]  # our weight name -> float32 | float16 | int8 (as the file stored it)
    nodes: dict[str, str]  # our weight name -> the foreign node / tensor it came from
    run: Callable[[np.ndarray], dict[str, np.ndarray]]
    close: Callable[[], None] = field(default=lambda: None)

    @property
    def bound(self) -> float:
        """The fidelity bound of the weakest storage in the file (``BOUNDS``)."""
        return max(BOUNDS[storage] for storage in self.storage.values())

    @property
    def filters(self) -> int:
        return int(self.conv_kernels[0].shape[2])


def _check_shapes(cnn: ForeignCNN, labels: Sequence[str], where: str) -> None:
    """Every tensor must fit one Kim CNN; errors name the file, the tensor and the shapes."""
    vocab, dim = cnn.embedding.shape
    filters = {kernel.shape[2] for kernel in cnn.conv_kernels}
    for width, kernel, bias in zip(cnn.kernel_sizes, cnn.conv_kernels, cnn.conv_biases, strict=True):
        name = cnn.nodes[f"weights/conv_{width}/kernel"]
        if kernel.shape[:2] != (width, dim):
            raise ModelError(f"{where}: conv kernel {name!r} has shape {list(kernel.shape)} in our [w, D, F] layout; "
                             f"width {width} over embedding dim {dim} needs [{width}, {dim}, F].")
        if bias.shape != (kernel.shape[2],):
            raise ModelError(f"{where}: conv bias {cnn.nodes[f'weights/conv_{width}/bias']!r} has shape "
                             f"{list(bias.shape)}; its kernel has {kernel.shape[2]} filters.")
    if len(filters) != 1:
        raise ModelError(f"{where}: conv widths {list(cnn.kernel_sizes)} have different filter counts "
                         f"{sorted(filters)}; the lifecycle CNN uses one count for every width.")
    features = len(cnn.kernel_sizes) * cnn.filters
    if cnn.dense_kernel.shape != (features, len(labels)) or cnn.dense_bias.shape != (len(labels),):
        raise ModelError(f"{where}: output weights {cnn.nodes['weights/output/kernel']!r} "
                         f"{list(cnn.dense_kernel.shape)} and bias {list(cnn.dense_bias.shape)} do not fit "
                         f"{len(cnn.kernel_sizes)} widths x "
                         f"{cnn.filters} filters -> {len(labels)} labels (the mapping's labels).")
    if cnn.max_len < max(cnn.kernel_sizes):
        raise ModelError(f"{where}: max_len {cnn.max_len} is shorter than the widest kernel {max(cnn.kernel_sizes)}.")
    if vocab < 2:
        raise ModelError(f"{where}: embedding {cnn.nodes['weights/embedding']!r} has {vocab} rows.")


# ---------------------------------------------------------------------------------------------------- TF1 .pb


def _graph_nodes(graph_def: Any) -> dict[str, Any]:
    return {node.name: node for node in graph_def.node}


def _input_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _const_value(nodes: dict[str, Any], name: str, field_name: str, pb: Path, mapping: Path) -> tuple[np.ndarray, str]:
    """A weight's value: the Const the mapping names (through Identity reads); float32 or float16 only."""
    from lifecycle.backend import tf_module

    tf = tf_module()
    node = nodes[name]
    seen = name
    while node.op == "Identity":
        seen = _input_name(node.input[0])
        node = nodes[seen]
    if node.op != "Const":
        raise ModelError(f"{pb}: mapping {mapping} field {field_name} names node {name!r}, a {node.op}, not a "
                         "constant; name the frozen weight (a Const such as output/W).")
    value = tf.make_ndarray(node.attr["value"].tensor)
    if value.dtype not in (np.float32, np.float16):
        raise ModelError(f"{pb}: weight {seen!r} ({field_name}) is {value.dtype}; float32 or float16 expected.")
    return value.astype(np.float32), "float16" if value.dtype == np.float16 else "float32"


def _concat_order(nodes: dict[str, Any], kernels: dict[int, str]) -> list[int] | None:
    """The conv widths in the order their features are concatenated, traced forward from each kernel Const."""
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in nodes.values():
        for position, ref in enumerate(node.input):
            consumers.setdefault(_input_name(ref), []).append((node.name, position))
    found: dict[int, tuple[str, int]] = {}
    for width, kernel in kernels.items():
        frontier, seen = [kernel], {kernel}
        while frontier and width not in found:
            current = frontier.pop(0)
            for consumer, position in consumers.get(current, []):
                if nodes[consumer].op in ("ConcatV2", "Concat"):
                    found[width] = (consumer, position)
                    break
                if consumer not in seen:
                    seen.add(consumer)
                    frontier.append(consumer)
    if len(found) != len(kernels) or len({concat for concat, _ in found.values()}) != 1:
        return None
    return sorted(kernels, key=lambda width: found[width][1])


def _max_len(dims: list[int], mapped: int | None, mapping_path: Path | str, what: str) -> int:
    """Ids per text: the input's fixed second dimension, or the mapping's ``max_len`` when the input has none."""
    fixed = dims[1] if len(dims) == 2 and dims[1] > 0 else None
    if fixed and mapped and fixed != mapped:
        raise ConfigError(f"{mapping_path}: max_len is {mapped} but {what} has shape {dims}; remove max_len or set "
                          f"it to {fixed}.")
    if not (fixed or mapped):
        raise ConfigError(f"{mapping_path}: max_len is required: {what} has no fixed length.")
    return int(fixed or mapped)


def read_frozen_graph(pb: Path, mapping: ImportMapping, mapping_path: Path) -> ForeignCNN:
    """Read a TF1-style frozen Kim CNN (see the module docstring) as our layout, with a session that runs it.

    Raises:
        ModelError: the file is not a GraphDef, holds an op outside ``FOREIGN_GRAPH_OPS``, lacks a node the mapping
            names, or its tensors do not fit one Kim CNN.
        ConfigError: the mapping lacks a field a .pb import needs.
    """
    from lifecycle.backend import tf_module

    tf = tf_module()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(pb.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{pb}: no such file.") from None
    except Exception as exc:  # protobuf's DecodeError is a bare Exception subclass
        raise ModelError(f"{pb}: not a frozen GraphDef ({type(exc).__name__}).") from None
    nodes = _graph_nodes(graph_def)
    forbidden = sorted({node.op for node in graph_def.node} - FOREIGN_GRAPH_OPS)
    if forbidden:
        first = next(node.name for node in graph_def.node if node.op == forbidden[0])
        raise ModelError(f"{pb}: graph uses op(s) outside the import allow-list: {', '.join(forbidden)} (node "
                         f"{first!r}); a frozen Kim CNN never needs them, so it is not imported.")
    for key in ("input", "output", "embedding", "conv", "dense"):
        if not getattr(mapping, key):
            raise ConfigError(f"{mapping_path}: {key} is required to import a .pb (see README: import).")
    assert mapping.input is not None and mapping.embedding is not None and mapping.dense is not None
    named = {"input": mapping.input, "embedding": mapping.embedding, "dense.kernel": mapping.dense.kernel,
             "dense.bias": mapping.dense.bias,
             **{f"output[{i}]": name for i, name in enumerate(mapping.output)},
             **{f"dropout[{i}]": name for i, name in enumerate(mapping.dropout)},
             **{f"conv.{w}.{part}": getattr(names, part) for w, names in mapping.conv.items()
                for part in ("kernel", "bias")}}
    for field_name, name in named.items():
        if _input_name(name) not in nodes:
            raise ModelError(f"{pb}: mapping {mapping_path} field {field_name} names node {name!r}, which the graph "
                             "lacks.")
    placeholder = nodes[_input_name(mapping.input)]
    if placeholder.op != "Placeholder":
        raise ModelError(f"{pb}: input {mapping.input!r} is a {placeholder.op}, not a Placeholder.")
    input_dtype = tf.as_dtype(placeholder.attr["dtype"].type).name
    if input_dtype not in ("int32", "int64"):
        raise ModelError(f"{pb}: input {mapping.input!r} is {input_dtype}; token ids (int32 or int64) expected.")
    dims = [d.size for d in placeholder.attr["shape"].shape.dim] if placeholder.attr["shape"].shape.dim else []
    max_len = _max_len(dims, mapping.max_len, mapping_path, f"input {mapping.input!r}")

    storage: dict[str, str] = {}
    nodes_of: dict[str, str] = {}

    def weight(name: str, field_name: str, ours: str) -> np.ndarray:
        value, kind = _const_value(nodes, _input_name(name), field_name, pb, mapping_path)
        storage[ours], nodes_of[ours] = kind, name
        return value

    embedding = weight(mapping.embedding, "embedding", "weights/embedding")
    if embedding.ndim != 2:
        raise ModelError(f"{pb}: embedding {mapping.embedding!r} has shape {list(embedding.shape)}; [V, D] expected.")
    order = _concat_order(nodes, {w: _input_name(n.kernel) for w, n in mapping.conv.items()}) or list(mapping.conv)
    kernels, biases = [], []
    for width in order:
        names = mapping.conv[width]
        kernel = weight(names.kernel, f"conv.{width}.kernel", f"weights/conv_{width}/kernel")
        if kernel.ndim == 4 and kernel.shape[2] == 1:  # Conv2D over [None, L, D, 1]: [w, D, 1, F] -> [w, D, F]
            kernel = kernel[:, :, 0, :]
        elif kernel.ndim != 3:
            raise ModelError(f"{pb}: conv kernel {names.kernel!r} has shape {list(kernel.shape)}; [w, D, 1, F] "
                             "(Conv2D over the expanded embedding) or [w, D, F] expected.")
        kernels.append(kernel)
        biases.append(weight(names.bias, f"conv.{width}.bias", f"weights/conv_{width}/bias"))
    dense_kernel = weight(mapping.dense.kernel, "dense.kernel", "weights/output/kernel")
    dense_bias = weight(mapping.dense.bias, "dense.bias", "weights/output/bias")

    outputs = [(_input_name(name), name if ":" in name else f"{name}:0") for name in mapping.output]
    kinds = {"ArgMax": "predictions", "Softmax": "probabilities"}
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    fetches = {kinds.get(nodes[node].op, "logits"): graph.get_tensor_by_name(tensor) for node, tensor in outputs}
    feeds = [graph.get_tensor_by_name(name if ":" in name else f"{name}:0") for name in mapping.dropout]
    ids_tensor = graph.get_tensor_by_name(mapping.input if ":" in mapping.input else f"{mapping.input}:0")

    def run(ids: np.ndarray) -> dict[str, np.ndarray]:
        feed = {ids_tensor: ids.astype(input_dtype), **{tensor: 1.0 for tensor in feeds}}
        try:
            got = session.run(fetches, feed)
        except tf.errors.InvalidArgumentError as exc:
            needed = re.search(r"placeholder tensor '([^']+)'", str(exc))
            what = f"placeholder {needed.group(1)!r}" if needed else "an input that is not fed"
            raise ModelError(f"{pb}: the output needs {what}; name it in the mapping's dropout list (fed 1.0) "
                             f"in {mapping_path}.") from None
        return {kind: np.asarray(value) for kind, value in got.items()}

    cnn = ForeignCNN(pb, "tf1-graph", embedding, tuple(order), tuple(kernels), tuple(biases), dense_kernel,
                     dense_bias, int(max_len), input_dtype, storage, nodes_of, run, session.close)
    _check_shapes(cnn, mapping.labels, str(pb))
    return cnn


# ---------------------------------------------------------------------------------------------------- TFLite


def read_tflite(path: Path, mapping: ImportMapping, mapping_path: Path) -> ForeignCNN:
    """Read a converter-made TFLite Kim CNN (float32, float16 or dynamic-range int8) as our layout.

    Raises:
        ModelError: not a TFLite model, an op outside ``FOREIGN_LITE_OPS``, a tensor the mapping names that the
            model lacks, ops that do not tell the weights apart (name them in the mapping), or shapes that do not fit.
        DependencyError: ai-edge-litert is not installed.
    """
    from lifecycle.litert import interpreter_class as lite_interpreter_class
    from lifecycle.litert import serving_ops

    interpreter_class = lite_interpreter_class()
    if not path.is_file():
        raise ModelError(f"{path}: no such file.")
    serving_ops(path, FOREIGN_LITE_OPS)  # before the runtime sees the file: no custom op, builtins on the list
    try:
        interpreter = interpreter_class(model_path=str(path))
    except ValueError as exc:
        raise ModelError(f"{path}: not a TFLite model ({str(exc).splitlines()[0]}).") from None
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    forbidden = sorted({op["op_name"] for op in ops} - FOREIGN_LITE_OPS)
    if forbidden:
        raise ModelError(f"{path}: model uses op(s) outside the import allow-list: {', '.join(forbidden)}; a Kim CNN "
                         "made by the TFLite converter never needs them, so it is not imported.")
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    by_name = {d["name"]: index for index, d in details.items()}
    producer = {int(out): op for op in ops for out in op["outputs"]}
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: expected one input (ids) and one output, found {len(inputs)} and {len(outputs)}.")
    graph_inputs = {int(d["index"]) for d in inputs}

    def constant(index: int, what: str) -> tuple[np.ndarray, str, str]:
        """Float32 values, storage and name of the constant behind ``index`` (through a DEQUANTIZE op)."""
        op = producer.get(index)
        if op is not None and op["op_name"] == "DEQUANTIZE" and int(op["inputs"][0]) not in producer:
            index = int(op["inputs"][0])
        elif op is not None or index in graph_inputs:
            raise ModelError(f"{path}: the {what} (tensor {details[index]['name']!r}) is computed, not a constant; "
                             f"name the constant in the mapping ({mapping_path}).")
        detail = details[index]
        try:
            raw = np.array(interpreter.get_tensor(index))
        except ValueError:
            raise ModelError(f"{path}: tensor {detail['name']!r} ({what}) holds no data.") from None
        quant = detail["quantization_parameters"]
        if raw.dtype in (np.int8, np.uint8) and len(quant["scales"]):
            axis = int(quant["quantized_dimension"])
            shape = [1] * raw.ndim
            if len(quant["scales"]) > 1:
                shape[axis] = -1
            scales = quant["scales"].astype(np.float32).reshape(shape)
            zero = quant["zero_points"].astype(np.float32).reshape(shape)
            return (raw.astype(np.float32) - zero) * scales, "int8", detail["name"]
        if raw.dtype not in (np.float32, np.float16):
            raise ModelError(f"{path}: tensor {detail['name']!r} ({what}) is {raw.dtype}; float32, float16 or int8 "
                             "with scales expected.")
        return raw.astype(np.float32), "float16" if raw.dtype == np.float16 else "float32", detail["name"]

    def named(name: str, field_name: str) -> int:
        if name not in by_name:
            raise ModelError(f"{path}: mapping {mapping_path} field {field_name} names tensor {name!r}, which the "
                             "model lacks.")
        return by_name[name]

    def only(op_name: str, what: str, field_name: str) -> dict[str, Any]:
        found = [op for op in ops if op["op_name"] == op_name]
        if len(found) != 1:
            raise ModelError(f"{path}: {len(found)} {op_name} ops, so the {what} cannot be told apart; name it in the "
                             f"mapping's {field_name} field ({mapping_path}).")
        return found[0]

    storage: dict[str, str] = {}
    nodes_of: dict[str, str] = {}

    def take(index: int, what: str, ours: str) -> np.ndarray:
        value, kind, name = constant(index, what)
        storage[ours], nodes_of[ours] = kind, name
        return value

    table = (named(mapping.embedding, "embedding") if mapping.embedding
             else int(only("GATHER", "embedding", "embedding")["inputs"][0]))
    embedding = take(table, "embedding", "weights/embedding")
    if embedding.ndim != 2:
        raise ModelError(f"{path}: embedding {nodes_of['weights/embedding']!r} has shape {list(embedding.shape)}; "
                         "[V, D] expected.")
    if mapping.conv:
        convs = [(width, named(n.kernel, f"conv.{width}.kernel"), named(n.bias, f"conv.{width}.bias"))
                 for width, n in mapping.conv.items()]
    else:
        convs = []
        for op in (op for op in ops if op["op_name"] == "CONV_2D"):
            filter_index = int(op["inputs"][1])
            shape = details[filter_index]["shape"]
            if len(op["inputs"]) < 3 or int(op["inputs"][2]) < 0 or len(shape) != 4:
                raise ModelError(f"{path}: CONV_2D {details[int(op['outputs'][0])]['name']!r} has no bias or a "
                                 f"{len(shape)}-d filter; name the conv tensors in the mapping ({mapping_path}).")
            convs.append((int(shape[2]), filter_index, int(op["inputs"][2])))
        if not convs:
            raise ModelError(f"{path}: no CONV_2D op; this is not a Kim CNN.")
    if len({width for width, _, _ in convs}) != len(convs):
        raise ModelError(f"{path}: several convolutions have the same width; name them in the mapping "
                         f"({mapping_path}).")
    order = _lite_concat_order(ops, producer, {filter_index: width for width, filter_index, _ in convs})
    by_width = {width: (kernel, bias) for width, kernel, bias in convs}
    widths = order or [width for width, _, _ in convs]
    kernels, biases = [], []
    for width in widths:
        kernel = take(by_width[width][0], f"conv {width} kernel", f"weights/conv_{width}/kernel")
        if kernel.ndim != 4 or kernel.shape[1] != 1:
            raise ModelError(f"{path}: conv kernel {nodes_of[f'weights/conv_{width}/kernel']!r} has shape "
                             f"{list(kernel.shape)}; TFLite CONV_2D's [F, 1, w, D] expected.")
        kernels.append(np.ascontiguousarray(np.transpose(kernel[:, 0], (1, 2, 0))))  # [F, 1, w, D] -> [w, D, F]
        biases.append(take(by_width[width][1], f"conv {width} bias", f"weights/conv_{width}/bias"))
    if mapping.dense:
        dense_index, bias_index = named(mapping.dense.kernel, "dense.kernel"), named(mapping.dense.bias, "dense.bias")
    else:
        fc = only("FULLY_CONNECTED", "output layer", "dense")
        dense_index = int(fc["inputs"][1])
        bias_index = int(fc["inputs"][2]) if len(fc["inputs"]) > 2 else -1
    dense = take(dense_index, "output kernel", "weights/output/kernel")
    if dense.ndim != 2:
        raise ModelError(f"{path}: output kernel {nodes_of['weights/output/kernel']!r} has shape "
                         f"{list(dense.shape)}; [C, in] expected.")
    if bias_index < 0:
        dense_bias = np.zeros(dense.shape[0], dtype=np.float32)
        storage["weights/output/bias"], nodes_of["weights/output/bias"] = "float32", "(none: zeros)"
    else:
        dense_bias = take(bias_index, "output bias", "weights/output/bias")

    signature = [int(d) for d in inputs[0].get("shape_signature", inputs[0]["shape"])]
    max_len = _max_len(signature, mapping.max_len, mapping_path, "the model's input")
    input_dtype = np.dtype(inputs[0]["dtype"]).name
    last = producer.get(int(outputs[0]["index"]))
    kind = "probabilities" if last is not None and last["op_name"] == "SOFTMAX" else "logits"
    state = {"batch": -1}

    def run(ids: np.ndarray) -> dict[str, np.ndarray]:
        results = []
        for start in range(0, len(ids), CHECK_ROWS):
            chunk = ids[start:start + CHECK_ROWS]
            if len(chunk) != state["batch"]:
                interpreter.resize_tensor_input(inputs[0]["index"], [len(chunk), max_len], strict=False)
                interpreter.allocate_tensors()
                state["batch"] = len(chunk)
            interpreter.set_tensor(inputs[0]["index"], np.ascontiguousarray(chunk, dtype=input_dtype))
            interpreter.invoke()
            results.append(np.array(interpreter.get_tensor(outputs[0]["index"]), dtype=np.float32))
        return {kind: np.concatenate(results)}

    cnn = ForeignCNN(path, "tflite", embedding, tuple(widths), tuple(kernels), tuple(biases),
                     np.ascontiguousarray(dense.T), dense_bias, int(max_len), input_dtype, storage, nodes_of, run)
    _check_shapes(cnn, mapping.labels, str(path))
    return cnn


def _lite_concat_order(ops: list[dict[str, Any]], producer: dict[int, dict[str, Any]],
                       widths: dict[int, int]) -> list[int] | None:
    """The conv widths in CONCATENATION input order, each input traced back to the CONV_2D that feeds it."""
    concats = [op for op in ops if op["op_name"] == "CONCATENATION"]
    if len(concats) != 1:
        return None
    order = []
    for tensor in concats[0]["inputs"]:
        frontier, seen, found = [int(tensor)], set(), None
        while frontier and found is None:
            op = producer.get(frontier.pop(0))
            if op is None or id(op) in seen:
                continue
            seen.add(id(op))
            if op["op_name"] == "CONV_2D" and int(op["inputs"][1]) in widths:
                found = widths[int(op["inputs"][1])]
            else:
                frontier.extend(int(i) for i in op["inputs"] if int(i) >= 0)
        if found is None:
            return None
        order.append(found)
    return order if sorted(order) == sorted(widths.values()) else None


def read_foreign(path: Path, mapping: ImportMapping, mapping_path: Path) -> ForeignCNN:
    """Dispatch on the file's suffix (``FORMATS``)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: unknown model file type {path.suffix!r}. Import a TF1 frozen graph (.pb) or a "
                          "TFLite flatbuffer (.tflite).")
    return read_frozen_graph(path, mapping, mapping_path) if kind == "tf1-graph" else read_tflite(path, mapping,
                                                                                                    mapping_path)


# ---------------------------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class ImportedTokenizer:
    """Our tokenizer for a foreign model and how its ids relate to the foreign ones.

    ``rows[i]`` is the foreign embedding row our id ``i`` takes (-1: a zero row, for bos/eos a foreign vocabulary
    lacks); ``ours[j]`` is our id for foreign id ``j``.
    """

    tokenizer: Any
    rows: np.ndarray
    ours: np.ndarray
    source: str


def import_tokenizer(path: Path, spec: VocabSpec, rows: int, mapping_path: Path) -> ImportedTokenizer:
    """A lifecycle tokenizer directory as it is, or a foreign vocab.txt turned into a word tokenizer (module doc).

    Raises:
        TokenizerError: the vocabulary does not have one token per embedding row, or pad/unk are not in it.
    """
    from tokenization.base import METADATA_FILE, N_SPECIAL, SPECIAL_TOKENS, VOCAB_FILE
    from tokenization.factory import load_tokenizer
    from tokenization.word import WordTokenizer

    if path.is_dir() and (path / METADATA_FILE).is_file():
        tokenizer = load_tokenizer(path)
        if tokenizer.vocab_size != rows:
            raise TokenizerError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model's embedding "
                                 f"has {rows} rows; pass the tokenizer the model was trained with.")
        identity = np.arange(rows)
        return ImportedTokenizer(tokenizer, identity, identity, str(path))
    vocab_file = path / VOCAB_FILE if path.is_dir() else path
    if not vocab_file.is_file():
        raise TokenizerError(f"{path}: neither a lifecycle tokenizer (tokenizer.json) nor a {VOCAB_FILE} (one token "
                             "per line, line i = the model's id i). Pass --tokenizer DIR holding one of them.")
    try:
        text = vocab_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{vocab_file}: not UTF-8 text. Save it as UTF-8, one token per line.") from None
    tokens = text.removesuffix("\n").split("\n") if text else []
    tokens = [token.removesuffix("\r") for token in tokens]
    if len(tokens) != rows:
        raise TokenizerError(f"{vocab_file}: has {len(tokens)} tokens but the model's embedding has {rows} rows; "
                             "line i must be the token of id i (the model's vocabulary, in id order).")
    index: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if not token or token in index:
            raise TokenizerError(f"{vocab_file}: line {i + 1} is {'empty' if not token else f'a repeat of {token!r}'}"
                                 "; every id needs exactly one token.")
        index[token] = i
    pad = spec.pad if spec.pad is not None else tokens[0]
    unk = spec.unk if spec.unk is not None else ("<UNK>" if "<UNK>" in index else pad)
    for key, token in (("pad", pad), ("unk", unk)):
        if token not in index:
            raise TokenizerError(f"{mapping_path}: tokenizer.{key} is {token!r}, which {vocab_file} lacks.")
    pad_id, unk_id = index[pad], index[unk]
    words = [i for i in range(rows) if i not in (pad_id, unk_id)]
    clash = [tokens[i] for i in words if tokens[i] in SPECIAL_TOKENS]
    if clash:
        raise TokenizerError(f"{vocab_file}: token {clash[0]!r} is one of lifecycle's special tokens but neither the "
                             f"pad nor the unk token; name it in {mapping_path} (tokenizer.pad / tokenizer.unk).")
    our_rows = np.array([pad_id, unk_id, -1, -1, *words], dtype=np.int64)  # bos/eos: never encoded, zero rows
    ours = np.empty(rows, dtype=np.int64)
    ours[words] = np.arange(N_SPECIAL, N_SPECIAL + len(words))
    ours[unk_id] = 1
    ours[pad_id] = 0
    tokenizer = WordTokenizer([*SPECIAL_TOKENS, *(tokens[i] for i in words)], lowercase=spec.lowercase,
                              token_pattern=spec.token_pattern, info={"min_count": None, "max_size": None,
                                                                      "word2vec": None})
    return ImportedTokenizer(tokenizer, our_rows, ours, str(vocab_file))


# ---------------------------------------------------------------------------------------------------- our model


def imported_config(cnn: ForeignCNN, mapping: ImportMapping, mapping_path: Path, tokenizer: Any) -> Config:
    """The lifecycle config of an imported model: architecture from the file, the rest from the mapping's config.

    ``model.max_norm`` is null (a foreign model was not trained under Kim's constraint; enforcing it at the first
    retraining step would clip its output weights), ``data`` defaults to none (csv without a path: the check and
    forgetting are measured without it) unless the mapping's ``config.data`` names the original training data.
    """
    from lifecycle.config import merge, validate

    derived: dict[str, Any] = {
        "name": mapping.name or re.sub(r"[^A-Za-z0-9_.-]", "-", cnn.source.stem).lstrip("-_.") or "imported",
        "tokenizer": {"kind": tokenizer.kind, "max_len": cnn.max_len},
        "model": {"embedding_dim": int(cnn.embedding.shape[1]), "embedding_init": "rand",
                  "kernel_sizes": list(cnn.kernel_sizes), "filters": cnn.filters, "dropout": mapping.dropout_rate,
                  "max_norm": None},
    }
    if tokenizer.kind == "word":
        derived["tokenizer"]["word"] = {"lowercase": tokenizer.lowercase, "token_pattern": tokenizer.token_pattern,
                                        "word2vec": {"enabled": False}}
    base = {"data": {"format": "csv"}, **{k: v for k, v in mapping.config.items()}}
    for section in ("model", "tokenizer"):
        for key, value in (base.get(section) or {}).items():
            if key in derived[section] and derived[section][key] != value and not isinstance(value, dict):
                raise ConfigError(f"{mapping_path}: config.{section}.{key} is {value!r} but the model file says "
                                  f"{derived[section][key]!r}; remove it from the mapping.")
    return validate(merge(base, derived), f"{mapping_path} (config)")


def build_imported_model(cnn: ForeignCNN, imported: ImportedTokenizer, cfg: Config, num_classes: int
                         ) -> keras.Model:
    """Our Keras CNN holding the foreign weights (embedding rows permuted to our ids), compiled, fresh Adam."""
    from lifecycle.model import build_model

    rows = np.zeros((len(imported.rows), cnn.embedding.shape[1]), dtype=np.float32)
    present = imported.rows >= 0
    rows[present] = cnn.embedding[imported.rows[present]]
    model = build_model(cfg.model, cfg.train, vocab_size=len(rows), num_classes=num_classes, max_len=cnn.max_len)
    model.get_layer("embedding").embeddings.assign(rows)
    for width, kernel, bias in zip(cnn.kernel_sizes, cnn.conv_kernels, cnn.conv_biases, strict=True):
        layer = model.get_layer(f"conv_{width}")
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    model.get_layer("output").kernel.assign(cnn.dense_kernel)
    model.get_layer("output").bias.assign(cnn.dense_bias)
    return model


def check_ids(cnn: ForeignCNN, imported: ImportedTokenizer, seed: int, rows: int = CHECK_ROWS
              ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded padded id rows in the foreign numbering (every id, random lengths, pad after) and the same in ours."""
    rng = np.random.default_rng(seed)
    vocab = len(imported.ours)
    pad = int(imported.rows[0])
    foreign = rng.integers(0, vocab, size=(rows, cnn.max_len))
    lengths = rng.integers(1, cnn.max_len + 1, size=rows)
    foreign[np.arange(cnn.max_len)[None, :] >= lengths[:, None]] = pad
    foreign[0, : min(vocab, cnn.max_len)] = np.arange(min(vocab, cnn.max_len))
    return foreign, imported.ours[foreign].astype(np.int32)


def compare(model: keras.Model, cnn: ForeignCNN, foreign_ids: np.ndarray, our_ids: np.ndarray) -> dict[str, float]:
    """Largest differences between our model and the foreign one, per output the foreign one gives.

    logits: ours are the output layer's pre-softmax values (features @ kernel + bias); probabilities: softmax;
    predictions: the fraction of rows whose argmax differs (ties within 1e-6 excluded).
    """
    import keras

    reference = cnn.run(foreign_ids)
    features = keras.Model(model.input, model.get_layer("dropout").output)
    feats = np.asarray(features(our_ids, training=False), dtype=np.float32)
    output = model.get_layer("output")
    logits = feats @ output.kernel.numpy() + output.bias.numpy()
    probabilities = np.asarray(model(our_ids, training=False))
    result: dict[str, float] = {}
    for kind, expected in reference.items():
        if kind == "logits":
            result["logits"] = float(np.max(np.abs(logits - expected)) / max(1.0, float(np.max(np.abs(expected)))))
        elif kind == "probabilities":
            result["probabilities"] = float(np.max(np.abs(probabilities - expected)))
        else:
            top2 = np.sort(probabilities, axis=1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 1e-6
            result["predictions"] = float(np.mean((probabilities.argmax(1) != expected.reshape(-1))[clear]))
    return result


def import_report(cnn: ForeignCNN) -> dict[str, Any]:
    """What the manifest records about the foreign file."""
    return {"format": cnn.format, "file": str(cnn.source), "storage": dict(cnn.storage), "nodes": dict(cnn.nodes),
            "kernel_sizes": list(cnn.kernel_sizes), "max_len": cnn.max_len, "input_dtype": cnn.input_dtype,
            "bound": cnn.bound}
