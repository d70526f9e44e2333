"""The serving form: a version's weights as a LiteRT (TFLite) flatbuffer, run without TensorFlow.

graph.pb stays the retrainable master; ``model.tflite`` beside it is what a serving process loads. Export goes
through TensorFlow's TFLite converter, then the flatbuffer is edited so every tensor keeps the storage the version
chose (the converter alone would fold the int8 kernels back to float32, or requantize them with its own scales and
hybrid kernels that also quantize activations):

- float32: the converter's output as it is;
- float16: the converter's float16 mode (float16 constants, DEQUANTIZE once at load);
- int8: the embedding stays an int8 table gathered by id, then scaled per row (as in graph.pb, so memory stays
  int8); conv and output kernels become int8 constants with the version's per-output-channel scales. Two kernel
  modes (``KERNELS``):
  - ``hybrid`` (default): CONV_2D and FULLY_CONNECTED take the int8 kernels directly, so LiteRT runs its
    dynamic-range kernels, which quantize each call's activations on the fly (what the converter's dynamic-range
    mode produces). As fast as that peer (batch-1 p50 0.269 vs 0.333 ms exact on TREC's word model), kernels stay
    int8 in memory; probabilities differ from graph.pb by the activations' rounding (0.004-0.006 measured on MR
    and TREC, bound ``HYBRID_BOUND``);
  - ``exact``: a DEQUANTIZE op per kernel, whose input is constant, so the runtime expands it to float32 once at load;
    every call then computes with the very values graph.pb does (equal within float rounding).
- int4: LiteRT has no 4-bit kernels for GATHER, CONV_2D or FULLY_CONNECTED as we use them, so the export widens
  the codes to int8 (the same codes in [-7, 7], the same scales: the same values) and serves them as int8 above;
  ``Export.expanded`` (``manifest.serving.expanded``) names every weight widened.
- On disk, a flatbuffer whose int8 buffers hold int4-range codes or pruned zeros is stored as ``model.tflite.pack``
  (lifecycle.litepack: the same bytes in fewer bits, restored exactly at load and checked by sha256) when that is
  at least 10% smaller; the manifest's ``serving.pack`` records the flatbuffer's size and what load expands. The
  runtime still holds dense int8 codes in memory: LiteRT has no 4-bit or sparse kernels for these ops.
- ``int8-act`` (a recipe step): full-integer activations, calibrated by the converter on training texts. This one is
  not exact: its accuracy against the weight-only form is measured and recorded.

Loading (``LiteRunner``) imports only ``ai_edge_litert`` and numpy: a process that serves never imports TensorFlow.
Before the runtime sees a flatbuffer, its operator table is read (``serving_ops``) and any op outside
``ALLOWED_LITE_OPS`` is refused, custom ops always: a custom op is code the runtime looks up by a name the file
chooses, and no lifecycle serving form needs one.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import fidelity
from lifecycle.errors import DependencyError, ModelError
from lifecycle.flatbuffer import Reader
from lifecycle.model import INPUT_NAME, OUTPUT_NAME

SERVING_FILE = "model.tflite"
# The builtin ops a lifecycle serving form may contain, by their code in the TFLite schema (BuiltinOperator); a
# flatbuffer with any other op, or any custom op, is refused at load.
_ALLOWED_CODES = {
    0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 22: "RESHAPE", 25: "SOFTMAX", 36: "GATHER", 39: "TRANSPOSE", 43: "SQUEEZE", 53: "CAST",
    70: "EXPAND_DIMS", 82: "REDUCE_MAX", 114: "QUANTIZE",
}
ALLOWED_LITE_OPS = frozenset(_ALLOWED_CODES.values())
_CUSTOM = 32  # BuiltinOperator.CUSTOM: the op is named by the file's custom_code string
KERNELS = ("hybrid", "exact")
HYBRID_BOUND = fidelity.SERVING_HYBRID  # the hybrid serving form's bound against graph.pb (see lifecycle.fidelity)
_DEQUANTIZE = 6  # tflite BuiltinOperator.DEQUANTIZE
_INT8 = 9  # tflite TensorType.INT8
_FLOAT32 = 0  # tflite TensorType.FLOAT32


@dataclass(frozen=True)
class Export:
    """A serving flatbuffer and how it was made."""

    content: bytes
    quantization: str  # float32 | float16 | int8-weights | int8-full
    int8_kernels: tuple[str, ...] = ()
    kernels: str | None = None  # int8 kernels only: hybrid (dynamic-range kernels) or exact (dequantized at load)
    # Weights whose codes LiteRT cannot run as stored (int4), widened at export: name -> "int4 -> int8".
    expanded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedFile:
    """The file a version serves: the flatbuffer itself (``SERVING_FILE``), or its pack (``litepack.PACK_FILE``)
    when the pack is enough smaller (int4 codes, pruned zeros); ``pack`` is then the manifest's ``serving.pack``."""

    name: str
    content: bytes
    pack: dict[str, Any] | None = None


