"""Tensor storage: how one weight is held in graph.pb, read back, dequantized and served. Every storage is here.

A weight is a :class:`StoredTensor`: a *storage* (the codes' dtype and how they become float32) in a *layout* (how
graph.pb holds the codes). Each storage is one :class:`Storage` entry of ``STORAGES``:

==========  ===================  =========================================================================
storage     codes node           float32 values
==========  ===================  =========================================================================
float32     ``<name>``           the codes themselves
float16     ``<name>/fp16``      ``Cast`` (the embedding after its gather, so the table stays float16)
int8        ``<name>/q``         ``Cast(codes) * <name>/scale``: symmetric codes, a float32 scale per channel
                                 along ``axis`` (rows of the embedding, output channels of a kernel) or one
                                 scale for the tensor (0-d); the embedding gathers int8 rows, then scales them
int4        ``<name>/q4``        ``codes * Cast(<name>/scale)``: symmetric codes in [-7, 7], float16 scales
                                 along int8's axes (float32, no Cast, in versions before them), two codes per
                                 uint8 byte (``pack_int4``), unpacked in the graph (BitwiseAnd, RightShift,
                                 ConcatV2, AddV2, Cast); the embedding gathers packed rows and their scales first
int3        ``<name>/q3``        as int4, with codes in [-3, 3] in three bit planes (``pack_int3``: 3 bits a
                                 weight), unpacked in the graph (GatherV2, RightShift, BitwiseAnd, Cast, Mul, AddV2)
==========  ===================  =========================================================================

Each entry says how values are encoded (``encode``, ``encode_like`` for re-storing tuned values), dequantized and
counted (``dequantize``, ``nbytes``), named in the graph (``codes_node``, ``scale_node``), emitted (``emit_codes``,
``emit_float``, ``emit_embedding``), read back from a graph (``read_codes``, ``read``: what restore dequantizes), and
handed to the LiteRT converter (``serving``, ``serving_kernel``, ``serving_quantization``).
A new storage (a codebook, say) is one new ``Storage`` subclass registered in ``STORAGES`` (``tests/helpers.py``'s
``check_storage_round_trip`` runs on every entry).

Each layout is one :class:`Layout` entry of ``LAYOUTS``. Dense is one Const of codes. Sparse (pruned weights) keeps
only the nonzero codes plus a bitmask of where they go:

    <codes>/values  (Const, the storage's dtype, [nonzero])
    <codes>/mask    (Const uint8, [ceil(size / 8)], bit i % 8 of byte i // 8 set where element i is nonzero)
    <codes>/decode/...  RightShift, BitwiseAnd, Where, ScatterNd: the dense codes from the two constants
    <codes>         (Reshape) the dense codes, under the same name a dense layout gives its Const

An int4 tensor's codes are packed bytes, where a byte is only zero when both its codes are: its second sparse layout,
``sparse-nibbles`` (manifest ``layout: sparse``, ``encoding: bitmask-nibbles``), masks codes instead. Its mask has a
bit per nibble of the packed bytes in plane order (every byte's low nibble, then every byte's high nibble), and
``<codes>/values`` holds only the nonzero nibbles, two a byte (the first half of them in the low nibbles, the rest
in the high ones; an odd count pads one zero). The decode splits them (BitwiseAnd, RightShift, ConcatV2), scatters
them to the mask's positions (Where, ScatterNd; the pad nibble goes to position 0, where ScatterNd adds 0), and
joins the two planes back into bytes (Reshape, GatherV2, Mul, AddV2). ``smaller_layout`` writes each candidate's
codes into an empty graph and keeps the smallest (``graph_bytes``), so a decode's own nodes are counted.

The graph stays self-contained: any TensorFlow import computes the same probabilities. At load, ``densify_sparse``
decodes each sparse tensor once with numpy into the dense Const, so a loaded sparse graph is the dense graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.errors import ModelError

INT8_MAX = 127
INT4_MAX = 7  # symmetric 4-bit codes: [-7, 7], so 0 is exact and both signs have the same range
INT3_MAX = 3  # symmetric 3-bit codes: [-3, 3]
SPARSE_ENCODING = "bitmask"  # nonzero codes + 1 bit per element; see module docstring
NIBBLE_ENCODING = "bitmask-nibbles"  # int4: nonzero nibbles + 1 bit per nibble; see module docstring
EMBEDDING = "weights/embedding"


# --- the sparse layout's arrays -----------------------------------------------------------------------------------

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


def encode_nibbles(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``bitmask-nibbles`` layout of packed uint8 bytes (module docstring): the nonzero nibbles, two a byte, and
    a little-endian bitmask over the nibble planes (every byte's low nibble, then every byte's high nibble)."""
    flat = np.asarray(packed, dtype=np.uint8).reshape(-1)
    nibbles = np.concatenate([flat & np.uint8(0x0F), flat >> np.uint8(4)])
    present = nibbles != 0
    kept = nibbles[present]
    half = (kept.size + 1) // 2
    if kept.size % 2:
        kept = np.append(kept, np.uint8(0))
    return (kept[:half] | (kept[half:] << np.uint8(4))).astype(np.uint8), np.packbits(present, bitorder="little")


