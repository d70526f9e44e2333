"""The steps wired together: tokenize, train, evaluate, predict, freeze, compress, restore, retrain, bench,
versions and the pipeline. Only this module knows their order.

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
from lifecycle.errors import ConfigError, DataError, ModelError
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


def _write_checkpoint(output: Path, model: Any, tokenizer_dir: Path, cfg: Config, labels: Sequence[str],
                      max_len: int, fields: dict[str, Any]) -> artifacts.Version:
    """Write a checkpoint version: tokenizer/, config.yaml, model.keras (with Adam slots) and the manifest.

    ``fields`` adds to or overrides the manifest (parent, metrics, training, data, run_id...).
    """
    from lifecycle import model as model_lib

    def build(tmp: Path) -> dict[str, Any]:
        artifacts.copy_tree(tokenizer_dir, tmp / artifacts.TOKENIZER_DIR)
        (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
        model.save(tmp / artifacts.KERAS_FILE)
        sizes = {
            "weights_bytes": model_lib.weight_bytes(model),
            "optimizer_bytes": model_lib.optimizer_bytes(model),
            "tokenizer_bytes": artifacts.dir_bytes(tmp / artifacts.TOKENIZER_DIR),
            "checkpoint_bytes": (tmp / artifacts.KERAS_FILE).stat().st_size,
        }
        return {
            "labels": list(labels),
            "max_len": max_len,
            "input": {"name": model_lib.INPUT_NAME, "dtype": "int32", "shape": [None, max_len]},
            "output": {"name": model_lib.OUTPUT_NAME},
            "parent": None,
            "recipe": [],
            "params_total": model_lib.count_params(model),
            "sizes": sizes,
            "tensors": model_lib.tensor_table(model),
            "config": cfg.to_dict(),
            **fields,
        }

    return artifacts.write_version(output, "checkpoint", build)


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
        stage("writing the version")
        version = _write_checkpoint(output, model, work / "tokenizer", cfg, corpus.labels, cfg.tokenizer.max_len, {
            "run_id": tracker.run_id,
            "metrics": scores.metrics(),
            "training": {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                         "stopped_early": result.stopped_early, "resumed_from": result.resumed_from},
            "data": {"source": corpus.source, "train": len(corpus.train), "validation": len(corpus.validation),
                     "test": len(corpus.test)},
        })
        sizes = version.manifest["sizes"]
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


def data_config_for(data: Path, base: DataConfig | None = None) -> DataConfig:
    """The data section a ``--data`` argument stands for: a config's (.yaml), or a .csv/.tsv/.jsonl file's."""
    if data.suffix in (".yaml", ".yml"):
        return load_config(data).data
    suffix = data.suffix.lower().lstrip(".")
    if suffix not in ("csv", "tsv", "jsonl"):
        raise DataError(f"{data}: unknown data file type {data.suffix!r}. Pass a .csv, .tsv, .jsonl or a config .yaml.")
    return (base or DataConfig()).model_copy(update={"format": suffix, "path": str(data.resolve()), "test_path": None})


def evaluation_examples(version: artifacts.Version, data: Path | None, data_cfg: DataConfig | None = None
                        ) -> tuple[Examples, str]:
    """What to evaluate on: a data file (all of it), a config's test split, or (default) the version's own."""
    if data is None or data.suffix in (".yaml", ".yml"):
        cfg = version.config if data is None else load_config(data)
        corpus = load_corpus(cfg.data, cfg.name)
        return corpus.test, f"{corpus.source} (test split)"
    examples, _ = read_examples(data_config_for(data, data_cfg))
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


def _check_arrays(version: artifacts.Version, tokenizer: Any) -> tuple[Any, str, list[str]]:
    """Ids (and their texts) to compare two forms of a model on: the version's test split, else seeded random ids."""
    import numpy as np

    from lifecycle.dataset import encode_examples

    cfg = version.config
    try:
        corpus = load_corpus(cfg.data, cfg.name)
        arrays = encode_examples(corpus.test, tokenizer, version.labels, version.max_len, corpus.source)
        return arrays, "test split", list(corpus.test.texts)
    except DataError as exc:
        log.warning("%s; comparing on random ids instead", exc)
        rng = np.random.default_rng(cfg.train.seed)
        from lifecycle.train import Arrays

        x = rng.integers(0, tokenizer.vocab_size, size=(256, version.max_len), dtype=np.int32)
        return Arrays(x, np.zeros(256, dtype=np.int32)), "random ids", tokenizer.decode(x)


