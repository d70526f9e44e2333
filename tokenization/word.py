"""Word-level tokenizer: a regex splits (optionally lower-cased) text, a counted vocabulary maps words to ids.

With ``word2vec.enabled`` it also trains gensim word2vec on the training texts and keeps a ``(vocab_size, dim)``
float32 matrix aligned to the ids, used to initialise the embedding (Kim 2014's static / non-static modes).

Files written by :meth:`WordTokenizer.save`: ``vocab.txt`` (UTF-8, one token per line, line number = id),
``vectors.npy`` (only with word2vec; saved without pickle) and ``tokenizer.json``; saved ``compact``, the first two
are ``vocab.txt.xz`` and ``vectors.npy.xz`` (the same bytes, xz-compressed).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenization.base import (
    DEFAULT_SEED,
    N_SPECIAL,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    VECTORS_FILE,
    VOCAB_FILE,
    PaddedEncoder,
    check_kept_ids,
    check_texts,
    npy_from_bytes,
    read_array,
    read_data_file,
    read_metadata,
    remove_stale_files,
    strip_specials,
    write_data_file,
    write_metadata,
)
from tokenization.errors import DependencyError, TokenizerError
from tokenization.vocab import build_vocab, count_tokens

if TYPE_CHECKING:
    from tokenization.settings import Word2VecSettings, WordSettings

logger = logging.getLogger(__name__)

# Kim (2014) draws vectors of words missing from word2vec from U[-a, a], a chosen so their variance matches the
# pre-trained ones; 0.25 is the value in his code.
RANDOM_VECTOR_SCALE = 0.25


class WordTokenizer(PaddedEncoder):
    """Word vocabulary with optional word2vec vectors; see the module docstring for the files it writes.

    Build one with :meth:`train` or :meth:`load`; the constructor takes an already built vocabulary.

    Args:
        vocab: tokens in id order, starting with :data:`~tokenization.base.SPECIAL_TOKENS`.
        lowercase: lower-case text before matching ``token_pattern``.
        token_pattern: regular expression whose matches are the tokens.
        vectors: optional float32 ``(len(vocab), dim)`` matrix aligned to the ids.
        info: extra settings recorded in ``tokenizer.json`` (min_count, max_size, word2vec details).

    Raises:
        TokenizerError: the vocabulary does not start with the special tokens, repeats a token, or does not match
            ``vectors``; or the pattern does not compile.
    """

    kind = "word"

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool,
        token_pattern: str,
        vectors: np.ndarray | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        tokens = list(vocab)
        if tuple(tokens[:N_SPECIAL]) != SPECIAL_TOKENS:
            raise TokenizerError(f"The vocabulary must start with {', '.join(SPECIAL_TOKENS)}. Received: {tokens[:4]}.")
        if len(set(tokens)) != len(tokens):
            raise TokenizerError("The vocabulary repeats a token; every token needs exactly one id.")
        if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != len(tokens)):
            raise TokenizerError(
                f"vectors must have shape ({len(tokens)}, dim), one row per id. Received: {vectors.shape}."
            )
        self._tokens = tokens
        # Specials are left out of the lookup so that no text, whatever its casing, encodes to pad, bos or eos.
        self._lookup = {token: index for index, token in enumerate(tokens) if index >= N_SPECIAL}
        self._lowercase = lowercase
        self._token_pattern = token_pattern
        self._regex = _compile_pattern(token_pattern, "tokenizer.word.token_pattern")
        self._vectors = None if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        self._info = dict(info or {})

    def without_vectors(self) -> WordTokenizer:
        """The same vocabulary without word2vec vectors: what a deployed model needs (its embedding holds them)."""
        info = {**self._info, "word2vec": None}
        return WordTokenizer(self._tokens, lowercase=self._lowercase, token_pattern=self._token_pattern, info=info)

    def keep_ids(self, kept_ids: np.ndarray) -> WordTokenizer:
        """The vocabulary shrunk to ``kept_ids`` (ascending, specials first): id ``i`` becomes ``kept_ids[i]``'s word.

        Dropped words leave the vocabulary, so they encode as unk; ``vocab.txt`` is written in the new id order.
        word2vec vectors, if any, keep the kept rows.

        Raises:
            TokenizerError: ``kept_ids`` is not an ascending list of ids of this vocabulary starting with the specials.
        """
        ids = check_kept_ids(kept_ids, self.vocab_size)
        vectors = None if self._vectors is None else self._vectors[ids]
        return WordTokenizer([self._tokens[i] for i in ids], lowercase=self._lowercase,
                             token_pattern=self._token_pattern, vectors=vectors, info=self._info)

    def unseen_words(self, texts: Sequence[str], min_count: int = 1) -> list[str]:
        """Words of ``texts`` that are not in the vocabulary and occur at least ``min_count`` times.

        Ordered as :func:`~tokenization.vocab.build_vocab` orders a vocabulary (descending count, ties alphabetical),
        so growing with them is independent of the order of ``texts``.

        Raises:
            TokenizerError: ``min_count`` < 1.
        """
        if min_count < 1:
            raise TokenizerError(f"min_count must be >= 1. Received: {min_count}.")
        counts = count_tokens(self.tokenize(texts))
        known = set(self._tokens)
        fresh = [word for word, count in counts.items() if count >= min_count and word not in known]
        return sorted(fresh, key=lambda word: (-counts[word], word))

    def extend(self, words: Sequence[str], vectors: np.ndarray | None = None) -> WordTokenizer:
        """The vocabulary with ``words`` appended as new ids; every existing id keeps its word.

        Args:
            words: new tokens, none already in the vocabulary, none holding a line break.
            vectors: ``(len(words), dim)`` rows appended to this tokenizer's word2vec vectors; required when it has
                vectors (their rows must stay aligned to the ids), ignored when it has none.

        Raises:
            TokenizerError: a word is already in the vocabulary, repeated, empty or holds a line break; or the vectors
                do not fit.
        """
        words = list(words)
        clash = sorted(set(words) & set(self._tokens))
        if clash:
            raise TokenizerError(f"cannot add {', '.join(map(repr, clash[:5]))}: already in the vocabulary.")
        if any(not word or "\n" in word or "\r" in word for word in words):
            raise TokenizerError("cannot add an empty token or one holding a line break (vocab.txt is one per line).")
        grown = None
        if self._vectors is not None:
            if vectors is None or vectors.shape != (len(words), self._vectors.shape[1]):
                got = None if vectors is None else vectors.shape
                raise TokenizerError(f"this tokenizer carries word2vec vectors, so extend() needs ({len(words)}, "
                                     f"{self._vectors.shape[1]}) rows for the new words. Received: {got}.")
            grown = np.concatenate([self._vectors, vectors.astype(np.float32)])
        return WordTokenizer([*self._tokens, *words], lowercase=self._lowercase, token_pattern=self._token_pattern,
                             vectors=grown, info=self._info)

    @classmethod
    def train(cls, texts: Sequence[str], cfg: WordSettings, *, seed: int = DEFAULT_SEED) -> WordTokenizer:
        """Count the words of ``texts`` and, if enabled, train word2vec on them.

        Args:
            texts: training texts.
            cfg: the ``tokenizer.word`` config section.
            seed: seed of word2vec and of the random rows of words without a trained vector.

        Returns:
            The trained tokenizer.

        Raises:
            TokenizerError: no texts, or no word survives ``token_pattern`` and ``min_count``.
            DependencyError: word2vec is enabled and gensim is not installed.
        """
        check_texts(texts, "WordTokenizer.train")
        if not texts:
            raise TokenizerError("Cannot train a word tokenizer on 0 texts. Check the data section of the config.")
        regex = _compile_pattern(cfg.token_pattern, "tokenizer.word.token_pattern")
        token_lists = [_split(regex, text, cfg.lowercase) for text in texts]
        counts = count_tokens(token_lists)
        for token in counts:
            # vocab.txt is one token per line, so a token holding a line break could not be saved.
            if "\n" in token or "\r" in token:
                raise TokenizerError(
                    f"tokenizer.word.token_pattern={cfg.token_pattern!r} matched a token containing a line break "
                    f"({token!r}). Use a pattern that never matches whitespace."
                )
        vocab = build_vocab(counts, cfg.min_count, cfg.max_size, SPECIAL_TOKENS)
        if len(vocab) == N_SPECIAL:
            if not counts:
                raise TokenizerError(
                    f"The {len(texts)} training texts contain no token matching tokenizer.word.token_pattern="
                    f"{cfg.token_pattern!r}. Check the pattern and that the texts are not empty."
                )
            raise TokenizerError(
                f"No word occurs tokenizer.word.min_count={cfg.min_count} times (the most frequent occurs "
                f"{counts.most_common(1)[0][1]} times), so the vocabulary is empty. Lower tokenizer.word.min_count."
            )
        info: dict[str, Any] = {"min_count": cfg.min_count, "max_size": cfg.max_size, "word2vec": None}
        vectors = None
        w2v = cfg.word2vec
        if w2v.enabled:
            trained = train_word2vec(token_lists, w2v, seed=seed)
            vectors, n_pretrained = align_vectors(vocab, trained, w2v.dim, seed=seed)
            info["word2vec"] = {
                "dim": w2v.dim,
                "window": w2v.window,
                "min_count": w2v.min_count,
                "epochs": w2v.epochs,
                "sg": w2v.sg,
                "workers": w2v.workers,
                "seed": seed,
                "n_pretrained": n_pretrained,
            }
        logger.info("word vocabulary: %d ids from %d distinct tokens", len(vocab), len(counts))
        return cls(vocab, lowercase=cfg.lowercase, token_pattern=cfg.token_pattern, vectors=vectors, info=info)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self._tokens)

    @property
    def vocab(self) -> list[str]:
        """Tokens in id order (a copy)."""
        return list(self._tokens)

    @property
    def vectors(self) -> np.ndarray | None:
        """float32 ``(vocab_size, dim)`` word2vec matrix aligned to the ids, or None without word2vec."""
        return self._vectors

    @property
    def n_pretrained(self) -> int:
        """Vocabulary words whose row is a trained word2vec vector (the rest are random); 0 without word2vec."""
        word2vec = self._info.get("word2vec")
        return int(word2vec["n_pretrained"]) if word2vec else 0

    @property
    def lowercase(self) -> bool:
        """Whether text is lower-cased before tokenizing."""
        return self._lowercase

    @property
    def token_pattern(self) -> str:
        """The regular expression whose matches are the tokens."""
        return self._token_pattern

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The word tokens of each text, as the vocabulary sees them (lower-cased if configured)."""
        check_texts(texts, "WordTokenizer.tokenize")
        return [_split(self._regex, text, self._lowercase) for text in texts]

    def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded ids per text; unknown words are :data:`~tokenization.base.UNK`."""
        lookup = self._lookup
        return [[lookup.get(token, UNK) for token in tokens] for tokens in self.tokenize(texts)]

    def decode(self, ids: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Space-joined tokens per row; pad, bos and eos are skipped, unk shows as ``<UNK>``."""
        return [" ".join(self.id_to_token(token_id) for token_id in strip_specials(row)) for row in ids]

    def id_to_token(self, token_id: int) -> str:
        """The word of one id.

        Raises:
            TokenizerError: the id is outside ``range(vocab_size)``.
        """
        if not 0 <= int(token_id) < len(self._tokens):
            raise TokenizerError(f"Token id must be in [0, {len(self._tokens)}). Received: {token_id}.")
        return self._tokens[int(token_id)]

    def save(self, directory: Path, *, compact: bool = False) -> None:
        """Write ``vocab.txt``, ``vectors.npy`` (with word2vec) and ``tokenizer.json`` into ``directory``
        (``compact``: the first two xz-compressed, see the module docstring)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Bytes, not write_text: no platform newline translation, so line number = id on every OS.
        files = [write_data_file(directory, VOCAB_FILE, ("\n".join(self._tokens) + "\n").encode("utf-8"),
                                 compact=compact)]
        if self._vectors is not None:
            buffer = io.BytesIO()
            np.save(buffer, self._vectors, allow_pickle=False)
            files.append(write_data_file(directory, VECTORS_FILE, buffer.getvalue(), compact=compact))
        remove_stale_files(directory, keep=files)
        write_metadata(
            directory,
            {
                "kind": self.kind,
                "vocab_size": self.vocab_size,
                "lowercase": self._lowercase,
                "token_pattern": self._token_pattern,
                **self._info,
                "files": files,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> WordTokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            TokenizerError: ``tokenizer.json``, ``vocab.txt`` or ``vectors.npy`` is missing or disagrees with the
                others.
        """
        directory = Path(directory)
        metadata = read_metadata(directory, expected_kind="word")
        fix = "Re-run `lifecycle tokenize` (or train and save the tokenizer again) to rebuild the directory."
        meta_path = directory / "tokenizer.json"
        for key, kind in (("lowercase", bool), ("token_pattern", str)):
            if not isinstance(metadata.get(key), kind):
                raise TokenizerError(f"{meta_path}: {key} is missing or not a {kind.__name__}. {fix}")
        try:
            re.compile(metadata["token_pattern"])
        except re.error as exc:
            raise TokenizerError(
                f"{meta_path}: token_pattern is not a valid regular expression ({exc}). {fix}"
            ) from None
        word2vec = metadata.get("word2vec")
        if word2vec is not None and not (
            isinstance(word2vec, dict) and all(isinstance(word2vec.get(key), int) for key in ("dim", "n_pretrained"))
        ):
            raise TokenizerError(f"{meta_path}: word2vec must be null or hold integer dim and n_pretrained. {fix}")
        vocab = _read_vocab(directory / VOCAB_FILE, metadata["vocab_size"], fix,
                            read_data_file(directory, VOCAB_FILE, metadata, fix))
        vectors = None
        if word2vec is not None:
            vectors = _read_vectors(directory / VECTORS_FILE, (metadata["vocab_size"], word2vec["dim"]), fix,
                                    read_data_file(directory, VECTORS_FILE, metadata, fix))
        info = {key: metadata.get(key) for key in ("min_count", "max_size", "word2vec")}
        return cls(
            vocab,
            lowercase=metadata["lowercase"],
            token_pattern=metadata["token_pattern"],
            vectors=vectors,
            info=info,
        )


