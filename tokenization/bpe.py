"""Byte-pair-encoding tokenizer over youtokentome (imported lazily: a missing install is a DependencyError).

Files written by :meth:`BPETokenizer.save`: ``bpe.model`` (youtokentome's own text format) and ``tokenizer.json``;
after vocabulary pruning (:meth:`BPETokenizer.keep_ids`) also ``kept_ids.npy``: the model ids kept, ascending, so a
model id's new id is its position there and every other model id becomes unk; or, when it is the smaller file,
``kept_ids.mask``: the same ids as a bitmask over the model's ids (``np.packbits``, little bit order; directories
written before it hold kept_ids.npy, still read). youtokentome's model file cannot drop
ids (its merges build on one another), so the map is applied after encoding; ``vocab_size`` is then the pruned size
and ``model_vocab_size`` in ``tokenizer.json`` the model file's. Saved ``compact`` (what compressed versions ship), the
two data files are ``bpe.model.xz`` and ``kept_ids.npy.xz`` (or ``kept_ids.mask.xz``): the same bytes,
xz-compressed; the ids' form is chosen on the compressed sizes then.

youtokentome 1.0.6 behaviour this module works around (checked by running it):

- Training with ``vocab_size`` above what the data supports does not fail: it stops when no pair is left to merge
  and returns a smaller vocabulary (printing ``WARNING merged only: N pairs``). We log a warning and record both sizes.
- ``vocab_size`` below specials + distinct characters + 1 raises ``ValueError("... Set vocab_size>=N ...")``.
- A corrupt ``bpe.model`` often loads without error and then aborts the whole process (``std::out_of_range``) on the
  first encode, so the file is checked in Python before youtokentome sees it.
- Training prints its progress to the C-level stderr; it is captured and sent to this module's logger instead.
- Its encoder holds hash maps of every token's characters, spelling and merge (measured: 8.7 MB of RSS for a
  30,000-token model, whose file is 0.4 MB). A server holding many models loads them ``lean`` instead: ids come from
  :class:`MergeTable`, this module's Python rendering of youtokentome's encoding (2.6 MB for the same model, 3.9 MB
  for the whole lean tokenizer against 10-11 MB; the same ids, checked against youtokentome in
  tests/tokenization/test_bpe_lean.py), and youtokentome is loaded only if subwords, decoding or the vocabulary are
  asked for.
- Training has no seed and is not fully repeatable, even with ``n_threads=1``: near the end of a large vocabulary,
  ties between equally rare pairs are merged in varying order (seen on 2000 MR lines at vocab_size=3000: 1 run in 6
  gave a different model, changing the ids of 12 texts). Small vocabularies came out identical. The saved
  ``bpe.model`` is what makes a version reproducible.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenization.base import (
    BOS,
    BPE_MODEL_FILE,
    EOS,
    KEPT_IDS_FILE,
    KEPT_MASK_FILE,
    N_SPECIAL,
    PAD,
    UNK,
    PaddedEncoder,
    check_kept_ids,
    check_max_len,
    check_texts,
    data_file_form,
    npy_from_bytes,
    pad_rows,
    read_array,
    read_data_file,
    read_metadata,
    remove_stale_files,
    write_data_file,
    write_metadata,
)
from tokenization.errors import DependencyError, TokenizerError

if TYPE_CHECKING:
    from tokenization.settings import BPESettings

logger = logging.getLogger(__name__)

TRAIN_TEXT_FILE = "bpe_train.txt"
_TOO_SMALL = re.compile(r"vocab_size\s*>=\s*(\d+)")
# The last line of a youtokentome model lists the special ids in this order.
_SPECIALS_LINE = (UNK, PAD, BOS, EOS)
# youtokentome marks a word's start with this character, and also splits words at it.
WORD_START = "\u2581"
# With ``word_end``, every word gets this character appended before BPE sees it, so a token that ends a word differs
# from the same letters starting a longer one (``▁as▂`` the word, ``▁as`` the start of "aspen"), as the end-of-word
# symbol of Sennrich et al. (2016) does; youtokentome marks only word starts. It is removed from input text first.
WORD_END = "\u2582"


class BPETokenizer(PaddedEncoder):
    """Subword tokenizer backed by a youtokentome model; see the module docstring for its files and quirks.

    Build one with :meth:`train` or :meth:`load`.

    Args:
        model_path: a youtokentome model file; it is checked, then read into memory, so it may be deleted afterwards.
        lowercase: lower-case text before encoding (it must match how the model was trained).
        token_pattern: a regular expression whose matches are the words BPE splits into subwords (punctuation apart
            from the word before it, as the word tokenizer splits); empty: youtokentome's whitespace split alone, as
            every tokenizer saved before this setting existed.
        word_end: append :data:`WORD_END` to every word, so word-final tokens differ from word-initial ones.
        info: extra settings recorded in ``tokenizer.json`` (requested vocab size, coverage).
        kept_ids: after vocabulary pruning, the model ids kept (ascending, specials first); new id = position, other
            model ids encode as unk. None keeps the model's ids as they are.
        lean: encode with a :class:`MergeTable` instead of youtokentome (the same ids in under half the memory, at
            several times the encode time for a word not seen recently); youtokentome is then loaded only when
            subwords, decoding or the vocabulary are asked for.

    Raises:
        TokenizerError: the model file is missing or malformed, or ``kept_ids`` does not fit it.
        DependencyError: youtokentome is not installed (when ``lean``: when first needed).
    """

    kind = "bpe"

    def __init__(self, model_path: Path, *, lowercase: bool, info: Mapping[str, Any] | None = None,
                 kept_ids: np.ndarray | None = None, lean: bool = False, token_pattern: str = "",
                 word_end: bool = False) -> None:
        model_path = Path(model_path)
        self._words = _compile_pattern(token_pattern)
        self._token_pattern = token_pattern
        self._word_end = bool(word_end)
        self._model_vocab_size, chars, merges = _read_model_file(model_path)
        self._model_bytes = model_path.read_bytes()
        self._lean = lean
        self._table = MergeTable(chars, merges, self._model_vocab_size, str(model_path)) if lean else None
        del chars, merges
        self._yttm = None if lean else _youtokentome().BPE(model=str(model_path))
        self._lowercase = lowercase
        self._info = dict(info or {})
        self._kept: np.ndarray | None = None
        self._old_to_new: list[int] | None = None
        self._vocab_size = self._model_vocab_size
        if kept_ids is not None:
            self._kept = check_kept_ids(kept_ids, self._model_vocab_size)
            old_to_new = np.full(self._model_vocab_size, UNK, dtype=np.int64)
            old_to_new[self._kept] = np.arange(self._kept.size)
            self._old_to_new = old_to_new.tolist()  # a list: per-token lookups in Python are faster than numpy's
            self._vocab_size = int(self._kept.size)

    @classmethod
    def train(cls, texts: Sequence[str], cfg: BPESettings, *, workdir: Path | None = None) -> BPETokenizer:
        """Learn BPE merges from ``texts``.

        Args:
            texts: training texts.
            cfg: the ``tokenizer.bpe`` section (vocab_size, coverage, threads, lowercase; token_pattern and word_end
                where it has them, else whitespace words without an end mark).
            workdir: scratch directory that keeps the training text, model file and youtokentome's log (useful for
                debugging); not the directory to save into. None uses a temporary directory.

        Returns:
            The trained tokenizer. Its ``vocab_size`` may be below ``cfg.vocab_size`` when the texts support no more
            merges (a warning is logged). ``cfg.vocab_size`` ``"words"`` asks for as many ids as a word vocabulary of
            the same texts would hold (:func:`words_vocab_size`); ``"all"`` for every merge the texts support
            (:func:`all_merges_vocab_size`, no warning).

        Raises:
            TokenizerError: no texts, only whitespace, or ``cfg.vocab_size`` too small for the characters in the data.
            DependencyError: youtokentome is not installed.
        """
        check_texts(texts, "BPETokenizer.train")
        if not texts:
            raise TokenizerError("Cannot train a bpe tokenizer on 0 texts. Check the data section of the config.")
        # youtokentome reads one sentence per line, so a text's own line breaks become spaces (it splits on them
        # as whitespace when encoding anyway).
        token_pattern = str(getattr(cfg, "token_pattern", "") or "")
        word_end = bool(getattr(cfg, "word_end", False))
        words = _compile_pattern(token_pattern)
        lines = [_prepare(text, cfg.lowercase, words, word_end).replace("\n", " ").replace("\r", " ")
                 for text in texts]
        if not any(line.strip() for line in lines):
            raise TokenizerError(
                f"The {len(texts)} training texts are empty or whitespace, so the bpe vocabulary would be empty. "
                "Check the data section of the config."
            )
        if cfg.vocab_size == VOCAB_FROM_WORDS:
            vocab_size = words_vocab_size(lines)
        elif cfg.vocab_size == VOCAB_ALL_MERGES:
            vocab_size = all_merges_vocab_size(lines)
        else:
            vocab_size = int(cfg.vocab_size)
        yttm = _youtokentome()
        with contextlib.ExitStack() as stack:
            if workdir is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lifecycle-bpe-")))
            else:
                folder = Path(workdir)
                folder.mkdir(parents=True, exist_ok=True)
            data_path = folder / TRAIN_TEXT_FILE
            model_path = folder / BPE_MODEL_FILE
            data_path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
            log_path = folder / "bpe_train.log"
            try:
                with _native_stderr_to(log_path):
                    yttm.BPE.train(
                        data=str(data_path),
                        model=str(model_path),
                        vocab_size=vocab_size,
                        coverage=cfg.coverage,
                        n_threads=cfg.threads,
                        pad_id=PAD,
                        unk_id=UNK,
                        bos_id=BOS,
                        eos_id=EOS,
                    )
            except ValueError as exc:
                raise _training_error(exc, cfg) from None
            finally:
                _log_native_output(log_path)
            tokenizer = cls(
                model_path,
                lowercase=cfg.lowercase,
                info={"requested_vocab_size": vocab_size, "coverage": cfg.coverage,
                      **({"vocab_size_from": cfg.vocab_size} if isinstance(cfg.vocab_size, str) else {})},
                token_pattern=token_pattern,
                word_end=word_end,
            )
        if tokenizer.vocab_size < vocab_size and cfg.vocab_size != VOCAB_ALL_MERGES:  # "all" asks for the bound
            logger.warning(
                "tokenizer.bpe.vocab_size=%s is more than these %d texts support: youtokentome stopped at %d tokens. "
                "Lower tokenizer.bpe.vocab_size to %d or less to silence this.",
                cfg.vocab_size,
                len(texts),
                tokenizer.vocab_size,
                tokenizer.vocab_size,
            )
        if getattr(cfg, "drop_unseen", False):
            # Ids the training texts never encode to are merges only ever used inside longer tokens: their embedding
            # rows would never be trained, yet the pieces of an unseen word often land on them. They become unk
            # (kept_ids.npy), as a word the vocabulary lacks does, and their rows leave the model.
            # With BPE-dropout the training epochs also see the smaller pieces dropout leaves, and those pieces are
            # what an unseen word is cut into: the ids of a few dropout encodings count as seen too.
            dropout = float(getattr(cfg, "dropout", 0.0) or 0.0)
            rows = tokenizer.tokenize_ids(texts)
            for _ in range(DROPOUT_SEEN_PASSES if dropout > 0 else 0):
                rows += tokenizer._dropout_ids(texts, dropout)
            seen = np.unique(np.fromiter((i for row in rows for i in row), dtype=np.int64))
            kept = np.union1d(np.arange(N_SPECIAL), seen)
            if kept.size < tokenizer.vocab_size:
                logger.info("tokenizer.bpe.drop_unseen: %d of %d ids never occur in the training texts; they encode "
                            "as unk", tokenizer.vocab_size - kept.size, tokenizer.vocab_size)
                tokenizer = tokenizer.keep_ids(kept)
            tokenizer._info["drop_unseen"] = True
        return tokenizer

    @property
    def _bpe(self) -> Any:
        """The youtokentome model, loaded from the kept model bytes on first use when ``lean``."""
        if self._yttm is None:
            with self._model_file() as path:
                self._yttm = _youtokentome().BPE(model=str(path))
        return self._yttm

    @contextlib.contextmanager
    def _model_file(self) -> Iterator[Path]:
        """The kept model bytes as a bpe.model file in a temporary folder (youtokentome reads only paths)."""
        with tempfile.TemporaryDirectory(prefix="lifecycle-bpe-") as folder:
            path = Path(folder) / BPE_MODEL_FILE
            path.write_bytes(self._model_bytes)
            yield path

    @property
    def lean(self) -> bool:
        """Whether ids come from the Python merge table rather than youtokentome."""
        return self._lean

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (may be below the requested size, see :meth:`train`)."""
        return self._vocab_size

    @property
    def model_vocab_size(self) -> int:
        """Ids of the youtokentome model itself (``vocab_size`` unless the vocabulary was pruned)."""
        return self._model_vocab_size

    @property
    def kept_ids(self) -> np.ndarray | None:
        """The model ids a pruned vocabulary keeps (new id = position), or None when nothing was pruned."""
        return None if self._kept is None else self._kept.copy()

    @property
    def vocab(self) -> list[str]:
        """Subwords in id order; ``▁`` marks the start of a word."""
        subwords = list(self._bpe.vocab())
        return subwords if self._kept is None else [subwords[i] for i in self._kept]

    @property
    def vectors(self) -> None:
        """Always None: bpe tokenizers carry no pre-trained vectors."""
        return None

    @property
    def lowercase(self) -> bool:
        """Whether text is lower-cased before encoding."""
        return self._lowercase

    @property
    def token_pattern(self) -> str:
        """The regular expression that finds the words BPE splits; empty: whitespace only."""
        return self._token_pattern

    @property
    def word_end(self) -> bool:
        """Whether every word carries :data:`WORD_END` before BPE splits it."""
        return self._word_end

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model was trained on them: lower-cased, split into words, word ends marked."""
        return [_prepare(text, self._lowercase, self._words, self._word_end) for text in texts]

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The subwords of each text (``▁`` marks a word start; unknown characters show as themselves).

        After vocabulary pruning, subwords whose id was dropped show as ``<UNK>``, as they encode.
        """
        check_texts(texts, "BPETokenizer.tokenize")
        if self._kept is not None:
            return [[self.id_to_token(token_id) for token_id in row] for row in self.tokenize_ids(texts)]
        yttm = _youtokentome()
        prepared = self._prepare(texts)
        return self._bpe.encode(prepared, output_type=yttm.OutputType.SUBWORD)

    def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded ids per text, without bos/eos (after vocabulary pruning: the new ids, dropped ones as unk)."""
        check_texts(texts, "BPETokenizer.tokenize_ids")
        prepared = self._prepare(texts)
        if self._table is not None:
            rows = self._table.encode(prepared)
        else:
            rows = self._bpe.encode(prepared, output_type=_youtokentome().OutputType.ID)
        table = self._old_to_new
        return rows if table is None else [[table[token_id] for token_id in row] for row in rows]

    def encode_with_dropout(self, texts: Sequence[str], max_len: int, dropout: float) -> np.ndarray:
        """Training-time ids as :meth:`encode` gives them, but with BPE-dropout: each merge skipped with probability
        ``dropout``, so a word comes out in smaller pieces, differently on every call. Never used for evaluation or
        serving. Always through youtokentome (the lean merge table has no dropout); unseeded.

        Raises:
            TokenizerError: ``dropout`` outside [0, 1) or ``max_len`` < 1.
        """
        check_texts(texts, "BPETokenizer.encode_with_dropout")
        check_max_len(max_len)
        return pad_rows(self._dropout_ids(texts, dropout), int(max_len))

    def _dropout_ids(self, texts: Sequence[str], dropout: float) -> list[list[int]]:
        """Unpadded ids per text under BPE-dropout (see :meth:`encode_with_dropout`)."""
        if not 0.0 <= dropout < 1.0:
            raise TokenizerError(f"tokenizer.bpe.dropout must be in [0, 1). Received: {dropout!r}.")
        rows = self._bpe.encode(self._prepare(texts), output_type=_youtokentome().OutputType.ID,
                                dropout_prob=float(dropout))
        table = self._old_to_new
        return rows if table is None else [[table[token_id] for token_id in row] for row in rows]

    def keep_ids(self, kept_ids: np.ndarray) -> BPETokenizer:
        """The vocabulary shrunk to ``kept_ids`` (ascending, specials first): id ``i`` becomes ``kept_ids[i]``.

        Pruning an already pruned tokenizer composes the two maps, so the saved map always starts from the model.

        Raises:
            TokenizerError: ``kept_ids`` is not an ascending list of this tokenizer's ids starting with the specials.
        """
        ids = check_kept_ids(kept_ids, self._vocab_size)
        model_ids = ids if self._kept is None else self._kept[ids]
        with self._model_file() as path:
            return BPETokenizer(path, lowercase=self._lowercase, info=self._info, kept_ids=model_ids,
                                lean=self._lean, token_pattern=self._token_pattern, word_end=self._word_end)

    def decode(self, ids: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Text per row of ids; pad, bos and eos are skipped, unk shows as ``<UNK>``.

        Raises:
            TokenizerError: an id is outside ``range(vocab_size)``.
        """
        rows = [[int(token_id) for token_id in row] for row in ids]
        for row in rows:
            for token_id in row:
                self._check_id(token_id)
        if self._kept is not None:
            kept = self._kept
            rows = [[int(kept[token_id]) for token_id in row] for row in rows]
        texts = self._bpe.decode(rows, ignore_ids=[PAD, BOS, EOS]) if rows else []
        return [text.replace(WORD_END, "") for text in texts] if self._word_end else texts

    def id_to_token(self, token_id: int) -> str:
        """The subword of one id.

        Raises:
            TokenizerError: the id is outside ``range(vocab_size)``.
        """
        self._check_id(int(token_id))
        model_id = int(token_id) if self._kept is None else int(self._kept[int(token_id)])
        return self._bpe.id_to_subword(model_id)

    def save(self, directory: Path, *, compact: bool = False) -> None:
        """Write ``bpe.model``, ``kept_ids.npy`` (when pruned) and ``tokenizer.json`` into ``directory``
        (``compact``: the first two xz-compressed, see the module docstring)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = [write_data_file(directory, BPE_MODEL_FILE, self._model_bytes, compact=compact)]
        pruned: dict[str, Any] = {}
        if self._kept is not None:
            # The narrowest dtype that holds the model's ids: the map ships with every deployed version.
            dtype = np.uint16 if self._model_vocab_size <= 2**16 else np.int32
            buffer = io.BytesIO()
            np.save(buffer, self._kept.astype(dtype), allow_pickle=False)
            present = np.zeros(self._model_vocab_size, dtype=bool)
            present[self._kept] = True
            forms = [data_file_form(KEPT_IDS_FILE, buffer.getvalue(), compact=compact),
                     data_file_form(KEPT_MASK_FILE, np.packbits(present, bitorder="little").tobytes(),
                                    compact=compact)]
            name, data = min(forms, key=lambda form: len(form[1]))  # the ids' list on a tie: what older readers read
            (directory / name).write_bytes(data)
            files.append(name)
            pruned = {"model_vocab_size": self._model_vocab_size}
        remove_stale_files(directory, keep=files)
        write_metadata(
            directory,
            {
                "kind": self.kind,
                "vocab_size": self.vocab_size,
                "lowercase": self._lowercase,
                "token_pattern": self._token_pattern,
                "word_end": self._word_end,
                **self._info,
                **pruned,
                "files": files,
            },
        )

    @classmethod
    def load(cls, directory: Path, *, lean: bool = False) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save` (``lean``: see the class).

        Raises:
            TokenizerError: ``tokenizer.json`` or ``bpe.model`` is missing, malformed or disagrees with the other.
            DependencyError: youtokentome is not installed (when ``lean``: when first needed).
        """
        directory = Path(directory)
        metadata = read_metadata(directory, expected_kind="bpe")
        if not isinstance(metadata.get("lowercase"), bool):
            raise TokenizerError(f"{directory / 'tokenizer.json'}: lowercase is missing or not a bool. {_FIX}")
        model_path = directory / BPE_MODEL_FILE
        model_bytes = read_data_file(directory, BPE_MODEL_FILE, metadata, _FIX)
        # Files written before these settings existed have neither key: they split on whitespace and mark no ends.
        token_pattern = metadata.get("token_pattern", "")
        word_end = metadata.get("word_end", False)
        if not isinstance(token_pattern, str):
            raise TokenizerError(f"{directory / 'tokenizer.json'}: token_pattern must be a string. "
                                 f"Received: {token_pattern!r}. {_FIX}")
        if not isinstance(word_end, bool):
            raise TokenizerError(f"{directory / 'tokenizer.json'}: word_end must be a bool. Received: {word_end!r}. "
                                 f"{_FIX}")
        with contextlib.ExitStack() as stack:
            if model_bytes is not None:  # compact: youtokentome reads only paths, the constructor keeps the bytes
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lifecycle-bpe-")))
                (folder / BPE_MODEL_FILE).write_bytes(model_bytes)
                model_path = folder / BPE_MODEL_FILE
            try:
                size = check_model_file(model_path)
            except TokenizerError as exc:
                if model_bytes is None:
                    raise
                # Name the file the directory holds, not the temporary copy.
                raise TokenizerError(str(exc).replace(str(model_path),
                                                      str(directory / (BPE_MODEL_FILE + ".xz")))) from None
            kept_ids = None
            expected = metadata["vocab_size"]
            kept_name = next((name for name in (KEPT_IDS_FILE, KEPT_IDS_FILE + ".xz", KEPT_MASK_FILE,
                                                KEPT_MASK_FILE + ".xz")
                              if name in (metadata.get("files") or [])), None)
            if kept_name is not None:
                expected = metadata.get("model_vocab_size")
                plain = KEPT_MASK_FILE if kept_name.startswith(KEPT_MASK_FILE) else KEPT_IDS_FILE
                kept_ids = _read_kept_ids(directory / plain, size, metadata["vocab_size"],
                                          read_data_file(directory, plain, metadata, _FIX))
            if size != expected:
                raise TokenizerError(
                    f"{directory / BPE_MODEL_FILE}: holds {size} tokens but tokenizer.json says "
                    f"{'model_vocab_size' if kept_ids is not None else 'vocab_size'}={expected}; the files do not "
                    f"belong together. {_FIX}"
                )
            info: dict[str, Any] = {key: metadata[key] for key in ("requested_vocab_size", "coverage",
                                                                    "vocab_size_from", "drop_unseen")
                                    if key in metadata}
            return cls(model_path, lowercase=metadata["lowercase"], info=info, kept_ids=kept_ids, lean=lean,
                       token_pattern=token_pattern, word_end=word_end)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self._vocab_size:
            raise TokenizerError(f"Token id must be in [0, {self._vocab_size}). Received: {token_id}.")


