"""fit(): epochs with seeded shuffling, a schedule that reads the training set's size (patience in optimizer steps,
reduce-on-plateau, restore-best), and resume after an interruption.

One ``model.fit`` call per epoch, shuffled with ``seed + epoch``, so an interrupted run continued from its last saved
epoch sees exactly the batches an uninterrupted run would have. After every epoch the full model (with optimizer
slots), the best weights and the loop state go to ``resume_dir``; each file is written to a temp name and renamed.
This module prints nothing: progress and metrics leave through the ``on_epoch`` and progress callbacks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.backend import tf_module
from lifecycle.config import TrainConfig
from lifecycle.dataset import Arrays
from lifecycle.housekeeping import replace_file

if TYPE_CHECKING:
    import keras

STATE_FILE = "state.json"
MODEL_FILE = "model.keras"
BEST_FILE = "best.weights.h5"

EpochCallback = Callable[[int, dict[str, float]], None]


STOP_PLATEAU = "plateau"
STOP_MAX_EPOCHS = "max_epochs"
STOP_NON_FINITE = "non_finite_loss"


@dataclass(frozen=True)
class Schedule:
    """The loop's limits for one training set: early-stopping and learning-rate patience in epochs, from steps."""

    steps_per_epoch: int
    max_epochs: int
    patience_epochs: int
    reduce_lr_patience: int
    reduce_lr_factor: float


def plan_schedule(cfg: TrainConfig, train_size: int) -> Schedule:
    """Turn the config's step-based patience into epochs for a training set of ``train_size`` texts.

    The same number of optimizer steps without improvement ends training on every set: a few hundred texts (a dozen
    steps per epoch) wait tens of epochs, 100k texts (2000 steps per epoch) ``cfg.patience`` epochs.
    """
    steps = max(1, math.ceil(train_size / cfg.batch_size))
    patience = max(cfg.patience, math.ceil(cfg.patience_steps / steps))
    lr_patience = cfg.reduce_lr_patience or max(1, patience // 2)
    return Schedule(steps_per_epoch=steps, max_epochs=cfg.epochs, patience_epochs=patience,
                    reduce_lr_patience=lr_patience, reduce_lr_factor=cfg.reduce_lr_factor)


@dataclass(frozen=True)
class TrainResult:
    """What the loop did: per-epoch logs, the epoch whose weights were kept, why it stopped, and timing.

    ``stop_reason`` is ``plateau`` (``patience_epochs`` epochs without a better monitored value), ``max_epochs``
    (the ``epochs`` cap was reached first: the run may not have converged) or ``non_finite_loss``.
    """

    history: tuple[dict[str, float], ...]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    train_seconds: float
    stop_reason: str = STOP_MAX_EPOCHS
    monitor: str = "val_loss"
    best_value: float = float("nan")
    schedule: Schedule | None = None
    final_learning_rate: float = float("nan")
    lr_reductions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The manifest's ``training`` section: how long, where it peaked (0-based and 1-based) and why it stopped."""
        schedule = self.schedule
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "peak_epoch": self.best_epoch + 1,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "resumed_from": self.resumed_from,
            "train_seconds": round(self.train_seconds, 3),
            "max_epochs": schedule.max_epochs if schedule else None,
            "steps_per_epoch": schedule.steps_per_epoch if schedule else None,
            "patience_epochs": schedule.patience_epochs if schedule else None,
            "reduce_lr_patience": schedule.reduce_lr_patience if schedule else None,
            "lr_reductions": self.lr_reductions,
            "final_learning_rate": self.final_learning_rate,
        }


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


def _score(cfg: TrainConfig, logs: dict[str, float]) -> tuple[float, float]:
    """The monitored value as a pair where lower wins: (-accuracy, loss) or (loss, 0); NaN counts as worst."""
    loss = logs.get("val_loss", float("nan"))
    loss = loss if np.isfinite(loss) else float("inf")
    if cfg.monitor == "val_accuracy":
        accuracy = logs.get("val_accuracy", float("nan"))
        return (-accuracy if np.isfinite(accuracy) else float("inf"), loss)
    return (loss, 0.0)


def _set_learning_rate(model: keras.Model, value: float) -> None:
    # A LossScaleOptimizer forwards learning_rate to its inner optimizer.
    model.optimizer.learning_rate = value


