"""The packed serving file: a LiteRT flatbuffer whose large constant buffers are stored in fewer bits on disk.

LiteRT has no kernels that read 4-bit codes or a sparse layout for the ops our CNN runs (GATHER, CONV_2D,
FULLY_CONNECTED), so the serving flatbuffer of an int4 or pruned version holds dense int8 codes: 1 byte per weight,
where graph.pb stores half a byte (int4) or only the nonzeros plus a bit each (sparse). ``model.tflite.pack`` keeps
the serving form that small on disk, and restores the exact flatbuffer at load:

- every buffer of at least ``MIN_BYTES`` is read as int8 and stored in the smallest of four lossless encodings:
  ``raw`` (left in place), ``int4`` (all bytes in [-8, 7]: two per byte), ``sparse`` (a bit per byte saying
  "nonzero", then the nonzero bytes) and ``sparse-int4`` (the bits, then the nonzero bytes two per byte); ``int3``
  and ``sparse-int3`` likewise for bytes all in [-4, 3] (an int3 version's codes), three bits each. It is a
  byte codec, blind to what the bytes mean: a float buffer that happens to be all zeros packs too, and whatever is
  not smaller is left raw;
- format 2 adds ``float16``: a buffer read as little-endian float32 whose every value float16 holds bit for bit
  (the float16 scales of an int4 or int3 version, widened to float32 for LiteRT) is stored at 2 bytes a value. A
  pack is written in the lowest format its encodings need (1 without ``float16``), so older readers keep reading
  every pack they can; a format newer than ``FORMAT`` is refused with "Upgrade lifecycle";
- the rest of the flatbuffer (the "skeleton": tables, small buffers, raw buffers) is stored as it is, minus the
  packed byte ranges;
- at load, ``unpack`` re-inserts every range and checks the result against the sha256 the pack records, so what
  the runtime gets is byte for byte the flatbuffer that was exported and checked against graph.pb.

What this costs and saves, and what it does not do: memory at serving time is the int8 flatbuffer's (the runtime
needs dense int8 codes; the pack is expanded once, at load: ``Pack.expanded``), so RSS and per-call latency are the
plain int8 form's; the file a server downloads and loads is the packed size, about graph.pb's. Reading it needs
numpy and the standard library only (no TensorFlow, no flatbuffers package).

File layout: ``MAGIC``, a little-endian uint32 header length, the header (UTF-8 JSON: format version, the
flatbuffer's size and sha256, the holes), the skeleton, then each hole's payload in order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.errors import ModelError
from lifecycle.flatbuffer import Reader

PACK_FILE = "model.tflite.pack"
MAGIC = b"LCLITEPACK\n"
FORMAT = 2  # the newest format this lifecycle reads (and writes when a pack needs it); it reads every older one
MIN_BYTES = 1024  # smaller buffers (biases, shapes, a kernel's scales) stay in the skeleton: packing them saves nothing
ENCODINGS = ("int4", "sparse", "sparse-int4", "int3", "sparse-int3", "float16")
# The first format that has each encoding (a pack records the highest its holes need).
SINCE = {**{name: 1 for name in ENCODINGS}, "float16": 2}
# A pack is written only when it is at least this much smaller than the flatbuffer (an int8 version's dense codes
# do not pack: it stays model.tflite).
WORTH = 0.9


@dataclass(frozen=True)
class Hole:
    """One packed byte range of the flatbuffer."""

    offset: int  # in the flatbuffer
    length: int  # bytes in the flatbuffer
    encoding: str  # ENCODINGS
    payload: int  # bytes of its payload in the pack


@dataclass(frozen=True)
class Pack:
    """A packed serving file and what it stands for."""

    content: bytes  # the pack file's bytes
    flatbuffer_bytes: int
    sha256: str
    holes: tuple[Hole, ...]
    format: int = 1

    @property
    def expanded(self) -> dict[str, int]:
        """Bytes of the flatbuffer restored at load, by encoding (what memory holds beyond the file)."""
        totals: dict[str, int] = {}
        for hole in self.holes:
            totals[hole.encoding] = totals.get(hole.encoding, 0) + hole.length
        return totals

    def summary(self) -> dict[str, Any]:
        """The manifest's ``serving.pack`` entry."""
        return {"format": self.format, "flatbuffer_bytes": self.flatbuffer_bytes, "flatbuffer_sha256": self.sha256,
                "packed_buffers": len(self.holes), "expanded_at_load": self.expanded}


# --- reading the flatbuffer's buffer table (no schema module) ------------------------------------------------------

