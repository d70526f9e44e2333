"""Probability calibration inside the steps that write versions: fit (train, retrain, compress), inherit (freeze),
log (MLflow metrics ``calibration.*``, a reliability diagram PNG, the entry as ``calibration.json``).

The maths is in ``lifecycle.calibration``; this module only decides which probabilities a version's temperature is
fitted on and where the result goes.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.config import Config
from lifecycle.errors import DataError
from lifecycle.tracking import NullTracker

log = logging.getLogger(__name__)


def fit_entry(cfg: Config, validation: tuple[Any, Any], test: tuple[Any, Any] | None,
              abstain_threshold: float | None = None) -> dict[str, Any]:
    """The manifest's ``calibration`` entry for probabilities of the model being written.

    ``abstain_threshold``: the version's default threshold when it inherits one (compress), else the config's.
    """
    from lifecycle.calibration import fit_calibration

    threshold = cfg.calibration.abstain_threshold if abstain_threshold is None else abstain_threshold
    return fit_calibration(validation, test, threshold, fit=cfg.calibration.temperature, guard=cfg.calibration.guard)


def inherited_entry(parent: artifacts.Version, why: str) -> dict[str, Any] | None:
    """The parent's entry, marked as inherited (None when the parent has none: the child then has T = 1)."""
    entry = parent.manifest.calibration
    if entry is None:
        return None
    return {**entry.to_dict(), "inherited_from": str(parent.path), "inherited_because": why}


def refit_for_graph(parent: artifacts.Version, context: Any, run_graph: Any, test: tuple[Any, Any] | None
                    ) -> dict[str, Any] | None:
    """A compressed version's entry: T re-fitted on the parent's validation split through the new graph (its
    probabilities differ from the parent's), or the parent's entry when that data cannot be read.

    Args:
        context: the compress step's ``RecipeContext`` (its current tokenizer encodes the validation texts).
        run_graph: padded ids -> probabilities of the graph about to be written.
        test: its test-split probabilities and label ids, when they were compared on the test split.
    """
    from lifecycle.calibration import abstain_threshold_of

    try:
        validation = context.arrays("validation", "calibration")
    except DataError as exc:
        log.warning("probability calibration: %s; the parent's temperature is kept", exc)
        return inherited_entry(parent, "the parent's validation split could not be read")
    threshold = abstain_threshold_of(parent.manifest) if parent.manifest.calibration else None
    return fit_entry(parent.config, (run_graph(validation.x), validation.y), test, threshold)


def log_calibration(tracker: NullTracker, entry: dict[str, Any] | None, probabilities: Any, y: Any,
                    title: str) -> None:
    """Metrics ``calibration.*``, the entry as ``calibration.json`` and, for an entry fitted here (not inherited),
    ``reliability_diagram.png`` drawn on ``probabilities``/``y``: the test split, which T was not fitted on."""
    from lifecycle.calibration import entry_metrics, plot_reliability

    if entry is None or not tracker.enabled:
        return
    tracker.log_metrics(entry_metrics(entry))
    tracker.log_dict(entry, "calibration.json")
    if probabilities is None or not len(y) or entry.get("inherited_from"):  # an inherited T: the parent's diagram
        return
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(plot_reliability(probabilities, y, float(entry["temperature"]),
                                              Path(tmp) / "reliability_diagram.png", title))


def calibration_fact(entry: dict[str, Any] | None) -> str:
    """One line for a command's summary: ``T 1.42, test ECE 0.081 -> 0.023`` (``-`` without an entry)."""
    if entry is None:
        return "-"
    split, scores = ("test", entry["test"]) if "test" in entry else ("validation", entry.get("validation", {}))
    text = f"T {float(entry['temperature']):.3f}"
    guard = entry.get("guard")
    if guard and guard.get("enabled", True) and not guard.get("kept"):
        text += (f" (fitted {float(entry['fitted_temperature']):.3f} not kept: held-out NLL gain "
                 f"{guard['held_out_nll_gain']:+.4f} ± {guard['standard_error']:.4f})")
    if "ece_before" in scores:
        text += f", {split} ECE {scores['ece_before']:.3f} -> {scores['ece_after']:.3f}"
    if entry.get("inherited_from"):
        text += " (inherited)"
    return text