def train_word2vec(token_lists: Sequence[Sequence[str]], cfg: Word2VecSettings, *, seed: int) -> dict[str, np.ndarray]:
    """Train gensim word2vec and return its vectors.

    Args:
        token_lists: the tokenized training texts.
        cfg: the ``tokenizer.word.word2vec`` section (dim, window, min_count, epochs, sg, workers).
        seed: gensim's seed; results repeat only with ``workers=1`` (thread scheduling changes the updates).

    Returns:
        word -> float32 vector of length ``cfg.dim`` for every word gensim kept (count >= ``cfg.min_count``);
        empty, with a warning, when no word is that frequent.

    Raises:
        DependencyError: gensim is not installed.
    """
    try:
        from gensim.models import Word2Vec
    except ImportError:
        raise DependencyError(
            "gensim is not installed; tokenizer.word.word2vec.enabled=true needs it.",
            hint="Run `pip install gensim==4.4.0`, or set tokenizer.word.word2vec.enabled=false.",
        ) from None
    sentences = [list(tokens) for tokens in token_lists if tokens]
    counts = count_tokens(sentences)
    if not any(count >= cfg.min_count for count in counts.values()):
        # gensim raises "you must first build vocabulary" here; every row simply stays random instead.
        logger.warning(
            "word2vec skipped: no word occurs tokenizer.word.word2vec.min_count=%d times; all vectors are random",
            cfg.min_count,
        )
        return {}
    model = Word2Vec(
        sentences=sentences,
        vector_size=cfg.dim,
        window=cfg.window,
        min_count=cfg.min_count,
        epochs=cfg.epochs,
        sg=int(cfg.sg),
        workers=cfg.workers,
        seed=seed,
    )
    wv = model.wv
    return {word: np.asarray(wv.vectors[index], dtype=np.float32) for word, index in wv.key_to_index.items()}


