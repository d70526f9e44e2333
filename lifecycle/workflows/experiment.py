"""``lifecycle experiment tokenizers``: a grid of tokenizers trained end to end through the same CNN, each cell a
nested MLflow run under one parent run that holds the table, the plots and the Pareto front.

A cell is train -> freeze -> compress (by default int8), run by ``run_cell`` in this process or, with several
workers, in a fresh process each (spawned: TensorFlow does not survive a fork). A finished cell leaves
``<versions>/experiments/<name>/cells/<hash>.json``; a rerun skips it, and an interrupted cell resumes its training
from the last finished epoch (run_train's work area is keyed by the config's hash). A cell that fails ends its run
FAILED, records the reason and the grid goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.experiment import Cell, ExperimentConfig, expand, load_experiment, pareto_front
from lifecycle.manifest import Manifest
from lifecycle.tracking import make_tracker

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = "experiments"
CELLS_DIR = "cells"
FINISHED, FAILED, SKIPPED = "FINISHED", "FAILED", "SKIPPED"
# The table's x and y: what a user deploys and how well it does.
SIZE_KEY, SCORE_KEY = "deployed_bytes", "test_accuracy"
ENCODE_REPEATS = 3


@dataclass
class CellResult:
    """What a cell left: status, metrics, params, its versions and run; ``error`` is one line when it failed."""

    label: str
    hash: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ExperimentOutcome:
    name: str
    run_id: str | None
    results: list[CellResult]
    rows: list[dict[str, Any]]
    pareto: list[int]
    directory: Path

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status == FAILED]


def experiment_dir(name: str, versions_dir: Path | None = None) -> Path:
    return (versions_dir or artifacts.versions_root()) / EXPERIMENTS_DIR / name


def _state_file(directory: Path, digest: str) -> Path:
    return directory / CELLS_DIR / f"{digest}.json"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def finished_result(directory: Path, cell: Cell) -> CellResult | None:
    """The recorded result of a finished cell whose versions are still on disk, else None."""
    path = _state_file(directory, cell.hash)
    if not path.is_file():
        return None
    try:
        result = CellResult(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None
    if result.status != FINISHED or not all(Path(v, artifacts.MANIFEST).is_file() for v in result.versions.values()):
        return None
    return result


# ---------------------------------------------------------------- one cell


def _embedding_bytes(manifest: Manifest) -> int:
    return int(sum(t.bytes for name, t in manifest.tensors.items() if "embedding" in name))


def _tokenizer_metrics(cfg: Any, tokenizer_dir: Path) -> dict[str, float]:
    """Unk rate, tokens per text and truncation on the test split; encoding throughput over train + test."""
    import numpy as np

    from lifecycle.corpus import load_corpus
    from tokenization.base import UNK, coverage_stats
    from tokenization.factory import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    corpus = load_corpus(cfg.data, cfg.name)
    test = list(corpus.test.texts)
    stats = coverage_stats(tokenizer, test, cfg.tokenizer.max_len)
    rows = tokenizer.tokenize_ids(test)
    texts = list(corpus.train.texts) + test
    best = float("inf")
    for _ in range(ENCODE_REPEATS):
        started = time.perf_counter()
        tokenizer.encode(texts, cfg.tokenizer.max_len)
        best = min(best, time.perf_counter() - started)
    return {
        "vocab_size": float(tokenizer.vocab_size),
        "test_unk_rate": stats.unk_rate,
        "test_unk_text_rate": float(np.mean([UNK in row for row in rows])) if rows else 0.0,
        "mean_tokens": stats.mean_tokens,
        "truncation_rate": stats.truncation_rate,
        "encode_texts_per_s": len(texts) / best if best > 0 else 0.0,
    }


def run_cell(payload: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Train, freeze and compress one cell under its own MLflow run; never raises (a failure is the result).

    ``payload`` is plain data (it crosses a process boundary): the cell, where its versions go, the stages, the
    parent run and the TensorFlow threads to use.
    """
    from lifecycle.config import Config
    from lifecycle.workflows.graphs import run_compress, run_freeze
    from lifecycle.workflows.pipeline import recipe_dir
    from lifecycle.workflows.publish import version_params
    from lifecycle.workflows.training import run_train

    cfg = Config.model_validate(payload["config"])
    if payload.get("threads"):
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": payload["threads"]})})
    directory = Path(payload["directory"])
    versions_root = Path(payload["versions_root"])
    result = CellResult(payload["label"], payload["hash"], FAILED, params=payload["params"])
    started = time.perf_counter()
    shutil.rmtree(directory, ignore_errors=True)  # a cell that did not finish starts again (training resumes)
    tracker = make_tracker(cfg.tracking, cfg.name)
    tags = {"lifecycle.cell_hash": payload["hash"], "lifecycle.cell": payload["label"]}
    try:
        with tracker.run("cell", payload["label"], tags, parent_run_id=payload.get("parent_run_id")):
            result.run_id = tracker.run_id
            tracker.log_params(payload["params"])
            trained = run_train(cfg, directory / "checkpoint", versions_dir=versions_root, progress=progress)
            assert trained.version is not None
            result.versions["checkpoint"] = str(trained.version)
            checkpoint = artifacts.load_version(trained.version, verify=False).manifest
            metrics = {
                "tokenizer_train_seconds": trained.metrics.get("tokenizer_train_seconds", 0.0),
                "train_seconds": trained.metrics["train_seconds"],
                "epochs_run": trained.metrics["epochs_run"],
                "embedding_bytes": float(_embedding_bytes(checkpoint)),
                "params_total": trained.metrics["params_total"],
                "checkpoint_test_accuracy": trained.metrics["test_accuracy"],
                "checkpoint_test_macro_f1": trained.metrics["test_macro_f1"],
                "checkpoint_bytes": trained.metrics["size_checkpoint_bytes"],
            }
            metrics.update(_tokenizer_metrics(cfg, trained.version / artifacts.TOKENIZER_DIR))
            final, final_manifest = trained, checkpoint
            track = cfg.tracking.enabled
            if payload["freeze"]:
                final = run_freeze(str(trained.version), directory / "frozen", versions_dir=versions_root,
                                   track=track)
                result.versions["frozen"] = str(final.version)
                if payload.get("compress"):
                    recipe = payload["compress"]
                    final = run_compress(str(final.version), recipe, directory / recipe_dir(recipe),
                                         versions_dir=versions_root, track=track)
                    result.versions[recipe] = str(final.version)
                assert final.version is not None
                final_manifest = artifacts.load_version(final.version, verify=False).manifest
                metrics["deployed_bytes"] = final.metrics["size_bytes"]
                metrics["deployed_gzip_bytes"] = final.metrics["size_gzip_bytes"]
            else:
                metrics["deployed_bytes"] = trained.metrics["size_bytes"]  # lifecycle.sizes: model.keras + tokenizer
            metrics["deployed_embedding_bytes"] = float(_embedding_bytes(final_manifest))
            metrics["test_accuracy"] = final.metrics["test_accuracy"]
            metrics["test_macro_f1"] = final.metrics["test_macro_f1"]
            metrics["cell_seconds"] = time.perf_counter() - started
            # The step runs' common params (kind, recipe, tokenizer, vocab_size, embedding_dim) of the cell's final
            # version, so cells line up with train/freeze/compress runs in the compare view.
            tracker.log_params(version_params(artifacts.load_version(final.version, verify=False)))
            tracker.log_metrics(metrics)
            tracker.set_tags({"lifecycle.version": str(final.version)})
        result.metrics, result.status = metrics, FINISHED
    except Exception as exc:  # the cell's run is already FAILED; the grid goes on
        log.debug("cell %s failed", payload["label"], exc_info=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result.error = f"{type(exc).__name__}: {message}"
        result.run_id = result.run_id or tracker.last_run_id
    _write_json(_state_file(Path(payload["state_dir"]), payload["hash"]), asdict(result))
    return asdict(result)


def _spawned_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a worker process: quiet console, then the cell."""
    from lifecycle import console

    console.configure(0, quiet=True)
    return run_cell(payload)


# ---------------------------------------------------------------- the grid


def _workers(exp: ExperimentConfig, requested: int | None, pending: int) -> int:
    wanted = requested or (exp.workers if isinstance(exp.workers, int) else os.cpu_count() or 1)
    return max(1, min(wanted, pending))


def run_experiment(
    path: Path,
    *,
    workers: int | None = None,
    fresh: bool = False,
    track: bool = True,
    versions_dir: Path | None = None,
    progress: Any = None,
    on_cell: Callable[[CellResult], None] | None = None,
) -> ExperimentOutcome:
    """Run (or resume) the grid of an experiment file.

    Args:
        path: the experiment YAML (lifecycle.experiment's schema).
        workers: cells at once (default: the file's ``workers``); each worker gets cores // workers TF threads.
        fresh: run every cell again, ignoring finished ones.
        track: log to MLflow (the base config's tracking settings, experiment = the experiment's name).
        versions_dir: root of the versions and of ``experiments/<name>/``.
        progress: a rich Progress for the bar over cells (and, with one worker, the cell's training bars).
        on_cell: called with each cell's result as it ends (the CLI prints a line).

    Returns:
        Every cell's result (finished, skipped or failed), the table rows, the Pareto front and the parent run.
    """
    exp = load_experiment(path)
    cells = expand(exp, path)
    root = versions_dir or artifacts.versions_root()
    directory = experiment_dir(exp.name, root)
    if fresh:
        shutil.rmtree(directory / CELLS_DIR, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    done = {cell.hash: finished_result(directory, cell) for cell in cells}
    pending = [cell for cell in cells if done[cell.hash] is None]
    count = _workers(exp, workers, len(pending))
    threads = max(1, (os.cpu_count() or 1) // count) if count > 1 else 0

    base = cells[0].config.tracking
    tracking = base.model_copy(update={"enabled": base.enabled and track})
    tracker = make_tracker(tracking, exp.name)
    run_file = directory / "run.json"
    resume = None if fresh else tracker.resumable_run(run_file)
    results: dict[str, CellResult] = {}
    with tracker.run("experiment", f"experiment-{exp.name}", {"lifecycle.experiment": exp.name},
                     resume_run_id=resume):
        tracker.remember_run(run_file)
        if not resume:
            tracker.log_params({"experiment.file": str(path), "experiment.base": exp.base or "-",
                                "experiment.cells": len(cells), "experiment.compress": exp.compress or "-",
                                "experiment.freeze": exp.freeze, "experiment.grid": json.dumps(exp.grid)})
        uri = getattr(tracker, "uri", None)
        payloads = []
        for cell in pending:
            config = cell.config.to_dict()
            config["tracking"] = {**config["tracking"], "enabled": tracking.enabled, "uri": uri or config[
                "tracking"]["uri"]}
            payloads.append({
                "label": cell.label, "hash": cell.hash, "params": cell.params(), "config": config,
                "directory": str(directory / cell.hash), "state_dir": str(directory), "versions_root": str(root),
                "freeze": exp.freeze, "compress": exp.compress, "parent_run_id": tracker.run_id, "threads": threads,
            })
        bar = progress.add_task("cells", total=len(cells), completed=len(cells) - len(pending), metrics="") \
            if progress is not None else None

        def finish(raw: dict[str, Any]) -> None:
            result = CellResult(**raw)
            results[result.hash] = result
            if progress is not None and bar is not None:
                progress.advance(bar)
            if on_cell is not None:
                on_cell(result)

        for cell in cells:
            if done[cell.hash] is not None:
                skipped = done[cell.hash]
                assert skipped is not None
                skipped.status = SKIPPED
                results[cell.hash] = skipped
                if on_cell is not None:
                    on_cell(skipped)
        if count == 1:
            for payload in payloads:
                finish(run_cell(payload, progress))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_spawned_cell, payload) for payload in payloads]
                for future in as_completed(futures):
                    finish(future.result())

        ordered = [results[cell.hash] for cell in cells]
        rows = [_row(cell, result) for cell, result in zip(cells, ordered, strict=True)]
        front = pareto_front(rows, SIZE_KEY, SCORE_KEY)
        for index in front:
            rows[index]["pareto"] = True
        _log_summary(tracker, exp, rows, front)
    return ExperimentOutcome(exp.name, tracker.last_run_id, ordered, rows, front, directory)


def collect_experiment(path: Path, versions_dir: Path | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The table and Pareto front of the cells of an experiment file that have finished, without running any."""
    exp = load_experiment(path)
    directory = experiment_dir(exp.name, versions_dir)
    pairs = [(cell, finished_result(directory, cell)) for cell in expand(exp, path)]
    rows = [_row(cell, result) for cell, result in pairs if result is not None]
    front = pareto_front(rows, SIZE_KEY, SCORE_KEY)
    for index in front:
        rows[index]["pareto"] = True
    return rows, front


def _row(cell: Cell, result: CellResult) -> dict[str, Any]:
    params = cell.params()
    return {
        "cell": cell.label,
        "kind": params["cell.kind"],
        "vocab_size_requested": params["cell.vocab_size_requested"],
        "min_count": params["cell.min_count"],
        "dim": cell.config.model.embedding_dim,
        "status": result.status,
        **result.metrics,
        "pareto": False,
        "run_id": result.run_id,
        "error": result.error or "",
        "hash": cell.hash,
    }


def cells_markdown(name: str, rows: list[dict[str, Any]]) -> str:
    """The experiment run's description: its cells as a markdown table (deployed size, test accuracy, status), the
    Pareto front marked, so the run page answers "which is smallest at what accuracy" without opening artifacts."""
    from lifecycle.workflows.common import markdown_table, megabytes, percent

    table = markdown_table(("cell", "tokenizer", "vocab", "dim", "deployed", "test accuracy", "status"), [
        (f"`{row['cell']}`" + (" (Pareto)" if row.get("pareto") else ""), row["kind"],
         int(row["vocab_size"]) if "vocab_size" in row else row["vocab_size_requested"], row["dim"],
         megabytes(row.get(SIZE_KEY)), percent(row.get(SCORE_KEY)), row["status"].lower()) for row in rows])
    return (f"**{name}**: one nested run per cell (train, freeze, compress); deployed = serving form + tokenizer. "
            f"The full table is cells.json, the plot accuracy_vs_size.png.\n\n{table}")


def _log_summary(tracker: Any, exp: ExperimentConfig, rows: list[dict[str, Any]], front: list[int]) -> None:
    finished = [r for r in rows if r["status"] != FAILED]
    tracker.log_metrics({"cells_total": len(rows), "cells_finished": len(finished),
                         "cells_failed": len(rows) - len(finished)})
    if finished:
        best = max(finished, key=lambda r: r.get(SCORE_KEY, 0.0))
        tracker.log_metrics({"best_test_accuracy": best.get(SCORE_KEY, 0.0),
                             "best_deployed_bytes": best.get(SIZE_KEY, 0.0)})
    if not tracker.enabled:
        return
    from lifecycle.evaluate import plot_experiment_size_accuracy, plot_oov_vocab

    tracker.set_tags({"mlflow.note.content": cells_markdown(exp.name, rows)})  # the run page's description

    tracker.log_table(rows, "cells.json")
    tracker.log_dict({"pareto": [rows[i]["cell"] for i in front], "size": SIZE_KEY, "score": SCORE_KEY},
                     "pareto.json")
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(plot_experiment_size_accuracy(rows, Path(tmp) / "accuracy_vs_size.png",
                                                           f"{exp.name}: accuracy vs deployed size"))
        tracker.log_artifact(plot_oov_vocab(rows, Path(tmp) / "oov_vs_vocab.png", f"{exp.name}: unk rate on test"))
