"""retrain: a deployed version fine-tuned on new data, re-frozen and re-compressed with its recipe."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import artifacts, growth
from lifecycle.config import DataConfig
from lifecycle.corpus import Examples, load_corpus
from lifecycle.errors import ConfigError, DataError, LifecycleError
from lifecycle.manifest import plain
from lifecycle.workflows.calibrating import fit_entry, log_calibration
from lifecycle.workflows.common import (
    StepOutcome,
    _log_evaluation,
    _parent_ref,
    _write_checkpoint,
    data_config_for,
    load_graph_version,
    open_version,
    recipe_text,
)
from lifecycle.workflows.graphs import run_compress, run_freeze, serving_kernels_of
from lifecycle.workflows.publish import publish_version, step_tracker

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
    grow_labels: bool = False  # labels new to the model widen the output layer (else they are an error)
    grow_vocab: bool = False  # word tokenizers: words of NEW's training split become new ids
    min_count: int | None = None  # growth: a new word's count in NEW's training split (None: the parent's config)
    vocab_init: str = "word2vec"  # new embedding rows: word2vec (trained on NEW, mapped) or random
    label_init: str = growth.LABEL_INIT  # new output columns (growth.LABEL_INITS; the benchmark compares them)
    teacher: bool = True  # a distilled version: train on its teacher's soft targets too (False: --no-teacher)


def run_retrain(ref: str, data: Path, options: RetrainOptions = RetrainOptions(), output: Path | None = None, *,
                versions_dir: Path | None = None, track: bool = True, progress: Any = None) -> list[StepOutcome]:
    """Fine-tune a deployed version on new data and ship the next one: restore -> fit -> freeze -> parent's recipe.

    NEW is split (seeded, stratified) with the parent's split fractions; early stopping watches NEW's validation
    part. Accuracy is measured before and after on NEW's test part and on the parent's own test split (forgetting);
    "before" is the parent itself (it never predicts a label it lacks).

    With ``grow_labels``, labels of NEW that the parent lacks are appended to its labels (old ids unchanged) and the
    output layer gains a column each (``growth.LABEL_INIT``); with ``grow_vocab`` (word tokenizers), words of NEW's
    training split seen ``min_count`` times are appended as new ids and the embedding gains their rows
    (``vocab_init``). A ``vocab`` step in the parent's recipe is then re-applied as ``vocab:<grown size>``, so the
    new words are not pruned away again by counts over the parent's old data.

    A distilled parent (its lineage records a teacher) is fine-tuned as ``train`` distilled it: the loss mixes the
    labels and the recorded teacher's soft targets with the recorded temperature and alpha. The teacher is checked
    first (package installed, weights and head sha256 as recorded) and runs, in a nested ``teacher`` run, only on
    the training texts the teacher cache lacks. ``options.teacher`` False (``--no-teacher``) trains on labels alone,
    and so do the ``tune:`` steps of the re-applied recipe (the teacher is never loaded);
    ``grow_labels`` needs it (the teacher's head knows only the parent's labels). ``retrain.teacher`` in the new
    manifest says which teacher was used, or why none was.

    Returns:
        The outcomes of the new checkpoint, its frozen form and (if the parent was compressed) its compressed form.
    """
    import numpy as np

    from lifecycle import evaluate
    from lifecycle import train as train_lib
    from lifecycle.backend import configure
    from lifecycle.calibration import abstain_threshold_of
    from lifecycle.dataset import Arrays, encode_examples
    from lifecycle.model import compile_model
    from lifecycle.restore import restore_model
    from tokenization.factory import load_tokenizer

    parent = open_version(ref)
    cfg = parent.config
    teacher_record = teacher_record_of(parent)
    if teacher_record is not None and options.teacher and options.grow_labels:
        raise ConfigError(f"--grow-labels needs --no-teacher: {parent.path.name} was distilled from "
                          f"{teacher_record.get('package')}, whose head knows only the version's "
                          f"{len(parent.labels)} labels.")
    if not 0.0 <= options.replay <= 1.0:
        raise ConfigError(f"--replay must be a fraction in [0, 1]. Received: {options.replay:g}.")
    if options.vocab_init not in growth.VOCAB_INITS:
        raise ConfigError(f"--vocab-init must be one of {', '.join(growth.VOCAB_INITS)}. "
                          f"Received: {options.vocab_init!r}.")
    min_count = cfg.tokenizer.word.min_count if options.min_count is None else options.min_count
    if min_count < 1:
        raise ConfigError(f"--min-count must be >= 1. Received: {min_count}.")
    new_data = data_config_for(data, DataConfig(split=cfg.data.split))
    new = load_corpus(new_data, f"{cfg.name}-new")
    old_labels = parent.labels
    unknown = sorted(set(new.labels) - set(old_labels))
    if unknown and not options.grow_labels:
        raise DataError(f"{data}: labels {', '.join(map(repr, unknown[:5]))} are not among the model's "
                        f"{len(old_labels)} labels. Pass --grow-labels to add them to the output layer, or relabel "
                        "or drop those rows.")
    labels = (*old_labels, *unknown)  # old label ids unchanged; new ones appended in sorted order
    checked = None  # the recorded teacher, checked before any training work
    if teacher_record is None:
        skipped: dict[str, Any] = {"used": False, "reason": "the version records no teacher (not distilled)"}
    elif not options.teacher:
        # No teacher anywhere in this retrain: nor in the re-applied recipe's tune steps (tune_steps False).
        skipped = {"used": False, "reason": "--no-teacher", "package": teacher_record.get("package"),
                   "tune_steps": False}
    else:
        from lifecycle import distill

        checked = distill.check_recorded_teacher(cfg, teacher_record, len(old_labels), str(parent.path))
    old = None
    try:
        old = load_corpus(cfg.data, cfg.name)
    except DataError as exc:
        if options.replay > 0:
            raise DataError(f"--replay needs the parent's training data, which cannot be read: {exc}") from None
        log.warning("parent's data not readable (%s): forgetting is not measured", exc)

    parent_tokenizer = load_tokenizer(parent.tokenizer_dir)

    def encode(examples: Examples, source: str, tokenizer: Any) -> Any:
        return encode_examples(examples, tokenizer, labels, parent.max_len, source)

    configure(cfg.train.seed, cfg.train.threads)
    masks: dict[str, Any] = {}
    if parent.kind == "checkpoint":
        import keras

        model = keras.saving.load_model(parent.path / artifacts.KERAS_FILE, compile=False)
        masks = {w.path: w.numpy() != 0 for w in model.weights if not w.path.endswith("bias")}
    else:
        restored = restore_model(load_graph_version(parent), cfg, len(old_labels))
        model, masks = restored.model, restored.masks

    def scores_on(arrays: Any, net: Any) -> Any:
        probabilities = np.asarray(net(arrays.x, training=False))
        if probabilities.shape[1] < len(labels):  # the parent: no probability for a label it lacks
            probabilities = np.pad(probabilities, ((0, 0), (0, len(labels) - probabilities.shape[1])))
        return evaluate.evaluate_probabilities(probabilities, arrays.y, labels)

    # "before" is the parent as it was, on its own tokenizer's ids.
    before = {"new": scores_on(encode(new.test, str(data), parent_tokenizer), model)}
    if old is not None:
        before["parent"] = scores_on(encode(old.test, old.source, parent_tokenizer), model)

    tokenizer, grown = _grow(model, parent_tokenizer, cfg, parent.max_len, new, unknown, options, min_count)
    if grown["model"] is not None:
        model = grown["model"]
        masks = growth.grow_masks(masks, grown["words_added"], len(unknown))
    new_train, new_val, new_test = (encode(x, str(data), tokenizer) for x in (new.train, new.validation, new.test))
    old_test = encode(old.test, old.source, tokenizer) if old is not None else None
    train_arrays = new_train
    train_texts = new.train.texts
    if old is not None and options.replay > 0:
        rng = np.random.default_rng(cfg.train.seed)
        old_train = encode(old.train, old.source, tokenizer)
        pick = rng.choice(len(old_train), size=int(round(options.replay * len(old_train))), replace=False)
        train_arrays = Arrays(np.concatenate([new_train.x, old_train.x[pick]]),
                              np.concatenate([new_train.y, old_train.y[pick]]))
        train_texts = (*train_texts, *(old.train.texts[i] for i in pick))

    train_cfg = cfg.train.model_copy(update={
        key: value for key, value in (("epochs", options.epochs), ("learning_rate", options.learning_rate))
        if value is not None})
    if options.freeze_embedding:
        model.get_layer("embedding").trainable = False
    compile_model(model, train_cfg)
    if checked is not None:  # the distillation loss with the recorded teacher's temperature and alpha
        distill.compile_student(model, cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
            update={"temperature": checked.temperature, "alpha": checked.alpha})}))
    callbacks = [train_lib.keep_sparsity_callback(model, masks)] if options.keep_sparsity else []
    if progress is not None:
        from lifecycle.console import keras_progress

        callbacks.append(keras_progress(progress, train_cfg.epochs, -(-len(train_arrays) // train_cfg.batch_size)))

    output = artifacts.check_output(output) if output else None
    tracker = step_tracker(cfg, track)
    tags = {"lifecycle.parent_run": str(parent.manifest.run_id or ""), "lifecycle.parent": str(parent.path)}
    outcomes: list[StepOutcome] = []
    with tracker.run("retrain", f"retrain-{parent.path.name}", tags):
        tracker.log_params({"parent": str(parent.path), "parent_sha256": parent.sha256, "data": str(data),
                            "epochs": train_cfg.epochs, "learning_rate": train_cfg.learning_rate,
                            "freeze_embedding": options.freeze_embedding, "keep_sparsity": options.keep_sparsity,
                            "replay": options.replay, "new_train": len(new_train), "replayed":
                            len(train_arrays) - len(new_train), "grow_labels": options.grow_labels,
                            "grow_vocab": options.grow_vocab, "labels_added": len(unknown),
                            "words_added": grown["words_added"], "teacher": checked is not None})
        if checked is not None:  # labels and soft targets in one target matrix, as train packs them
            teaching = distill.teach_retrain(checked, train_texts, tracker)
            tracker.log_metrics({k: teaching.metrics[k] for k in RETRAIN_TEACHER_METRICS})
            train_arrays = Arrays(train_arrays.x, np.concatenate([train_arrays.y.astype(np.float32)[:, None],
                                                                  teaching.soft], axis=1))
            teacher_entry = teaching.record
        else:
            teacher_entry = skipped
        result = train_lib.fit(model, train_arrays, new_val, train_cfg, on_epoch=lambda e, logs:
                               tracker.log_metrics(logs, step=e), callbacks=callbacks)
        after = {"new": scores_on(new_test, model),
                 **({"parent": scores_on(old_test, model)} if old_test is not None else {})}
        metrics: dict[str, float] = {"train_seconds": result.train_seconds}
        if checked is not None:
            metrics.update({k: teaching.metrics[k] for k in RETRAIN_TEACHER_METRICS})
        for split in after:
            metrics[f"{split}_test_accuracy_before"] = before[split].accuracy
            metrics[f"{split}_test_accuracy"] = after[split].accuracy
            metrics[f"{split}_test_macro_f1"] = after[split].macro_f1
        if unknown:
            metrics.update(_label_group_accuracy(after["new"], unknown, "new_labels"))
            metrics.update(_label_group_accuracy(after["new"], old_labels, "old_labels"))
            metrics.update({f"{k}_before": v for k, v in _label_group_accuracy(before["new"], old_labels,
                                                                                "old_labels").items()})
        if "parent" in after:
            metrics["test_accuracy"] = after["parent"].accuracy
            metrics["test_macro_f1"] = after["parent"].macro_f1
            metrics["forgetting"] = before["parent"].accuracy - after["parent"].accuracy
            if "test_accuracy" in parent.manifest.metrics:
                metrics["accuracy_delta_vs_parent"] = after["parent"].accuracy - parent.manifest.metrics[
                    "test_accuracy"]
        tracker.log_metrics(metrics)
        # The temperature is fitted again on NEW's validation part: fine-tuning changed the probabilities.
        new_test_p = np.asarray(model(new_test.x, training=False))
        calibration = fit_entry(cfg, (np.asarray(model(new_val.x, training=False)), new_val.y),
                                (new_test_p, new_test.y),
                                abstain_threshold_of(parent.manifest) if parent.manifest.calibration else None)
        log_calibration(tracker, calibration, new_test_p, new_test.y, f"{cfg.name} retrained, new data's test part")
        # The confusion matrix and per-class table on the new data's test part (and on the parent's test split).
        _log_evaluation(tracker, after["new"], f"{cfg.name} retrained, new data's test part", prefix="new_test")
        if "parent" in after:
            _log_evaluation(tracker, after["parent"], f"{cfg.name} retrained, parent's test split")
        checkpoint_dir = output / "checkpoint" if output else artifacts.default_output(cfg.name, "checkpoint",
                                                                                         versions_dir)

        def write(run_id: str | None) -> artifacts.Version:
            with tempfile.TemporaryDirectory(prefix="lifecycle-retrain-") as folder:
                tokenizer_dir = parent.tokenizer_dir
                if grown["words_added"]:
                    tokenizer_dir = Path(folder) / "tokenizer"
                    tokenizer.save(tokenizer_dir)
                return _write_checkpoint(checkpoint_dir, model, tokenizer_dir, cfg, labels, parent.max_len, {
                    "parent": _parent_ref(parent),
                    "run_id": run_id,
                    "root_sizes": plain(parent.manifest.root_sizes),
                    "metrics": {k: v for k, v in metrics.items() if k in ("test_accuracy", "test_macro_f1")},
                    "retrain": {"data": str(data), "options": options.__dict__, "metrics": metrics,
                                "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                                "new_split": {"train": len(new.train), "validation": len(new.validation),
                                              "test": len(new.test)},
                                "growth": grown["report"], "teacher": teacher_entry},
                    "data": plain(parent.manifest.data),
                    # What the model learnt from in the first place: the lineage's teacher stays recorded.
                    **({"teacher": teacher_record} if teacher_record is not None else {}),
                    "calibration": calibration,
                }, unique=not output)

        # Its metrics were logged before the version was written, beside the refitted temperature.
        published = publish_version(tracker, cfg.name, write,
                                    register={"lifecycle.kind": "checkpoint", "lifecycle.retrained": "true",
                                              "lifecycle.parent_run": tags["lifecycle.parent_run"]},
                                    example=new.test.texts[:3])
        version = published.version
        outcomes.append(published.outcome(
            {"epochs_run": result.epochs_run, "replayed": len(train_arrays) - len(new_train),
             **({"labels added": ", ".join(unknown)} if unknown else {}),
             **({"words added": grown["words_added"]} if options.grow_vocab else {}),
             **({"note": grown["report"]["note"]} if "note" in grown["report"] else {}),
             "teacher": _teacher_fact(teacher_entry)}, metrics))
        frozen = run_freeze(str(version.path), output / "frozen" if output else None, versions_dir=versions_dir,
                            track=track)
        outcomes.append(frozen)
        recipe = recipe_text(_regrown_recipe(parent.manifest.recipe_dicts(), grown["words_added"],
                                             tokenizer.vocab_size))
        if recipe:
            target = output / recipe.replace(",", "+").replace(":", "-") if output else None
            # The re-frozen float version has no int8 kernels: the parent's serving choice is passed on explicitly.
            outcomes.append(run_compress(str(frozen.version), recipe, target, versions_dir=versions_dir, track=track,
                                         serving_kernels=serving_kernels_of(parent), teacher=options.teacher))
    return outcomes


RETRAIN_TEACHER_METRICS = ("teacher_texts_new", "teacher_texts_reused", "teacher_seconds")


def teacher_record_of(version: artifacts.Version) -> dict[str, Any] | None:
    """The teacher a version learnt from: its manifest's ``teacher``, else (a version written before frozen and
    compressed versions carried it) the nearest ancestor's that is still on disk; None for a plain model."""
    current = version
    for _ in range(64):  # a lineage is short; the bound only guards against a cycle of hand-edited manifests
        if current.manifest.teacher is not None:
            return plain(current.manifest.teacher)
        parent = current.manifest.parent
        if not current.config.teacher.enabled or parent is None or not parent.version:
            return None
        try:
            current = artifacts.load_version(Path(parent.version))
        except LifecycleError:
            return None
    return None


