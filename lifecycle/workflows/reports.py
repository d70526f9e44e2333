"""Read-only steps over versions: evaluate, predict, bench, versions (lineage), inspect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lifecycle.config import DataConfig
from lifecycle.errors import ConfigError, DataError
from lifecycle.tracking import make_tracker
from lifecycle.workflows.common import (
    StepOutcome,
    _check_arrays,
    _log_evaluation,
    evaluation_examples,
    open_version,
    recipe_label,
)


def run_evaluate(ref: str, data: Path | None = None, data_cfg: DataConfig | None = None, track: bool = True,
                 runtime: str = "auto", abstain: float | None = None) -> StepOutcome:
    """Score a version on labelled data; logs an ``evaluate`` run in the version's experiment.

    ``runtime`` is the Predictor's (auto: the LiteRT serving form when the version has one). Accuracy does not
    depend on the temperature; the calibration metrics (``calibration.ece_before``/``ece_after``, NLL, 15 bins) do.
    With an abstain threshold (``abstain``, else the version's default; 0: none), ``calibration.coverage`` is the
    share of texts answered and ``calibration.answered_accuracy`` the accuracy on those.
    """
    from lifecycle import calibration, evaluate
    from lifecycle.dataset import encode_examples
    from lifecycle.inference import Predictor

    abstain = _abstain_option(abstain)
    version = open_version(ref)
    examples, source = evaluation_examples(version, data, data_cfg)
    if not len(examples):
        raise DataError(f"{source}: no examples to evaluate on. Pass a non-empty data set.")
    predictor = Predictor(version, runtime)
    arrays = encode_examples(examples, predictor.tokenizer, predictor.labels, predictor.max_len, source)
    raw = predictor.predict_ids(arrays.x, calibrated=False)
    probabilities = calibration.apply_temperature(raw, predictor.temperature)
    scores = evaluate.evaluate_probabilities(probabilities, arrays.y, predictor.labels)
    threshold = predictor.abstain_threshold if abstain is None else abstain
    calibration_metrics = _calibration_metrics(raw, arrays.y, predictor.temperature, threshold)
    cfg = version.config
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    tracker = make_tracker(tracking, cfg.name)
    tags = {"lifecycle.version": str(version.path), "lifecycle.parent_run": str(version.manifest.run_id or "")}
    with tracker.run("evaluate", f"evaluate-{version.path.name}", tags):
        tracker.log_params({"version": str(version.path), "data": source, "n": scores.n,
                            "runtime": predictor.runtime})
        tracker.log_metrics({**scores.metrics(), **calibration_metrics})
        _log_evaluation(tracker, scores, f"{version.path.name} on {Path(source).name}")
    return StepOutcome(version.path, tracker.last_run_id, None, {**scores.metrics(), **calibration_metrics},
                       {"n": scores.n, "per_class": scores.per_class, "runtime": predictor.runtime})


def _abstain_option(value: float | None) -> float | None:
    """An ``--abstain`` value checked before any work (ConfigError: exit 2)."""
    from lifecycle.calibration import check_threshold

    try:
        return check_threshold(value, "--abstain")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _calibration_metrics(raw: Any, y: Any, temperature: float, threshold: float | None) -> dict[str, float]:
    """The ``calibration.*`` metrics of an evaluation, named as a version's calibration entry's."""
    from lifecycle import calibration

    threshold = threshold or None
    return calibration.entry_metrics({"temperature": temperature, "abstain_threshold": threshold,
                                      "test": calibration.split_scores(raw, y, temperature, threshold)})


def run_predict(ref: str, texts: Sequence[str], top_k: int = 1, runtime: str = "auto",
                abstain: float | None = None) -> list[Any]:
    """Labels and calibrated probabilities for raw texts (with the serving form, TensorFlow is never imported).

    ``abstain``: texts whose top probability is under it get the label ``unknown`` (None: the version's default
    threshold, if it has one; 0: always answer).
    """
    from lifecycle.inference import Predictor

    if not texts:
        raise DataError("no texts to predict: pass TEXT arguments or --file with one text per line.")
    abstain = _abstain_option(abstain)
    return Predictor(open_version(ref), runtime).predict(texts, top_k=top_k, abstain=abstain)


def run_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their lineage (from the registry's run tags), oldest first.

    Each row: model name, version number, kind, recipe, run id, parent run id, test accuracy, size, source.
    """
    from lifecycle.tracking import registered_versions

    return registered_versions(name, tracking_uri)


def run_bench(refs: Sequence[str], texts: Sequence[str] | None = None, calls: int = 200, runtime: str = "auto",
              progress: Callable[[int, int, str], None] | None = None) -> list[dict[str, Any]]:
    """Serving figures of several versions measured side by side in this one process.

    Texts default to the first version's test split. When any version will run in TensorFlow, TensorFlow and Keras
    are imported before the first measurement, so no version is charged for them; with only serving forms
    (``runtime`` litert, or auto on frozen/compressed versions that have one) TensorFlow is never imported.
    ``progress(i, n, name)`` is called before the i-th of n versions (its folder name) is measured.
    """
    from lifecycle.bench import measure
    from lifecycle.inference import Predictor
    from tokenization.factory import load_tokenizer

    versions = [open_version(ref) for ref in refs]
    if any(Predictor._pick_runtime(version, runtime) != "litert" for version in versions):
        from lifecycle.backend import tf_module

        tf_module()
        import keras  # noqa: F401
    if not texts:
        _, _, sample = _check_arrays(versions[0], load_tokenizer(versions[0].tokenizer_dir))
        texts = sample[:256]
    from lifecycle.sizes import version_sizes

    rows = []
    for index, version in enumerate(versions):
        if progress is not None:
            progress(index, len(versions), version.path.name)
        stats = measure(version, list(texts), calls=calls, runtime=runtime)
        rows.append({"version": str(version.path), "kind": version.kind, "runtime": stats.runtime,
                     "recipe": recipe_label(version.manifest.recipe_dicts()) or "-",
                     "size_bytes": version_sizes(version, gzip=False).deployed,  # lifecycle.sizes: deployed
                     "test_accuracy": version.manifest.metrics.get("test_accuracy"), **stats.metrics()})
    return rows


def run_inspect(ref: str) -> dict[str, Any]:
    """Every tensor of a version (name, shape, dtype, storage, layout, bytes, share), its ops and totals."""
    version = open_version(ref)
    tensors = version.manifest.tensor_dicts()  # each row shows every field its entry has
    total = sum(t.bytes for t in version.manifest.tensors.values()) or 1
    # Checkpoint tables and manifests written before sparse layouts have no layout: theirs is dense.
    rows = [{"name": name, "layout": "dense", **meta, "share": meta["bytes"] / total} for name, meta in tensors.items()]
    ops: dict[str, int] = {}
    if version.kind in ("frozen", "compressed"):
        from lifecycle.freeze import GRAPH_FILE, read_graph

        for node in read_graph(version.path / GRAPH_FILE).node:
            ops[node.op] = ops.get(node.op, 0) + 1
    serving = version.manifest.serving.to_dict() if version.manifest.serving else {}
    serving_rows = _serving_tensors(version.path / serving["file"]) if serving.get("file") else []
    return {"version": version, "tensors": rows, "ops": ops, "total_bytes": total,
            "files": {rel: meta.to_dict() for rel, meta in version.manifest.files.items()},
            "serving": serving, "serving_tensors": serving_rows}


def _serving_tensors(path: Path) -> list[dict[str, Any]]:
    """The constants of a serving flatbuffer as LiteRT reads them: name, shape, dtype, quantization, bytes.

    A constant is a tensor no op produces that is not the model's input; its bytes are its data plus its scales
    (float32) and zero points (int64), as the flatbuffer stores them.
    """
    import numpy as np

    from lifecycle.console import native_stderr_filtered
    from lifecycle.litert import open_interpreter

    interpreter = open_interpreter(path)
    with native_stderr_filtered():  # LiteRT's XNNPACK INFO line
        interpreter.allocate_tensors()
    produced = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}
    inputs = {detail["index"] for detail in interpreter.get_input_details()}
    rows = []
    for detail in interpreter.get_tensor_details():
        index = detail["index"]
        if index in produced or index in inputs:
            continue
        try:
            value = interpreter.get_tensor(index)
        except ValueError:  # no data: a former float kernel left without its buffer
            continue
        scales = len(detail["quantization_parameters"]["scales"])
        rows.append({"name": detail["name"], "shape": list(value.shape), "dtype": np.dtype(value.dtype).name,
                     "scales": scales, "bytes": int(value.nbytes) + 12 * scales})
    total = sum(row["bytes"] for row in rows) or 1
    for row in rows:
        row["share"] = row["bytes"] / total
    return rows
