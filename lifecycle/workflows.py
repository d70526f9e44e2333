"""The steps wired together: tokenize, train, evaluate, predict, pipeline. Only this module knows their order.

Every step runs inside one tracker run (MLflow or none); a failure inside it marks the run FAILED and leaves no
version behind (versions are written through ``artifacts.write_version``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.config import Config, DataConfig, load_config
from lifecycle.corpus import Corpus, Examples, load_corpus, read_examples
from lifecycle.errors import DataError, ModelError
from lifecycle.tracking import NullTracker, make_tracker, resolve_version

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


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: the version it wrote (if any), its run, its metrics and a few facts to print."""

    version: Path | None
    run_id: str | None
    registered: str | None
    metrics: dict[str, float]
    facts: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- tokenizer


def _tokenizer_report(tokenizer: Any, directory: Path, seconds: float, texts: Sequence[str], max_len: int
                      ) -> TokenizerReport:
    from tokenization.base import coverage_stats, tokenizer_bytes

    stats = coverage_stats(tokenizer, list(texts), max_len)
    return TokenizerReport(
        kind=tokenizer.kind,
        vocab_size=int(tokenizer.vocab_size),
        train_seconds=seconds,
        unk_rate=stats.unk_rate,
        mean_tokens=stats.mean_tokens,
        truncation_rate=stats.truncation_rate,
        size_bytes=tokenizer_bytes(directory),
    )


def _train_tokenizer(cfg: Config, corpus: Corpus, directory: Path) -> tuple[Any, float]:
    """Train on the training split and save to ``directory`` (via a temp folder, renamed when complete)."""
    from tokenization.base import load_tokenizer, train_tokenizer

    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory), 0.0
    started = time.perf_counter()
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = train_tokenizer(list(corpus.train.texts), cfg.tokenizer, workdir=tmp, seed=cfg.train.seed)
    tokenizer.save(tmp)
    seconds = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return load_tokenizer(directory), seconds