def _gzip_bytes(paths: Sequence[Path]) -> int:
    """Bytes after gzip -6 of each file, summed (what a compressed transfer or image layer would hold)."""
    import gzip

    total = 0
    for path in paths:
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            total += len(gzip.compress(file.read_bytes(), compresslevel=6))
    return total


def recipe_label(recipe: Sequence[dict[str, Any]]) -> str:
    """``prune:0.5+int8`` from a manifest's recipe (empty for none)."""
    return "+".join(step["name"] + "".join(f":{v:g}" for v in step.get("params", {}).values()) for step in recipe)


def _parent_ref(parent: artifacts.Version) -> dict[str, Any]:
    return {"version": str(parent.path), "run_id": parent.manifest.get("run_id"), "sha256": parent.sha256,
            "kind": parent.kind}


@dataclass(frozen=True)
class _GraphCandidate:
    """A graph about to become a frozen or compressed version, with what was measured on it."""

    kind: str
    frozen: Any  # lifecycle.freeze.FrozenGraph
    recipe: list[dict[str, Any]]
    probabilities: Any
    compared_on: str
    labels_y: Any
    max_abs_diff: float
    extra: dict[str, Any]
    texts: list[str]


def _graph_probabilities(frozen: Any, ids: Any) -> Any:
    from lifecycle.freeze import GraphRunner

    runner = GraphRunner(frozen.graph_def, f"{frozen.input_dtype} graph", frozen.max_len, frozen.input_dtype)
    try:
        return runner.run(ids)
    finally:
        runner.close()


