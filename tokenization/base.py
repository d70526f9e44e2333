"""The tokenizer contract, the saved-metadata format and the helpers both kinds share.

Two kinds implement :class:`Tokenizer`: ``bpe`` (:mod:`tokenization.bpe`, youtokentome) and ``word``
(:mod:`tokenization.word`, a word vocabulary plus optional word2vec vectors). Both write ``tokenizer.json`` beside their
own files, so :func:`tokenization.factory.load_tokenizer` can dispatch on the directory alone. This module imports
neither kind: they import it.
"""

from __future__ import annotations

import io
import json
import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from tokenization.errors import TokenizerError

if TYPE_CHECKING:
    from typing import Self

# The ids youtokentome reserves by default; the word tokenizer reuses them so both kinds agree on the layout.
PAD = 0
UNK = 1
BOS = 2
EOS = 3
N_SPECIAL = 4
# youtokentome's own spellings, so id_to_token() reads the same for both kinds.
SPECIAL_TOKENS: tuple[str, ...] = ("<PAD>", "<UNK>", "<BOS>", "<EOS>")

METADATA_FILE = "tokenizer.json"
BPE_MODEL_FILE = "bpe.model"
VOCAB_FILE = "vocab.txt"
VECTORS_FILE = "vectors.npy"
# A bpe tokenizer whose vocabulary was pruned (youtokentome's model file cannot be edited): the model ids kept, in
# ascending order, so new id = position; every other model id encodes as unk.
KEPT_IDS_FILE = "kept_ids.npy"
# The same ids as a bitmask over the model's ids (np.packbits, little bit order: bit i % 8 of byte i // 8 set when
# model id i is kept), written instead of kept_ids.npy when it is the smaller file: plain, unless the model has more
# than 1,024 ids and fewer than one in 16 is kept (the .npy is a 128-byte header and 2 bytes an id).
KEPT_MASK_FILE = "kept_ids.mask"
# A compact tokenizer (``save(directory, compact=True)``, what compressed versions ship) stores each of the files
# above xz-compressed under its name plus this suffix (``vocab.txt.xz``); ``tokenizer.json`` stays plain and lists
# the names written, so a loader reads whichever form the directory holds.
COMPACT_SUFFIX = ".xz"
FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("bpe", "word")
DEFAULT_SEED = 13


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the project may rely on, whatever the kind.

    Ids 0-3 are always pad, unk, bos and eos (:data:`PAD`, :data:`UNK`, :data:`BOS`, :data:`EOS`); text never
    encodes to pad, bos or eos.
    """

    @property
    def kind(self) -> str:
        """``"bpe"`` or ``"word"``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included; every id is in ``range(vocab_size)``."""
        ...

    @property
    def vocab(self) -> list[str]:
        """Tokens in id order (a copy)."""
        ...

    @property
    def vectors(self) -> np.ndarray | None:
        """float32 ``(vocab_size, dim)`` word2vec rows aligned to the ids, or None when there are none."""
        ...

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """int32 ``(len(texts), max_len)`` ids, truncated at ``max_len`` and right-padded with :data:`PAD`."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens (words or subwords) of each text, as strings."""
        ...

    def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded, untruncated ids per text."""
        ...

    def decode(self, ids: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """One string per row of ids; pad, bos and eos are skipped, unk shows as ``<UNK>``."""
        ...

    def id_to_token(self, token_id: int) -> str:
        """The token (word or subword) of one id."""
        ...

    def keep_ids(self, kept_ids: np.ndarray) -> Tokenizer:
        """A copy whose id ``i`` is this tokenizer's id ``kept_ids[i]``; tokens of every other id encode as unk.

        ``kept_ids`` is ascending and starts with the special ids (see :func:`check_kept_ids`), so the embedding rows
        ``matrix[kept_ids]`` line up with the new ids.
        """
        ...

    def save(self, directory: Path, *, compact: bool = False) -> None:
        """Write the tokenizer's files and ``tokenizer.json`` into ``directory`` (created if needed); ``compact``
        stores the data files xz-compressed (:data:`COMPACT_SUFFIX`)."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a tokenizer that :meth:`save` wrote."""
        ...


@dataclass(frozen=True)
class CoverageStats:
    """How well a tokenizer fits some texts.

    Attributes:
        unk_rate: unk ids over all ids, counted before truncation.
        mean_tokens: mean number of ids per text, before truncation.
        truncation_rate: fraction of texts with more than ``max_len`` ids.
        n_texts: number of texts measured.
    """

    unk_rate: float
    mean_tokens: float
    truncation_rate: float
    n_texts: int


