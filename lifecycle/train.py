"""fit(): epochs with seeded shuffling, early stopping on a validation metric, and resume after an interruption.

One ``model.fit`` call per epoch, shuffled with ``seed + epoch``, so an interrupted run continued from its last saved
epoch sees exactly the batches an uninterrupted run would have. After every epoch the full model (with optimizer
slots), the best weights and the loop state go to ``resume_dir``; each file is written to a temp name and renamed.
This module prints nothing: progress and metrics leave through the ``on_epoch`` and progress callbacks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.config import TrainConfig

if TYPE_CHECKING:
    import keras

STATE_FILE = "state.json"
MODEL_FILE = "model.keras"
BEST_FILE = "best.weights.h5"

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Arrays:
    """Token ids and label ids of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class TrainResult:
    """What the loop did: per-epoch logs, the epoch whose weights were kept, and timing."""

    history: tuple[dict[str, float], ...]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_tf_dataset(data: Arrays, batch_size: int, seed: int | None = None) -> Any:
    """A batched ``tf.data.Dataset``; shuffled with ``seed`` when one is given."""
    tf = tf_module()
    ds = tf.data.Dataset.from_tensor_slices((data.x, data.y))
    if seed is not None:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=False)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def keep_sparsity_callback(model: keras.Model, masks: dict[str, np.ndarray]) -> Any:
    """A Keras callback that re-applies pruning masks after every batch, so pruned weights stay exactly zero.

    Args:
        model: the model being trained.
        masks: Keras weight path -> boolean array, True where the weight may change (``restore.Restored.masks``).
    """
    import keras

    pairs = [(weight, masks[weight.path].astype("float32")) for weight in model.weights
             if weight.path in masks and not bool(masks[weight.path].all())]

    class _KeepSparsity(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            for weight, mask in pairs:
                weight.assign(weight * mask)

    return _KeepSparsity()


def load_resume_model(resume_dir: Path) -> keras.Model | None:
    """The model saved after the last finished epoch, or None when there is nothing to resume."""
    if not (resume_dir / STATE_FILE).is_file() or not (resume_dir / MODEL_FILE).is_file():
        return None
    tf_module()
    import keras

    return keras.saving.load_model(resume_dir / MODEL_FILE, compile=True)


def fit(
    model: keras.Model,
    train: Arrays,
    validation: Arrays,
    cfg: TrainConfig,
    *,
    resume_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train with early stopping; keep the weights of the best epoch by ``cfg.monitor``.

    Args:
        model: a compiled model (from ``build_model`` or ``load_resume_model``).
        train: training ids and labels.
        validation: validation ids and labels (early stopping watches ``cfg.monitor`` on them).
        cfg: epochs, batch size, patience, seed.
        resume_dir: where the loop state is saved each epoch and read at start; None disables resume.
        on_epoch: called with (epoch, logs) after each epoch, e.g. to log metrics.
        callbacks: extra Keras callbacks (progress bars).

    Returns:
        The loop's history; the model holds the best weights on return.
    """
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_score": None, "best_epoch": -1, "wait": 0,
                             "stopped": False, "train_seconds": 0.0}
    if resume_dir is not None and (resume_dir / STATE_FILE).is_file():
        state.update(json.loads((resume_dir / STATE_FILE).read_text(encoding="utf-8")))
    resumed_from = int(state["epoch"])
    val_ds = make_tf_dataset(validation, cfg.batch_size)

    epoch = int(state["epoch"])
    while epoch < cfg.epochs and not state["stopped"]:
        started = time.perf_counter()
        fitted = model.fit(
            make_tf_dataset(train, cfg.batch_size, seed=cfg.seed + epoch),
            validation_data=val_ds,
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
            shuffle=False,  # the dataset is already shuffled with seed + epoch
            callbacks=list(callbacks or []),
        )
        logs = {key: float(values[-1]) for key, values in fitted.history.items()}
        state["train_seconds"] += time.perf_counter() - started
        state["history"].append(logs)
        # Lower is better for a loss, higher for accuracy: compare on a "score" where lower always wins.
        sign = -1.0 if cfg.monitor == "val_accuracy" else 1.0
        score = sign * logs.get(cfg.monitor, float("nan"))
        best = state["best_score"]
        improved = best is None or not np.isfinite(best) or (np.isfinite(score) and score < best)
        if improved:
            state["best_score"], state["best_epoch"], state["wait"] = score, epoch, 0
        else:
            state["wait"] += 1
            state["stopped"] = state["wait"] >= cfg.patience
        epoch += 1
        state["epoch"] = epoch
        if resume_dir is not None:
            _save_state(model, resume_dir, state, save_best=improved)
        elif improved:
            state["_best_weights"] = [w.numpy().copy() for w in model.weights]
        if on_epoch is not None:
            on_epoch(epoch - 1, logs)

    if resume_dir is not None and (resume_dir / BEST_FILE).is_file():
        model.load_weights(resume_dir / BEST_FILE)
    elif "_best_weights" in state:
        model.set_weights(state.pop("_best_weights"))
    return TrainResult(
        history=tuple(state["history"]),
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]),
        stopped_early=bool(state["stopped"]),
        resumed_from=resumed_from,
        train_seconds=float(state["train_seconds"]),
    )


def _save_state(model: keras.Model, resume_dir: Path, state: dict[str, Any], *, save_best: bool) -> None:
    """Model first, state last: a crash between them leaves the previous epoch's state, which is still valid."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    _atomic(resume_dir / MODEL_FILE, lambda tmp: model.save(tmp))
    if save_best:
        _atomic(resume_dir / BEST_FILE, lambda tmp: model.save_weights(tmp))
    _atomic(resume_dir / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=1), encoding="utf-8"))


def _atomic(target: Path, write: Callable[[Path], Any]) -> None:
    # Keras picks the format from the suffix, so the temp name keeps it.
    tmp = target.with_name(f".tmp-{target.name}")
    write(tmp)
    os.replace(tmp, target)