def _write_graph_version(parent: artifacts.Version, candidate: _GraphCandidate, output: Path | None,
                         versions_dir: Path | None, track: bool) -> StepOutcome:
    """Score, write, log and register a frozen or compressed version (shared by freeze and compress)."""
    import numpy as np

    from lifecycle import evaluate
    from lifecycle.freeze import GRAPH_FILE, tensor_manifest
    from tokenization.base import load_tokenizer, serving_copy

    cfg = parent.config
    output = artifacts.check_output(output) if output else artifacts.default_output(cfg.name, candidate.kind,
                                                                                      versions_dir)
    frozen = candidate.frozen
    metrics: dict[str, float] = {"max_abs_diff_vs_parent": candidate.max_abs_diff}
    if candidate.compared_on == "test split":
        scores = evaluate.evaluate_probabilities(candidate.probabilities, candidate.labels_y, parent.labels)
        metrics.update(scores.metrics())
        if "test_accuracy" in parent.manifest.get("metrics", {}):
            metrics["accuracy_delta_vs_parent"] = scores.accuracy - parent.manifest["metrics"]["test_accuracy"]
    tensors = tensor_manifest(frozen.weights)
    params = int(sum(np.prod(t["shape"]) for t in tensors.values()))
    nonzero = int(sum(np.count_nonzero(w.value) for w in frozen.weights.values()))
    # The checkpoint at the root of the lineage, with its optimizer slots: the field report's starting point.
    root_sizes = parent.manifest.get("root_sizes") or parent.manifest["sizes"]

    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    step = "freeze" if candidate.kind == "frozen" else "compress"
    recipe_name = recipe_label(candidate.recipe) or "float32"
    tags = {"lifecycle.parent_run": str(parent.manifest.get("run_id") or ""), "lifecycle.parent": str(parent.path),
            "lifecycle.recipe": recipe_name}
    with tracker.run(step, f"{step}-{recipe_name}", tags):

        def build(tmp: Path) -> dict[str, Any]:
            serving_copy(load_tokenizer(parent.tokenizer_dir)).save(tmp / artifacts.TOKENIZER_DIR)
            (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
            (tmp / GRAPH_FILE).write_bytes(frozen.graph_def.SerializeToString())
            (tmp / "weight_map.json").write_text(json.dumps(frozen.weight_map, indent=1), encoding="utf-8")
            sizes = {
                "graph_bytes": (tmp / GRAPH_FILE).stat().st_size,
                "tokenizer_bytes": artifacts.dir_bytes(tmp / artifacts.TOKENIZER_DIR),
                "gzip_bytes": _gzip_bytes([tmp / GRAPH_FILE, tmp / artifacts.TOKENIZER_DIR]),
                "weights_bytes": int(sum(t["bytes"] for t in tensors.values())),
            }
            deployed = sizes["graph_bytes"] + sizes["tokenizer_bytes"]
            metrics.update({
                "size_bytes": deployed,
                "size_gzip_bytes": sizes["gzip_bytes"],
                "size_ratio_vs_checkpoint": deployed / (root_sizes["checkpoint_bytes"] + root_sizes["tokenizer_bytes"]),
                "params_total": params,
                "params_nonzero": nonzero,
                "nonzero_fraction": nonzero / max(params, 1),
            })
            return {
                "labels": list(parent.labels),
                "max_len": parent.max_len,
                "input": {"name": "input_ids", "dtype": frozen.input_dtype, "shape": [None, parent.max_len]},
                "output": {"name": "probabilities"},
                "architecture": {"kernel_sizes": list(frozen.kernel_sizes),
                                 "vocab_size": frozen.weights["weights/embedding"].shape[0],
                                 "embedding_dim": frozen.weights["weights/embedding"].shape[1],
                                 "num_classes": len(parent.labels)},
                "parent": _parent_ref(parent),
                "recipe": candidate.recipe,
                "run_id": tracker.run_id,
                "params_total": params,
                "sizes": sizes,
                "root_sizes": {k: root_sizes[k] for k in ("checkpoint_bytes", "tokenizer_bytes")},
                "tensors": tensors,
                "metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
                "check": {"max_abs_diff_vs_parent": candidate.max_abs_diff, "compared_on": candidate.compared_on,
                          "n": int(len(candidate.probabilities)), **candidate.extra},
                "data": parent.manifest.get("data"),
                "config": cfg.to_dict(),
            }

        version = artifacts.write_version(output, candidate.kind, build)
        from lifecycle.bench import measure

        metrics.update(measure(version, candidate.texts[:256]).metrics())
        tracker.log_params({"parent": str(parent.path), "input_dtype": frozen.input_dtype, "recipe": recipe_name})
        tracker.log_metrics(metrics)
        tracker.log_dict(candidate.recipe, "recipe.json")
        tracker.log_artifacts(version.path, "version")
        registered = tracker.register(cfg.name, {"lifecycle.kind": candidate.kind, "lifecycle.recipe": recipe_name,
                                                 "lifecycle.parent_run": tags["lifecycle.parent_run"]})
        tracker.set_tags({"lifecycle.version": str(version.path)})
    facts = {"compared on": f"{candidate.compared_on} ({len(candidate.probabilities)})",
             "input dtype": frozen.input_dtype, "recipe": recipe_name}
    return StepOutcome(version.path, tracker.last_run_id, registered, metrics, facts)


def run_freeze(ref: str, output: Path | None = None, *, versions_dir: Path | None = None, track: bool = True
               ) -> StepOutcome:
    """Freeze a checkpoint version into one GraphDef of named constants (no optimizer state, no Keras).

    The frozen graph's probabilities are compared with the checkpoint's on the test split before anything is
    written: float32 models must agree to 1e-5 (mixed-precision ones to 2e-2, as Keras computed them in 16 bits).
    """
    import numpy as np

    from lifecycle.backend import tf_module
    from lifecycle.freeze import freeze_model
    from tokenization.base import load_tokenizer

    parent = open_version(ref)
    if parent.kind != "checkpoint":
        raise ModelError(f"{parent.path}: freeze takes a checkpoint version; this one is {parent.kind}.")
    tf_module()
    import keras

    model = keras.saving.load_model(parent.path / artifacts.KERAS_FILE, compile=False)
    frozen = freeze_model(model, parent.max_len)
    arrays, compared_on, texts = _check_arrays(parent, load_tokenizer(parent.tokenizer_dir))
    expected = model.predict(arrays.x, batch_size=256, verbose=0)
    got = _graph_probabilities(frozen, arrays.x)
    max_abs_diff = float(np.max(np.abs(expected - got)))
    bound = 1e-5 if parent.config.train.precision == "float32" else 2e-2
    if max_abs_diff > bound:
        raise ModelError(f"frozen graph differs from {parent.path} by {max_abs_diff:.2e} (> {bound:g}) on the "
                         f"{compared_on}; nothing written. Report this as a bug with the version attached.")
    candidate = _GraphCandidate("frozen", frozen, [], got, compared_on, arrays.y, max_abs_diff, {"bound": bound},
                                texts)
    return _write_graph_version(parent, candidate, output, versions_dir, track)


def load_graph_version(version: artifacts.Version) -> Any:
    """A frozen or compressed version's graph and stored weights, as a FrozenGraph."""
    from lifecycle.freeze import GRAPH_FILE, FrozenGraph, check_allowed, read_graph, read_weights

    if version.kind not in ("frozen", "compressed"):
        raise ModelError(f"{version.path}: expected a frozen or compressed version; this one is {version.kind}. "
                         "Run `lifecycle freeze` on it first.")
    path = version.path / GRAPH_FILE
    graph_def = read_graph(path)
    check_allowed(graph_def, path)
    weights = read_weights(graph_def, version.manifest["tensors"], path)
    weight_map = json.loads((version.path / "weight_map.json").read_text(encoding="utf-8"))
    kernel_sizes = tuple(version.manifest["architecture"]["kernel_sizes"])
    return FrozenGraph(graph_def, weights, kernel_sizes, weight_map, version.manifest["input"]["dtype"],
                       version.max_len)


def run_compress(ref: str, recipe: str, output: Path | None = None, *, versions_dir: Path | None = None,
                 track: bool = True) -> StepOutcome:
    """Apply a compression recipe (``fp16``, ``int8``, ...) to a frozen or compressed version.

    Every step transforms the stored weights; the graph is then written again over them. The new version's
    probabilities are compared with its parent's on the test split and the difference is recorded.
    """
    import numpy as np

    from lifecycle.compress import apply_recipe, parse_recipe
    from lifecycle.freeze import FrozenGraph, emit_graph
    from tokenization.base import load_tokenizer

    steps = parse_recipe(recipe)
    parent = open_version(ref)
    source = load_graph_version(parent)
    weights, reports = apply_recipe(source.weights, steps)
    graph_def = emit_graph(weights, source.kernel_sizes, source.max_len, source.input_dtype)
    frozen = FrozenGraph(graph_def, weights, source.kernel_sizes, source.weight_map, source.input_dtype,
                         source.max_len)
    arrays, compared_on, texts = _check_arrays(parent, load_tokenizer(parent.tokenizer_dir))
    expected = _graph_probabilities(source, arrays.x)
    got = _graph_probabilities(frozen, arrays.x)
    max_abs_diff = float(np.max(np.abs(expected - got)))
    full_recipe = [*parent.manifest.get("recipe", []), *[r.as_dict() for r in reports]]
    candidate = _GraphCandidate("compressed", frozen, full_recipe, got, compared_on, arrays.y, max_abs_diff, {},
                                texts)
    return _write_graph_version(parent, candidate, output, versions_dir, track)


def run_restore(ref: str, output: Path | None = None, *, versions_dir: Path | None = None, track: bool = True
                ) -> StepOutcome:
    """Restore a frozen or compressed version into a trainable checkpoint version (float32 variables, fresh Adam).

    Before anything is written, the restored Keras model must reproduce the graph's probabilities on the test split
    within 1e-5 (it computes with exactly the dequantized values the graph uses, whatever the storage).
    """
    from lifecycle.backend import configure
    from lifecycle.restore import restore_model, restored_difference
    from tokenization.base import load_tokenizer

    parent = open_version(ref)
    frozen = load_graph_version(parent)
    cfg = parent.config
    configure(cfg.train.seed, cfg.train.threads)
    restored = restore_model(frozen, cfg, len(parent.labels))
    arrays, compared_on, _ = _check_arrays(parent, load_tokenizer(parent.tokenizer_dir))
    difference = restored_difference(restored, frozen, arrays.x)
    if difference > 1e-5:
        raise ModelError(f"restored model differs from {parent.path} by {difference:.2e} (> 1e-05) on the "
                         f"{compared_on}; nothing written.")
    model = restored.model
    model.optimizer.build(model.trainable_variables)  # Adam's slots exist, so sizes compare with a trained checkpoint
    output = artifacts.check_output(output) if output else artifacts.default_output(cfg.name, "checkpoint",
                                                                                      versions_dir)
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    tags = {"lifecycle.parent_run": str(parent.manifest.get("run_id") or ""), "lifecycle.parent": str(parent.path)}
    sparsity = {name: float(1 - mask.mean()) for name, mask in restored.masks.items()}
    with tracker.run("restore", f"restore-{parent.path.name}", tags):

        version = _write_checkpoint(output, model, parent.tokenizer_dir, cfg, parent.labels, parent.max_len, {
            "parent": _parent_ref(parent),
            "restored_from": {"recipe": parent.manifest.get("recipe", []),
                              "storage": {n: t["storage"] for n, t in parent.manifest["tensors"].items()},
                              "sparsity": sparsity},
            "run_id": tracker.run_id,
            "root_sizes": parent.manifest.get("root_sizes"),
            "metrics": dict(parent.manifest.get("metrics", {})),
            "check": {"max_abs_diff_vs_parent": difference, "compared_on": compared_on, "n": int(len(arrays.x))},
            "data": parent.manifest.get("data"),
        })
        metrics = {"max_abs_diff_vs_parent": difference, "params_total": version.manifest["params_total"],
                   **version.manifest["metrics"]}
        tracker.log_metrics(metrics)
        tracker.log_artifacts(version.path, "version")
        registered = tracker.register(cfg.name, {"lifecycle.kind": "checkpoint", "lifecycle.restored": "true",
                                                 "lifecycle.parent_run": tags["lifecycle.parent_run"]})
    storages = ", ".join(sorted({t["storage"] for t in parent.manifest["tensors"].values()}))
    return StepOutcome(version.path, tracker.last_run_id, registered, metrics,
                       {"compared on": f"{compared_on} ({len(arrays.x)})", "restored storage": storages})


@dataclass(frozen=True)
class RetrainOptions:
    """How to fine-tune: epochs and learning rate (None: the parent's config), embedding frozen, pruning mask kept,
    and the fraction of the parent's training data replayed beside the new data."""

    epochs: int | None = None
    learning_rate: float | None = None
    freeze_embedding: bool = False
    keep_sparsity: bool = False
    replay: float = 0.0


def recipe_text(recipe: Sequence[dict[str, Any]]) -> str:
    """A manifest's recipe as a --recipe string (``prune:0.5,int8``)."""
    return recipe_label(recipe).replace("+", ",")


def _mask_callback(model: Any, masks: dict[str, Any]) -> Any:
    """A Keras callback that re-applies pruning masks after every batch, so pruned weights stay exactly zero."""
    import keras

    pairs = [(weight, masks[weight.path].astype("float32")) for weight in model.weights
             if weight.path in masks and not bool(masks[weight.path].all())]

    class _KeepSparsity(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            for weight, mask in pairs:
                weight.assign(weight * mask)

    return _KeepSparsity()


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
    callbacks = [_mask_callback(model, masks)] if options.keep_sparsity else []
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


def run_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their lineage (from the registry's run tags), oldest first.

    Each row: model name, version number, kind, recipe, run id, parent run id, test accuracy, size, source.
    """
    import mlflow

    from lifecycle.tracking import default_tracking_uri

    client = mlflow.MlflowClient(tracking_uri or default_tracking_uri())
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        for mv in client.search_model_versions(f"name='{model_name}'"):
            run = client.get_run(mv.run_id) if mv.run_id else None
            metrics = run.data.metrics if run else {}
            rows.append({
                "name": model_name, "version": int(mv.version), "kind": mv.tags.get("lifecycle.kind", ""),
                "recipe": mv.tags.get("lifecycle.recipe", "-"), "run_id": mv.run_id,
                "parent_run": mv.tags.get("lifecycle.parent_run", ""),
                "test_accuracy": metrics.get("test_accuracy"), "size_bytes": metrics.get("size_bytes"),
                "aliases": list(getattr(mv, "aliases", []) or []),
            })
    return sorted(rows, key=lambda r: (r["name"], r["version"]))


def run_bench(refs: Sequence[str], texts: Sequence[str] | None = None, calls: int = 200) -> list[dict[str, Any]]:
    """Serving figures of several versions measured side by side in this one process.

    Texts default to the first version's test split (or random ids decoded, when its data is not readable).
    """
    from lifecycle.backend import tf_module
    from lifecycle.bench import measure
    from tokenization.base import load_tokenizer

    # TensorFlow and Keras are imported before the first measurement, so no version is charged for them.
    tf_module()
    import keras  # noqa: F401

    versions = [open_version(ref) for ref in refs]
    if not texts:
        _, _, sample = _check_arrays(versions[0], load_tokenizer(versions[0].tokenizer_dir))
        texts = sample[:256]
    rows = []
    for version in versions:
        stats = measure(version, list(texts), calls=calls)
        sizes = version.manifest.get("sizes", {})
        size = (sizes.get("checkpoint_bytes") or sizes.get("graph_bytes", 0)) + sizes.get("tokenizer_bytes", 0)
        rows.append({"version": str(version.path), "kind": version.kind,
                     "recipe": recipe_label(version.manifest.get("recipe", [])) or "-",
                     "size_bytes": size, **stats.metrics()})
    return rows


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


PIPELINE_RECIPES = ("fp16", "int8", "prune:0.5,int8")


def run_pipeline(cfg: Config, output: Path | None = None, *, versions_dir: Path | None = None,
                 progress: Any = None) -> list[StepOutcome]:
    """The main job: tokenizer -> train -> evaluate -> freeze -> compress (each of PIPELINE_RECIPES), as child
    runs of one ``pipeline`` parent run. ``output``, when given, is a directory that receives one version per step
    (``checkpoint/``, ``frozen/``, ``fp16/``, ``int8/``).
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
        outcomes.append(frozen)
        for recipe in PIPELINE_RECIPES:
            stage(f"compressing: {recipe}")
            target = output / recipe.replace(",", "+").replace(":", "-") if output else None
            outcomes.append(run_compress(str(frozen.version), recipe, target, versions_dir=versions_dir,
                                         track=cfg.tracking.enabled))
        stage.done()
        # One metric per version and key (checkpoint.size_bytes, int8.test_accuracy...) so the parent run compares.
        tracker.log_metrics({f"{_metric_prefix(row)}.{key}": value
                             for outcome, row in ((o, version_row(o)) for o in outcomes)
                             for key, value in outcome.metrics.items()})
        rows = [version_row(o) for o in outcomes]
        tracker.log_table(rows, "versions.json")
        if tracker.enabled:
            from lifecycle.evaluate import plot_size_accuracy

            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_artifact(plot_size_accuracy(rows, Path(tmp) / "size_vs_accuracy.png",
                                                        f"{cfg.name}: size vs accuracy"))
    return outcomes


def _metric_prefix(row: dict[str, Any]) -> str:
    """checkpoint, frozen, int8, prune-0.5_int8: MLflow metric names allow no ':' or '+'."""
    label = row["recipe"] if row["recipe"] != "-" else row["kind"]
    return label.replace(":", "-").replace("+", "_")


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
        "recipe": recipe_label(manifest.get("recipe", [])) or "-",
        "size_bytes": deployed,
        "size_gzip_bytes": outcome.metrics.get("size_gzip_bytes"),
        "test_accuracy": outcome.metrics.get("test_accuracy"),
        "test_macro_f1": outcome.metrics.get("test_macro_f1"),
        "run_id": outcome.run_id,
    }
