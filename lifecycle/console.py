"""Rich consoles for results (stdout) and diagnostics (stderr), spinners and progress bars.

On a terminal, progress is rich bars and spinners on stderr. Off one (output redirected to a file or a pipe), it is
plain lines instead, one per epoch of training and one per step of compress, so a long redirected run is never
silent; ``--quiet`` silences both. Results written to a file or pipe are laid out wide (rich would cut them at 80
columns). Library code reports through the callbacks built here and never prints by itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


# Columns of results written to a file or a pipe: wide enough that no table row or lineage line is cut or wrapped
# (tables size to their content, so nothing is padded to it).
PIPE_WIDTH = 1000


class _State:
    quiet = False


_USER_MLFLOW_LEVEL = os.environ.get("MLFLOW_LOGGING_LEVEL")


class _PlainHandler(logging.Handler):
    """Log records as plain ``LEVEL    message`` lines on stderr, for a log file: rich's handler would wrap them at 80
    columns and indent the continuation lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure(verbose: int = 0, quiet: bool = False) -> None:
    """Set the log level (``-v`` lowers it), whether progress is shown, and the layout of output off a terminal."""
    _State.quiet = quiet
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = PIPE_WIDTH
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    root = logging.getLogger()
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    else:
        handler = _PlainHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("lifecycle", "tokenization"):
        logging.getLogger(name).setLevel(level)
    # gensim and MLflow narrate every step at INFO; keep them to warnings unless -vv. MLflow sets its own loggers'
    # level when it is imported (later, inside a command), from $MLFLOW_LOGGING_LEVEL, unless the user set it.
    if _USER_MLFLOW_LEVEL is None:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "DEBUG" if verbose >= 2 else "ERROR" if quiet else "WARNING"
    for name in ("gensim", "mlflow", "alembic", "smart_open"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def show_progress() -> bool:
    """Progress bars and spinners only on an interactive stderr and without --quiet."""
    return not _State.quiet and err.is_terminal


def plain_progress() -> bool:
    """Plain progress lines instead of bars: stderr is not a terminal (a file, a pipe), and no --quiet."""
    return not _State.quiet and not err.is_terminal


def plain_line(text: str) -> None:
    """One progress line on stderr, as it is: no markup, highlighting or wrapping."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A transient spinner on stderr for work without a known length (freeze, tokenizer training)."""
    if not show_progress():
        yield
        return
    with err.status(message):
        yield


# What native runtimes print straight to file descriptor 2, bypassing Python's logging: LiteRT's C++ logger says this
# once per process on an interpreter's first allocate_tensors, at INFO, with no severity setting its Python API exposes
# (TF_CPP_MIN_LOG_LEVEL does not reach it).
NATIVE_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextmanager
def native_stderr_filtered(drop: tuple[str, ...] = NATIVE_NOISE) -> Iterator[None]:
    """Inside the block, file descriptor 2 goes to a temp file; afterwards every line of it but those in ``drop`` is
    written to the real stderr, so native code's chatter is dropped and nothing else is lost (only delayed)."""
    import tempfile

    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if line.rstrip(b"\r\n").decode(errors="replace") not in drop]
            if kept:
                os.write(2, b"".join(kept))


@contextmanager
def counted(what: str) -> Iterator[Callable[[int, int, str], None]]:
    """Progress over a known number of items, reported as ``step(i, n, name)`` before item i of n: a bar on a
    terminal, one plain line per item off one (a pipe, a file), nothing with --quiet."""
    if show_progress():
        with make_progress() as progress:
            task = progress.add_task(what, total=None, metrics="")
            seen = [0]

            def bar(index: int, total: int, name: str) -> None:
                seen[0] = total
                progress.update(task, total=total, completed=index, description=f"{what} {name}")

            yield bar
            progress.update(task, completed=seen[0], description=what)
    elif plain_progress():
        yield lambda index, total, name: plain_line(f"{what} {index + 1}/{total}: {name}")
    else:
        yield lambda index, total, name: None