def align_vectors(
    vocab: Sequence[str], trained: Mapping[str, np.ndarray], dim: int, *, seed: int
) -> tuple[np.ndarray, int]:
    """Lay trained vectors out by vocabulary id.

    Args:
        vocab: tokens in id order (specials first).
        trained: word -> vector of length ``dim`` (from :func:`train_word2vec`).
        dim: vector size.
        seed: seed of the random rows.

    Returns:
        ``(matrix, n_pretrained)``: float32 ``(len(vocab), dim)`` with zeros for pad, the trained vector for words
        that have one, and U[-0.25, 0.25] for the rest (unk, bos, eos and untrained words); and how many vocabulary
        words got a trained vector.
    """
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-RANDOM_VECTOR_SCALE, RANDOM_VECTOR_SCALE, size=(len(vocab), dim)).astype(np.float32)
    # Zero pad row: padded positions then add nothing to the convolutions before training moves them.
    matrix[PAD] = 0.0
    n_pretrained = 0
    for index in range(N_SPECIAL, len(vocab)):
        vector = trained.get(vocab[index])
        if vector is not None:
            matrix[index] = vector
            n_pretrained += 1
    return matrix, n_pretrained


def _split(regex: re.Pattern[str], text: str, lowercase: bool) -> list[str]:
    """The non-empty matches of ``regex`` in ``text``."""
    if lowercase:
        text = text.lower()
    # group(0), not findall: findall would return only the groups of a pattern that has some.
    return [token for match in regex.finditer(text) if (token := match.group(0))]


