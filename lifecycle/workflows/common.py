"""Pieces every step shares: the outcome type, opening versions, check data, the checkpoint writer."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.config import Config, DataConfig, load_config
from lifecycle.corpus import Examples, load_corpus, read_examples
from lifecycle.errors import DataError, ModelError
from lifecycle.tracking import NullTracker, resolve_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: the version it wrote (if any), its run, its metrics and a few facts to print."""

    version: Path | None
    run_id: str | None
    registered: str | None
    metrics: dict[str, float]
    facts: dict[str, Any] = field(default_factory=dict)


def _write_checkpoint(output: Path, model: Any, tokenizer_dir: Path, cfg: Config, labels: Sequence[str],
                      max_len: int, fields: dict[str, Any], unique: bool = False) -> artifacts.Version:
    """Write a checkpoint version: tokenizer/, config.yaml, model.keras (with Adam slots) and the manifest.

    ``fields`` adds to or overrides the manifest (parent, metrics, training, data, run_id...); ``unique``: see
    :func:`artifacts.write_version`.
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

    return artifacts.write_version(output, "checkpoint", build, unique=unique)


def _log_evaluation(tracker: NullTracker, scores: Any, title: str, prefix: str = "test") -> None:
    from lifecycle import evaluate

    if not tracker.enabled:
        return
    tracker.log_table(evaluate.per_class_rows(scores), f"{prefix}_per_class.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = evaluate.plot_confusion(scores, Path(tmp) / f"{prefix}_confusion_matrix.png", title)
        tracker.log_artifact(png)


def log_data_cleaning(tracker: NullTracker, corpus: Any) -> None:
    """What reading the data dropped or found, as run metrics (``data_repeats_dropped``, ``data_test_in_train``,
    ``data_test_dropped``) and the test-overlap policy applied as the ``lifecycle.test_overlap`` tag."""
    cleaning = corpus.cleaning
    tracker.log_metrics({f"data_{key}": float(value) for key, value in cleaning.items() if key != "test_overlap"})
    if "test_overlap" in cleaning:
        tracker.set_tags({"lifecycle.test_overlap": str(cleaning["test_overlap"])})


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


def _check_arrays(version: artifacts.Version, tokenizer: Any, corpus: Any = None) -> tuple[Any, str, list[str]]:
    """Ids (and their texts) to compare two forms of a model on: the version's test split, else seeded random ids.

    ``corpus``: the version's data when the caller has already read it (it is not read again).
    """
    import numpy as np

    from lifecycle.dataset import encode_examples

    cfg = version.config
    try:
        corpus = corpus or load_corpus(cfg.data, cfg.name, report=False)
        arrays = encode_examples(corpus.test, tokenizer, version.labels, version.max_len, corpus.source)
        return arrays, "test split", list(corpus.test.texts)
    except DataError as exc:
        log.warning("%s; comparing on random ids instead", exc)
        rng = np.random.default_rng(cfg.train.seed)
        from lifecycle.dataset import Arrays

        x = rng.integers(0, tokenizer.vocab_size, size=(256, version.max_len), dtype=np.int32)
        return Arrays(x, np.zeros(256, dtype=np.int32)), "random ids", tokenizer.decode(x)


def recipe_label(recipe: Sequence[dict[str, Any]]) -> str:
    """``prune:0.5+int8`` (or ``vocab:coverage=0.95+tune:1``) from a manifest's recipe (empty for none)."""
    from lifecycle.compress import step_text

    return "+".join(step_text(step["name"], step.get("params", {})) for step in recipe)


def _parent_ref(parent: artifacts.Version) -> dict[str, Any]:
    return {"version": str(parent.path), "run_id": parent.manifest.run_id, "sha256": parent.sha256,
            "kind": parent.kind}


def load_graph_version(version: artifacts.Version) -> Any:
    """A frozen or compressed version's graph and stored weights, as a FrozenGraph."""
    from lifecycle.freeze import GRAPH_FILE, FrozenGraph, check_allowed, read_graph
    from lifecycle.storage import read_weights

    if version.kind not in ("frozen", "compressed"):
        raise ModelError(f"{version.path}: expected a frozen or compressed version; this one is {version.kind}. "
                         "Run `lifecycle freeze` on it first.")
    path = version.path / GRAPH_FILE
    graph_def = read_graph(path)
    check_allowed(graph_def, path)
    _check_graph_input(graph_def, version, path)
    weights = read_weights(graph_def, version.manifest.tensor_dicts(), path)
    weight_map = json.loads((version.path / "weight_map.json").read_text(encoding="utf-8"))
    manifest = version.manifest
    assert manifest.architecture is not None and manifest.input is not None  # graph kinds have both (checked)
    return FrozenGraph(graph_def, weights, manifest.architecture.kernel_sizes, weight_map, manifest.input.dtype,
                       version.max_len)


def _check_graph_input(graph_def: Any, version: artifacts.Version, path: Path) -> None:
    """Refuse a graph whose ``input_ids`` placeholder is not the manifest's input (dtype, [None, max_len])."""
    from lifecycle.backend import tf_module
    from lifecycle.model import INPUT_NAME

    tf = tf_module()
    node = next(n for n in graph_def.node if n.name == INPUT_NAME)  # check_allowed made sure there is one
    proto = node.attr["shape"].shape if "shape" in node.attr else None
    shape = [-1, version.max_len] if proto is None or proto.unknown_rank else [int(d.size) for d in proto.dim]
    dtype = tf.dtypes.as_dtype(node.attr["dtype"].type).name if node.attr["dtype"].type else None
    assert version.manifest.input is not None  # checked for every model kind
    expected = version.manifest.input.dtype
    if shape != [-1, version.max_len] or dtype != expected:
        raise ModelError(f"{path}: input {INPUT_NAME!r} is {dtype} {shape}, but the manifest says {expected} "
                         f"[-1, {version.max_len}] (max_len). The version is inconsistent; re-freeze it.")


def recipe_text(recipe: Sequence[dict[str, Any]]) -> str:
    """A manifest's recipe as a --recipe string (``prune:0.5,int8``)."""
    return recipe_label(recipe).replace("+", ",")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (a run's description in the MLflow UI is markdown: ``mlflow.note.content``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f} MB"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