# tokenizer.bpe.vocab_size's value that reads the size from the training texts (see words_vocab_size).
VOCAB_FROM_WORDS = "words"
VOCAB_ALL_MERGES = "all"
# With tokenizer.bpe.dropout, drop_unseen keeps the ids of this many dropout encodings of the training texts as well
# (youtokentome's sampling is unseeded, so the rarest of those pieces may differ between two runs).
DROPOUT_SEEN_PASSES = 4


def _words_and_chars(lines: Sequence[str]) -> tuple[set[str], set[str]]:
    """The distinct words of ``lines`` (as prepared for youtokentome) and their characters, the word start included."""
    words: set[str] = set()
    for line in lines:
        words.update(_WORDS.findall(line))
    chars: set[str] = {WORD_START}
    for word in words:
        chars.update(word)
    return words, chars


def words_vocab_size(lines: Sequence[str]) -> int:
    """The BPE size ``vocab_size: words`` asks for: the specials plus one id per distinct word of ``lines`` (as
    prepared for youtokentome), the size a word vocabulary of the same texts has with min_count 1. Frequent words then
    come out whole, while the rarest are left in pieces that training sees, so pieces of unseen words have trained
    embeddings. Never below what youtokentome needs: one id per distinct character and one merge."""
    words, chars = _words_and_chars(lines)
    return max(N_SPECIAL + len(words), N_SPECIAL + len(chars) + 1)


