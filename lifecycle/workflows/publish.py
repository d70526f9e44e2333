"""Publishing a version: write it inside the step's run, then log, register and tag it, in one order for every step.

Each step that writes a version (tokenize, train, freeze, compress, restore, import, retrain) opens its run itself,
because its run also holds the work before the version exists (training epochs, the teacher's nested run, a
resumed run); once the version's files are ready it calls :func:`publish_version`, which

1. writes the version atomically (``write``, given the run id the manifest records),
2. computes the run's metrics (``metrics``, from the written version when they depend on it),
3. logs :func:`version_params` (the same few params on every step run: kind, recipe, tokenizer, vocab_size,
   embedding_dim), the step's ``params``, then the metrics, then what only that step logs (``log``: plots, tables,
   tags),
4. logs the version's directory as the run's artifacts (``artifact_path``, ``version`` but for tokenizers),
5. logs MLflow's own pyfunc form of it, named after the version's folder, with a few of its own texts as the input
   example (``example``): every version that is registered, and any with ``pyfunc``,
6. registers that MLflow model under the config's name (``register``: the step's tags; None: not registered), so
   ``mlflow.pyfunc.load_model("models:/<name>/<n>")`` loads it; the registration's tags and description carry the
   kind, recipe, parent version (``models:/<name>/<m>``), deployed size (:mod:`lifecycle.sizes`) and test accuracy,
7. tags the run with the version's path (``tag_version``: the steps that always did; restore, import and retrain
   never set ``lifecycle.version`` and still do not, as the MLflow layout in DESIGN.md describes).

A registered version's run always logs its sizes (:meth:`lifecycle.sizes.VersionSizes.metrics`), the same numbers
every screen shows.

What differs between steps is a parameter, never a branch on the step's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lifecycle.tracking import NullTracker, make_tracker
from lifecycle.workflows.common import StepOutcome, recipe_label

if TYPE_CHECKING:
    from lifecycle.artifacts import Version
    from lifecycle.config import Config


def step_tracker(cfg: Config, track: bool = True) -> NullTracker:
    """The tracker a step logs to: the config's, or a disabled one with ``track=False`` (``--no-track``)."""
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    return make_tracker(tracking, cfg.name)


@dataclass(frozen=True)
class Published:
    """A version written and published by :func:`publish_version`, with what its run recorded."""

    version: Version
    run_id: str | None  # the run the version was written in (its manifest's ``run_id``)
    registered: str | None  # the registered model version's number, None when not registered or not tracked
    metrics: dict[str, float] = field(default_factory=dict)
    pyfunc: str | None = None  # the pyfunc's model URI, when one was logged

    def outcome(self, facts: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None
                ) -> StepOutcome:
        """The step's outcome; ``metrics`` when the step reports more than its run logged at publishing."""
        return StepOutcome(self.version.path, self.run_id, self.registered,
                           dict(self.metrics if metrics is None else metrics), dict(facts or {}))


def publish_version(tracker: NullTracker, model_name: str, write: Callable[[str | None], Version], *,
                    params: Mapping[str, Any] | None = None,
                    metrics: Callable[[Version], dict[str, float]] | None = None,
                    log: Callable[[Version], None] | None = None,
                    artifact_path: str = "version",
                    pyfunc: bool = False,
                    register: Mapping[str, str] | None = None,
                    tag_version: bool = False,
                    example: Sequence[str] | None = None) -> Published:
    """Write a version inside the tracker's active run and publish it (see the module docstring for the order).

    Args:
        tracker: the step's tracker, inside its ``tracker.run(...)`` block.
        model_name: the registered model's name (the config's name).
        write: writes the version (``artifacts.write_version``) given the run id; nothing is logged if it raises.
        params: run params logged once the version is written.
        metrics: the run's metrics, given the written version; logged after ``params``.
        log: the step's own logging after the metrics (evaluation plots, calibration, tags...).
        artifact_path: the run's artifact folder the version directory goes to.
        pyfunc: log the version as an MLflow pyfunc even when it is not registered.
        register: the registered model version's tags; None registers nothing.
        tag_version: set the run's ``lifecycle.version`` tag to the version's path.
        example: a few of the version's own texts (its test split), the pyfunc's input example.

    Returns:
        The version, its run id, registered version, metrics and pyfunc URI.
    """
    from lifecycle.sizes import DEPLOYED, version_sizes

    run_id = tracker.run_id
    version = write(run_id)
    values = metrics(version) if metrics is not None else {}
    if register is not None and DEPLOYED not in values:  # every registered version's run logs its sizes
        values = {**values, **version_sizes(version).metrics()}
    tracker.log_params({**version_params(version), **(params or {})})
    if values:
        tracker.log_metrics(values)
    if log is not None:
        log(version)
    tracker.log_artifacts(version.path, artifact_path)
    # MLflow's own form of the version (a list[str] pyfunc), so `mlflow models serve` runs it: 0.5-0.8 s per run
    # for a 30k x 300 int8 version, most of it MLflow loading the model to check the input example.
    registers = register is not None and tracker.registers
    uri = tracker.log_pyfunc(version.path, example) if pyfunc or registers else None
    registered = None
    if register is not None:
        tags, description = registration(tracker, model_name, version, values, register)
        registered = tracker.register(model_name, tags, description)
    if tag_version:
        tracker.set_tags({"lifecycle.version": str(version.path)})
    return Published(version, run_id, registered, values, uri)