def decode_nibbles(values: np.ndarray, mask: np.ndarray, shape: Sequence[int], source: Path | str,
                   name: str) -> np.ndarray:
    """The packed uint8 bytes of ``shape`` a ``bitmask-nibbles`` layout stands for (ModelError when damaged)."""
    size = int(np.prod(shape, dtype=np.int64))
    values = np.asarray(values).reshape(-1)
    if values.dtype != np.uint8:
        raise ModelError(f"{source}: sparse tensor {name!r} holds {values.dtype} nibbles, not uint8. The file is "
                         "damaged or was edited: re-run the compress step that wrote it.")
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.size != (2 * size + 7) // 8:
        raise ModelError(
            f"{source}: sparse tensor {name!r} has a {mask.dtype} mask of {mask.size} bytes; {size} packed bytes "
            f"need {(2 * size + 7) // 8} uint8 bytes (a bit per nibble). The file is damaged or was edited: re-run "
            "the compress step."
        )
    if (2 * size) % 8 and mask.reshape(-1)[-1] >> ((2 * size) % 8):
        raise ModelError(f"{source}: sparse tensor {name!r} sets mask bits past its {2 * size} nibbles. The file "
                         "is damaged or was edited: re-run the compress step that wrote it.")
    present = np.unpackbits(mask.reshape(-1), count=2 * size, bitorder="little").view(bool)
    marked = int(np.count_nonzero(present))
    nibbles = np.concatenate([values & np.uint8(0x0F), values >> np.uint8(4)])
    if values.size != (marked + 1) // 2 or (marked % 2 and nibbles[-1]) or not np.all(nibbles[:marked]):
        raise ModelError(
            f"{source}: sparse tensor {name!r} stores {values.size} bytes of nonzero nibbles but its mask marks "
            f"{marked} positions (of {2 * size}). The file is damaged or was edited: re-run the compress step."
        )
    dense = np.zeros(2 * size, dtype=np.uint8)
    dense[present] = nibbles[:marked]
    return (dense[:size] | (dense[size:] << np.uint8(4))).astype(np.uint8).reshape(tuple(int(d) for d in shape))


def nibbles_nbytes(packed: np.ndarray) -> int:
    """Bytes of packed uint8 bytes in the ``bitmask-nibbles`` layout: a bit per nibble plus the nonzero nibbles."""
    flat = np.asarray(packed, dtype=np.uint8).reshape(-1)
    nonzero = int(np.count_nonzero(flat & np.uint8(0x0F)) + np.count_nonzero(flat >> np.uint8(4)))
    return (2 * flat.size + 7) // 8 + (nonzero + 1) // 2


# --- layouts ------------------------------------------------------------------------------------------------------

ConstReader = Callable[[str], np.ndarray]  # a graph Const's value by node name (ModelError when it is missing)


class Layout:
    """How graph.pb holds a tensor's dense codes (one entry of ``LAYOUTS``).

    ``name`` is the key of ``LAYOUTS`` and ``StoredTensor.layout``; the manifest records ``manifest_name`` (its
    ``layout`` field) plus ``manifest_fields`` (a sparse layout's ``encoding``), which ``layout_for`` maps back.
    """

    name = ""
    manifest_name = ""
    encoding = ""
    sparse = False

    def fits(self, storage: str) -> bool:
        """Whether a tensor of this storage can be held in this layout."""
        return True

    def nbytes(self, codes: np.ndarray) -> int:
        """Bytes the graph's constants hold for ``codes``."""
        raise NotImplementedError

    def consts(self, codes_node: str) -> list[str]:
        """The Const nodes holding the codes."""
        raise NotImplementedError

    def manifest_fields(self) -> dict[str, Any]:
        """Extra fields of the tensor's manifest entry."""
        return {}

    def emit(self, tf: Any, node: str, codes: np.ndarray) -> Any:
        """The dense codes as a graph tensor named ``node``."""
        raise NotImplementedError

    def read(self, value: ConstReader, codes_node: str, shape: Sequence[int], name: str,
             source: Path | str) -> np.ndarray:
        """The dense codes from a graph's constants."""
        raise NotImplementedError


class DenseLayout(Layout):
    """One Const of codes, named by the storage's codes node."""

    name = manifest_name = "dense"

    def nbytes(self, codes: np.ndarray) -> int:
        return int(codes.nbytes)

    def consts(self, codes_node: str) -> list[str]:
        return [codes_node]

    def emit(self, tf: Any, node: str, codes: np.ndarray) -> Any:
        return tf.constant(codes, name=node)

    def read(self, value: ConstReader, codes_node: str, shape: Sequence[int], name: str,
             source: Path | str) -> np.ndarray:
        return value(codes_node)


class SparseLayout(Layout):
    """Nonzero codes plus a bitmask, decoded inside the graph (module docstring)."""

    name = manifest_name = "sparse"
    encoding = SPARSE_ENCODING
    sparse = True

    def nbytes(self, codes: np.ndarray) -> int:
        return sparse_nbytes(codes)

    def consts(self, codes_node: str) -> list[str]:
        return [f"{codes_node}/values", f"{codes_node}/mask"]

    def manifest_fields(self) -> dict[str, Any]:
        return {"encoding": self.encoding}

    def emit(self, tf: Any, node: str, codes: np.ndarray) -> Any:
        values, mask = encode_sparse(codes)
        size = codes.size
        positions = emit_positions(tf, node, mask)
        dense = tf.scatter_nd(positions, tf.constant(values, name=f"{node}/values"),
                              tf.constant([size], dtype=tf.int64, name=f"{node}/decode/size"),
                              name=f"{node}/decode/scatter")
        shape = tuple(int(d) for d in codes.shape)
        return tf.reshape(dense, tf.constant(shape, dtype=tf.int64, name=f"{node}/decode/shape"), name=node)

    def read(self, value: ConstReader, codes_node: str, shape: Sequence[int], name: str,
             source: Path | str) -> np.ndarray:
        return decode_sparse(value(f"{codes_node}/values"), value(f"{codes_node}/mask"), shape, source, name)


def emit_positions(tf: Any, node: str, mask: np.ndarray) -> Any:
    """The int64 positions ([k, 1]) of the set bits of a little-endian bitmask Const ``<node>/mask``."""
    bits = tf.bitwise.right_shift(
        tf.reshape(tf.constant(mask, name=f"{node}/mask"), tf.constant([-1, 1], name=f"{node}/decode/column"),
                   name=f"{node}/decode/bytes"),
        tf.constant(np.arange(8, dtype=np.uint8), name=f"{node}/decode/shifts"), name=f"{node}/decode/shifted")
    flags = tf.bitwise.bitwise_and(bits, tf.constant(np.uint8(1), name=f"{node}/decode/one"),
                                   name=f"{node}/decode/bits")
    flat = tf.reshape(flags, tf.constant([-1], name=f"{node}/decode/flat_shape"), name=f"{node}/decode/flat")
    # Padding bits past the tensor are zero, so every position Where finds is inside it.
    return tf.where(flat, name=f"{node}/decode/positions")