def serving_file(content: bytes) -> ServedFile:
    """What a version stores for a serving flatbuffer (lifecycle.litepack)."""
    from lifecycle import litepack

    packed = litepack.pack(content)
    if litepack.worth_packing(packed):
        return ServedFile(litepack.PACK_FILE, packed.content, packed.summary())
    return ServedFile(SERVING_FILE, content)


def _serving_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """The weights graph.pb-style, dense, as each storage hands them to the converter (``Storage.serving``): float32,
    but for an int8 embedding, which stays an int8 table.

    A sparse layout is a file format of graph.pb; the flatbuffer holds the dense codes (it has no decode ops) and
    its pack (lifecycle.litepack) stores them sparse again on disk.
    """
    return {name: stored.spec.serving(name, stored) for name, stored in weights.items()}


def _concrete_function(graph_def: Any) -> Any:
    """A TF concrete function running a GraphDef from ``input_ids`` to ``probabilities``."""
    from lifecycle.backend import tf_module

    tf = tf_module()

    def body() -> None:
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(body, [])
    return wrapped.prune(f"{INPUT_NAME}:0", f"{OUTPUT_NAME}:0")


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _convert(graph_def: Any, configure: Callable[[Any], None] | None = None) -> bytes:
    from lifecycle.backend import tf_module

    tf = tf_module()
    # We convert a pruned v1 wrap_function on purpose (the converter's other path wants a SavedModel-style object);
    # its "consider providing trackable_obj" warning, one per conversion, says nothing a user can act on.
    absl_log = logging.getLogger("absl")
    quiet = _DropMessage("trackable_obj")
    absl_log.addFilter(quiet)
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(graph_def)])
    finally:
        absl_log.removeFilter(quiet)
    if configure is not None:
        configure(converter)
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError and friends with long MLIR dumps
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"TFLite conversion failed: {first}. Report this as a bug with the version attached."
                         ) from None