def fit(
    model: keras.Model,
    train: Arrays,
    validation: Arrays,
    cfg: TrainConfig,
    *,
    resume_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    callbacks: list[Any] | None = None,
    train_for_epoch: Callable[[int], Arrays] | None = None,
    baseline: dict[str, float] | None = None,
) -> TrainResult:
    """Train until the monitored value plateaus; keep the weights of the best epoch by ``cfg.monitor``.

    The schedule reads the training set's size (``plan_schedule``): after ``reduce_lr_patience`` epochs without a
    better value the learning rate is multiplied by ``cfg.reduce_lr_factor`` (again every ``reduce_lr_patience``
    epochs), and after ``patience_epochs`` such epochs training stops; ``cfg.epochs`` caps the total.

    Args:
        model: a compiled model (from ``build_model`` or ``load_resume_model``).
        train: training ids and labels.
        validation: validation ids and labels (early stopping watches ``cfg.monitor`` on them).
        cfg: epochs (a cap), batch size, patience, learning-rate schedule, seed.
        resume_dir: where the loop state is saved each epoch and read at start; None disables resume.
        on_epoch: called with (epoch, logs) after each epoch, e.g. to log metrics.
        callbacks: extra Keras callbacks (progress bars).
        train_for_epoch: the training arrays of each epoch (BPE-dropout re-encodes the texts every epoch), used
            instead of ``train``; ``train`` still sizes the schedule.
        baseline: the model's own validation logs before training (``val_loss``, ``val_accuracy``), for weights
            that are already trained (a fine-tune): an epoch is kept only if it beats them, and when none does the
            model is returned with the weights it came with (``best_epoch`` -1). Not with ``resume_dir``.

    Returns:
        The loop's history and why it stopped; the model holds the best weights on return.
    """
    if baseline is not None and resume_dir is not None:
        raise ValueError("fit: a baseline is for fine-tunes, which do not resume; pass one or the other")
    schedule = plan_schedule(cfg, len(train))
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_score": None, "best_epoch": -1, "wait": 0,
                             "stopped": False, "stop_reason": None, "train_seconds": 0.0,
                             "learning_rate": float(model.optimizer.learning_rate), "lr_reductions": 0}
    if baseline is not None:  # the weights as given are the epoch to beat
        state["best_score"] = list(_score(cfg, baseline))
        state["_best_weights"] = [w.numpy().copy() for w in model.weights]
    if resume_dir is not None and (resume_dir / STATE_FILE).is_file():
        state.update(json.loads((resume_dir / STATE_FILE).read_text(encoding="utf-8")))
        _set_learning_rate(model, float(state["learning_rate"]))
    resumed_from = int(state["epoch"])
    val_ds = make_tf_dataset(validation, cfg.batch_size)

    epoch = int(state["epoch"])
    while epoch < cfg.epochs and not state["stopped"]:
        started = time.perf_counter()
        epoch_train = train_for_epoch(epoch) if train_for_epoch is not None else train
        fitted = model.fit(
            make_tf_dataset(epoch_train, cfg.batch_size, seed=cfg.seed + epoch),
            validation_data=val_ds,
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
            shuffle=False,  # the dataset is already shuffled with seed + epoch
            callbacks=list(callbacks or []),
        )
        logs = {key: float(values[-1]) for key, values in fitted.history.items()}
        logs["learning_rate"] = float(state["learning_rate"])  # the rate this epoch trained with
        state["train_seconds"] += time.perf_counter() - started
        state["history"].append(logs)
        score = _score(cfg, logs)
        best = state["best_score"]
        improved = best is None or tuple(score) < tuple(best)
        if improved:
            state["best_score"], state["best_epoch"], state["wait"] = list(score), epoch, 0
        else:
            state["wait"] += 1
            if state["wait"] >= schedule.patience_epochs:
                state["stopped"], state["stop_reason"] = True, STOP_PLATEAU
            elif state["wait"] % schedule.reduce_lr_patience == 0 and schedule.reduce_lr_factor < 1:
                state["learning_rate"] *= schedule.reduce_lr_factor
                state["lr_reductions"] += 1
                _set_learning_rate(model, state["learning_rate"])
        if not np.isfinite(logs.get("loss", 0.0)):
            state["stopped"], state["stop_reason"] = True, STOP_NON_FINITE
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
    best_epoch = int(state["best_epoch"])
    if 0 <= best_epoch < len(state["history"]):
        best_value = float(state["history"][best_epoch].get(cfg.monitor, float("nan")))
    else:
        best_value = float((baseline or {}).get(cfg.monitor, float("nan")))
    return TrainResult(
        history=tuple(state["history"]),
        best_epoch=best_epoch,
        epochs_run=int(state["epoch"]),
        stopped_early=bool(state["stopped"]),
        resumed_from=resumed_from,
        train_seconds=float(state["train_seconds"]),
        stop_reason=state["stop_reason"] or STOP_MAX_EPOCHS,
        monitor=cfg.monitor,
        best_value=best_value,
        schedule=schedule,
        final_learning_rate=float(state["learning_rate"]),
        lr_reductions=int(state["lr_reductions"]),
    )


def _save_state(model: keras.Model, resume_dir: Path, state: dict[str, Any], *, save_best: bool) -> None:
    """Model first, state last: a crash between them leaves the previous epoch's state, which is still valid."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    replace_file(resume_dir / MODEL_FILE, lambda tmp: model.save(tmp))
    if save_best:
        replace_file(resume_dir / BEST_FILE, lambda tmp: model.save_weights(tmp))
    replace_file(resume_dir / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=1), encoding="utf-8"))