class NibbleSparseLayout(SparseLayout):
    """int4's packed bytes as a bitmask over their nibbles plus only the nonzero nibbles, two a byte
    (``encoding: bitmask-nibbles``; module docstring). Decoded in the graph back to the packed bytes, so the rest of
    the int4 graph (gathering packed rows, unpacking) is the dense layout's."""

    name = "sparse-nibbles"
    manifest_name = "sparse"
    encoding = NIBBLE_ENCODING

    def fits(self, storage: str) -> bool:
        return storage == "int4"  # the only storage whose packed bytes are two codes' nibbles

    def nbytes(self, codes: np.ndarray) -> int:
        return nibbles_nbytes(codes)

    def emit(self, tf: Any, node: str, codes: np.ndarray) -> Any:
        values, mask = encode_nibbles(codes)
        size = codes.size
        positions = emit_positions(tf, node, mask)
        packed = tf.constant(values, name=f"{node}/values")
        nibbles = tf.concat([
            tf.bitwise.bitwise_and(packed, tf.constant(np.uint8(0x0F), name=f"{node}/decode/low_mask"),
                                   name=f"{node}/decode/low"),
            tf.bitwise.right_shift(packed, tf.constant(np.uint8(4), name=f"{node}/decode/four"),
                                   name=f"{node}/decode/high")], axis=0, name=f"{node}/decode/nibbles")
        if (2 * values.size) != int(np.count_nonzero(np.unpackbits(mask))):
            # An odd count of nonzero nibbles pads one zero nibble: it goes to position 0, and ScatterNd adds it.
            positions = tf.concat([positions, tf.constant(np.zeros((1, 1), np.int64), name=f"{node}/decode/pad")],
                                  axis=0, name=f"{node}/decode/padded")
        dense = tf.scatter_nd(positions, nibbles, tf.constant([2 * size], dtype=tf.int64, name=f"{node}/decode/size"),
                              name=f"{node}/decode/scatter")
        planes = tf.reshape(dense, tf.constant([2, size], dtype=tf.int64, name=f"{node}/decode/planes_shape"),
                            name=f"{node}/decode/planes")
        low = tf.gather(planes, tf.constant(np.int32(0), name=f"{node}/decode/zero"), name=f"{node}/decode/low_plane")
        high = tf.gather(planes, tf.constant(np.int32(1), name=f"{node}/decode/first"),
                         name=f"{node}/decode/high_plane")
        byte = tf.add(low, tf.multiply(high, tf.constant(np.uint8(16), name=f"{node}/decode/sixteen"),
                                       name=f"{node}/decode/high_shifted"), name=f"{node}/decode/packed")
        shape = tuple(int(d) for d in codes.shape)
        return tf.reshape(byte, tf.constant(shape, dtype=tf.int64, name=f"{node}/decode/shape"), name=node)

    def read(self, value: ConstReader, codes_node: str, shape: Sequence[int], name: str,
             source: Path | str) -> np.ndarray:
        return decode_nibbles(value(f"{codes_node}/values"), value(f"{codes_node}/mask"), shape, source, name)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (DenseLayout(), SparseLayout(),
                                                                 NibbleSparseLayout())}


def layout_of(name: str) -> Layout:
    """The ``LAYOUTS`` entry named ``name``."""
    if name not in LAYOUTS:
        raise ModelError(f"layout must be one of {', '.join(LAYOUTS)}. Received: {name!r}.")
    return LAYOUTS[name]


def layout_for(meta: dict[str, Any], name: str, source: Path | str) -> str:
    """The ``LAYOUTS`` key of a manifest tensor entry (its ``layout``, and a sparse one's ``encoding``)."""
    layout = meta.get("layout", "dense")  # manifests before sparse layouts: dense
    named = [entry for entry in LAYOUTS.values() if entry.manifest_name == layout]
    if not named:
        known = sorted({entry.manifest_name for entry in LAYOUTS.values()})
        raise ModelError(f"{source}: tensor {name!r} has unknown layout {layout!r} (manifest field "
                         f"tensors.{name}.layout); this lifecycle reads {', '.join(known)}.")
    if layout != "sparse":
        return named[0].name
    encoding = meta.get("encoding", SPARSE_ENCODING)
    for entry in named:
        if entry.encoding == encoding:
            if not entry.fits(meta["storage"]):
                raise ModelError(f"{source}: tensor {name!r} is {meta['storage']} in sparse encoding {encoding!r}, "
                                 "which only int4 tensors use. The manifest is damaged; re-run compress.")
            return entry.name
    raise ModelError(f"{source}: tensor {name!r} has sparse encoding {encoding!r}; this lifecycle reads "
                     f"{', '.join(repr(entry.encoding) for entry in named)}. Upgrade lifecycle to load this version.")


