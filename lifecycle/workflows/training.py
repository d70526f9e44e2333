"""Tokenizer and CNN training: a checkpoint version from a config (resumable)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import artifacts, housekeeping
from lifecycle.config import Config
from lifecycle.corpus import Corpus, load_corpus
from lifecycle.tracking import NullTracker, make_tracker
from lifecycle.workflows.calibrating import calibration_fact, fit_entry, log_calibration
from lifecycle.workflows.common import StepOutcome, _log_evaluation, _write_checkpoint, log_data_cleaning
from lifecycle.workflows.publish import publish_version

log = logging.getLogger(__name__)


WORK_DIR = ".work"


@dataclass(frozen=True)
class TokenizerReport:
    """What a trained tokenizer looks like on held-out text."""

    kind: str
    vocab_size: int
    train_seconds: float
    unk_rate: float
    mean_tokens: float
    truncation_rate: float
    size_bytes: int

    def metrics(self) -> dict[str, float]:
        return {
            "tokenizer_vocab_size": self.vocab_size,
            "tokenizer_train_seconds": self.train_seconds,
            "tokenizer_unk_rate": self.unk_rate,
            "tokenizer_mean_tokens": self.mean_tokens,
            "tokenizer_truncation_rate": self.truncation_rate,
            "size_bytes_tokenizer": self.size_bytes,
        }


# ---------------------------------------------------------------- tokenizer


def _tokenizer_report(tokenizer: Any, directory: Path, seconds: float, texts: Sequence[str], max_len: int
                      ) -> TokenizerReport:
    from tokenization.base import coverage_stats

    stats = coverage_stats(tokenizer, list(texts), max_len)
    return TokenizerReport(
        kind=tokenizer.kind,
        vocab_size=int(tokenizer.vocab_size),
        train_seconds=seconds,
        unk_rate=stats.unk_rate,
        mean_tokens=stats.mean_tokens,
        truncation_rate=stats.truncation_rate,
        size_bytes=artifacts.dir_bytes(directory),
    )


def _train_tokenizer(cfg: Config, corpus: Corpus, directory: Path) -> tuple[Any, float]:
    """Train on the training split and save to ``directory`` (via a temp folder, renamed when complete)."""
    from tokenization.factory import load_tokenizer, train_tokenizer

    seconds_file = directory.with_name(f"{directory.name}.seconds")
    if (directory / "tokenizer.json").is_file():  # a resumed run: report the time the first attempt took
        return load_tokenizer(directory), float(seconds_file.read_text()) if seconds_file.is_file() else 0.0
    started = time.perf_counter()
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Scratch files (bpe's training text and log) go to a temporary folder, not into the tokenizer that every
    # version of this model ships.
    tokenizer = train_tokenizer(list(corpus.train.texts), cfg.tokenizer, workdir=None, seed=cfg.train.seed)
    tokenizer.save(tmp)
    seconds = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    seconds_file.write_text(f"{seconds:.6f}")
    return load_tokenizer(directory), seconds


def run_tokenize(cfg: Config, output: Path | None = None) -> StepOutcome:
    """Train the config's tokenizer on its training split and save it as a tokenizer version."""
    corpus = load_corpus(cfg.data, cfg.name)
    output, unique = artifacts.resolve_output(output, cfg.name, "tokenizer")
    tracker = make_tracker(cfg.tracking, cfg.name)
    with tracker.run("tokenize", f"tokenize-{cfg.tokenizer.kind}", {"lifecycle.tokenizer": cfg.tokenizer.kind}):
        tracker.log_params(cfg.flat())
        with housekeeping.temp_dir("tokenize") as work:
            tokenizer, seconds = _train_tokenizer(cfg, corpus, work / "tokenizer")
            report = _tokenizer_report(tokenizer, work / "tokenizer", seconds, corpus.validation.texts,
                                       cfg.tokenizer.max_len)

            def build(tmp: Path) -> dict[str, Any]:
                artifacts.copy_tree(work / "tokenizer", tmp / artifacts.TOKENIZER_DIR)
                (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
                return {"max_len": cfg.tokenizer.max_len, "config": cfg.to_dict(),
                        "metrics": report.metrics(), "run_id": tracker.run_id}

            published = publish_version(
                tracker, cfg.name, lambda run_id: artifacts.write_version(output, "tokenizer", build, unique=unique),
                metrics=lambda version: report.metrics(), artifact_path="tokenizer")  # a tokenizer is not registered
    return published.outcome()


def _log_splits(tracker: NullTracker, corpus: Corpus) -> None:
    for context, examples in (("train", corpus.train), ("validation", corpus.validation), ("test", corpus.test)):
        tracker.log_input(examples.texts, examples.labels, name=f"{corpus.name}-{context}",
                          source=corpus.location or corpus.source, context=context)
    log_data_cleaning(tracker, corpus)


def _work_dir(cfg: Config, versions_dir: Path | None) -> Path:
    """Where an unfinished training run keeps its tokenizer and per-epoch state, keyed by the config's hash."""
    sections: tuple[str, ...] = ("name", "data", "tokenizer", "model", "train")
    if cfg.teacher.enabled:  # a distilled run never resumes a plain one (or the other way round)
        sections = (*sections, "teacher")
    return (versions_dir or artifacts.versions_root()) / WORK_DIR / f"{cfg.name}-{cfg.digest(sections)}"


@contextlib.contextmanager
def _claim_work_dir(work: Path, resume: bool) -> Iterator[tuple[Path, bool]]:
    """The work folder this process may use, and whether it may resume from it.

    The config's own folder is held with an ``flock`` on ``<folder>.lock`` for the whole run (the kernel drops it
    if the process dies, so a killed run is resumed by the next one). A second ``train`` of the same config while
    the first runs does not wait: it trains apart, in a private folder beside it that is removed at the end (and
    swept by the next command if this process is killed), and says so.
    """
    lock = work.with_name(f"{work.name}.lock")
    with housekeeping.exclusive_lock(lock, blocking=False) as held:
        if held:
            if not resume:
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            try:
                yield work, resume
            finally:  # a run that stopped before writing anything (tracking unreachable) leaves no folder
                with contextlib.suppress(OSError):
                    work.rmdir()
            return
        holder = housekeeping.lock_holder(lock)
        apart = housekeeping.make_temp_dir(work.name, work.parent)
        log.warning("another `train` of this config (pid %s) is using %s; this one trains apart in %s, from "
                    "scratch, and is not resumable", holder or "?", work, apart)
        try:
            yield apart, False
        finally:
            shutil.rmtree(apart, ignore_errors=True)


def run_train(
    cfg: Config,
    output: Path | None = None,
    *,
    versions_dir: Path | None = None,
    resume: bool = True,
    progress: Any = None,
) -> StepOutcome:
    """Train the CNN end to end and write a checkpoint version.

    Tokenizer -> encoded splits -> model -> fit (resumable) -> test evaluation -> version (manifest.json, config.yaml,
    tokenizer/, model.keras with optimizer slots) -> MLflow run with params, metrics, plots, registered version.

    Args:
        cfg: the resolved config.
        output: the version directory to create; default a new folder under the versions directory.
        versions_dir: root for default outputs and the resume work area (tests point it at a tmp dir).
        resume: continue an interrupted run of the same config from its last finished epoch.
        progress: a ``rich.progress.Progress`` to drive, or None.

    Returns:
        The new version, its run id, registered version number and metrics.
    """
    from lifecycle.console import Stage

    stage = Stage(progress)
    stage(f"reading {cfg.data.format} data")

    output, unique = artifacts.resolve_output(output, cfg.name, "checkpoint", versions_dir)
    corpus = load_corpus(cfg.data, cfg.name)
    with _claim_work_dir(_work_dir(cfg, versions_dir), resume) as (work, resume):
        return _train_in(cfg, corpus, work, output, unique, resume, progress, stage)


def _train_in(cfg: Config, corpus: Corpus, work: Path, output: Path, unique: bool, resume: bool, progress: Any,
              stage: Any) -> StepOutcome:
    """run_train's body, in a work folder this process holds."""
    from lifecycle import backend, evaluate
    from lifecycle import model as model_lib
    from lifecycle import train as train_lib
    from lifecycle.console import Stage
    from lifecycle.dataset import dropout_encoder, encode_corpus, word_dropout_encoder

    run_file = work / "run.json"
    tracker = make_tracker(cfg.tracking, cfg.name)
    resume_run = tracker.resumable_run(run_file)
    tags = {"lifecycle.tokenizer": cfg.tokenizer.kind, "lifecycle.config_hash": cfg.digest()}
    with tracker.run("train", f"train-{cfg.tokenizer.kind}-{cfg.model.embedding_init}", tags,
                     resume_run_id=resume_run):
        tracker.remember_run(run_file)
        if not resume_run:
            tracker.log_params(cfg.flat())
            tracker.log_text(cfg.to_yaml(), "config.yaml")
            _log_splits(tracker, corpus)

        stage(f"training the {cfg.tokenizer.kind} tokenizer on {len(corpus.train)} texts")
        tokenizer, tok_seconds = _train_tokenizer(cfg, corpus, work / "tokenizer")
        tok_report = _tokenizer_report(tokenizer, work / "tokenizer", tok_seconds, corpus.validation.texts,
                                       cfg.tokenizer.max_len)
        tracker.log_metrics(tok_report.metrics())
        data = encode_corpus(corpus, tokenizer, cfg.tokenizer.max_len)
        teaching = None
        if cfg.teacher.enabled:  # the teacher's soft targets (lifecycle.distill), in a nested `teacher` run
            from lifecycle import distill

            stage(f"running the teacher ({cfg.teacher.package}) on {len(corpus.train)} texts")
            teaching = distill.prepare_teacher(cfg, corpus, tracker)
            distill.register_objects()  # a resumed model.keras carries the distillation loss

        stage("building the model")
        backend.configure(cfg.train.seed, cfg.train.threads)
        resume_dir = work / "resume"
        model = train_lib.load_resume_model(resume_dir) if resume else None
        if model is None:
            vectors = getattr(tokenizer, "vectors", None)
            model = model_lib.build_model(cfg.model, cfg.train, vocab_size=tokenizer.vocab_size,
                                          num_classes=len(corpus.labels), max_len=cfg.tokenizer.max_len,
                                          embeddings=vectors if cfg.model.embedding_init != "rand" else None)
            if teaching is not None:  # a resumed model comes back compiled with the distillation loss
                distill.compile_student(model, cfg)
                distill.init_student_embeddings(model, cfg, tokenizer)
        else:
            log.warning("resuming %s from %s", cfg.name, resume_dir)
        train_arrays = data.train
        if teaching is not None:  # labelled + unlabelled texts, targets = label column + soft targets
            train_arrays = distill.student_arrays(teaching, data.train, tokenizer, cfg.tokenizer.max_len)

        callbacks = []
        if progress is not None:
            from lifecycle.console import keras_progress

            steps = -(-len(train_arrays) // cfg.train.batch_size)
            callbacks.append(keras_progress(progress, cfg.train.epochs, steps))

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            tracker.log_metrics(logs, step=epoch)

        stage.done()
        dropout = cfg.tokenizer.bpe.dropout if cfg.tokenizer.kind == "bpe" else 0.0
        # BPE-dropout re-encodes every training text (a distilled student's unlabelled ones too) each epoch.
        texts = (*corpus.train.texts, *(teaching.unlabelled_texts if teaching is not None else ()))
        train_for_epoch = dropout_encoder(texts, train_arrays.y, tokenizer, cfg.tokenizer.max_len, dropout)
        train_for_epoch = word_dropout_encoder(train_arrays, train_for_epoch, cfg.train.word_dropout, cfg.train.seed)
        result = train_lib.fit(model, train_arrays, data.validation, cfg.train, resume_dir=resume_dir,
                               on_epoch=on_epoch, callbacks=callbacks, train_for_epoch=train_for_epoch)
        stage = Stage(progress)
        stage("evaluating on the test split")

        probabilities = model.predict(data.test.x, batch_size=256, verbose=0)
        scores = evaluate.evaluate_probabilities(probabilities, data.test.y, corpus.labels)
        # Temperature scaling on the validation split (lifecycle.calibration); the test split only measures it.
        calibration = fit_entry(cfg, (model.predict(data.validation.x, batch_size=256, verbose=0), data.validation.y),
                                (probabilities, data.test.y))
        stage("writing the version")

        def write(run_id: str | None) -> artifacts.Version:
            return _write_checkpoint(output, model, work / "tokenizer", cfg, corpus.labels, cfg.tokenizer.max_len, {
                "run_id": run_id,
                "metrics": scores.metrics(),
                "training": result.summary(),
                "calibration": calibration,
                **({"teacher": teaching.record} if teaching is not None else {}),
                "data": {"source": corpus.source, "train": len(corpus.train), "validation": len(corpus.validation),
                         "test": len(corpus.test), **corpus.cleaning},
            }, unique=unique)

        def checkpoint_metrics(version: artifacts.Version) -> dict[str, float]:
            from lifecycle.sizes import version_sizes

            return {
                **scores.metrics(),
                "train_seconds": result.train_seconds,
                **version_sizes(version).metrics(),  # deployed (model.keras + tokenizer), gzip, disk, checkpoint
                "params_total": version.manifest.params_total,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "peak_epoch": result.best_epoch + 1,
                "patience_epochs": result.schedule.patience_epochs if result.schedule else 0,
                "lr_reductions": result.lr_reductions,
                "final_learning_rate": result.final_learning_rate,
            }

        def log_training(version: artifacts.Version) -> None:
            # Why training ended, searchable in the MLflow UI (tags.`lifecycle.stop_reason` = 'max_epochs' finds runs
            # that hit the epochs cap before converging).
            tracker.set_tags({"lifecycle.stop_reason": result.stop_reason,
                              "lifecycle.peak_epoch": str(result.best_epoch + 1)})
            _log_evaluation(tracker, scores, f"{cfg.name} test")
            log_calibration(tracker, calibration, probabilities, data.test.y, f"{cfg.name} test")
            stage("logging to MLflow")

        published = publish_version(tracker, cfg.name, write, metrics=checkpoint_metrics, log=log_training,
                                    register={"lifecycle.kind": "checkpoint", "lifecycle.parent_run": ""},
                                    tag_version=True, example=corpus.test.texts[:3])
        stage.done()
    shutil.rmtree(work, ignore_errors=True)
    facts = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1, "stop_reason": result.stop_reason,
             "resumed_from": result.resumed_from, "vocab_size": tokenizer.vocab_size,
             "calibration": calibration_fact(calibration),
             "labels": len(corpus.labels), "train/val/test": f"{len(corpus.train)}/{len(corpus.validation)}/"
                                                              f"{len(corpus.test)}"}
    return published.outcome(facts, {**tok_report.metrics(), **published.metrics})
