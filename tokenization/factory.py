"""Build a tokenizer by kind: train the one a settings object selects, or load whichever a directory holds.

The kinds are imported here and nowhere in :mod:`tokenization.base`, so the contract and the implementations do not
import each other. youtokentome and gensim are still imported only when a bpe tokenizer or word2vec is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenization.base import DEFAULT_SEED, KINDS, Tokenizer, read_metadata
from tokenization.bpe import BPETokenizer
from tokenization.errors import TokenizerError
from tokenization.settings import TokenizerSettings
from tokenization.word import WordTokenizer


def train_tokenizer(
    texts: Sequence[str],
    cfg: TokenizerSettings,
    workdir: Path | None = None,
    *,
    seed: int = DEFAULT_SEED,
) -> Tokenizer:
    """Train the tokenizer that ``cfg.kind`` selects.

    Args:
        texts: training texts (never the validation or test split).
        cfg: the kind and each kind's settings (lifecycle passes its ``tokenizer`` config section).
        workdir: where bpe keeps its training text and model file; None uses a temporary directory.
        seed: seed of word2vec and of the random rows of words without a trained vector (youtokentome takes none).

    Returns:
        A trained :class:`BPETokenizer` or :class:`WordTokenizer`.

    Raises:
        TokenizerError: no texts, an empty vocabulary or settings the data cannot support.
        DependencyError: youtokentome (bpe) or gensim (word2vec) is not installed.
    """
    if cfg.kind == "bpe":
        return BPETokenizer.train(texts, cfg.bpe, workdir=workdir)
    if cfg.kind == "word":
        return WordTokenizer.train(texts, cfg.word, seed=seed)
    raise TokenizerError(f"tokenizer.kind must be one of {', '.join(KINDS)}. Received: {cfg.kind!r}.")


def load_tokenizer(directory: Path, *, lean: bool = False) -> Tokenizer:
    """Load a saved tokenizer of either kind.

    Args:
        directory: a directory written by ``Tokenizer.save``.
        lean: a bpe tokenizer encodes through :class:`tokenization.bpe.MergeTable` rather than youtokentome: the same
            ids in well under half the memory, slower on words it has not seen recently (for processes that hold
            many models; a word tokenizer, a dict and a list of its words, loads the same either way).

    Returns:
        The tokenizer, ready to encode.

    Raises:
        TokenizerError: the directory, ``tokenizer.json`` or one of the kind's files is missing or inconsistent.
        DependencyError: the kind's library is not installed.
    """
    kind = str(read_metadata(Path(directory))["kind"])
    if kind == "bpe":
        return BPETokenizer.load(directory, lean=lean)
    return WordTokenizer.load(directory)
