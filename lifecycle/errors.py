"""Exception hierarchy and exit codes.

Library code raises these; only ``lifecycle.cli`` turns them into process exits. Every message says what failed,
what was received and how to fix it, on one line.

:class:`TokenizerError` is the tokenization package's own class, re-exported: tokenization stands alone (it never
imports lifecycle), so its errors cannot derive from :class:`LifecycleError`, and one class raised by both packages
lets every ``except TokenizerError`` see the errors of either. :data:`EXPECTED_ERRORS` and :func:`exit_code_of` give
tokenization's errors their place beside lifecycle's (exit 3 for a tokenizer, 1 for a missing library).
"""

from __future__ import annotations

from tokenization.errors import HintedError, TokenizationError
from tokenization.errors import TokenizerError as TokenizerError  # re-exported: see the module docstring


class LifecycleError(HintedError):
    """Base of lifecycle's expected failures: a one-line message plus an exit code (tokenization's own derive from
    ``tokenization.errors.TokenizationError``; :data:`EXPECTED_ERRORS` holds both bases)."""

    exit_code: int = 1


class ConfigError(LifecycleError, ValueError):
    """A config file, a ``--set`` override or a command-line value is wrong (exit 2, as Click's usage errors)."""

    exit_code = 2


class DataError(LifecycleError, ValueError):
    """A data file is missing, unreadable, empty or has the wrong shape (exit 3)."""

    exit_code = 3


class ModelError(LifecycleError, ValueError):
    """A model or version cannot be built, frozen, compressed, restored or loaded (exit 4)."""

    exit_code = 4


class TrackingError(LifecycleError, RuntimeError):
    """MLflow cannot be reached or refuses an operation (exit 5). A password in a URI it quotes (a PostgreSQL
    backend's, ``postgresql://user:secret@host/db``) is masked."""

    exit_code = 5

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(mask_password(message), mask_password(hint) if hint else hint)


def mask_password(text: str) -> str:
    """Every ``scheme://user:secret@`` in ``text`` as ``scheme://user:***@``."""
    import re

    return re.sub(r"(://[^/:@\s]*):[^@/\s]*@", r"\1:***@", text)


class DependencyError(LifecycleError, ImportError):
    """An optional dependency is missing; the message carries the pip command (exit 1)."""

    exit_code = 1


# What the CLI (and the serving registry) reports as one line rather than a traceback.
EXPECTED_ERRORS: tuple[type[LifecycleError], type[TokenizationError]] = (LifecycleError, TokenizationError)


def exit_code_of(exc: BaseException) -> int:
    """The exit code of an expected failure: a LifecycleError's own, 3 for a tokenizer error, 1 for the rest (a
    missing youtokentome or gensim, as any missing dependency)."""
    if isinstance(exc, LifecycleError):
        return exc.exit_code
    return 3 if isinstance(exc, TokenizerError) else 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors that quote it."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