def coverage_stats(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> CoverageStats:
    """Measure unk rate, length and truncation of ``texts`` under ``tokenizer``.

    Args:
        tokenizer: any trained tokenizer.
        texts: texts to measure (e.g. the validation split).
        max_len: the sequence length the model will see.

    Returns:
        The stats; all zero when ``texts`` is empty.
    """
    rows = tokenizer.tokenize_ids(texts)
    if not rows:
        return CoverageStats(unk_rate=0.0, mean_tokens=0.0, truncation_rate=0.0, n_texts=0)
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    total = int(lengths.sum())
    unks = sum(row.count(UNK) for row in rows)
    return CoverageStats(
        unk_rate=unks / total if total else 0.0,
        mean_tokens=total / len(rows),
        truncation_rate=float(np.mean(lengths > max_len)),
        n_texts=len(rows),
    )


def tokenizer_vectors(tokenizer: Tokenizer) -> np.ndarray | None:
    """The word2vec matrix aligned to the ids (``(vocab_size, dim)`` float32), or None (bpe, or word2vec off)."""
    return getattr(tokenizer, "vectors", None)


def serving_copy(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer as a deployed model needs it: word2vec vectors dropped (they only initialise training)."""
    strip = getattr(tokenizer, "without_vectors", None)
    return strip() if callable(strip) else tokenizer


def tokenizer_bytes(directory: Path) -> int:
    """Total size in bytes of the files under ``directory`` (the ``size_bytes.tokenizer`` metric)."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    """Write ``tokenizer.json``; the format version and special tokens are added here so every kind records them."""
    specials = {token: token_id for token_id, token in enumerate(SPECIAL_TOKENS)}
    record = {"format_version": FORMAT_VERSION, **metadata, "special_tokens": specials}
    (directory / METADATA_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def remove_stale_files(directory: Path, keep: Sequence[str]) -> None:
    """Delete the data files of other kinds or settings, so a reused directory holds one tokenizer and its size."""
    for plain in (BPE_MODEL_FILE, VOCAB_FILE, VECTORS_FILE, KEPT_IDS_FILE, KEPT_MASK_FILE):
        for name in (plain, plain + COMPACT_SUFFIX):
            if name not in keep:
                (directory / name).unlink(missing_ok=True)


def data_file_form(name: str, data: bytes, *, compact: bool = False) -> tuple[str, bytes]:
    """The name and bytes a data file is written as: itself, or with ``compact`` xz-compressed under ``name`` +
    :data:`COMPACT_SUFFIX`."""
    if compact:
        # The dictionary no larger than the data: xz's preset 9 would reserve 64 MiB (and ~670 MB to compress) for
        # files of 10-400 KB, and gains nothing from it.
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                    "dict_size": max(1 << 16, len(data))}]
        return name + COMPACT_SUFFIX, lzma.compress(data, check=lzma.CHECK_CRC32, filters=filters)
    return name, data


def write_data_file(directory: Path, name: str, data: bytes, *, compact: bool = False) -> str:
    """Write one data file of a tokenizer; with ``compact``, xz-compressed as ``name`` + :data:`COMPACT_SUFFIX`.

    Returns:
        The file name written, for the ``files`` list of ``tokenizer.json``.
    """
    name, data = data_file_form(name, data, compact=compact)
    (directory / name).write_bytes(data)
    return name


def read_data_file(directory: Path, name: str, metadata: dict[str, Any], fix: str) -> bytes | None:
    """The bytes of data file ``name`` when ``tokenizer.json`` lists its compact form (decompressed), else None:
    the caller reads the plain file as before (directories written before the compact form, or without it).

    Raises:
        TokenizerError: the compact file is missing or not valid xz data.
    """
    packed = name + COMPACT_SUFFIX
    if packed not in (metadata.get("files") or []):
        return None
    path = directory / packed
    if not path.is_file():
        raise TokenizerError(f"{path}: missing, but tokenizer.json lists it. {fix}")
    try:
        return lzma.decompress(path.read_bytes(), format=lzma.FORMAT_XZ)
    except lzma.LZMAError as exc:
        raise TokenizerError(f"{path}: not valid xz data ({exc}). {fix}") from None


def npy_from_bytes(data: bytes, path: Path, fix: str) -> np.ndarray:
    """An ``.npy`` array held in memory (a decompressed compact file), read without pickle."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: not a readable .npy array ({exc}). {fix}") from None
    if not isinstance(array, np.ndarray):
        raise TokenizerError(f"{path}: holds {type(array).__name__}, not one array. {fix}")
    return array


def read_metadata(directory: Path, expected_kind: str | None = None) -> dict[str, Any]:
    """Read and check ``tokenizer.json`` (format version, kind, vocab size); errors name the file and the fix."""
    path = directory / METADATA_FILE
    fix = "Point at a directory written by `lifecycle tokenize` (or Tokenizer.save), or retrain the tokenizer."
    if not directory.is_dir():
        raise TokenizerError(f"{directory}: tokenizer directory not found. {fix}")
    if not path.is_file():
        raise TokenizerError(f"{path}: missing, so this is not a saved tokenizer. {fix}")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc}). {fix}") from None
    if not isinstance(metadata, dict):
        raise TokenizerError(f"{path}: expected a JSON object. {fix}")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise TokenizerError(
            f"{path}: format_version {version!r} is not supported (this lifecycle reads {FORMAT_VERSION}). "
            "Retrain the tokenizer with this version of lifecycle."
        )
    kind = metadata.get("kind")
    if kind not in KINDS:
        raise TokenizerError(f"{path}: kind must be one of {', '.join(KINDS)}. Received: {kind!r}. {fix}")
    if expected_kind is not None and kind != expected_kind:
        raise TokenizerError(
            f"{path}: holds a {kind} tokenizer, not {expected_kind}. Load it with load_tokenizer(), which dispatches "
            "on kind."
        )
    vocab_size = metadata.get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= N_SPECIAL:
        raise TokenizerError(f"{path}: vocab_size must be an integer > {N_SPECIAL}. Received: {vocab_size!r}. {fix}")
    return metadata