def _int8_kernels(content: bytes, kernels: dict[str, tuple[np.ndarray, np.ndarray]],
                  hybrid: bool) -> tuple[bytes, tuple[str, ...]]:
    """Replace the float32 constants holding ``kernels`` by int8 constants.

    ``hybrid``: the ops that read a kernel read the int8 constant itself (LiteRT's dynamic-range kernels); otherwise
    a DEQUANTIZE op turns it back into the float32 tensor the ops read (expanded once, at load).

    ``kernels`` maps a weight name to (float32 values as graph.pb computes them, int8 codes). The converter may have
    transposed a kernel (conv [w, in, out] -> [out, 1, w, in]; dense [in, out] -> [out, in]), so constants are matched
    by their values, and the codes are re-derived along the converted tensor's output-channel axis (axis 0), which
    reproduces the version's codes exactly.
    """
    from lifecycle.backend import tflite_flatbuffers

    schema, flatbuffer_utils = tflite_flatbuffers()

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    by_size: dict[int, list[int]] = {}
    for index, tensor in enumerate(graph.tensors):
        buffer = model.buffers[tensor.buffer] if tensor.buffer else None
        if tensor.type == _FLOAT32 and buffer is not None and buffer.data is not None and len(buffer.data):
            by_size.setdefault(len(buffer.data) // 4, []).append(index)
    opcode = next((i for i, code in enumerate(model.operatorCodes) if code.builtinCode == _DEQUANTIZE), None)
    if opcode is None and not hybrid:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = _DEQUANTIZE
        code.version = 2
        model.operatorCodes.append(code)
        opcode = len(model.operatorCodes) - 1
    done = []
    new_ops = []
    rewired: dict[int, int] = {}
    for name, (values, stored_codes) in kernels.items():
        target = np.sort(values.ravel())
        match = None
        for index in by_size.get(values.size, []):
            data = np.frombuffer(bytes(model.buffers[graph.tensors[index].buffer].data), dtype=np.float32)
            if np.array_equal(np.sort(data), target):
                match = index
                break
        if match is None:
            continue  # left float32 by the converter in a form we do not recognise; the check below still holds
        tensor = graph.tensors[match]
        shape = tuple(int(d) for d in tensor.shape)
        data = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.float32).reshape(shape)
        peak = np.max(np.abs(data.reshape(shape[0], -1)), axis=1)
        # The largest code of each output channel (the stored codes' last axis, the converted tensor's axis 0): 127
        # for int8, 7 for int4 codes widened to int8, so the scales are the version's own either way.
        channels = stored_codes.reshape(-1, stored_codes.shape[-1]).astype(np.int32)
        top = np.max(np.abs(channels), axis=0).astype(np.float32)
        scale = np.where((peak > 0) & (top > 0), peak / np.maximum(top, 1), 1.0).astype(np.float32)
        codes = np.clip(np.rint(data / scale.reshape((-1,) + (1,) * (len(shape) - 1))), -127, 127).astype(np.int8)

        buffer = schema.BufferT()
        buffer.data = np.frombuffer(codes.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        quant = schema.QuantizationParametersT()
        quant.scale = [float(s) for s in scale]
        quant.zeroPoint = [0] * len(scale)
        quant.quantizedDimension = 0
        stored = schema.TensorT()
        stored.shape = np.array(shape, dtype=np.int32)
        stored.type = _INT8
        stored.buffer = len(model.buffers) - 1
        stored.name = f"{name}/q".encode()
        stored.quantization = quant
        graph.tensors.append(stored)
        model.buffers[tensor.buffer].data = None  # the float32 copy leaves the file
        tensor.buffer = 0
        if hybrid:
            rewired[match] = len(graph.tensors) - 1
        else:  # the float tensor becomes the DEQUANTIZE op's output
            op = schema.OperatorT()
            op.opcodeIndex = opcode
            op.inputs = np.array([len(graph.tensors) - 1], dtype=np.int32)
            op.outputs = np.array([match], dtype=np.int32)
            new_ops.append(op)
        done.append(name)
    for op in graph.operators:
        if rewired and any(int(i) in rewired for i in op.inputs):
            op.inputs = np.array([rewired.get(int(i), int(i)) for i in op.inputs], dtype=np.int32)
            if isinstance(op.builtinOptions, schema.FullyConnectedOptionsT):
                # As the converter's dynamic-range mode does: the pooled (non-negative) inputs keep all 8 bits.
                op.builtinOptions.asymmetricQuantizeInputs = True
    # Unused float tensors (a hybrid form's former kernels) stay in the table without data: a few bytes each.
    graph.operators = new_ops + list(graph.operators)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), tuple(done)


def export(weights: dict[str, Any], kernel_sizes: tuple[int, ...], max_len: int, input_dtype: str,
           kernels: str = "hybrid") -> Export:
    """The serving flatbuffer of a frozen or compressed version's weights, in the weights' own storage.

    ``kernels`` (``KERNELS``) chooses how int8 conv and output kernels run; float versions ignore it.
    """
    if kernels not in KERNELS:
        raise ModelError(f"serving kernels {kernels!r} are unknown; use one of {', '.join(KERNELS)}.")
    from lifecycle.freeze import emit_graph

    modes = {stored.spec.serving_quantization for name, stored in weights.items() if not name.endswith("/bias")}
    graph_def = emit_graph(_serving_weights(weights), kernel_sizes, max_len, input_dtype)
    if modes == {"float32"}:
        return Export(_convert(graph_def), "float32")
    if "float16" in modes:

        def half(converter: Any) -> None:
            from lifecycle.backend import tf_module

            tf = tf_module()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]

        return Export(_convert(graph_def, half), "float16")
    # Kernels the flatbuffer holds as int8 constants: (float32 values as graph.pb computes them, int8 codes).
    int8 = {name: kernel for name, stored in weights.items()
            if (kernel := stored.spec.serving_kernel(name, stored)) is not None}
    content, done = _int8_kernels(_convert(graph_def), int8, kernels == "hybrid")
    # int4 codes go in as int8 codes with the same scales (LiteRT has no 4-bit gather or hybrid kernels for our ops).
    expanded = {name: f"{stored.storage} -> {stored.spec.served_as}" for name, stored in weights.items()
                if stored.spec.served_as}
    return Export(content, "int8-weights", done, kernels if done else None, expanded)