# --- the stored tensor --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredTensor:
    """One weight as a graph stores it: float32, float16, or int8 codes with float32 scales along one axis.

    ``value`` is always the dense array of stored codes, whatever the layout; ``layout`` says how the graph file holds
    them (``dense``: one Const; ``sparse``: nonzero values plus a bitmask) and ``nbytes`` counts the bytes it holds.
    ``storage`` names a ``STORAGES`` entry, which does the work behind each method.
    """

    storage: str
    value: np.ndarray
    scale: np.ndarray | None = None
    axis: int | None = None
    layout: str = "dense"

    def __post_init__(self) -> None:
        if not layout_of(self.layout).fits(self.storage):
            raise ModelError(f"layout {self.layout!r} holds int4 codes only. Received: storage {self.storage!r}.")

    @property
    def spec(self) -> Storage:
        """The storage's ``STORAGES`` entry."""
        return storage_of(self.storage)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)

    @property
    def nbytes(self) -> int:
        return self.spec.nbytes(self)

    @property
    def plain(self) -> bool:
        """True for a float32 dense tensor: its Const is its value, which graph folding may move."""
        return self.storage == "float32" and self.layout == "dense"

    def dequantize(self) -> np.ndarray:
        """The float32 values the graph computes with."""
        return self.spec.dequantize(self)

    def codes_node(self, name: str) -> str:
        """The node whose output is the dense stored codes (a Const when dense, the decode's Reshape when sparse)."""
        return self.spec.codes_node(name)

    def nodes(self, name: str) -> list[str]:
        """The Const nodes holding this tensor in a graph."""
        scale = self.spec.scale_node(name)
        return LAYOUTS[self.layout].consts(self.codes_node(name)) + ([scale] if scale else [])


Weights = dict[str, StoredTensor]


# --- storages -----------------------------------------------------------------------------------------------------