def read_array(path: Path, missing: str, fix: str) -> np.ndarray:
    """A tokenizer's ``.npy`` file, read without pickle; ``missing`` says why the file was expected."""
    if not path.is_file():
        raise TokenizerError(f"{path}: missing, but {missing}. {fix}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: not a readable .npy array ({exc}). {fix}") from None
    if not isinstance(array, np.ndarray):
        raise TokenizerError(f"{path}: holds {type(array).__name__}, not one array. {fix}")
    return array


def check_kept_ids(kept_ids: Sequence[int] | np.ndarray, vocab_size: int, source: str = "kept_ids") -> np.ndarray:
    """Check the ids a vocabulary pruning keeps and return them as int64.

    Args:
        kept_ids: old ids to keep, strictly ascending, starting with the special ids 0-3 (as
            :func:`tokenization.vocab.prune_vocab` returns them).
        vocab_size: the size of the vocabulary they index.
        source: what to name in the error (a file, or ``kept_ids``).

    Raises:
        TokenizerError: not 1-D integers, not ascending, the specials missing, or an id outside ``range(vocab_size)``.
    """
    ids = np.asarray(kept_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise TokenizerError(f"{source}: kept ids must be a 1-D integer array. Received: {ids.dtype} {ids.shape}.")
    ids = ids.astype(np.int64)
    if ids.size <= N_SPECIAL or not np.array_equal(ids[:N_SPECIAL], np.arange(N_SPECIAL)):
        raise TokenizerError(
            f"{source}: kept ids must start with the special ids 0-{N_SPECIAL - 1} and keep at least one more. "
            f"Received: {ids[:N_SPECIAL + 1].tolist()} ({ids.size} ids)."
        )
    if np.any(np.diff(ids) <= 0) or ids[-1] >= vocab_size:
        raise TokenizerError(
            f"{source}: kept ids must be strictly ascending and below the vocabulary size {vocab_size}. "
            f"Received: {ids.size} ids up to {int(ids.max())}."
        )
    return ids


def check_texts(texts: Sequence[str], what: str) -> None:
    """Reject a bare string (it would be split into characters) and non-string items."""
    if isinstance(texts, str | bytes):
        raise TypeError(f"{what} takes a sequence of texts, not a single {type(texts).__name__}; wrap it in a list.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}: text {index} is a {type(text).__name__}, not str.")


class PaddedEncoder:
    """``encode`` for any tokenizer that has ``tokenize_ids``: truncate, then right-pad with PAD."""

    def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """int32 ``(len(texts), max_len)`` ids, truncated and right-padded with pad (0).

        Raises:
            TokenizerError: ``max_len`` < 1.
        """
        check_max_len(max_len)
        return pad_rows(self.tokenize_ids(texts), int(max_len))


def check_max_len(max_len: int) -> None:
    """Reject a sequence length the padded array cannot have."""
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise TokenizerError(f"tokenizer.max_len must be an integer >= 1. Received: {max_len!r}.")


def pad_rows(rows: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """Right-pad with :data:`PAD` and truncate to ``max_len``: int32 ``(len(rows), max_len)``."""
    out = np.full((len(rows), max_len), PAD, dtype=np.int32)
    for index, row in enumerate(rows):
        kept = row[:max_len]
        out[index, : len(kept)] = kept
    return out


def strip_specials(row: Sequence[int] | np.ndarray) -> list[int]:
    """Drop pad, bos and eos from a row of ids before decoding (unk stays visible)."""
    return [int(token_id) for token_id in row if int(token_id) not in (PAD, BOS, EOS)]