def _teacher_fact(entry: dict[str, Any]) -> str:
    """The summary's line about the teacher."""
    if not entry.get("used"):
        return f"not used ({entry.get('reason')})"
    return (f"{entry['package']}: {entry['texts_new']} new texts, {entry['texts_reused']} from the cache, "
            f"{entry['seconds']:.1f} s")


def _grow(model: Any, tokenizer: Any, cfg: Any, max_len: int, new: Any, unknown: Sequence[str],
          options: RetrainOptions, min_count: int) -> tuple[Any, dict[str, Any]]:
    """The grown tokenizer and {model (None: unchanged), words_added, report} for new labels and new words."""
    report: dict[str, Any] = {}
    rows = None
    words: list[str] = []
    if options.grow_vocab and tokenizer.kind != "word":
        report["note"] = (f"--grow-vocab ignored: a {tokenizer.kind} vocabulary stays as it is (its subwords "
                          "already spell any new word)")
        log.warning("%s", report["note"])
    elif options.grow_vocab:
        texts = list(new.train.texts)
        words = tokenizer.unseen_words(texts, min_count)
        embedding = next(w for w in model.weights if w.path == growth.EMBEDDING_PATH).numpy()
        init = growth.new_embedding_rows(embedding, tokenizer.vocab, words, tokenizer.tokenize(texts),
                                         options.vocab_init, cfg.tokenizer.word.word2vec, cfg.train.seed)
        rows = init.rows
        report["vocab"] = {"words_added": len(words), "vocab_size_before": tokenizer.vocab_size,
                           "vocab_size_after": tokenizer.vocab_size + len(words), "min_count": min_count,
                           "init": init.method, "examples": words[:20], **init.report}
        if "note" in init.report:
            report["note"] = init.report["note"]
        if words:
            vectors = rows if tokenizer.vectors is not None else None
            tokenizer = tokenizer.extend(words, vectors)
        else:
            log.warning("--grow-vocab: no word of the new training texts is missing from the vocabulary (min count "
                        "%d)", min_count)
    columns = None
    if unknown:
        kernel = next(w for w in model.weights if w.path == growth.OUTPUT_KERNEL_PATH).numpy()
        bias = next(w for w in model.weights if w.path == growth.OUTPUT_BIAS_PATH).numpy()
        columns = growth.new_output_columns(kernel, bias, len(unknown), options.label_init, cfg.train.seed)
        report["labels"] = {"added": list(unknown), "init": options.label_init,
                            "labels_before": int(kernel.shape[1]), "labels_after": int(kernel.shape[1]) + len(unknown)}
    grown = None
    if words or unknown:
        grown = growth.grow_model(model, cfg, max_len, rows=rows if words else None, columns=columns)
    return tokenizer, {"model": grown, "words_added": len(words), "report": report}


def _label_group_accuracy(scores: Any, group: Sequence[str], prefix: str) -> dict[str, float]:
    """Accuracy over the examples whose true label is in ``group`` (recall pooled over those labels)."""
    rows = [scores.per_class[label] for label in group if label in scores.per_class]
    support = sum(row["support"] for row in rows)
    if not support:
        return {}
    return {f"{prefix}_accuracy": sum(row["recall"] * row["support"] for row in rows) / support}


def _regrown_recipe(recipe: Sequence[dict[str, Any]], words_added: int, vocab_size: int) -> list[dict[str, Any]]:
    """The parent's recipe to re-apply; after vocabulary growth a ``vocab`` step keeps every row (``vocab:<size>``).

    Re-applied as it was, ``vocab:N`` would count ids over the parent's old training data, where the new words never
    occur, and prune exactly the rows that growth just added.
    """
    if not words_added or not any(step["name"] == "vocab" for step in recipe):
        return list(recipe)
    log.warning("the parent's recipe prunes the vocabulary; re-applied as vocab:%d so the %d new words stay",
                vocab_size, words_added)
    return [{"name": "vocab", "params": {"keep": vocab_size}} if step["name"] == "vocab" else step
            for step in recipe]