class Storage:
    """One way of storing a weight's values (one entry of ``STORAGES``); see the module docstring's table."""

    name = ""
    suffix = ""  # the codes node is ``<weight name><suffix>``
    # What the LiteRT export of a graph whose kernels are all in this storage is (``litert.export``).
    serving_quantization = "float32"
    # Integer codes: quantizing them again only adds error, so fp16/int8/int4 steps refuse them.
    final = False
    # The storage the serving form widens these codes to, where LiteRT has no kernels for them ("": kept as is).
    served_as = ""

    def encode(self, values: np.ndarray, axis: int | None = None) -> StoredTensor:
        """Float values -> this storage (dense layout). ``axis`` is where per-channel scales run, if any."""
        raise NotImplementedError

    def encode_like(self, name: str, stored: StoredTensor, values: np.ndarray) -> StoredTensor:
        """New float values of weight ``name`` in ``stored``'s storage and parameters (dense layout)."""
        return self.encode(values)

    def dequantize(self, stored: StoredTensor) -> np.ndarray:
        """The float32 values the graph computes with."""
        return stored.value.astype(np.float32)

    def nbytes(self, stored: StoredTensor) -> int:
        """Bytes the graph's constants hold for the tensor: its codes in their layout, plus any scales."""
        scale = stored.scale.nbytes if stored.scale is not None else 0
        return int(LAYOUTS[stored.layout].nbytes(stored.value) + scale)

    def codes_node(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def emit_codes(self, tf: Any, name: str, stored: StoredTensor) -> Any:
        """The dense codes as a graph tensor named ``codes_node(name)``, written by the tensor's layout.

        A storage whose Const is not its codes as they are (e.g. packed 4-bit) overrides this, ``nbytes`` and
        ``read_codes``; ``StoredTensor.value`` stays the codes in the logical shape.
        """
        return LAYOUTS[stored.layout].emit(tf, self.codes_node(name), stored.value)

    def read_codes(self, value: ConstReader, name: str, shape: Sequence[int], layout: str,
                   source: Path | str) -> np.ndarray:
        """The dense codes of weight ``name`` from the graph's constants (the inverse of ``emit_codes``)."""
        return LAYOUTS[layout].read(value, self.codes_node(name), shape, name, source)

    def scale_node(self, name: str) -> str | None:
        """The Const holding the scales, if the storage has any."""
        return None

    def emit_float(self, tf: Any, name: str, stored: StoredTensor, codes: Any) -> Any:
        """A float32 graph tensor named ``name`` from the codes tensor."""
        raise NotImplementedError

    def emit_embedding(self, tf: Any, stored: StoredTensor, table: Any, ids: Any) -> Any:
        """The embedding lookup named ``embed``, gathering stored rows before converting them."""
        raise NotImplementedError

    def read(self, name: str, codes: np.ndarray, meta: dict[str, Any], value: ConstReader) -> StoredTensor:
        """The stored tensor from its dense codes and the graph's other constants (dense layout)."""
        return StoredTensor(self.name, codes)

    def serving(self, name: str, stored: StoredTensor) -> StoredTensor:
        """What the LiteRT converter is given for this weight (dense; float32 unless kept stored in memory)."""
        return StoredTensor("float32", stored.dequantize())

    def serving_kernel(self, name: str, stored: StoredTensor) -> tuple[np.ndarray, np.ndarray] | None:
        """(float32 values, codes) of a kernel the flatbuffer holds as int8 constants, else None."""
        return None


class Float32Storage(Storage):
    name = "float32"

    def encode(self, values: np.ndarray, axis: int | None = None) -> StoredTensor:
        return StoredTensor("float32", np.asarray(values).astype(np.float32))

    def emit_float(self, tf: Any, name: str, stored: StoredTensor, codes: Any) -> Any:
        return codes

    def emit_embedding(self, tf: Any, stored: StoredTensor, table: Any, ids: Any) -> Any:
        return tf.gather(table, ids, name="embed")


class Float16Storage(Storage):
    name = "float16"
    suffix = "/fp16"
    serving_quantization = "float16"

    def encode(self, values: np.ndarray, axis: int | None = None) -> StoredTensor:
        return StoredTensor("float16", np.asarray(values).astype(np.float16))

    def emit_float(self, tf: Any, name: str, stored: StoredTensor, codes: Any) -> Any:
        return tf.cast(codes, tf.float32, name=name)

    def emit_embedding(self, tf: Any, stored: StoredTensor, table: Any, ids: Any) -> Any:
        return tf.cast(tf.gather(table, ids), tf.float32, name="embed")


def emit_scale(tf: Any, name: str, scale: np.ndarray) -> Any:
    """The scales Const ``<name>/scale`` as float32: a float16 Const (int4, int3) is widened by a Cast."""
    const = tf.constant(scale, name=f"{name}/scale")
    return tf.cast(const, tf.float32, name=f"{name}/scale/float") if scale.dtype == np.float16 else const


def emit_row_scales(tf: Any, scale: np.ndarray, ids: Any) -> Any:
    """The embedding's scales for the gathered rows ``ids`` as float32 (one 0-d scale is used as it is); float16
    scales are gathered first and widened after, so the table of scales stays float16 in memory."""
    const = tf.constant(scale, name=f"{EMBEDDING}/scale")
    rows = const if np.ndim(scale) == 0 else tf.gather(const, ids)
    return tf.cast(rows, tf.float32, name=f"{EMBEDDING}/scale/float") if scale.dtype == np.float16 else rows


def half_scales(values: np.ndarray, axis: int | None, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes in [-top, top] with float16 scales: ``values ~= codes * float32(scale)``.

    Each float32 scale is rounded up to the next float16 (never down, so no channel's peak clips) and the codes are
    taken against that float16 scale, so |error| <= scale / 2 still holds for the scale stored. A scale float16
    cannot hold (beyond 65504) keeps the float32 scales (the graph and restore read either dtype).
    """
    codes, scale = quantize_int8_array(values, axis, top)
    if not np.all(np.isfinite(scale.astype(np.float16))):
        return codes, scale
    half = scale.astype(np.float16)
    low = half.astype(np.float32) < scale
    half = np.where(low, np.nextafter(half, np.float16(np.inf)), half).astype(np.float16)
    # The scales' shape broadcasts against ``values`` as quantize_int8_array made it (0-d, [rows, 1] or [channels]).
    codes = np.clip(np.rint(values / half.astype(np.float32)), -top, top).astype(np.int8)
    return codes, half


def int8_axis(name: str) -> int:
    """The axis int8 scales run along: rows for the embedding, output channels (last axis) for kernels."""
    return 0 if name == EMBEDDING else -1


def quantize_int8_array(values: np.ndarray, axis: int | None, top: int = INT8_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, per channel along ``axis`` (None: one scale for the tensor, a 0-d array):
    ``values ~= codes * scale``; |error| <= scale / 2 element-wise. ``top`` is the largest code (7 for int4)."""
    if axis is None:
        peak = np.max(np.abs(values)) if values.size else np.float32(0)
        scale = np.asarray(peak / top if peak > 0 else 1.0, dtype=np.float32)
        return np.clip(np.rint(values / scale), -top, top).astype(np.int8), scale
    reduce_axes = tuple(i for i in range(values.ndim) if i != axis % values.ndim)
    peak = np.max(np.abs(values), axis=reduce_axes, keepdims=True)
    # A channel of zeros (pruned away, or a pad row) keeps scale 1 so it stays exactly zero without dividing by 0.
    scale = np.where(peak > 0, peak / top, 1.0).astype(np.float32)
    codes = np.clip(np.rint(values / scale), -top, top).astype(np.int8)
    if axis % values.ndim == values.ndim - 1:
        scale = scale.reshape(values.shape[-1])  # broadcasts along the last axis as it is
    return codes, scale


class Int8Storage(Storage):
    """Symmetric int8 codes with float32 scales (per channel along ``axis``, or one 0-d scale)."""

    name = "int8"
    suffix = "/q"
    serving_quantization = "int8-weights"
    final = True

    def encode(self, values: np.ndarray, axis: int | None = None) -> StoredTensor:
        codes, scale = quantize_int8_array(values, axis)
        return StoredTensor("int8", codes, scale, axis)

    def encode_like(self, name: str, stored: StoredTensor, values: np.ndarray) -> StoredTensor:
        if stored.scale is not None and stored.scale.ndim == 0:
            axis = None  # one scale for the tensor (int8:embedding=table) stays one scale
        else:
            axis = stored.axis if stored.axis is not None else int8_axis(name)
        return self.encode(values, axis)

    def dequantize(self, stored: StoredTensor) -> np.ndarray:
        assert stored.scale is not None
        # float16 scales (int4, int3) widen to float32 first, as the graph's Cast does: the same float32 product.
        return stored.value.astype(np.float32) * stored.scale.astype(np.float32)

    def scale_node(self, name: str) -> str | None:
        return f"{name}/scale"

    def emit_float(self, tf: Any, name: str, stored: StoredTensor, codes: Any) -> Any:
        return tf.multiply(tf.cast(codes, tf.float32), emit_scale(tf, name, stored.scale), name=name)

    def emit_embedding(self, tf: Any, stored: StoredTensor, table: Any, ids: Any) -> Any:
        rows = tf.cast(tf.gather(table, ids), tf.float32)
        return tf.multiply(rows, emit_row_scales(tf, stored.scale, ids), name="embed")

    def read(self, name: str, codes: np.ndarray, meta: dict[str, Any], value: ConstReader) -> StoredTensor:
        return StoredTensor("int8", codes, value(f"{name}/scale"), meta.get("axis"))

    def serving(self, name: str, stored: StoredTensor) -> StoredTensor:
        if name == EMBEDDING:  # gathered as int8 rows, then scaled, as in graph.pb: memory stays int8
            return StoredTensor("int8", stored.value, stored.scale, stored.axis)
        return super().serving(name, stored)

    def serving_kernel(self, name: str, stored: StoredTensor) -> tuple[np.ndarray, np.ndarray] | None:
        return None if name == EMBEDDING else (stored.dequantize(), stored.value)


# --- int4: two codes per byte ---------------------------------------------------------------------------------------
#
# Codes are packed along the last axis, row by row, so one embedding row is ceil(dim / 2) bytes and can be gathered
# packed: byte j of a row holds element j in its low nibble and element j + ceil(n / 2) in its high nibble, each as
# a two's-complement nibble (code & 0xF). Halves rather than neighbours, so unpacking is one ConcatV2 of the two
# nibble planes, with no interleave; two's complement rather than an offset, so a pruned pair of codes is the byte 0
# and the sparse layout leaves it out. An odd row is padded with one zero nibble, dropped after unpacking by a
# GatherV2 along the last axis (indices: the row's length, a few hundred bytes at most).

def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-7, 7] -> uint8, two per byte along the last axis (shape ``[..., ceil(n / 2)]``)."""
    codes = np.asarray(codes, dtype=np.int8)
    if codes.ndim == 0:
        codes = codes.reshape(1)
    n = codes.shape[-1]
    half = (n + 1) // 2
    nibbles = (codes.astype(np.uint8) & np.uint8(0x0F))
    if n % 2:
        nibbles = np.concatenate([nibbles, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (nibbles[..., :half] | (nibbles[..., half:] << np.uint8(4))).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`pack_int4`: int8 codes of ``shape`` from the packed bytes."""
    shape = tuple(int(d) for d in shape)
    n = shape[-1] if shape else 1
    packed = np.asarray(packed, dtype=np.uint8)
    nibbles = np.concatenate([packed & np.uint8(0x0F), packed >> np.uint8(4)], axis=-1)[..., :n]
    codes = nibbles.astype(np.int8)
    codes = np.where(codes >= 8, codes - 16, codes).astype(np.int8)
    return codes.reshape(shape)


def packed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of a tensor's packed int4 bytes."""
    shape = tuple(int(d) for d in shape) or (1,)
    return (*shape[:-1], (shape[-1] + 1) // 2)


def emit_unpack_int4(tf: Any, packed: Any, n: int, prefix: str) -> Any:
    """float32 codes (exact small integers) from a packed uint8 tensor whose last axis packs ``n`` codes.

    Nibbles are split (BitwiseAnd, RightShift), joined (ConcatV2), sign-extended as ``((x + 8) & 15) - 8`` (AddV2 and
    BitwiseAnd on uint8, then Cast and AddV2 in float32: every step exact), the pad nibble dropped if ``n`` is odd.
    """
    low = tf.bitwise.bitwise_and(packed, tf.constant(np.uint8(0x0F), name=f"{prefix}/low_mask"), name=f"{prefix}/low")
    high = tf.bitwise.right_shift(packed, tf.constant(np.uint8(4), name=f"{prefix}/four"), name=f"{prefix}/high")
    nibbles = tf.concat([low, high], axis=-1, name=f"{prefix}/nibbles")
    if n % 2:
        nibbles = tf.gather(nibbles, tf.constant(np.arange(n, dtype=np.int32), name=f"{prefix}/keep"), axis=-1,
                            name=f"{prefix}/trimmed")
    offset = tf.bitwise.bitwise_and(tf.add(nibbles, tf.constant(np.uint8(8), name=f"{prefix}/eight"),
                                           name=f"{prefix}/shifted"),
                                    tf.constant(np.uint8(0x0F), name=f"{prefix}/nibble_mask"), name=f"{prefix}/offset")
    return tf.add(tf.cast(offset, tf.float32, name=f"{prefix}/float"),
                  tf.constant(np.float32(-8.0), name=f"{prefix}/minus_eight"), name=f"{prefix}/codes")


class Int4Storage(Int8Storage):
    """Symmetric 4-bit codes in [-7, 7] with float16 scales (per embedding row / output channel; ``half_scales``;
    versions written before them hold float32 scales, read as they are), packed two per byte in graph.pb
    (``pack_int4``); ``StoredTensor.value`` is the int8 array of codes in the logical shape."""

    name = "int4"
    suffix = "/q4"
    served_as = "int8"
    top = INT4_MAX

    @staticmethod
    def pack(codes: np.ndarray) -> np.ndarray:
        return pack_int4(codes)

    @staticmethod
    def unpack(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return unpack_int4(packed, shape)

    @staticmethod
    def packed_shape(shape: Sequence[int]) -> tuple[int, ...]:
        return packed_shape(shape)

    @staticmethod
    def emit_unpack(tf: Any, packed: Any, n: int, prefix: str) -> Any:
        return emit_unpack_int4(tf, packed, n, prefix)

    def encode(self, values: np.ndarray, axis: int | None = None) -> StoredTensor:
        codes, scale = half_scales(np.asarray(values, dtype=np.float32), axis, self.top)
        return StoredTensor(self.name, codes, scale, axis)

    def nbytes(self, stored: StoredTensor) -> int:
        scale = stored.scale.nbytes if stored.scale is not None else 0
        return int(LAYOUTS[stored.layout].nbytes(self.pack(stored.value)) + scale)

    def emit_codes(self, tf: Any, name: str, stored: StoredTensor) -> Any:
        return LAYOUTS[stored.layout].emit(tf, self.codes_node(name), self.pack(stored.value))

    def read_codes(self, value: ConstReader, name: str, shape: Sequence[int], layout: str,
                   source: Path | str) -> np.ndarray:
        expected = self.packed_shape(shape)
        packed = LAYOUTS[layout].read(value, self.codes_node(name), expected, name, source)
        if packed.dtype != np.uint8 or tuple(packed.shape) != expected:
            raise ModelError(f"{source}: {self.name} tensor {name!r} holds {packed.dtype} {list(packed.shape)}; "
                             f"shape {list(shape)} packs into uint8 {list(expected)}. The file is damaged or "
                             "was edited: re-run the compress step that wrote it.")
        return self.unpack(packed, shape)

    def emit_float(self, tf: Any, name: str, stored: StoredTensor, codes: Any) -> Any:
        shape = stored.shape
        values = self.emit_unpack(tf, codes, shape[-1] if shape else 1, f"{name}/unpack")
        if len(shape) != len(self.packed_shape(shape)):  # a 0-d tensor was packed as one element
            values = tf.reshape(values, tf.constant(shape, dtype=tf.int64, name=f"{name}/unpack/shape"),
                                name=f"{name}/unpack/reshaped")
        return tf.multiply(values, emit_scale(tf, name, stored.scale), name=name)

    def emit_embedding(self, tf: Any, stored: StoredTensor, table: Any, ids: Any) -> Any:
        # Rows are gathered packed, then unpacked: memory holds the table at half a byte per weight (int3: 3 bits).
        rows = self.emit_unpack(tf, tf.gather(table, ids), stored.shape[-1], f"{EMBEDDING}/unpack")
        return tf.multiply(rows, emit_row_scales(tf, stored.scale, ids), name="embed")

    def read(self, name: str, codes: np.ndarray, meta: dict[str, Any], value: ConstReader) -> StoredTensor:
        return StoredTensor(self.name, codes, value(f"{name}/scale"), meta.get("axis"))

    def serving(self, name: str, stored: StoredTensor) -> StoredTensor:
        # LiteRT has no 4-bit gather or hybrid kernels for these ops: the codes are widened to int8 (the same codes
        # and scales, so the same values), and run as an int8 version's do. float16 scales go in widened to float32
        # (the same values); the serving pack stores such a buffer at 2 bytes a value again (litepack's float16).
        assert stored.scale is not None
        return super().serving(name, replace(stored, storage="int8", scale=stored.scale.astype(np.float32),
                                                    layout="dense"))


# --- int3: three bit planes -----------------------------------------------------------------------------------------
#
# A row of n codes in [-3, 3] is held as three bit planes of its 3-bit two's-complement codes (code & 7): plane k is
# bit k of every code, eight codes a byte (code j in bit j % 8 of byte j // 8, np.packbits' little bit order), so a
# row is 3 * ceil(n / 8) bytes, planes one after the other, and an embedding row is still gathered packed. A zero
# code is zero in every plane. Unpacking (``emit_unpack_int3``): each code's byte of each plane gathered, shifted and
# masked, the planes weighted 1, 2 and -4 (two's complement) and added in float32 (exact small integers).

def int3_row_bytes(n: int) -> int:
    """Bytes of one packed row of ``n`` int3 codes."""
    return 3 * ((n + 7) // 8)


def pack_int3(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-3, 3] -> uint8 bit planes along the last axis (shape ``[..., 3 * ceil(n / 8)]``)."""
    codes = np.asarray(codes, dtype=np.int8)
    if codes.ndim == 0:
        codes = codes.reshape(1)
    bits = codes.astype(np.uint8) & np.uint8(7)
    planes = [np.packbits((bits >> np.uint8(k)) & np.uint8(1), axis=-1, bitorder="little") for k in range(3)]
    return np.concatenate(planes, axis=-1).astype(np.uint8)


def unpack_int3(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`pack_int3`: int8 codes of ``shape`` from the packed bytes."""
    shape = tuple(int(d) for d in shape)
    n = shape[-1] if shape else 1
    packed = np.asarray(packed, dtype=np.uint8)
    width = (n + 7) // 8
    planes = [np.unpackbits(packed[..., k * width:(k + 1) * width], axis=-1, count=n, bitorder="little")
              for k in range(3)]
    codes = planes[0].astype(np.int8) + 2 * planes[1].astype(np.int8) - 4 * planes[2].astype(np.int8)
    return codes.astype(np.int8).reshape(shape)


def packed_shape_int3(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of a tensor's packed int3 bytes."""
    shape = tuple(int(d) for d in shape) or (1,)
    return (*shape[:-1], int3_row_bytes(shape[-1]))


def emit_unpack_int3(tf: Any, packed: Any, n: int, prefix: str) -> Any:
    """float32 codes (exact small integers) from a packed uint8 tensor whose last axis holds ``n`` int3 codes.

    Code j's bit k is bit j % 8 of byte k * ceil(n / 8) + j // 8: each plane's bytes are gathered once per code
    (GatherV2 with constant indices along the last axis), shifted and masked (RightShift, BitwiseAnd), and the three
    planes weighted 1, 2 and -4 and added in float32 (Cast, Mul, AddV2), so the graph needs no op beyond those the
    other storages use.
    """
    width = (n + 7) // 8
    column = np.arange(n)
    shifts = tf.constant((column % 8).astype(np.uint8), name=f"{prefix}/shifts")
    one = tf.constant(np.uint8(1), name=f"{prefix}/one")
    total = None
    for plane, weight in enumerate((1.0, 2.0, -4.0)):
        index = tf.constant((plane * width + column // 8).astype(np.int32), name=f"{prefix}/plane{plane}/index")
        bytes_ = tf.gather(packed, index, axis=-1, name=f"{prefix}/plane{plane}/bytes")
        bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bytes_, shifts, name=f"{prefix}/plane{plane}/shifted"),
                                      one, name=f"{prefix}/plane{plane}/bits")
        term = tf.multiply(tf.cast(bits, tf.float32, name=f"{prefix}/plane{plane}/float"),
                           tf.constant(np.float32(weight), name=f"{prefix}/plane{plane}/weight"),
                           name=f"{prefix}/plane{plane}/weighted")
        total = term if total is None else tf.add(total, term, name=f"{prefix}/plane{plane}/sum")
    return tf.identity(total, name=f"{prefix}/codes")


class Int3Storage(Int4Storage):
    """Symmetric 3-bit codes in [-3, 3] with int4's float16 scales, in three bit planes in graph.pb (``pack_int3``);
    ``StoredTensor.value`` is the int8 array of codes in the logical shape. Served as int8 codes with the same
    scales, as int4 is."""

    name = "int3"
    suffix = "/q3"
    top = INT3_MAX

    @staticmethod
    def pack(codes: np.ndarray) -> np.ndarray:
        return pack_int3(codes)

    @staticmethod
    def unpack(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return unpack_int3(packed, shape)

    @staticmethod
    def packed_shape(shape: Sequence[int]) -> tuple[int, ...]:
        return packed_shape_int3(shape)

    @staticmethod
    def emit_unpack(tf: Any, packed: Any, n: int, prefix: str) -> Any:
        return emit_unpack_int3(tf, packed, n, prefix)


STORAGES: dict[str, Storage] = {s.name: s for s in (Float32Storage(), Float16Storage(), Int8Storage(),
                                                    Int4Storage(), Int3Storage())}


def storage_of(name: str) -> Storage:
    """The ``STORAGES`` entry named ``name``."""
    if name not in STORAGES:
        raise ModelError(f"storage must be one of {', '.join(STORAGES)}. Received: {name!r}.")
    return STORAGES[name]


# --- layout choice ------------------------------------------------------------------------------------------------

def graph_bytes(stored: StoredTensor, name: str) -> int:
    """Bytes the tensor's codes add to graph.pb in its layout: its constants and its decode nodes (their NodeDefs,
    names and small constants), measured by writing them into an empty graph. Scales are the same in every layout
    and left out."""
    tf = tf_module()
    graph = tf.Graph()
    with graph.as_default():
        emit_codes(tf, name, stored)
    return int(graph.as_graph_def().ByteSize())


def smaller_layout(stored: StoredTensor, name: str = EMBEDDING) -> StoredTensor:
    """The tensor (weight ``name``) in whichever layout makes the smaller graph file, each sparse layout's decode
    nodes counted (``graph_bytes``): dense, sparse, and for int4 also sparse nibbles. A layout is tried only when
    its constants alone are smaller than dense's, so a dense tensor costs no graph writing."""
    dense = replace(stored, layout="dense")
    candidates = [replace(stored, layout=layout.name) for layout in LAYOUTS.values()
                  if layout.sparse and layout.fits(stored.storage)]
    candidates = [c for c in candidates if c.nbytes < dense.nbytes]
    if not candidates:
        return dense
    sizes = {c.layout: graph_bytes(c, name) for c in [dense, *candidates]}
    best = min(sizes, key=lambda layout: (sizes[layout], layout != "dense"))
    return replace(stored, layout=best)


def carry_layout(before: StoredTensor, after: StoredTensor, name: str = EMBEDDING) -> StoredTensor:
    """A pruned (sparse) tensor stays sparse through a storage change (in whichever sparse layout is now the
    smallest), unless dense has become smaller."""
    return smaller_layout(after, name) if LAYOUTS[before.layout].sparse else after


def store_like(name: str, stored: StoredTensor, values: np.ndarray) -> StoredTensor:
    """New float32 values in the storage (and layout) ``stored`` had; int8 and int4 are re-derived from the floats."""
    return carry_layout(stored, stored.spec.encode_like(name, stored, values), name)


# --- graph emission -----------------------------------------------------------------------------------------------

def emit_codes(tf: Any, name: str, stored: StoredTensor) -> Any:
    """The dense stored codes as a graph tensor named ``stored.codes_node(name)``: one Const, or the sparse decode."""
    return stored.spec.emit_codes(tf, name, stored)


def emit_float(tf: Any, name: str, stored: StoredTensor) -> Any:
    """A float32 tensor named ``name`` computed from its stored form (the codes themselves when float32)."""
    return stored.spec.emit_float(tf, name, stored, emit_codes(tf, name, stored))


def emit_embedding(tf: Any, stored: StoredTensor, ids: Any) -> Any:
    """Embedding lookup that gathers the stored rows first, so a float16/int8 table stays small in memory."""
    return stored.spec.emit_embedding(tf, stored, emit_codes(tf, EMBEDDING, stored), ids)


def tensor_entry(name: str, stored: StoredTensor) -> dict[str, Any]:
    """A weight's manifest ``tensors`` entry: logical shape and dtype, storage, layout, stored bytes, Const nodes."""
    return {
        "shape": list(stored.shape),
        "dtype": "float32",
        "storage": stored.storage,
        "layout": LAYOUTS[stored.layout].manifest_name,
        **LAYOUTS[stored.layout].manifest_fields(),
        "bytes": stored.nbytes,
        "nodes": stored.nodes(name),
        "nonzero": int(np.count_nonzero(stored.value)),
        "sparsity": float(1.0 - np.count_nonzero(stored.value) / max(stored.value.size, 1)),
        **({"axis": stored.axis} if stored.axis is not None else {}),
    }


# --- reading a graph back -----------------------------------------------------------------------------------------

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
        storage = meta["storage"]
        if storage not in STORAGES:
            raise ModelError(f"{source}: tensor {name!r} has unknown storage {storage!r}.")
        layout = layout_for(meta, name, source)
        spec = STORAGES[storage]
        if layout == "dense" and meta.get("folded_into"):
            # The fold step moved it into a consumer's constant: same values, reshaped.
            codes = value(meta["folded_into"])
            if codes.size != int(np.prod(meta["shape"])):
                raise ModelError(f"{source}: constant {meta['folded_into']!r} holds {codes.size} values; tensor "
                                 f"{name!r} needs {int(np.prod(meta['shape']))}. The version is damaged; re-freeze.")
            codes = codes.reshape(meta["shape"])
        else:
            codes = spec.read_codes(value, name, meta["shape"], layout, source)
        weights[name] = replace(spec.read(name, codes, meta, value), layout=layout)
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
    decoders: dict[str, Callable[..., np.ndarray]] = {}
    for base in bases:
        decode = {name for name in nodes if name.startswith(f"{base}/decode/")}
        node = nodes.get(base)
        # The last decode node says which sparse layout wrote it: bitmask (ScatterNd) or bitmask-nibbles (repacked).
        last = node.input[0] if node is not None and node.input else ""
        decoders[base] = {f"{base}/decode/scatter": decode_sparse, f"{base}/decode/packed": decode_nibbles}.get(
            last, decode_sparse)
        if (node is None or node.op != "Reshape"
                or list(node.input) not in ([f"{base}/decode/scatter", f"{base}/decode/shape"],
                                            [f"{base}/decode/packed", f"{base}/decode/shape"])
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
            dense = decoders[node.name](array(f"{node.name}/values"), array(f"{node.name}/mask"),
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