def version_params(version: Version) -> dict[str, str]:
    """The params every step run that writes a version logs under the same names, so MLflow's compare view and runs
    table line train, freeze, compress, retrain and experiment cells up: ``kind`` (checkpoint, frozen, compressed,
    tokenizer), ``recipe`` (``-`` for none), ``tokenizer`` (bpe, word), ``vocab_size`` and ``embedding_dim`` (the
    version's own, after any vocab or dim step; a tokenizer has no embedding)."""
    import json

    from lifecycle.manifest import TOKENIZER_FILE

    manifest = version.manifest
    found = {"kind": manifest.kind, "recipe": recipe_label(manifest.recipe_dicts()) or "-"}
    try:
        tokenizer = json.loads((version.path / TOKENIZER_FILE).read_text(encoding="utf-8"))
        found.update({"tokenizer": str(tokenizer["kind"]), "vocab_size": str(tokenizer["vocab_size"])})
    except (OSError, ValueError, KeyError):
        pass
    if manifest.architecture is not None and manifest.architecture.embedding_dim is not None:
        found["embedding_dim"] = str(manifest.architecture.embedding_dim)  # frozen and compressed versions
    else:  # a checkpoint records no architecture: its embedding table's width
        embedding = next((t.shape for name, t in manifest.tensors.items()
                          if "embedding" in name and len(t.shape) == 2), None)
        if embedding is not None:
            found["embedding_dim"] = str(embedding[1])
    return found


def registration(tracker: NullTracker, model_name: str, version: Version, metrics: Mapping[str, float],
                 tags: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """A registered version's tags and its description (markdown, shown on its page in the MLflow UI): kind,
    recipe, the parent's registered version, deployed size and test accuracy, then the step's own ``tags``."""
    from lifecycle.sizes import DEPLOYED, version_sizes

    manifest = version.manifest
    deployed = metrics.get(DEPLOYED, version_sizes(version, gzip=False).deployed)
    accuracy = metrics.get("test_accuracy", manifest.metrics.get("test_accuracy"))
    recipe = recipe_label(manifest.recipe_dicts())
    parent = tracker.registered_version_of(manifest.parent.run_id, model_name) if manifest.parent else None
    found = {"lifecycle.kind": manifest.kind, "lifecycle.parent_version": parent or "",
             "lifecycle.size_bytes": str(int(deployed)),
             **({"lifecycle.recipe": recipe} if recipe else {}),
             **({"lifecycle.test_accuracy": repr(float(accuracy))} if accuracy is not None else {}), **tags}
    what = f"{manifest.kind} version `{version.path.name}`"
    if found.get("lifecycle.recipe"):
        what += f", recipe `{found['lifecycle.recipe']}`"
    made = f", made from {parent}" if parent else ""
    score = f", test accuracy {100 * accuracy:.1f}%" if accuracy is not None else ""
    description = (f"{what}{made}: {deployed / 1e6:.2f} MB deployed (model form + tokenizer){score}. "
                   "The version directory is `artifacts/version/` inside this model.")
    return found, description