def buffer_spans(content: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the data of every entry of a TFLite flatbuffer's ``Model.buffers``, empty ones left out.

    Raises:
        ValueError: the bytes are not a flatbuffer of that shape.
    """
    reader = Reader(content)
    buffers_at = reader.field(reader.root(), 4)  # Model: version, operator_codes, subgraphs, description, buffers
    if buffers_at is None:
        return []
    start, count = reader.vector(buffers_at)
    spans = []
    for i in range(count):
        entry = reader.target(start + 4 * i)  # Buffer: data, offset, size
        data_at = reader.field(entry, 0)
        if data_at is None:
            continue
        data, length = reader.vector(data_at)
        if data + length > reader.size:
            raise ValueError("buffer longer than the flatbuffer")
        if length:
            spans.append((data, length))
    return spans


# --- the byte codec ------------------------------------------------------------------------------------------------

def _nibbles(values: np.ndarray) -> bytes:
    """int8 values in [-8, 7], two per byte (the first in the low nibble)."""
    low = values.astype(np.uint8) & 0x0F
    if low.size % 2:
        low = np.append(low, np.uint8(0))
    return (low[0::2] | (low[1::2] << 4)).astype(np.uint8).tobytes()


def _from_nibbles(data: bytes, count: int) -> np.ndarray:
    packed = np.frombuffer(data, dtype=np.uint8)
    both = np.empty(packed.size * 2, dtype=np.uint8)
    both[0::2] = packed & 0x0F
    both[1::2] = packed >> 4
    signed = both[:count].astype(np.int8)
    signed[signed > 7] -= 16
    return signed


def _triples(values: np.ndarray) -> bytes:
    """int8 values in [-4, 3], three bits each: bit k of value i is bit 3 * i + k of the payload (little bit order)."""
    bits = (values.astype(np.uint8)[:, None] >> np.arange(3, dtype=np.uint8)) & np.uint8(1)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def _from_triples(data: bytes, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=3 * count, bitorder="little")
    if bits.size != 3 * count:
        raise ValueError(f"{len(data)} bytes cannot hold {count} 3-bit values")
    planes = bits.reshape(count, 3).astype(np.int8)
    return (planes[:, 0] + 2 * planes[:, 1] - 4 * planes[:, 2]).astype(np.int8)


def _halves(data: bytes) -> np.ndarray | None:
    """The buffer as float16 values when it is little-endian float32 that float16 holds bit for bit, else None."""
    if len(data) % 4:
        return None
    wide = np.frombuffer(data, dtype="<f4")
    with np.errstate(over="ignore", invalid="ignore"):
        half = wide.astype("<f2")
    # Compared as bits: lossless means the same bytes back (signed zeros, and no NaN payload is trusted to survive).
    same = np.array_equal(half.astype("<f4").view("<u4"), wide.view("<u4")) and not np.isnan(wide).any()
    return half if same else None


def _encode(data: bytes, encodings: tuple[str, ...] = ENCODINGS) -> tuple[str, bytes] | None:
    """The smallest of ``encodings`` for a buffer and its payload, or None when none is smaller than the bytes."""
    values = np.frombuffer(data, dtype=np.int8)
    n = values.size
    narrow = bool(np.all((values >= -8) & (values <= 7)))
    present = values != 0
    nonzero = int(np.count_nonzero(present))
    costs = {"sparse": (n + 7) // 8 + nonzero}
    if narrow:
        costs["int4"] = (n + 1) // 2
        costs["sparse-int4"] = (n + 7) // 8 + (nonzero + 1) // 2
    if bool(np.all((values >= -4) & (values <= 3))):
        costs["int3"] = (3 * n + 7) // 8
        costs["sparse-int3"] = (n + 7) // 8 + (3 * nonzero + 7) // 8
    costs = {name: cost for name, cost in costs.items() if name in encodings}
    half = _halves(data) if "float16" in encodings and n // 2 < min(costs.values(), default=n) else None
    if half is not None:
        costs["float16"] = n // 2
    if not costs:
        return None
    encoding = min(costs, key=lambda name: costs[name])
    if costs[encoding] >= n:
        return None
    if encoding == "float16":
        assert half is not None
        return encoding, half.tobytes()
    if encoding == "int4":
        return encoding, _nibbles(values)
    if encoding == "int3":
        return encoding, _triples(values)
    mask = np.packbits(present, bitorder="little").tobytes()
    kept = values[present]
    narrowed = {"sparse-int4": _nibbles, "sparse-int3": _triples}.get(encoding)
    return encoding, mask + (narrowed(kept) if narrowed else kept.tobytes())


def _decode(encoding: str, payload: bytes, length: int) -> bytes:
    if encoding == "float16":
        if length % 4 or len(payload) != length // 2:
            raise ValueError(f"{len(payload)} float16 bytes cannot restore {length} float32 bytes")
        return np.frombuffer(payload, dtype="<f2").astype("<f4").tobytes()
    if encoding == "int4":
        return _from_nibbles(payload, length).tobytes()
    if encoding == "int3":
        return _from_triples(payload, length).tobytes()
    if encoding not in ("sparse", "sparse-int4", "sparse-int3"):
        raise ValueError(f"unknown encoding {encoding!r}")
    mask_bytes = (length + 7) // 8
    present = np.unpackbits(np.frombuffer(payload[:mask_bytes], dtype=np.uint8), count=length,
                            bitorder="little").view(bool)
    nonzero = int(np.count_nonzero(present))
    rest = payload[mask_bytes:]
    widen = {"sparse-int4": _from_nibbles, "sparse-int3": _from_triples}.get(encoding)
    kept = widen(rest, nonzero) if widen else np.frombuffer(rest, dtype=np.int8)
    if kept.size != nonzero:
        raise ValueError(f"{kept.size} stored values for {nonzero} marked positions")
    dense = np.zeros(length, dtype=np.int8)
    dense[present] = kept
    return dense.tobytes()


# --- pack and unpack -----------------------------------------------------------------------------------------------

def pack(content: bytes, min_bytes: int = MIN_BYTES, max_format: int = FORMAT) -> Pack:
    """The packed form of a serving flatbuffer (every buffer of ``min_bytes`` or more that an encoding shrinks),
    using only the encodings of formats up to ``max_format`` (1: what a lifecycle before ``float16`` reads)."""
    try:
        spans = buffer_spans(content)
    except ValueError as exc:
        raise ModelError(f"the serving flatbuffer cannot be packed ({exc}). Report this as a bug.") from None
    encodings = tuple(name for name in ENCODINGS if SINCE[name] <= max_format)
    holes: list[Hole] = []
    payloads: list[bytes] = []
    skeleton: list[bytes] = []
    cursor = 0
    for offset, length in sorted(spans):
        if length < min_bytes or offset < cursor:
            continue
        encoded = _encode(content[offset:offset + length], encodings)
        if encoded is None:
            continue
        encoding, payload = encoded
        skeleton.append(content[cursor:offset])
        cursor = offset + length
        holes.append(Hole(offset, length, encoding, len(payload)))
        payloads.append(payload)
    skeleton.append(content[cursor:])
    digest = hashlib.sha256(content).hexdigest()
    version = max((SINCE[hole.encoding] for hole in holes), default=1)
    header = json.dumps({"format": version, "flatbuffer_bytes": len(content), "sha256": digest,
                         "holes": [[h.offset, h.length, h.encoding, h.payload] for h in holes]},
                        separators=(",", ":")).encode()
    body = b"".join([MAGIC, struct.pack("<I", len(header)), header, *skeleton, *payloads])
    return Pack(body, len(content), digest, tuple(holes), version)


def worth_packing(packed: Pack) -> bool:
    """Whether the pack is enough smaller than its flatbuffer to be the file a version serves."""
    return len(packed.content) < WORTH * packed.flatbuffer_bytes


def is_pack(path: Path) -> bool:
    """Whether a serving file is a pack (by its name: ``PACK_FILE``)."""
    return path.name.endswith(".pack")


def unpack(data: bytes | memoryview, source: str = "<serving pack>") -> bytes:
    """The flatbuffer a pack stands for, checked against its recorded sha256.

    Raises:
        ModelError: not a pack of this format, or damaged (naming ``source``).
    """

    def damaged(why: str) -> ModelError:
        return ModelError(f"{source}: not a readable serving pack ({why}). The file is damaged; re-freeze or "
                          "re-compress the version.")

    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise damaged("no pack header")
    start = len(MAGIC) + 4
    (header_len,) = struct.unpack_from("<I", data, len(MAGIC))
    try:
        header = json.loads(data[start:start + header_len])
        version = header.get("format")
    except (ValueError, AttributeError) as exc:
        raise damaged(f"header: {exc}") from None
    # Outside the try: ModelError is a ValueError, and this one is not damage.
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise damaged(f"header: format {version!r}")
    if version > FORMAT:
        raise ModelError(f"{source}: serving pack format {version}; this lifecycle reads formats 1 to "
                         f"{FORMAT}. Upgrade lifecycle to load this version.")
    try:
        total = int(header["flatbuffer_bytes"])
        holes = [Hole(int(o), int(n), str(e), int(p)) for o, n, e, p in header["holes"]]
        digest = str(header["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(f"header: {exc}") from None
    for hole in holes:
        if SINCE.get(hole.encoding, version + 1) > version:
            raise damaged(f"encoding {hole.encoding!r} in a format-{version} pack")
    skeleton_len = total - sum(h.length for h in holes)
    at = start + header_len
    skeleton = data[at:at + skeleton_len]
    payload_at = at + skeleton_len
    out = bytearray()
    cursor = 0  # in the skeleton
    position = 0  # in the flatbuffer
    try:
        for hole in holes:
            take = hole.offset - position
            out += skeleton[cursor:cursor + take]
            cursor += take
            out += _decode(hole.encoding, data[payload_at:payload_at + hole.payload], hole.length)
            payload_at += hole.payload
            position = hole.offset + hole.length
    except ValueError as exc:
        raise damaged(str(exc)) from None
    out += skeleton[cursor:]
    if len(out) != total or payload_at != len(data) or hashlib.sha256(out).hexdigest() != digest:
        raise damaged("its bytes do not restore the flatbuffer it records")
    return bytes(out)


def read(path: Path) -> bytes:
    """The flatbuffer of a pack file (``unpack`` of its bytes)."""
    return unpack(path.read_bytes(), str(path))

