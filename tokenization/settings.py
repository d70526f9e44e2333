"""What training a tokenizer reads from its settings, as protocols: any object with these attributes will do.

lifecycle passes its ``tokenizer`` config section (pydantic models, :class:`lifecycle.config.TokenizerConfig`), which
checks and documents every value; a frozen dataclass or ``types.SimpleNamespace`` with the same attributes works as
well. Only attributes are read, never written.
"""

from __future__ import annotations

from typing import Protocol


class BPESettings(Protocol):
    """The ``tokenizer.bpe`` section: youtokentome's training settings."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def coverage(self) -> float: ...

    @property
    def threads(self) -> int: ...

    @property
    def lowercase(self) -> bool: ...

    # Read with getattr, so settings objects without them train as before (whitespace words, no end mark).
    @property
    def token_pattern(self) -> str: ...

    @property
    def word_end(self) -> bool: ...

    @property
    def drop_unseen(self) -> bool: ...


class Word2VecSettings(Protocol):
    """The ``tokenizer.word.word2vec`` section: gensim word2vec's settings."""

    @property
    def enabled(self) -> bool: ...

    @property
    def dim(self) -> int: ...

    @property
    def window(self) -> int: ...

    @property
    def min_count(self) -> int: ...

    @property
    def epochs(self) -> int: ...

    @property
    def sg(self) -> bool: ...

    @property
    def workers(self) -> int: ...


class WordSettings(Protocol):
    """The ``tokenizer.word`` section: the word vocabulary's settings."""

    @property
    def lowercase(self) -> bool: ...

    @property
    def token_pattern(self) -> str: ...

    @property
    def min_count(self) -> int: ...

    @property
    def max_size(self) -> int | None: ...

    @property
    def word2vec(self) -> Word2VecSettings: ...


class TokenizerSettings(Protocol):
    """The ``tokenizer`` section: which kind to train, and each kind's settings."""

    @property
    def kind(self) -> str: ...

    @property
    def bpe(self) -> BPESettings: ...

    @property
    def word(self) -> WordSettings: ...
