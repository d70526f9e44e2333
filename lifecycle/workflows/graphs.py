"""Frozen and compressed versions: freeze, compress, restore (graph <-> trainable checkpoint)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import artifacts, fidelity
from lifecycle.errors import ConfigError, ModelError
from lifecycle.manifest import plain
from lifecycle.workflows.calibrating import calibration_fact, inherited_entry, log_calibration, refit_for_graph
from lifecycle.workflows.common import (
    StepOutcome,
    _check_arrays,
    _log_evaluation,
    _parent_ref,
    _write_checkpoint,
    load_graph_version,
    open_version,
    recipe_label,
)
from lifecycle.workflows.publish import publish_version, step_tracker

# (step number from 1, steps, the step as recipe text, stored bytes before, after, seconds)
StepCallback = Callable[[int, int, str, int, int, float], None]


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
    ids: Any = None  # the padded ids ``probabilities`` were computed on (the serving form is checked against them)
    calibration: Any = None  # padded training ids: the serving form gets int8 activations calibrated on them
    moved: dict[str, str] | None = None  # weights the fold step moved into a consumer's constant -> that node
    tokenizer: Any = None  # the version's tokenizer when a step replaced it (vocab pruning); None: the parent's
    serving_kernels: str = "hybrid"  # how an int8 serving form runs its kernels (lifecycle.litert.KERNELS)
    # The manifest's probability ``calibration`` entry (temperature, ECE; workflows.calibrating); None: T = 1.
    probability_calibration: dict[str, Any] | None = None
    sections: dict[str, Any] | None = None  # more manifest sections (``budget``: the search that chose the recipe)


def _graph_probabilities(frozen: Any, ids: Any) -> Any:
    from lifecycle.freeze import GraphRunner

    runner = GraphRunner(frozen.graph_def, f"{frozen.input_dtype} graph", frozen.max_len, frozen.input_dtype)
    try:
        return runner.run(ids)
    finally:
        runner.close()


SERVING_BOUND = fidelity.SERVING_EXACT  # exact kernels: the very values graph.pb computes with (see fidelity)


def _write_serving_form(frozen: Any, candidate: _GraphCandidate, directory: Path) -> dict[str, Any]:
    """Export the LiteRT serving form beside graph.pb and check it against the graph's probabilities.

    The weight-only form must equal graph.pb within ``SERVING_BOUND`` (exact kernels) or ``litert.HYBRID_BOUND``
    (int8 kernels run by LiteRT's dynamic-range kernels, which round each call's activations to int8); the
    full-integer form (``int8-act``) has no bound: its agreement with graph.pb and its accuracy are measured and
    recorded instead.
    """
    import time

    import numpy as np

    from lifecycle import litert

    started = time.perf_counter()
    if candidate.calibration is not None:
        exported = litert.export_full_int8(frozen.weights, frozen.kernel_sizes, frozen.max_len, frozen.input_dtype,
                                           candidate.calibration)
    else:
        exported = litert.export(frozen.weights, frozen.kernel_sizes, frozen.max_len, frozen.input_dtype,
                                 candidate.serving_kernels)
    seconds = time.perf_counter() - started
    runner = litert.LiteRunner(exported.content, frozen.max_len, frozen.input_dtype)
    try:
        got = runner.run(candidate.ids)
    finally:
        runner.close()
    difference = float(np.max(np.abs(got - candidate.probabilities))) if len(got) else 0.0
    bound = litert.HYBRID_BOUND if exported.kernels == "hybrid" else SERVING_BOUND
    if candidate.calibration is None and difference > bound:
        raise ModelError(f"serving form differs from graph.pb by {difference:.2e} (> {bound:g}) on the "
                         f"{candidate.compared_on}; nothing written. Report this as a bug with the parent attached.")
    served = litert.serving_file(exported.content)
    (directory / served.name).write_bytes(served.content)
    entry = {"file": served.name, "runtime": "litert", "quantization": exported.quantization,
             "int8_kernels": list(exported.int8_kernels), "kernels": exported.kernels, "bytes": len(served.content),
             "max_abs_diff_vs_graph": difference, "export_seconds": seconds,
             **({"expanded": dict(exported.expanded)} if exported.expanded else {}),
             **({"pack": served.pack} if served.pack else {})}
    if len(got):
        entry["agreement_with_graph"] = float(np.mean(got.argmax(1) == candidate.probabilities.argmax(1)))
        if candidate.compared_on == "test split":
            entry["test_accuracy"] = float(np.mean(got.argmax(1) == candidate.labels_y))
    if candidate.calibration is not None:
        entry["calibration_samples"] = int(len(candidate.calibration))
    return entry


def _write_graph_version(parent: artifacts.Version, candidate: _GraphCandidate, output: Path | None,
                         versions_dir: Path | None, track: bool) -> StepOutcome:
    """Score, write, log and register a frozen or compressed version (shared by freeze and compress)."""
    import numpy as np

    from lifecycle import evaluate
    from lifecycle.freeze import GRAPH_FILE, tensor_manifest
    from tokenization.base import serving_copy
    from tokenization.factory import load_tokenizer

    cfg = parent.config
    output, unique = artifacts.resolve_output(output, cfg.name, candidate.kind, versions_dir)
    frozen = candidate.frozen
    metrics: dict[str, float] = {"max_abs_diff_vs_parent": candidate.max_abs_diff}
    scores = None
    if candidate.compared_on == "test split":
        scores = evaluate.evaluate_probabilities(candidate.probabilities, candidate.labels_y, parent.labels)
        metrics.update(scores.metrics())
        if "test_accuracy" in parent.manifest.metrics:
            metrics["accuracy_delta_vs_parent"] = scores.accuracy - parent.manifest.metrics["test_accuracy"]
    tensors = tensor_manifest(frozen.weights)
    for name, node in (candidate.moved or {}).items():
        tensors[name].update({"nodes": [node], "folded_into": node})
    params = int(sum(np.prod(t["shape"]) for t in tensors.values()))
    nonzero = int(sum(np.count_nonzero(w.value) for w in frozen.weights.values()))
    # The checkpoint at the root of the lineage, with its optimizer slots: the field report's starting point.
    root_sizes = parent.manifest.root_sizes or parent.manifest.sizes

    tracker = step_tracker(cfg, track)
    step = "freeze" if candidate.kind == "frozen" else "compress"
    recipe_name = recipe_label(candidate.recipe) or "float32"
    tags = {"lifecycle.parent_run": str(parent.manifest.run_id or ""), "lifecycle.parent": str(parent.path),
            "lifecycle.recipe": recipe_name}
    with tracker.run(step, f"{step}-{recipe_name}", tags):

        def build(tmp: Path) -> dict[str, Any]:
            tokenizer = load_tokenizer(parent.tokenizer_dir) if candidate.tokenizer is None else candidate.tokenizer
            # A compressed version ships its tokenizer's files xz-compressed: both deployed sizes count them.
            serving_copy(tokenizer).save(tmp / artifacts.TOKENIZER_DIR, compact=candidate.kind == "compressed")
            (tmp / artifacts.CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
            (tmp / GRAPH_FILE).write_bytes(frozen.graph_def.SerializeToString())
            (tmp / "weight_map.json").write_text(json.dumps(frozen.weight_map, indent=1), encoding="utf-8")
            serving = _write_serving_form(frozen, candidate, tmp)
            sizes = {
                "graph_bytes": (tmp / GRAPH_FILE).stat().st_size,
                "tokenizer_bytes": artifacts.dir_bytes(tmp / artifacts.TOKENIZER_DIR),
                "gzip_bytes": artifacts.gzip_bytes([tmp / GRAPH_FILE, tmp / artifacts.TOKENIZER_DIR]),
                "weights_bytes": int(sum(t["bytes"] for t in tensors.values())),
                "serving_bytes": serving["bytes"],
                "serving_gzip_bytes": artifacts.gzip_bytes([tmp / serving["file"], tmp / artifacts.TOKENIZER_DIR]),
            }
            # The deployed sizes (lifecycle.sizes) are measured once the version is written; graph.pb is a
            # metric of its own, never called size_bytes.
            metrics.update({
                "size_graph_bytes": sizes["graph_bytes"] + sizes["tokenizer_bytes"],
                "size_graph_gzip_bytes": sizes["gzip_bytes"],
                **({"serving_test_accuracy": serving["test_accuracy"]} if "test_accuracy" in serving else {}),
                "params_total": params,
                "params_nonzero": nonzero,
                "nonzero_fraction": nonzero / max(params, 1),
            })
            return {
                "labels": list(parent.labels),
                "max_len": parent.max_len,
                "input": {"name": "input_ids", "dtype": frozen.input_dtype, "shape": [None, parent.max_len]},
                "output": {"name": "probabilities"},
                "serving": serving,
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
                "data": plain(parent.manifest.data),
                # A distilled model's teacher travels with it (retrain runs that teacher again).
                **({"teacher": plain(parent.manifest.teacher)} if parent.manifest.teacher is not None else {}),
                "config": cfg.to_dict(),
                **({"calibration": candidate.probability_calibration} if candidate.probability_calibration else {}),
                **(candidate.sections or {}),
            }

        def measured(version: artifacts.Version) -> dict[str, float]:
            from lifecycle.bench import measure
            from lifecycle.sizes import version_sizes

            found = version_sizes(version).metrics()
            # Against the root checkpoint deployed as it is (model.keras + tokenizer).
            found["size_ratio_vs_checkpoint"] = found["size_bytes"] / (root_sizes["checkpoint_bytes"] +
                                                                        root_sizes["tokenizer_bytes"])
            metrics.update(found)
            metrics.update(measure(version, candidate.texts[:256]).metrics())
            return metrics

        def log_recipe(version: artifacts.Version) -> None:
            tracker.log_dict(candidate.recipe, "recipe.json")
            on_test = candidate.compared_on == "test split"
            if scores is not None:  # the confusion matrix and per-class table, as train logs them
                _log_evaluation(tracker, scores, f"{cfg.name} {candidate.kind} {recipe_name} test")
            log_calibration(tracker, candidate.probability_calibration, candidate.probabilities if on_test else None,
                            candidate.labels_y, f"{cfg.name} {candidate.kind} {recipe_name} test")

        published = publish_version(
            tracker, cfg.name, lambda run_id: artifacts.write_version(output, candidate.kind, build, unique=unique),
            params={"parent": str(parent.path), "input_dtype": frozen.input_dtype},  # + version_params' recipe
            metrics=measured, log=log_recipe, pyfunc=True, tag_version=True,
            register={"lifecycle.kind": candidate.kind, "lifecycle.recipe": recipe_name,
                      "lifecycle.parent_run": tags["lifecycle.parent_run"]},
            example=candidate.texts[:3] if candidate.compared_on == "test split" else None)
    pyfunc = published.pyfunc
    facts = {"compared on": f"{candidate.compared_on} ({len(candidate.probabilities)})",
             "input dtype": frozen.input_dtype, "recipe": recipe_name, **({"pyfunc": pyfunc} if pyfunc else {}),
             "calibration": calibration_fact(candidate.probability_calibration)}
    return published.outcome(facts)


def run_freeze(ref: str, output: Path | None = None, *, versions_dir: Path | None = None, track: bool = True
               ) -> StepOutcome:
    """Freeze a checkpoint version into one GraphDef of named constants (no optimizer state, no Keras).

    The frozen graph's probabilities are compared with the checkpoint's on the test split before anything is
    written: float32 models must agree to 1e-5 (mixed-precision ones to 2e-2, as Keras computed them in 16 bits).
    """
    import numpy as np

    from lifecycle.backend import tf_module
    from lifecycle.freeze import freeze_model
    from tokenization.factory import load_tokenizer

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
    bound = fidelity.freeze_bound(parent.config.train.precision)
    if max_abs_diff > bound:
        raise ModelError(f"frozen graph differs from {parent.path} by {max_abs_diff:.2e} (> {bound:g}) on the "
                         f"{compared_on}; nothing written. Report this as a bug with the version attached.")
    # Freezing keeps the probabilities (within the bound), so the checkpoint's temperature holds as it is.
    calibration = inherited_entry(parent, f"frozen from it within {bound:g}")
    candidate = _GraphCandidate("frozen", frozen, [], got, compared_on, arrays.y, max_abs_diff, {"bound": bound},
                                texts, ids=arrays.x, probability_calibration=calibration)
    return _write_graph_version(parent, candidate, output, versions_dir, track)


def serving_kernels_of(version: artifacts.Version) -> str:
    """How a version's int8 serving form runs its kernels (``lifecycle.litert.KERNELS``): what its manifest
    records, ``hybrid`` (the default) for a version without int8 kernels or made before the choice existed."""
    from lifecycle import litert

    kernels = version.manifest.serving.kernels if version.manifest.serving else None
    return kernels if kernels in litert.KERNELS else "hybrid"


def run_compress(ref: str, recipe: str, output: Path | None = None, *, versions_dir: Path | None = None,
                 track: bool = True, serving_kernels: str | None = None, on_step: StepCallback | None = None,
                 sections: dict[str, Any] | None = None, teacher: bool = True) -> StepOutcome:
    """Apply a compression recipe (``fp16``, ``int8``, ``prune:S``, ``vocab:N``, ``tune:E``...) to a frozen or
    compressed version.

    Every step transforms the stored weights; ``vocab`` also renumbers the tokenizer's ids and ``tune`` trains on the
    parent's training split (both read the parent's data through a ``RecipeContext``). The graph is then written again
    over the weights, with the narrowest input dtype for the new vocabulary. The new version's probabilities (its
    tokenizer's ids) are compared with its parent's (the parent's ids) on the same test texts, and the difference is
    recorded.

    ``serving_kernels`` (``lifecycle.litert.KERNELS``) is how the int8 serving form runs its kernels; None keeps the
    parent's choice (``hybrid`` when the parent has none). ``on_step`` is called after each recipe step with its
    number, the step count, the step as text, the stored bytes before and after and the seconds it took.
    ``sections`` adds manifest sections (``compress --budget``'s ``budget`` record). ``teacher`` False: a distilled
    version's ``tune`` steps train on the labels alone, without loading its teacher (``retrain --no-teacher``).
    """
    import numpy as np

    from lifecycle import litert
    from lifecycle.compress import (
        RecipeContext,
        apply_graph_steps,
        apply_recipe,
        parse_recipe,
        serving_calibration,
        step_summary,
    )
    from lifecycle.freeze import FrozenGraph, emit_graph, input_dtype_for
    from tokenization.factory import load_tokenizer

    steps = parse_recipe(recipe)
    if serving_kernels is not None and serving_kernels not in litert.KERNELS:
        raise ConfigError(f"--serving-kernels {serving_kernels!r} is unknown; use one of {', '.join(litert.KERNELS)}.")
    parent = open_version(ref)
    if serving_kernels is None:
        serving_kernels = serving_kernels_of(parent)
    source = load_graph_version(parent)
    tokenizer = load_tokenizer(parent.tokenizer_dir)
    context = RecipeContext(parent.config, parent.labels, parent.max_len, source.kernel_sizes, source.weight_map,
                            tokenizer, str(parent.path), teacher=teacher)
    weights, reports = source.weights, []
    for number, step in enumerate(steps, start=1):  # one step at a time, to report each as it ends
        started = time.perf_counter()
        weights, done = apply_recipe(weights, [step], context)
        reports.extend(done)
        if on_step is not None:
            on_step(number, len(steps), step_summary(done[0].as_dict()), done[0].bytes_before, done[0].bytes_after,
                    time.perf_counter() - started)
    full_recipe = [*parent.manifest.recipe_dicts(), *[r.as_dict() for r in reports]]
    input_dtype = input_dtype_for(weights["weights/embedding"].shape[0])
    graph_def = emit_graph(weights, source.kernel_sizes, source.max_len, input_dtype)
    # Graph-level steps (fold), an ancestor's included, applied to the graph as written.
    graph_def, moved = apply_graph_steps(graph_def, weights, full_recipe, len(parent.manifest.recipe),
                                         parent.path / "graph.pb")
    frozen = FrozenGraph(graph_def, weights, source.kernel_sizes, source.weight_map, input_dtype, source.max_len)
    arrays, compared_on, texts = _check_arrays(parent, tokenizer, context.read_corpus)
    # The same texts through each version's own tokenizer: after vocabulary pruning the ids differ.
    changed = context.tokenizer is not tokenizer
    child_ids = context.tokenizer.encode(texts, parent.max_len) if changed else arrays.x
    expected = _graph_probabilities(source, arrays.x)
    got = _graph_probabilities(frozen, child_ids)
    max_abs_diff = float(np.max(np.abs(expected - got)))
    calibration = serving_calibration(full_recipe, context)  # int8-act, or an ancestor's: a full-integer form
    # Compression changes the probabilities, so the temperature is fitted again (on the parent's validation split).
    probability_calibration = refit_for_graph(parent, context, lambda ids: _graph_probabilities(frozen, ids),
                                              (got, arrays.y) if compared_on == "test split" else None)
    candidate = _GraphCandidate("compressed", frozen, full_recipe, got, compared_on, arrays.y, max_abs_diff, {},
                                texts, ids=child_ids, tokenizer=context.tokenizer if changed else None,
                                calibration=calibration, moved=moved, serving_kernels=serving_kernels,
                                probability_calibration=probability_calibration, sections=sections)
    return _write_graph_version(parent, candidate, output, versions_dir, track)


def run_restore(ref: str, output: Path | None = None, *, versions_dir: Path | None = None, track: bool = True
                ) -> StepOutcome:
    """Restore a frozen or compressed version into a trainable checkpoint version (float32 variables, fresh Adam).

    Before anything is written, the restored Keras model must reproduce the graph's probabilities on the test split
    within 1e-5 (it computes with exactly the dequantized values the graph uses, whatever the storage).
    """
    from lifecycle.backend import configure
    from lifecycle.restore import restore_model, restored_difference
    from tokenization.factory import load_tokenizer

    parent = open_version(ref)
    frozen = load_graph_version(parent)
    cfg = parent.config
    configure(cfg.train.seed, cfg.train.threads)
    restored = restore_model(frozen, cfg, len(parent.labels))
    arrays, compared_on, texts = _check_arrays(parent, load_tokenizer(parent.tokenizer_dir))
    difference = restored_difference(restored, frozen, arrays.x)
    if difference > fidelity.RESTORE:
        raise ModelError(f"restored model differs from {parent.path} by {difference:.2e} (> {fidelity.RESTORE:g}) "
                         f"on the {compared_on}; nothing written.")
    model = restored.model
    model.optimizer.build(model.trainable_variables)  # Adam's slots exist, so sizes compare with a trained checkpoint
    output, unique = artifacts.resolve_output(output, cfg.name, "checkpoint", versions_dir)
    tracker = step_tracker(cfg, track)
    tags = {"lifecycle.parent_run": str(parent.manifest.run_id or ""), "lifecycle.parent": str(parent.path)}
    sparsity = {name: float(1 - mask.mean()) for name, mask in restored.masks.items()}
    with tracker.run("restore", f"restore-{parent.path.name}", tags):

        def write(run_id: str | None) -> artifacts.Version:
            return _write_checkpoint(output, model, parent.tokenizer_dir, cfg, parent.labels, parent.max_len, {
                "parent": _parent_ref(parent),
                "restored_from": {"recipe": parent.manifest.recipe_dicts(),
                                  "storage": {n: t.storage for n, t in parent.manifest.tensors.items()},
                                  "sparsity": sparsity},
                "run_id": run_id,
                "root_sizes": plain(parent.manifest.root_sizes),
                "metrics": dict(parent.manifest.metrics),
                "check": {"max_abs_diff_vs_parent": difference, "compared_on": compared_on, "n": int(len(arrays.x))},
                "data": plain(parent.manifest.data),
                **({"teacher": plain(parent.manifest.teacher)} if parent.manifest.teacher is not None else {}),
                # The restored model computes the graph's probabilities within 1e-5: the same temperature fits them.
                **({"calibration": entry} if (entry := inherited_entry(parent, "restored from it")) else {}),
            }, unique=unique)

        published = publish_version(
            tracker, cfg.name, write,
            metrics=lambda version: {"max_abs_diff_vs_parent": difference,
                                     "params_total": version.manifest.params_total, **version.manifest.metrics},
            register={"lifecycle.kind": "checkpoint", "lifecycle.restored": "true",
                      "lifecycle.parent_run": tags["lifecycle.parent_run"]},
            example=texts[:3] if compared_on == "test split" else None)
    storages = ", ".join(sorted({t.storage for t in parent.manifest.tensors.values()}))
    return published.outcome({"compared on": f"{compared_on} ({len(arrays.x)})", "restored storage": storages})