def make_progress() -> Progress:
    """A progress bar on stderr; disabled off a terminal or with --quiet."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=err,
        transient=False,
        disable=not show_progress(),
    )


class Stage:
    """One spinner line in a Progress naming the current stage (reading data, training the tokenizer, ...)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None, metrics="") if progress is not None else None

    def __call__(self, description: str) -> None:
        logging.getLogger("lifecycle").info(description)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=description)

    def done(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


def keras_progress(progress: Progress, epochs: int, steps_per_epoch: int, first_epoch: int = 0) -> Any:
    """A Keras callback that drives two bars: epochs, and batches of the current epoch (Keras itself stays quiet).

    When the bars are off because stderr is not a terminal, it prints one plain line per epoch instead (see
    :func:`epoch_line`); with --quiet, nothing.
    """
    import keras

    if progress.disable and plain_progress():
        return plain_epoch_callback(epochs)

    epoch_task = progress.add_task("epochs", total=epochs, completed=first_epoch, metrics="")
    batch_task = progress.add_task("batches", total=steps_per_epoch, metrics="")

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            progress.reset(batch_task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{epochs}", metrics="")

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            progress.update(batch_task, completed=batch + 1, metrics=format_metrics(logs or {}))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            shown = {k: v for k, v in (logs or {}).items() if k.startswith("val_")}
            progress.update(epoch_task, completed=epoch + 1, metrics=format_metrics(shown))

    return _Progress()


def plain_epoch_callback(epochs: int) -> Any:
    """A Keras callback printing :func:`epoch_line` at the end of every epoch."""
    import keras

    class _EpochLines(keras.callbacks.Callback):
        started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            plain_line(epoch_line(epoch, epochs, logs or {}, time.perf_counter() - self.started))

    return _EpochLines()


EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def epoch_line(epoch: int, epochs: int, logs: dict[str, Any], seconds: float) -> str:
    """``epoch 3/10 loss 0.4123 accuracy 0.8123 val_loss 0.4501 val_accuracy 0.8012 12.3 s`` (``epoch``: from 0;
    metrics other than these four follow them)."""
    ordered = [key for key in EPOCH_KEYS if key in logs] + [key for key in logs if key not in EPOCH_KEYS]
    return f"epoch {epoch + 1}/{epochs} {format_metrics({key: logs[key] for key in ordered})} {seconds:.1f} s"


def compress_step_printer() -> Any:
    """A ``run_compress`` ``on_step`` callback printing one plain line per finished step when stderr is not a
    terminal (and no --quiet), else None (the spinner covers it)."""
    if not plain_progress():
        return None

    def on_step(number: int, total: int, text: str, bytes_before: int, bytes_after: int, seconds: float) -> None:
        plain_line(f"compress step {number}/{total} {text}: {bytes_before / 1e6:.2f} MB -> {bytes_after / 1e6:.2f} MB "
                   f"{seconds:.1f} s")

    return on_step


def format_metrics(logs: dict[str, Any]) -> str:
    """``loss 0.41 accuracy 0.83`` from a Keras logs dict."""
    return " ".join(f"{key} {float(value):.4f}" for key, value in logs.items() if isinstance(value, int | float))


def trial_line(trial: Any, total: int, metric: str) -> str:
    """``budget trial 3/24 vocab:coverage=0.95+int8: 0.41 MB, validation accuracy 71.2% (lost 0.80), within``."""
    if trial.metric is None:
        return f"budget trial {trial.number}/{total} {trial.label}: refused ({trial.error})"
    verdict = "within" if trial.within else "over"
    return (f"budget trial {trial.number}/{total} {trial.label}: {trial.size_bytes / 1e6:.2f} MB, validation "
            f"{metric} {100 * trial.metric:.1f}% (lost {trial.loss:.2f}), {verdict}")


@contextmanager
def trial_progress(total: int, metric: str) -> Iterator[Any]:
    """A bar over the trials of ``compress --budget`` on stderr, or one plain line per trial off a terminal; yields
    the search's ``on_trial`` callback (``lifecycle.budget.Trial``)."""
    if not show_progress():

        def plain(trial: Any) -> None:
            if plain_progress():
                plain_line(trial_line(trial, total, metric))

        yield plain
        return
    with make_progress() as progress:
        task = progress.add_task("budget trials", total=total, metrics="")

        def advance(trial: Any) -> None:
            progress.update(task, completed=trial.number, metrics=trial_line(trial, total, metric).split(": ", 1)[1],
                            description=f"trial {trial.label}")

        yield advance


@contextmanager
def score_progress() -> Iterator[Any]:
    """Progress of ``lifecycle score``; yields its ``on_progress(count, bytes_read, total_bytes)`` callback.

    ``total_bytes`` known (the local engine, ``count``: texts scored): a bar over the input's bytes showing the texts
    scored and their rate, or off a terminal a plain line at every further tenth of the input. None (the Spark
    engine, ``count``: finished tasks): a spinner with the count.
    """
    from rich.progress import TaskProgressColumn

    started = time.perf_counter()
    if not show_progress():
        marks = {"next": 0.1}

        def plain(count: int, read: int, total: int | None) -> None:
            if plain_progress() and total and read >= marks["next"] * total:
                marks["next"] = int(10 * read / total) / 10 + 0.1
                rate = count / max(time.perf_counter() - started, 1e-9)
                plain_line(f"scored {count:,} texts ({100 * read / total:.0f}% of the input) {rate:,.0f}/s")

        yield plain
        return
    progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                        TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                        console=err, transient=False)
    with progress:
        task = progress.add_task("scoring", total=None, metrics="")

        def advance(count: int, read: int, total: int | None) -> None:
            if total is None:
                progress.update(task, metrics=f"{count:,} tasks done")
                return
            rate = count / max(time.perf_counter() - started, 1e-9)
            progress.update(task, total=total, completed=read, metrics=f"{count:,} texts, {rate:,.0f}/s")

        yield advance
