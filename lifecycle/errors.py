"""Exception hierarchy and exit codes.

Library code raises these; only ``lifecycle.cli`` turns them into process exits. Every message says what failed,
what was received and how to fix it, on one line.
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base of every expected failure: a one-line message plus an exit code."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(LifecycleError, ValueError):
    """A config file, a ``--set`` override or a command-line value is wrong (exit 2, as Click's usage errors)."""

    exit_code = 2


class DataError(LifecycleError, ValueError):
    """A data file is missing, unreadable, empty or has the wrong shape (exit 3)."""

    exit_code = 3


class TokenizerError(LifecycleError, ValueError):
    """A tokenizer cannot be trained, saved or loaded (exit 3)."""

    exit_code = 3


class ModelError(LifecycleError, ValueError):
    """A model or version cannot be built, frozen, compressed, restored or loaded (exit 4)."""

    exit_code = 4


class TrackingError(LifecycleError, RuntimeError):
    """MLflow cannot be reached or refuses an operation (exit 5)."""

    exit_code = 5


class DependencyError(LifecycleError, ImportError):
    """An optional dependency is missing; the message carries the pip command (exit 1)."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors that quote it."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
