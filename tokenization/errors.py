"""The tokenization package's exceptions: a one-line message saying what failed and what was received, plus an
optional hint saying how to fix it.

A host application may treat these as its own expected failures; lifecycle does (:mod:`lifecycle.errors` re-exports
:class:`TokenizerError` and gives both classes their exit codes).
"""

from __future__ import annotations


class HintedError(Exception):
    """A one-line message plus an optional hint saying how to fix it (printed after the message)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class TokenizationError(HintedError):
    """Base of every expected tokenization failure."""


class TokenizerError(TokenizationError, ValueError):
    """A tokenizer cannot be trained, saved, loaded or asked for something it does not hold."""


class DependencyError(TokenizationError, ImportError):
    """youtokentome (bpe) or gensim (word2vec) is not installed; the hint carries the pip command."""