def all_merges_vocab_size(lines: Sequence[str]) -> int:
    """The BPE size ``vocab_size: all`` asks for: at least every merge ``lines`` support, so youtokentome stops only
    when every training word is one token (the specials, one id per distinct character, and at most len(word) - 1
    merges per distinct word). With ``drop_unseen`` the training texts then encode exactly as a word vocabulary of
    them would, and only words the training split lacks are cut into pieces."""
    words, chars = _words_and_chars(lines)
    return N_SPECIAL + len(chars) + 1 + sum(len(word) for word in words)


_FIX = "Re-run `lifecycle tokenize` (or train and save the tokenizer again) to rebuild the directory."


def _kept_from_mask(path: Path, model_vocab_size: int, data: bytes | None) -> np.ndarray:
    """The kept ids of a ``kept_ids.mask`` (or ``data``, its decompressed compact form)."""
    if data is None:
        if not path.is_file():
            raise TokenizerError(f"{path}: missing, but tokenizer.json lists it (a pruned vocabulary). {_FIX}")
        data = path.read_bytes()
    mask = np.frombuffer(data, dtype=np.uint8)
    if mask.size != (model_vocab_size + 7) // 8 or (model_vocab_size % 8 and mask[-1] >> (model_vocab_size % 8)):
        raise TokenizerError(f"{path}: a {mask.size}-byte mask does not fit the model's {model_vocab_size} ids (it "
                             f"needs {(model_vocab_size + 7) // 8} bytes, no bit past the last id). {_FIX}")
    return np.flatnonzero(np.unpackbits(mask, count=model_vocab_size, bitorder="little")).astype(np.int64)


