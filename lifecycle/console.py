"""Rich consoles for results (stdout) and diagnostics (stderr), spinners and progress bars.

Progress is shown only on a terminal and never with ``--quiet``; library code reports through the callbacks built
here and never prints by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _State:
    quiet = False


def configure(verbose: int = 0, quiet: bool = False) -> None:
    """Set the log level (``-v`` lowers it) and whether progress is shown."""
    _State.quiet = quiet
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    root = logging.getLogger()
    root.handlers[:] = [RichHandler(console=err, show_path=False, show_time=False, markup=False)]
    root.setLevel(logging.WARNING)
    for name in ("lifecycle", "tokenization"):
        logging.getLogger(name).setLevel(level)
    # gensim and MLflow narrate every step at INFO; keep them to warnings unless -vv.
    for name in ("gensim", "mlflow", "alembic", "smart_open"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def show_progress() -> bool:
    """Progress bars and spinners only on an interactive stderr and without --quiet."""
    return not _State.quiet and err.is_terminal


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A transient spinner on stderr for work without a known length (freeze, tokenizer training)."""
    if not show_progress():
        yield
        return
    with err.status(message):
        yield


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
    """A Keras callback that drives two bars: epochs, and batches of the current epoch (Keras itself stays quiet)."""
    import keras

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


def format_metrics(logs: dict[str, Any]) -> str:
    """``loss 0.41 accuracy 0.83`` from a Keras logs dict."""
    return " ".join(f"{key} {float(value):.4f}" for key, value in logs.items() if isinstance(value, int | float))