def _compile_pattern(pattern: str, key: str) -> re.Pattern[str]:
    """Compile a token pattern; a bad one is a TokenizerError naming ``key``."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TokenizerError(f"{key}={pattern!r} is not a valid regular expression ({exc}). Fix the pattern.") from None


def _read_vocab(path: Path, vocab_size: int, fix: str, data: bytes | None = None) -> list[str]:
    """Read ``vocab.txt`` (or check ``data``, its decompressed compact form) against ``tokenizer.json``."""
    if data is None and not path.is_file():
        raise TokenizerError(f"{path}: missing, but tokenizer.json describes a word tokenizer. {fix}")
    try:
        text = (path.read_bytes() if data is None else data).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not UTF-8 text. {fix}") from None
    # Split on "\n" only: str.splitlines() would also break at characters such as U+2028 inside a token.
    tokens = text.removesuffix("\n").split("\n") if text else []
    if len(tokens) != vocab_size:
        raise TokenizerError(
            f"{path}: has {len(tokens)} tokens but tokenizer.json says vocab_size={vocab_size}; the files do not "
            f"belong together. {fix}"
        )
    if tuple(tokens[:N_SPECIAL]) != SPECIAL_TOKENS:
        raise TokenizerError(f"{path}: the first lines must be {', '.join(SPECIAL_TOKENS)}. {fix}")
    if any(not token for token in tokens) or len(set(tokens)) != len(tokens):
        raise TokenizerError(f"{path}: has an empty or repeated token, so ids would be ambiguous. {fix}")
    return tokens


def _read_vectors(path: Path, shape: tuple[int, int], fix: str, data: bytes | None = None) -> np.ndarray:
    """Load ``vectors.npy`` (or ``data``, its decompressed compact form) without pickle; check shape and dtype."""
    if data is None:
        vectors = read_array(path, "tokenizer.json says word2vec vectors were trained", fix)
    else:
        vectors = npy_from_bytes(data, path, fix)
    if vectors.dtype != np.float32 or vectors.shape != shape:
        raise TokenizerError(
            f"{path}: expected float32 of shape {shape} (vocab_size, dim). Received: {vectors.dtype} {vectors.shape}. "
            f"{fix}"
        )
    return vectors