def run_tokenize(cfg: Config, output: Path | None = None) -> StepOutcome:
    """Train the config's tokenizer on its training split and save it as a tokenizer version."""
    corpus = load_corpus(cfg.data, cfg.name)
    output = artifacts.check_output(output) if output else artifacts.default_output(cfg.name, "tokenizer")
    tracker = make_tracker(cfg.tracking, cfg.name)
    with tracker.run("tokenize", f"tokenize-{cfg.tokenizer.kind}", {"lifecycle.tokenizer": cfg.tokenizer.kind}):
        tracker.log_params(cfg.flat())
        work = Path(tempfile.mkdtemp(prefix="lifecycle-tok-"))
        try:
            tokenizer, seconds = _train_tokenizer(cfg, corpus, work / "tokenizer")
            report = _tokenizer_report(tokenizer, work / "tokenizer", seconds, corpus.validation.texts,
                                       cfg.tokenizer.max_len)

            def build(tmp: Path) -> dict[str, Any]:
                artifacts.copy_tree(work / "tokenizer", tmp / artifacts.TOKENIZER_DIR)
                (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
                return {"max_len": cfg.tokenizer.max_len, "config": cfg.to_dict(),
                        "metrics": report.metrics(), "run_id": tracker.run_id}

            version = artifacts.write_version(output, "tokenizer", build)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tracker.log_metrics(report.metrics())
        tracker.log_artifacts(version.path, "tokenizer")
    return StepOutcome(version.path, tracker.last_run_id, None, report.metrics())


# ---------------------------------------------------------------- train


def _log_splits(tracker: NullTracker, corpus: Corpus) -> None:
    for context, examples in (("train", corpus.train), ("validation", corpus.validation), ("test", corpus.test)):
        tracker.log_input(examples.texts, examples.labels, name=f"{corpus.name}-{context}",
                          source=corpus.location or corpus.source, context=context)


def _work_dir(cfg: Config, versions_dir: Path | None) -> Path:
    """Where an unfinished training run keeps its tokenizer and per-epoch state, keyed by the config's hash."""
    sections = ("name", "data", "tokenizer", "model", "train")
    return (versions_dir or artifacts.versions_root()) / WORK_DIR / f"{cfg.name}-{cfg.digest(sections)}"


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
    from lifecycle import backend, evaluate
    from lifecycle import model as model_lib
    from lifecycle import train as train_lib
    from lifecycle.console import Stage
    from lifecycle.dataset import encode_corpus

    stage = Stage(progress)
    stage(f"reading {cfg.data.format} data")

    output = artifacts.check_output(output) if output else artifacts.default_output(cfg.name, "checkpoint",
                                                                                      versions_dir)
    corpus = load_corpus(cfg.data, cfg.name)
    work = _work_dir(cfg, versions_dir)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    run_file = work / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    tracker = make_tracker(cfg.tracking, cfg.name)
    resume_run = previous.get("run_id") if tracker.enabled and previous.get("uri") == getattr(tracker, "uri", None) \
        else None
    tags = {"lifecycle.tokenizer": cfg.tokenizer.kind, "lifecycle.config_hash": cfg.digest()}
    with tracker.run("train", f"train-{cfg.tokenizer.kind}-{cfg.model.embedding_init}", tags,
                     resume_run_id=resume_run):
        if tracker.run_id:
            run_file.write_text(json.dumps({"run_id": tracker.run_id, "uri": getattr(tracker, "uri", None)}))
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

        stage("building the model")
        backend.configure(cfg.train.seed, cfg.train.threads)
        resume_dir = work / "resume"
        model = train_lib.load_resume_model(resume_dir) if resume else None
        if model is None:
            vectors = getattr(tokenizer, "vectors", None)
            model = model_lib.build_model(cfg.model, cfg.train, vocab_size=tokenizer.vocab_size,
                                          num_classes=len(corpus.labels), max_len=cfg.tokenizer.max_len,
                                          embeddings=vectors if cfg.model.embedding_init != "rand" else None)
        else:
            log.warning("resuming %s from %s", cfg.name, resume_dir)

        callbacks = []
        if progress is not None:
            from lifecycle.console import keras_progress

            steps = -(-len(data.train) // cfg.train.batch_size)
            callbacks.append(keras_progress(progress, cfg.train.epochs, steps))

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            tracker.log_metrics(logs, step=epoch)

        stage.done()
        result = train_lib.fit(model, data.train, data.validation, cfg.train, resume_dir=resume_dir,
                               on_epoch=on_epoch, callbacks=callbacks)
        stage = Stage(progress)
        stage("evaluating on the test split")

        probabilities = model.predict(data.test.x, batch_size=256, verbose=0)
        scores = evaluate.evaluate_probabilities(probabilities, data.test.y, corpus.labels)
        sizes = {
            "weights_bytes": model_lib.weight_bytes(model),
            "optimizer_bytes": model_lib.optimizer_bytes(model),
            "tokenizer_bytes": tok_report.size_bytes,
        }

        def build(tmp: Path) -> dict[str, Any]:
            artifacts.copy_tree(work / "tokenizer", tmp / artifacts.TOKENIZER_DIR)
            (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
            model.save(tmp / artifacts.KERAS_FILE)
            sizes["checkpoint_bytes"] = (tmp / artifacts.KERAS_FILE).stat().st_size
            return {
                "labels": list(corpus.labels),
                "max_len": cfg.tokenizer.max_len,
                "input": {"name": model_lib.INPUT_NAME, "dtype": "int32", "shape": [None, cfg.tokenizer.max_len]},
                "output": {"name": model_lib.OUTPUT_NAME},
                "parent": None,
                "recipe": [],
                "run_id": tracker.run_id,
                "params_total": model_lib.count_params(model),
                "sizes": sizes,
                "tensors": model_lib.tensor_table(model),
                "metrics": scores.metrics(),
                "training": {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                             "stopped_early": result.stopped_early, "resumed_from": result.resumed_from},
                "data": {"source": corpus.source, "train": len(corpus.train), "validation": len(corpus.validation),
                         "test": len(corpus.test)},
                "config": cfg.to_dict(),
            }

        stage("writing the version")
        version = artifacts.write_version(output, "checkpoint", build)
        metrics = {
            **scores.metrics(),
            "train_seconds": result.train_seconds,
            "size_bytes": sizes["weights_bytes"] + sizes["tokenizer_bytes"],
            "size_bytes_checkpoint": sizes["checkpoint_bytes"],
            "size_bytes_weights": sizes["weights_bytes"],
            "size_bytes_optimizer": sizes["optimizer_bytes"],
            "params_total": version.manifest["params_total"],
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
        }
        tracker.log_metrics(metrics)
        _log_evaluation(tracker, scores, f"{cfg.name} test")
        stage("logging to MLflow")
        tracker.log_artifacts(version.path, "version")
        registered = tracker.register(cfg.name, {"lifecycle.kind": "checkpoint", "lifecycle.parent_run": ""})
        tracker.set_tags({"lifecycle.version": str(version.path)})
        stage.done()
    shutil.rmtree(work, ignore_errors=True)
    facts = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1,
             "resumed_from": result.resumed_from, "vocab_size": tokenizer.vocab_size,
             "labels": len(corpus.labels), "train/val/test": f"{len(corpus.train)}/{len(corpus.validation)}/"
                                                              f"{len(corpus.test)}"}
    return StepOutcome(version.path, tracker.last_run_id, registered, metrics, facts)


def _log_evaluation(tracker: NullTracker, scores: Any, title: str, prefix: str = "test") -> None:
    from lifecycle import evaluate

    if not tracker.enabled:
        return
    tracker.log_table(evaluate.per_class_rows(scores), f"{prefix}_per_class.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = evaluate.plot_confusion(scores, Path(tmp) / f"{prefix}_confusion_matrix.png", title)
        tracker.log_artifact(png)


# ---------------------------------------------------------------- evaluate / predict


def open_version(ref: str) -> artifacts.Version:
    """A VERSION argument (path, runs:/, models:/) loaded and verified."""
    return artifacts.load_version(resolve_version(ref))


def evaluation_examples(version: artifacts.Version, data: Path | None, data_cfg: DataConfig | None = None
                        ) -> tuple[Examples, str]:
    """What to evaluate on: a data file or config, or (default) the version's own test split."""
    if data is None:
        cfg = version.config
        corpus = load_corpus(cfg.data, cfg.name)
        return corpus.test, f"{corpus.source} (test split)"
    if data.suffix in (".yaml", ".yml"):
        cfg = load_config(data)
        corpus = load_corpus(cfg.data, cfg.name)
        return corpus.test, f"{corpus.source} (test split)"
    suffix = data.suffix.lower().lstrip(".")
    if suffix not in ("csv", "tsv", "jsonl"):
        raise DataError(f"{data}: unknown data file type {data.suffix!r}. Pass a .csv, .tsv, .jsonl or a config .yaml.")
    base = data_cfg or DataConfig()
    reader_cfg = base.model_copy(update={"format": suffix, "path": str(data.resolve()), "test_path": None})
    examples, _ = read_examples(reader_cfg)
    return examples, str(data)


def run_evaluate(ref: str, data: Path | None = None, data_cfg: DataConfig | None = None, track: bool = True
                 ) -> StepOutcome:
    """Score a version on labelled data; logs an ``evaluate`` run in the version's experiment."""
    from lifecycle import evaluate
    from lifecycle.dataset import encode_examples
    from lifecycle.inference import Predictor

    version = open_version(ref)
    examples, source = evaluation_examples(version, data, data_cfg)
    if not len(examples):
        raise DataError(f"{source}: no examples to evaluate on. Pass a non-empty data set.")
    predictor = Predictor(version)
    arrays = encode_examples(examples, predictor.tokenizer, predictor.labels, predictor.max_len, source)
    probabilities = predictor.predict_ids(arrays.x)
    scores = evaluate.evaluate_probabilities(probabilities, arrays.y, predictor.labels)
    cfg = version.config
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    tags = {"lifecycle.version": str(version.path), "lifecycle.parent_run": str(version.manifest.get("run_id") or "")}
    with tracker.run("evaluate", f"evaluate-{version.path.name}", tags):
        tracker.log_params({"version": str(version.path), "data": source, "n": scores.n})
        tracker.log_metrics(scores.metrics())
        _log_evaluation(tracker, scores, f"{version.path.name} on {Path(source).name}")
    return StepOutcome(version.path, tracker.last_run_id, None, scores.metrics(),
                       {"n": scores.n, "per_class": scores.per_class})


def run_predict(ref: str, texts: Sequence[str], top_k: int = 1) -> list[Any]:
    """Labels and probabilities for raw texts."""
    from lifecycle.inference import Predictor

    if not texts:
        raise DataError("no texts to predict: pass TEXT arguments or --file with one text per line.")
    return Predictor(open_version(ref)).predict(texts, top_k=top_k)


# ---------------------------------------------------------------- freeze


def _check_arrays(version: artifacts.Version, tokenizer: Any) -> tuple[Any, str]:
    """Ids to compare two forms of a model on: the version's test split, else (data unreadable) seeded random ids."""
    import numpy as np

    from lifecycle.dataset import encode_examples

    cfg = version.config
    try:
        corpus = load_corpus(cfg.data, cfg.name)
        return encode_examples(corpus.test, tokenizer, version.labels, version.max_len, corpus.source), "test split"
    except DataError as exc:
        log.warning("%s; comparing on random ids instead", exc)
        rng = np.random.default_rng(cfg.train.seed)
        from lifecycle.train import Arrays

        x = rng.integers(0, tokenizer.vocab_size, size=(256, version.max_len), dtype=np.int32)
        return Arrays(x, np.zeros(256, dtype=np.int32)), "random ids"


def _gzip_bytes(paths: Sequence[Path]) -> int:
    """Bytes after gzip -6 of each file, summed (what a compressed transfer or image layer would hold)."""
    import gzip

    total = 0
    for path in paths:
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            total += len(gzip.compress(file.read_bytes(), compresslevel=6))
    return total


def _parent_ref(parent: artifacts.Version) -> dict[str, Any]:
    return {"version": str(parent.path), "run_id": parent.manifest.get("run_id"), "sha256": parent.sha256,
            "kind": parent.kind}


def run_freeze(ref: str, output: Path | None = None, *, versions_dir: Path | None = None, track: bool = True
               ) -> StepOutcome:
    """Freeze a checkpoint version into one GraphDef of named constants (no optimizer state, no Keras).

    The frozen graph's probabilities are compared with the checkpoint's on the test split before anything is
    written: float32 models must agree to 1e-5 (mixed-precision ones to 2e-2, as Keras computed them in 16 bits).
    """
    import numpy as np

    from lifecycle import evaluate
    from lifecycle.backend import tf_module
    from lifecycle.freeze import GRAPH_FILE, GraphRunner, freeze_model, graph_tensors
    from tokenization.base import load_tokenizer, serving_copy

    parent = open_version(ref)
    if parent.kind != "checkpoint":
        raise ModelError(f"{parent.path}: freeze takes a checkpoint version; this one is {parent.kind}.")
    cfg = parent.config
    output = artifacts.check_output(output) if output else artifacts.default_output(cfg.name, "frozen", versions_dir)
    tf_module()
    import keras

    model = keras.saving.load_model(parent.path / artifacts.KERAS_FILE, compile=False)
    frozen = freeze_model(model, parent.max_len)
    tokenizer = load_tokenizer(parent.tokenizer_dir)
    arrays, compared_on = _check_arrays(parent, tokenizer)
    expected = model.predict(arrays.x, batch_size=256, verbose=0)
    runner = GraphRunner(frozen.graph_def, "frozen graph", parent.max_len, frozen.input_dtype)
    got = runner.run(arrays.x)
    runner.close()
    max_abs_diff = float(np.max(np.abs(expected - got)))
    bound = 1e-5 if cfg.train.precision == "float32" else 2e-2
    if max_abs_diff > bound:
        raise ModelError(f"frozen graph differs from {parent.path} by {max_abs_diff:.2e} (> {bound:g}) on the "
                         f"{compared_on}; nothing written. Report this as a bug with the version attached.")
    metrics: dict[str, float] = {"freeze_max_abs_diff": max_abs_diff}
    if compared_on == "test split":
        scores = evaluate.evaluate_probabilities(got, arrays.y, parent.labels)
        metrics.update(scores.metrics())
        if "test_accuracy" in parent.manifest.get("metrics", {}):
            metrics["accuracy_delta_vs_parent"] = scores.accuracy - parent.manifest["metrics"]["test_accuracy"]
    tensors = graph_tensors(frozen.graph_def)
    params = int(sum(np.prod(t["shape"]) for t in tensors.values()))

    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    tags = {"lifecycle.parent_run": str(parent.manifest.get("run_id") or ""), "lifecycle.parent": str(parent.path)}
    with tracker.run("freeze", f"freeze-{parent.path.name}", tags):

        def build(tmp: Path) -> dict[str, Any]:
            serving_copy(tokenizer).save(tmp / artifacts.TOKENIZER_DIR)
            (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
            (tmp / GRAPH_FILE).write_bytes(frozen.graph_def.SerializeToString())
            (tmp / "weight_map.json").write_text(json.dumps(frozen.weight_map, indent=1), encoding="utf-8")
            sizes = {
                "graph_bytes": (tmp / GRAPH_FILE).stat().st_size,
                "tokenizer_bytes": artifacts.dir_bytes(tmp / artifacts.TOKENIZER_DIR),
                "gzip_bytes": _gzip_bytes([tmp / GRAPH_FILE, tmp / artifacts.TOKENIZER_DIR]),
            }
            metrics.update({
                "size_bytes": sizes["graph_bytes"] + sizes["tokenizer_bytes"],
                "size_gzip_bytes": sizes["gzip_bytes"],
                "size_ratio_vs_checkpoint": (sizes["graph_bytes"] + sizes["tokenizer_bytes"])
                / (parent.manifest["sizes"]["checkpoint_bytes"] + parent.manifest["sizes"]["tokenizer_bytes"]),
                "params_total": params,
                "params_nonzero": int(sum(np.count_nonzero(v) for v in _weight_values(frozen.graph_def))),
            })
            return {
                "labels": list(parent.labels),
                "max_len": parent.max_len,
                "input": {"name": "input_ids", "dtype": frozen.input_dtype, "shape": [None, parent.max_len]},
                "output": {"name": "probabilities"},
                "parent": _parent_ref(parent),
                "recipe": [],
                "run_id": tracker.run_id,
                "params_total": params,
                "sizes": sizes,
                "tensors": tensors,
                "metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
                "freeze": {"max_abs_diff": max_abs_diff, "compared_on": compared_on, "n": int(len(arrays.x))},
                "data": parent.manifest.get("data"),
                "config": cfg.to_dict(),
            }

        version = artifacts.write_version(output, "frozen", build)
        tracker.log_params({"parent": str(parent.path), "input_dtype": frozen.input_dtype})
        tracker.log_metrics(metrics)
        tracker.log_artifacts(version.path, "version")
        registered = tracker.register(cfg.name, {"lifecycle.kind": "frozen",
                                                 "lifecycle.parent_run": tags["lifecycle.parent_run"]})
        tracker.set_tags({"lifecycle.version": str(version.path)})
    facts = {"compared on": f"{compared_on} ({len(arrays.x)})", "input dtype": frozen.input_dtype}
    return StepOutcome(version.path, tracker.last_run_id, registered, metrics, facts)


def _weight_values(graph_def: Any) -> list[Any]:
    from lifecycle.freeze import const_value

    return [const_value(graph_def, node.name) for node in graph_def.node
            if node.op == "Const" and node.name.startswith("weights/")]


def run_inspect(ref: str) -> dict[str, Any]:
    """Every tensor of a version (name, shape, dtype, storage, bytes, share), its ops and totals."""
    version = open_version(ref)
    tensors = version.manifest.get("tensors", {})
    total = sum(t["bytes"] for t in tensors.values()) or 1
    rows = [{"name": name, **meta, "share": meta["bytes"] / total} for name, meta in tensors.items()]
    ops: dict[str, int] = {}
    if version.kind in ("frozen", "compressed"):
        from lifecycle.freeze import GRAPH_FILE, read_graph

        for node in read_graph(version.path / GRAPH_FILE).node:
            ops[node.op] = ops.get(node.op, 0) + 1
    return {"version": version, "tensors": rows, "ops": ops, "total_bytes": total,
            "files": version.manifest.get("files", {})}


# ---------------------------------------------------------------- pipeline


def run_pipeline(cfg: Config, output: Path | None = None, *, versions_dir: Path | None = None,
                 progress: Any = None) -> list[StepOutcome]:
    """The main job: tokenizer -> train -> evaluate -> freeze, as child runs of one ``pipeline`` parent run.

    Compression variants join this chain as they land (see the project's issues). ``output``, when given, is a
    directory that receives one version per step (``checkpoint/``, ``frozen/``).
    """
    from lifecycle.console import Stage

    tracker = make_tracker(cfg.tracking, cfg.name)
    outcomes: list[StepOutcome] = []
    if output is not None:
        output = artifacts.check_output(output)
    with tracker.run("pipeline", f"pipeline-{cfg.name}", {"lifecycle.config_hash": cfg.digest()}):
        tracker.log_params(cfg.flat())
        trained = run_train(cfg, output / "checkpoint" if output else None, versions_dir=versions_dir,
                            progress=progress)
        outcomes.append(trained)
        if trained.version is None:
            raise ModelError("training produced no version")
        stage = Stage(progress)
        stage("freezing")
        frozen = run_freeze(str(trained.version), output / "frozen" if output else None, versions_dir=versions_dir,
                            track=cfg.tracking.enabled)
        stage.done()
        outcomes.append(frozen)
        tracker.log_metrics({f"{kind}.{key}": value for kind, outcome in (("checkpoint", trained), ("frozen", frozen))
                             for key, value in outcome.metrics.items()})
        tracker.log_table([version_row(o) for o in outcomes], "versions.json")
    return outcomes


def version_row(outcome: StepOutcome) -> dict[str, Any]:
    """One line of the pipeline's versions table."""
    manifest = json.loads((outcome.version / artifacts.MANIFEST).read_text()) if outcome.version else {}
    sizes = manifest.get("sizes", {})
    deployed = outcome.metrics.get("size_bytes", 0)
    if manifest.get("kind") == "checkpoint":
        deployed = sizes.get("checkpoint_bytes", 0) + sizes.get("tokenizer_bytes", 0)
    return {
        "version": str(outcome.version),
        "kind": manifest.get("kind", ""),
        "recipe": "+".join(step.get("name", "") for step in manifest.get("recipe", [])) or "-",
        "size_bytes": deployed,
        "size_gzip_bytes": outcome.metrics.get("size_gzip_bytes"),
        "test_accuracy": outcome.metrics.get("test_accuracy"),
        "test_macro_f1": outcome.metrics.get("test_macro_f1"),
        "run_id": outcome.run_id,
    }
