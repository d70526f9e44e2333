"""The ``tune:E`` recipe step's training loop: fine-tune stored weights on the parent's training split.

The stored weights (any storage, any layout) are dequantized into a trainable Keras CNN, trained with every pruned
zero kept at zero, and stored again as they were (``storage.store_like``: float16 casts again, int8/int4 are quantized
again from the tuned float values along the same axes). ``lifecycle.compress`` parses the step and records its report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from lifecycle.storage import Weights, store_like

if TYPE_CHECKING:
    from lifecycle.config import Config
    from lifecycle.corpus import Corpus
    from lifecycle.dataset import Arrays
    from tokenization.base import Tokenizer


class TuneContext(Protocol):
    """What fine-tuning reads of the recipe's context (``compress.RecipeContext`` is one)."""

    config: Config
    labels: tuple[str, ...]
    max_len: int
    kernel_sizes: tuple[int, ...]
    weight_map: dict[str, str]
    tokenizer: Tokenizer
    teacher: bool  # False: a distilled version's tune step trains on the labels alone (retrain --no-teacher)

    def corpus(self, step: str) -> Corpus: ...

    def arrays(self, split: str, step: str) -> Arrays: ...


def fine_tune(weights: Weights, context: TuneContext, epochs: int) -> tuple[Weights, tuple[str, ...], dict[str, Any]]:
    """Train the current weights ``epochs`` more epochs on the training split, pruning mask kept, storage re-applied.

    The stored weights are dequantized into a trainable Keras CNN (``restore.restore_model``), trained with the
    parent's settings (the epoch with the best validation score is kept, and the starting weights when no epoch beats
    them) while every zero stays zero, read back and stored as before: float16 casts again, int8 is quantized again
    from the tuned float values along the same axes.

    Args:
        weights: the stored weights (any storage and layout).
        context: the parent's config, tokenizer and data (the training split trains, validation selects the epoch).
        epochs: most epochs to train.

    Returns:
        The tuned weights, every tensor, and the report: epochs run, the peak epoch (0 and ``kept_start``: the
        starting weights were kept), training loss and validation accuracy before and after.

    Raises:
        DataError: the parent's data cannot be read.
    """
    from lifecycle import train as train_lib
    from lifecycle.backend import configure
    from lifecycle.freeze import FrozenGraph, keras_weights
    from lifecycle.restore import restore_model

    train = context.arrays("train", "tune")
    validation = context.arrays("validation", "tune")
    cfg = context.config
    # A distilled student keeps learning from its teacher's soft targets (read from cache), unless told not to.
    with_teacher = cfg.teacher.enabled and context.teacher
    if with_teacher:
        from lifecycle import distill

        train = distill.tune_arrays(cfg, context.corpus("tune"), train, context.tokenizer, context.max_len)
    configure(cfg.train.seed, cfg.train.threads)
    frozen = FrozenGraph(None, weights, context.kernel_sizes, context.weight_map, "int32", context.max_len)
    restored = restore_model(frozen, cfg, len(context.labels))
    model = restored.model
    if with_teacher:
        distill.compile_student(model, cfg)
    train_cfg = cfg.train.model_copy(update={"epochs": epochs})

    def scores(arrays: Arrays) -> tuple[float, float]:
        loss, accuracy = model.evaluate(arrays.x, arrays.y, batch_size=train_cfg.batch_size, verbose=0)[:2]
        return float(loss), float(accuracy)

    (train_loss, train_accuracy), (val_loss, val_accuracy) = scores(train), scores(validation)
    # The weights as they came are the epoch to beat: a tune that does not improve validation changes nothing.
    result = train_lib.fit(model, train, validation, train_cfg,
                           callbacks=[train_lib.keep_sparsity_callback(model, restored.masks)],
                           baseline={"val_loss": val_loss, "val_accuracy": val_accuracy})
    (train_loss_after, train_accuracy_after), (_, val_accuracy_after) = scores(train), scores(validation)
    tuned, _, _ = keras_weights(model)
    out = {name: store_like(name, stored, tuned[name].value) for name, stored in weights.items()}
    report = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "peak_epoch": result.best_epoch + 1,  # 0: no epoch beat the weights it started from, which are kept
        "kept_start": result.best_epoch < 0,
        "stop_reason": result.stop_reason,
        "patience_epochs": result.schedule.patience_epochs if result.schedule else None,
        "train_seconds": round(result.train_seconds, 3),
        "seconds_per_epoch": round(result.train_seconds / max(1, result.epochs_run), 3),
        "train_loss_before": train_loss,
        "train_loss_after": train_loss_after,
        "train_accuracy_before": train_accuracy,
        "train_accuracy_after": train_accuracy_after,
        "validation_accuracy_before": val_accuracy,
        "validation_accuracy_after": val_accuracy_after,
        **({"teacher": with_teacher} if cfg.teacher.enabled else {}),  # a distilled version: soft targets or not
    }
    return out, tuple(out), report