def _read_kept_ids(path: Path, model_vocab_size: int, vocab_size: int, data: bytes | None = None) -> np.ndarray:
    """Load ``kept_ids.npy`` or ``kept_ids.mask`` (or ``data``, its decompressed compact form) without pickle and
    check it against the model and ``tokenizer.json``."""
    if path.name == KEPT_MASK_FILE:
        kept = _kept_from_mask(path, model_vocab_size, data)
    elif data is None:
        kept = read_array(path, "tokenizer.json lists it (a pruned vocabulary)", _FIX)
    else:
        kept = npy_from_bytes(data, path, _FIX)
    kept = check_kept_ids(kept, model_vocab_size, str(path))
    if kept.size != vocab_size:
        raise TokenizerError(
            f"{path}: keeps {kept.size} ids but tokenizer.json says vocab_size={vocab_size}; the files do not belong "
            f"together. {_FIX}"
        )
    return kept


def check_model_file(path: Path) -> int:
    """Check that ``path`` is a well-formed youtokentome model with the default special ids; return its vocab size.

    youtokentome itself accepts many corrupt files and then aborts the process when encoding, hence this check.

    Raises:
        TokenizerError: naming the file and the fix.
    """
    return _read_model_file(path)[0]


def _read_model_file(path: Path) -> tuple[int, list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The checked vocab size, (code point, id) character rows and (left, right, merged) merge rows of a model."""
    if not path.is_file():
        raise TokenizerError(f"{path}: missing, but tokenizer.json describes a bpe tokenizer. {_FIX}")

    def corrupt(reason: str) -> TokenizerError:
        return TokenizerError(f"{path}: not a valid youtokentome model ({reason}). {_FIX}")

    try:
        lines = path.read_bytes().decode("ascii").split("\n")
        rows = [tuple(map(int, line.split())) for line in lines if line.strip()]
    except (UnicodeDecodeError, ValueError):
        raise corrupt("expected lines of integers") from None
    if not rows or len(rows[0]) != 2:
        raise corrupt("the first line must hold the character and merge counts")
    n_chars, n_merges = rows[0]
    if n_chars < 0 or n_merges < 0 or len(rows) != 1 + n_chars + n_merges + 1:
        raise corrupt(f"the header promises {n_chars} characters and {n_merges} merges; the line count disagrees")
    vocab_size = N_SPECIAL + n_chars + n_merges
    known: set[int] = set()
    for row in rows[1 : 1 + n_chars]:
        if len(row) != 2 or not 0 <= row[0] <= sys.maxunicode or not N_SPECIAL <= row[1] < vocab_size:
            raise corrupt(f"bad character line {' '.join(map(str, row))!r}")
        known.add(row[1])
    if len(known) != n_chars:
        raise corrupt("two characters share an id")
    for row in rows[1 + n_chars : -1]:
        # Each merge must join two ids defined above it into a new id, or encoding looks up a missing entry.
        if len(row) != 3 or row[0] not in known or row[1] not in known or not N_SPECIAL <= row[2] < vocab_size:
            raise corrupt(f"bad merge line {' '.join(map(str, row))!r}")
        if row[2] in known:
            raise corrupt(f"merge id {row[2]} is defined twice")
        known.add(row[2])
    if rows[-1] != _SPECIALS_LINE:
        raise corrupt(f"special ids must be unk, pad, bos, eos = {' '.join(map(str, _SPECIALS_LINE))}")
    return vocab_size, rows[1 : 1 + n_chars], rows[1 + n_chars : -1]


# youtokentome's word boundaries: C isspace() below 256 (under a C or UTF-8 locale: tab, newline, vertical tab, form
# feed, carriage return, space) and the word-start mark itself. Not str.split(): that also splits at U+00A0, U+2003...
_WORDS = re.compile("[^\t\n\x0b\x0c\r \u2581]+")
# Recently encoded words kept per table (at most; about 0.4 MB): natural text repeats most of its words.
WORD_CACHE_SIZE = 4096


class MergeTable:
    """youtokentome's BPE encoding to ids (without dropout, bos or eos), from a model's characters and merge rules.

    Each word (text split at youtokentome's spaces) starts as the word-start mark plus one id per character, a run of
    characters outside the alphabet becoming one unknown node; then the adjacent pair with the earliest merge rule is
    merged, the leftmost first, until no pair has a rule; unknown nodes come out as unk. That is the order in which
    youtokentome's priority queue merges (a merged id only enters rules later than the one that made it), so the ids
    are the same. Memory: a dict from pair to rule number plus one int array, 2.6 MB for 30,000 tokens. Time: a few
    microseconds per word not in the cache of recent words (youtokentome: well under one).

    Raises (from the constructor):
        TokenizerError: the model has no word-start character (youtokentome would abort on it).
    """

    def __init__(self, chars: Sequence[tuple[int, ...]], merges: Sequence[tuple[int, ...]], vocab_size: int,
                 source: str = "bpe.model") -> None:
        self._chars = {chr(row[0]): row[1] for row in chars}
        if WORD_START not in self._chars:
            raise TokenizerError(f"{source}: not a valid youtokentome model (the word-start character U+2581 is "
                                 f"missing). {_FIX}")
        self._start = self._chars[WORD_START]
        # A pair (left, right) is the int left * vocab_size + right; ids below vocab_size keep it unique.
        self._stride = vocab_size
        self._rules = {row[0] * vocab_size + row[1]: rule for rule, row in enumerate(merges)}
        self._merged = array("i", (row[2] for row in merges))
        # Two generations: a word found in the old one moves to the new one; when the new one holds half the
        # cache, it becomes the old one. Frequent words stay, and the cache never holds more than WORD_CACHE_SIZE.
        self._cache: dict[str, list[int]] = {}
        self._old: dict[str, list[int]] = {}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded ids per text, as youtokentome's ``encode(texts, output_type=ID)`` gives them."""
        rows = []
        for text in texts:
            text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, as in youtokentome's wrapper
            row: list[int] = []
            for word in _WORDS.findall(text):
                ids = self._cache.get(word)
                if ids is None:
                    ids = self._old.get(word) or self._encode_word(word)
                    if len(self._cache) >= WORD_CACHE_SIZE // 2:
                        self._old, self._cache = self._cache, {}
                    self._cache[word] = ids
                row += ids
            rows.append(row)
        return rows

    def _encode_word(self, word: str) -> list[int]:
        stride, rule_of, merged = self._stride, self._rules.get, self._merged
        unknown = stride  # a node no rule joins (as a left id its pairs are >= stride**2; as a right id, (x+1, 0))
        ids = [self._start, *[self._chars.get(char, unknown) for char in word]]
        if unknown in ids:  # a run of unknown characters is one node
            ids = [token for i, token in enumerate(ids) if token != unknown or ids[i - 1] != unknown]
        none = len(merged)  # sorts after every rule
        rules = [rule_of(ids[i] * stride + ids[i + 1], none) for i in range(len(ids) - 1)]
        while rules:
            rule = min(rules)
            if rule == none:
                break
            at = rules.index(rule)
            token = merged[rule]
            ids[at : at + 2] = [token]
            del rules[at]
            if at > 0:
                rules[at - 1] = rule_of(ids[at - 1] * stride + token, none)
            if at < len(rules):
                rules[at] = rule_of(token * stride + ids[at + 1], none)
        return [UNK if token == unknown else token for token in ids] if unknown in ids else ids


def _youtokentome() -> Any:
    """Import youtokentome on first use, so importing this package stays light."""
    try:
        import youtokentome
    except ImportError:
        raise DependencyError(
            "youtokentome is not installed; tokenizer.kind=bpe needs it.",
            hint="Run `pip install Cython` then `pip install --no-build-isolation youtokentome==1.0.6` (it ships only "
            "as source), or use tokenizer.kind=word.",
        ) from None
    return youtokentome


def _compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """The word pattern compiled (None for the empty pattern: whitespace words); a bad one names the config key."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TokenizerError(f"tokenizer.bpe.token_pattern={pattern!r} is not a valid regular expression ({exc}). "
                             "Fix the pattern, or set it to \"\" to split on whitespace only.") from None


def _prepare(text: str, lowercase: bool, words: re.Pattern[str] | None, word_end: bool) -> str:
    """One text as youtokentome sees it: lower-cased, reduced to the pattern's words joined by spaces (punctuation
    becomes a word of its own, as the word tokenizer splits it), each word ending in :data:`WORD_END` if asked."""
    if lowercase:
        text = text.lower()
    if words is None and not word_end:
        return text
    if word_end:
        text = text.replace(WORD_END, "")
    found = _WORDS.findall(text) if words is None else [m.group(0) for m in words.finditer(text) if m.group(0)]
    return " ".join(word + WORD_END for word in found) if word_end else " ".join(found)


def _training_error(exc: ValueError, cfg: BPESettings) -> TokenizerError:
    """Turn youtokentome's training ValueError into a one-line TokenizerError naming the config key."""
    message = str(exc).strip()
    needed = _TOO_SMALL.search(message)
    if needed:
        return TokenizerError(
            f"tokenizer.bpe.vocab_size={cfg.vocab_size} is too small for these texts: youtokentome needs at least "
            f"{needed.group(1)} (4 specials, one id per distinct character, one merge). Raise tokenizer.bpe.vocab_size "
            "or lower tokenizer.bpe.coverage."
        )
    return TokenizerError(
        f"youtokentome could not train with tokenizer.bpe.vocab_size={cfg.vocab_size}, coverage={cfg.coverage}, "
        f"threads={cfg.threads}: {message}. Check these settings."
    )


@contextlib.contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` for the duration: youtokentome's C++ code prints there, not sys.stderr."""
    try:
        saved = os.dup(2)
    except OSError:
        saved = -1
    if saved < 0:
        # No usable descriptor 2 (a daemon, say): nothing to redirect, so youtokentome's output goes nowhere anyway.
        yield
        return
    sys.stderr.flush()
    try:
        with path.open("wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _log_native_output(path: Path) -> None:
    """Forward youtokentome's captured training output to the debug log."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return
    if text:
        logger.debug("youtokentome training output:\n%s", text)
