"""retrain: a deployed version fine-tuned on new data, re-frozen and re-compressed with its recipe."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.config import DataConfig
from lifecycle.corpus import Examples, load_corpus
from lifecycle.errors import ConfigError, DataError
from lifecycle.tracking import make_tracker
from lifecycle.workflows.common import (
    StepOutcome,
    _parent_ref,
    _write_checkpoint,
    data_config_for,
    load_graph_version,
    open_version,
    recipe_text,
)
from lifecycle.workflows.graphs import run_compress, run_freeze

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainOptions:
    """How to fine-tune: epochs and learning rate (None: the parent's config), embedding frozen, pruning mask kept,
    and the fraction of the parent's training data replayed beside the new data."""

    epochs: int | None = None
    learning_rate: float | None = None
    freeze_embedding: bool = False
    keep_sparsity: bool = False
    replay: float = 0.0


def run_retrain(ref: str, data: Path, options: RetrainOptions = RetrainOptions(), output: Path | None = None, *,
                versions_dir: Path | None = None, track: bool = True, progress: Any = None) -> list[StepOutcome]:
    """Fine-tune a deployed version on new data and ship the next one: restore -> fit -> freeze -> parent's recipe.

    NEW is split (seeded, stratified) with the parent's split fractions; early stopping watches NEW's validation
    part. Accuracy is measured before and after on NEW's test part and on the parent's own test split (forgetting).

    Returns:
        The outcomes of the new checkpoint, its frozen form and (if the parent was compressed) its compressed form.
    """
    import numpy as np

    from lifecycle import evaluate
    from lifecycle import train as train_lib
    from lifecycle.backend import configure
    from lifecycle.dataset import encode_examples
    from lifecycle.model import compile_model
    from lifecycle.restore import restore_model
    from lifecycle.train import Arrays
    from tokenization.base import load_tokenizer

    parent = open_version(ref)
    cfg = parent.config
    if not 0.0 <= options.replay <= 1.0:
        raise ConfigError(f"--replay must be a fraction in [0, 1]. Received: {options.replay:g}.")
    new_data = data_config_for(data, DataConfig(split=cfg.data.split))
    new = load_corpus(new_data, f"{cfg.name}-new")
    labels = parent.labels
    unknown = sorted(set(new.labels) - set(labels))
    if unknown:
        raise DataError(f"{data}: labels {', '.join(map(repr, unknown[:5]))} are not among the model's "
                        f"{len(labels)} labels. Relabel them or drop those rows (growing the output layer is not "
                        "supported yet).")
    old = None
    try:
        old = load_corpus(cfg.data, cfg.name)
    except DataError as exc:
        if options.replay > 0:
            raise DataError(f"--replay needs the parent's training data, which cannot be read: {exc}") from None
        log.warning("parent's data not readable (%s): forgetting is not measured", exc)

    tokenizer = load_tokenizer(parent.tokenizer_dir)

    def encode(examples: Examples, source: str) -> Any:
        return encode_examples(examples, tokenizer, labels, parent.max_len, source)

    new_train, new_val, new_test = (encode(x, str(data)) for x in (new.train, new.validation, new.test))
    old_test = encode(old.test, old.source) if old is not None else None
    train_arrays = new_train
    if old is not None and options.replay > 0:
        rng = np.random.default_rng(cfg.train.seed)
        old_train = encode(old.train, old.source)
        pick = rng.choice(len(old_train), size=int(round(options.replay * len(old_train))), replace=False)
        train_arrays = Arrays(np.concatenate([new_train.x, old_train.x[pick]]),
                              np.concatenate([new_train.y, old_train.y[pick]]))

    configure(cfg.train.seed, cfg.train.threads)
    masks: dict[str, Any] = {}
    if parent.kind == "checkpoint":
        import keras

        model = keras.saving.load_model(parent.path / artifacts.KERAS_FILE, compile=False)
        masks = {w.path: w.numpy() != 0 for w in model.weights if not w.path.endswith("bias")}
    else:
        restored = restore_model(load_graph_version(parent), cfg, len(labels))
        model, masks = restored.model, restored.masks
    train_cfg = cfg.train.model_copy(update={
        key: value for key, value in (("epochs", options.epochs), ("learning_rate", options.learning_rate))
        if value is not None})
    if options.freeze_embedding:
        model.get_layer("embedding").trainable = False
    compile_model(model, train_cfg)

    def scores_on(arrays: Any) -> Any:
        return evaluate.evaluate_probabilities(np.asarray(model(arrays.x, training=False)), arrays.y, labels)

    before = {"new": scores_on(new_test), **({"parent": scores_on(old_test)} if old_test is not None else {})}
    callbacks = [train_lib.keep_sparsity_callback(model, masks)] if options.keep_sparsity else []
    if progress is not None:
        from lifecycle.console import keras_progress

        callbacks.append(keras_progress(progress, train_cfg.epochs, -(-len(train_arrays) // train_cfg.batch_size)))

    output = artifacts.check_output(output) if output else None
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    tags = {"lifecycle.parent_run": str(parent.manifest.get("run_id") or ""), "lifecycle.parent": str(parent.path)}
    outcomes: list[StepOutcome] = []
    with tracker.run("retrain", f"retrain-{parent.path.name}", tags):
        tracker.log_params({"parent": str(parent.path), "parent_sha256": parent.sha256, "data": str(data),
                            "epochs": train_cfg.epochs, "learning_rate": train_cfg.learning_rate,
                            "freeze_embedding": options.freeze_embedding, "keep_sparsity": options.keep_sparsity,
                            "replay": options.replay, "new_train": len(new_train), "replayed":
                            len(train_arrays) - len(new_train)})
        result = train_lib.fit(model, train_arrays, new_val, train_cfg, on_epoch=lambda e, logs:
                               tracker.log_metrics(logs, step=e), callbacks=callbacks)
        after = {"new": scores_on(new_test), **({"parent": scores_on(old_test)} if old_test is not None else {})}
        metrics: dict[str, float] = {"train_seconds": result.train_seconds}
        for split in after:
            metrics[f"{split}_test_accuracy_before"] = before[split].accuracy
            metrics[f"{split}_test_accuracy"] = after[split].accuracy
            metrics[f"{split}_test_macro_f1"] = after[split].macro_f1
        if "parent" in after:
            metrics["test_accuracy"] = after["parent"].accuracy
            metrics["test_macro_f1"] = after["parent"].macro_f1
            metrics["forgetting"] = before["parent"].accuracy - after["parent"].accuracy
            if "test_accuracy" in parent.manifest.get("metrics", {}):
                metrics["accuracy_delta_vs_parent"] = after["parent"].accuracy - parent.manifest["metrics"][
                    "test_accuracy"]
        tracker.log_metrics(metrics)
        checkpoint_dir = output / "checkpoint" if output else artifacts.default_output(cfg.name, "checkpoint",
                                                                                         versions_dir)
        version = _write_checkpoint(checkpoint_dir, model, parent.tokenizer_dir, cfg, labels, parent.max_len, {
            "parent": _parent_ref(parent),
            "run_id": tracker.run_id,
            "root_sizes": parent.manifest.get("root_sizes"),
            "metrics": {k: v for k, v in metrics.items() if k in ("test_accuracy", "test_macro_f1")},
            "retrain": {"data": str(data), "options": options.__dict__, "metrics": metrics,
                        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                        "new_split": {"train": len(new.train), "validation": len(new.validation),
                                      "test": len(new.test)}},
            "data": parent.manifest.get("data"),
        })
        tracker.log_artifacts(version.path, "version")
        registered = tracker.register(cfg.name, {"lifecycle.kind": "checkpoint", "lifecycle.retrained": "true",
                                                 "lifecycle.parent_run": tags["lifecycle.parent_run"]})
        outcomes.append(StepOutcome(version.path, tracker.run_id, registered, metrics,
                                    {"epochs_run": result.epochs_run, "replayed": len(train_arrays) - len(new_train)}))
        frozen = run_freeze(str(version.path), output / "frozen" if output else None, versions_dir=versions_dir,
                            track=track)
        outcomes.append(frozen)
        recipe = recipe_text(parent.manifest.get("recipe", []))
        if recipe:
            target = output / recipe.replace(",", "+").replace(":", "-") if output else None
            outcomes.append(run_compress(str(frozen.version), recipe, target, versions_dir=versions_dir, track=track))
    return outcomes