def export_full_int8(weights: dict[str, Any], kernel_sizes: tuple[int, ...], max_len: int, input_dtype: str,
                     calibration: np.ndarray) -> Export:
    """Full-integer serving form (int8 weights and activations) calibrated on padded training ids.

    The converter computes its own scales from the float values (per channel for conv and dense, per tensor for the
    embedding gather), and the activation scales from ``calibration``; input stays integer ids, output float
    probabilities.
    """
    from lifecycle.freeze import emit_graph
    from lifecycle.storage import StoredTensor

    floats = {name: StoredTensor("float32", stored.dequantize()) for name, stored in weights.items()}
    graph_def = emit_graph(floats, kernel_sizes, max_len, input_dtype)
    rows = calibration.astype(np.dtype(input_dtype), copy=False)

    def full(converter: Any) -> None:
        from lifecycle.backend import tf_module

        tf = tf_module()

        def samples() -> Iterable[list[Any]]:
            for row in rows:
                yield [row[None, :]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_output_type = tf.float32

    return Export(_convert(graph_def, full), "int8-full")


def interpreter_class() -> Any:
    """The LiteRT runtime's ``Interpreter`` class (``ai_edge_litert``; no TensorFlow import).

    Raises:
        DependencyError: ai-edge-litert is not installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DependencyError(
            "the LiteRT runtime is not installed; run `pip install ai-edge-litert` (or `make install`)."
        ) from None
    return Interpreter


def _operator_codes(buf: Any) -> list[tuple[int, str | None]]:
    """(builtin code, custom name) of each entry of a TFLite flatbuffer's operator table, read without the schema.

    The table (``Model.operator_codes``) lists every op any subgraph runs (operators refer to it by index); it is
    read with struct (lifecycle.flatbuffer).

    Raises:
        ValueError: the bytes are not a flatbuffer of that shape.
    """
    reader = Reader(buf)
    codes_at = reader.field(reader.target(0), 1)  # Model: version, operator_codes, subgraphs, ...
    if codes_at is None:
        return []
    vector = reader.target(codes_at)
    count = reader.read("<I", vector)
    if vector + 4 + 4 * count > reader.size:
        raise ValueError("operator table longer than the buffer")
    codes = []
    for i in range(count):
        # OperatorCode: deprecated_builtin_code, custom_code, version, builtin_code
        entry = reader.target(vector + 4 + 4 * i)
        deprecated = reader.field(entry, 0)
        builtin = reader.field(entry, 3)
        code = max(reader.read("<b", deprecated) if deprecated is not None else 0,
                   reader.read("<i", builtin) if builtin is not None else 0)  # as the runtime's GetBuiltinCode
        custom_at = reader.field(entry, 1)
        custom = None
        if custom_at is not None:
            string = reader.target(custom_at)
            length = reader.read("<I", string)
            if string + 4 + length > reader.size:
                raise ValueError("custom op name longer than the buffer")
            custom = bytes(buf[string + 4:string + 4 + length]).decode("utf-8", "replace")
        codes.append((code, custom))
    return codes


def _builtin_name(code: int) -> str:
    if code in _ALLOWED_CODES:
        return _ALLOWED_CODES[code]
    try:  # only on the way to a refusal: the schema module is large
        from ai_edge_litert.schema_py_generated import BuiltinOperator
    except ImportError:
        return f"builtin op {code}"
    names = {value: key for key, value in vars(BuiltinOperator).items() if not key.startswith("_")}
    return names.get(code, f"builtin op {code}")


def serving_ops(source: Path | bytes, allowed: frozenset[str] = ALLOWED_LITE_OPS) -> list[str]:
    """The op names of a TFLite flatbuffer, read from its operator table, refused unless every one is allowed.

    Args:
        source: a flatbuffer file or its bytes.
        allowed: builtin op names that may appear; custom ops never may.

    Returns:
        The builtin op names, sorted.

    Raises:
        ModelError: a custom op or a builtin op outside ``allowed`` (naming the op and the file), or bytes that are
            not a flatbuffer.
    """
    name = str(source) if isinstance(source, Path) else "<serving flatbuffer>"
    try:
        if isinstance(source, Path):
            with source.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                codes = _operator_codes(view)
        else:
            codes = _operator_codes(source)
    except (OSError, ValueError) as exc:  # mmap of an empty file raises ValueError too
        raise ModelError(f"{name}: not a LiteRT model ({exc}). The file is damaged; re-freeze.") from None
    custom = sorted({text or "" for code, text in codes if code == _CUSTOM})
    if custom:
        raise ModelError(f"{name}: serving form uses custom op(s) {', '.join(map(repr, custom))}; custom ops are "
                         "never allowed in a serving form, so it is not loaded. Re-freeze or re-compress the version.")
    names = {_builtin_name(code) for code, _ in codes}
    forbidden = sorted(names - allowed)
    if forbidden:
        raise ModelError(f"{name}: serving form uses op(s) outside the allow-list: {', '.join(forbidden)}; "
                         "refusing to load it.")
    return sorted(names)


def open_interpreter(source: Path | bytes, threads: int | None = None) -> Any:
    """A LiteRT interpreter on a flatbuffer file (or a pack of one: lifecycle.litepack) or its bytes whose ops
    ``serving_ops`` allows.

    Raises:
        ModelError: a forbidden or custom op, or not a LiteRT model.
    """
    from lifecycle import litepack

    if isinstance(source, Path) and litepack.is_pack(source):
        source = litepack.read(source)  # the exact flatbuffer it packs, checked against its sha256
    serving_ops(source)
    loader = interpreter_class()
    try:
        if isinstance(source, Path):
            return loader(model_path=str(source), num_threads=threads)
        return loader(model_content=source, num_threads=threads)
    except ValueError as exc:
        name = str(source) if isinstance(source, Path) else "<serving flatbuffer>"
        raise ModelError(f"{name}: not a LiteRT model ({exc}). The file is damaged; re-freeze.") from None


# Rows per interpreter call unless a caller asks for fewer (a batch of 256 leaves a 30k x 300 model's interpreter 55 MB
# larger than batch 1 does; a server passes its batching.max_batch).
DEFAULT_MAX_BATCH = 256


class LiteRunner:
    """A serving flatbuffer in a LiteRT interpreter: checked, warmed up, batch size adapted on demand.

    The interpreter's activation memory is sized by the largest batch it has run and never shrinks (the gathered
    embeddings and conv outputs, about 0.2 MB per row for a 300-d model: measured on a 30k x 300 int8 model, batch 8
    adds 1.6-2.2 MB over batch 1, batch 32 6.6-8.5 MB, batch 256 55 MB), so ``run`` gives it at most ``max_batch``
    rows at a time: one large request cannot leave a model that much larger for good. Time per text hardly depends
    on the batch (the same model, one thread: 675-684 us per text at every batch from 1 to 32), so a small cap costs
    no throughput.

    Not thread-safe (one interpreter per runner); callers that share it across threads hold a lock.
    """

    def __init__(self, source: Path | bytes, max_len: int, input_dtype: str, threads: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Received: {max_batch}.")
        self.source = str(source) if isinstance(source, Path) else "<serving flatbuffer>"
        # The ops are checked on the file's own operator table (open_interpreter): the interpreter's op list cannot
        # tell a custom op named DELEGATE from the nodes the XNNPACK delegate adds once tensors are allocated.
        self.interpreter = open_interpreter(source, threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.source}: expected one input and one output, found {len(inputs)} and "
                             f"{len(outputs)}; it is not a lifecycle serving form.")
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self.max_len = max_len
        self.max_batch = max_batch
        self.np_dtype = np.dtype(input_dtype)
        if np.dtype(inputs[0]["dtype"]) != self.np_dtype:
            raise ModelError(f"{self.source}: input dtype {np.dtype(inputs[0]['dtype']).name}, manifest says "
                             f"{self.np_dtype.name}.")
        shape = [int(d) for d in inputs[0].get("shape_signature", inputs[0]["shape"])]
        if len(shape) != 2 or shape[1] != max_len:
            raise ModelError(f"{self.source}: input shape {shape} does not take rows of max_len={max_len} ids (the "
                             "manifest's). The version is inconsistent; re-freeze or re-compress it.")
        self._batch = -1
        from lifecycle.console import native_stderr_filtered

        # Warm-up: allocation and delegate set-up happen here, and so does LiteRT's XNNPACK INFO line.
        with native_stderr_filtered():
            self.run(np.zeros((1, max_len), dtype=np.int32))

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self._input, [batch, self.max_len], strict=False)
            self.interpreter.allocate_tensors()
            self._batch = batch

    def run(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of padded id rows (more than ``max_batch`` rows run in chunks of that size)."""
        step = self.max_batch
        if len(ids) > step:
            return np.concatenate([self.run(ids[i:i + step]) for i in range(0, len(ids), step)])
        self._resize(len(ids))
        self.interpreter.set_tensor(self._input, np.ascontiguousarray(ids, dtype=self.np_dtype))
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self._output), dtype=np.float32)

    def close(self) -> None:
        self.interpreter = None
