"""The main job: train, freeze and the standard compression variants under one parent run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lifecycle import artifacts
from lifecycle.config import Config
from lifecycle.errors import ModelError
from lifecycle.tracking import make_tracker
from lifecycle.workflows.common import StepOutcome, markdown_table, megabytes, percent, recipe_label
from lifecycle.workflows.graphs import run_compress, run_freeze
from lifecycle.workflows.training import run_train

# The aliases a pipeline moves (MLflow reserves "latest"): its final version (the last recipe, the path it prints
# last) and its checkpoint (what retrain and restore start from).
NEWEST, NEWEST_CHECKPOINT = "newest", "newest-checkpoint"

# Storage alone, then the whole path: rare words out, 85% of the weights out, three epochs to recover, int8 (15x
# smaller at <= 1 point on MR and TREC with either tokenizer: README, Benchmarks, compression).
PIPELINE_RECIPES = ("fp16", "int8", "prune:0.5,int8", "vocab:coverage=0.97,prune:0.85,tune:3,int8")
PIPELINE_BUDGET = 1.0  # points of validation accuracy the budgeted pick may lose (`pipeline --budget`)
PIPELINE_BUDGET_TRIALS = 16


def recipe_dir(recipe: str) -> str:
    """A recipe as a directory name: ``prune:0.5,int8`` -> ``prune-0.5+int8``."""
    return recipe.replace(",", "+").replace(":", "-").replace("=", "")


def run_pipeline(cfg: Config, output: Path | None = None, *, versions_dir: Path | None = None,
                 progress: Any = None, budget: float | None = PIPELINE_BUDGET,
                 budget_trials: int = PIPELINE_BUDGET_TRIALS) -> list[StepOutcome]:
    """The main job: tokenizer -> train -> evaluate -> freeze -> compress (each of PIPELINE_RECIPES) -> the
    budgeted pick (``compress --budget``: the smallest version losing at most ``budget`` points of validation
    accuracy, in at most ``budget_trials`` trials; None skips it), as child runs of one ``pipeline`` parent run.
    ``output``, when given, is a directory that receives one version per step (``checkpoint/``, ``frozen/``,
    ``fp16/``, ``int8/``, ..., ``budget/``).

    A budget no trial meets ends no pipeline: its search run is marked FAILED, the warning says why, and the fixed
    variants stand.
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
            target = output / recipe_dir(recipe) if output else None
            outcomes.append(run_compress(str(frozen.version), recipe, target, versions_dir=versions_dir,
                                         track=cfg.tracking.enabled))
        if budget is not None:
            stage(f"compressing: the smallest version within {budget:g} points of validation accuracy")
            picked = _budget_pick(str(frozen.version), budget, budget_trials, output / "budget" if output else None,
                                  versions_dir, cfg.tracking.enabled)
            if picked is not None:
                outcomes.append(picked)
        stage.done()
        for alias, outcome in ((NEWEST_CHECKPOINT, trained), (NEWEST, outcomes[-1])):
            if outcome.registered:
                tracker.move_alias(cfg.name, alias, outcome.registered)
        # The per-version figures are one table (and the description below), not metrics repeated under prefixes:
        # each child run carries its own size_bytes and test_accuracy, so the metric picker stays short.
        rows = [version_row(o) for o in outcomes]
        tracker.log_table(rows, "versions.json")
        tracker.set_tags({"mlflow.note.content": versions_markdown(cfg.name, rows)})  # the run page's description
        if tracker.enabled:
            from lifecycle.evaluate import plot_size_accuracy

            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_artifact(plot_size_accuracy(rows, Path(tmp) / "size_vs_accuracy.png",
                                                        f"{cfg.name}: size vs accuracy"))
    return outcomes


def _budget_pick(frozen: str, budget: float, max_trials: int, output: Path | None, versions_dir: Path | None,
                 track: bool) -> StepOutcome | None:
    import logging

    from lifecycle.workflows.budgeting import BudgetNotMetError, BudgetRequest, run_compress_budget

    try:
        return run_compress_budget(frozen, BudgetRequest(budget, max_trials=max_trials), output,
                                   versions_dir=versions_dir, track=track).outcome
    except BudgetNotMetError as exc:
        logging.getLogger(__name__).warning("pipeline: no budgeted pick; %s", exc)
        return None


def versions_markdown(name: str, rows: list[dict[str, Any]]) -> str:
    """The pipeline run's description: its versions as a markdown table (deployed size, test accuracy), the
    budgeted pick marked, so the run page answers "which is smallest at what accuracy" without opening artifacts."""
    table = markdown_table(("#", "kind", "recipe", "deployed", "test accuracy", "macro-F1"), [
        (number, row["kind"], f"`{row['recipe']}`" + (" (budgeted pick)" if row.get("budget") else ""),
         megabytes(row["size_bytes"]), percent(row["test_accuracy"]), percent(row["test_macro_f1"]))
        for number, row in enumerate(rows, start=1)])
    return (f"**{name}**: the versions this pipeline wrote (deployed = serving form + tokenizer; the full table is "
            f"versions.json, the plot size_vs_accuracy.png).\n\n{table}")


def version_row(outcome: StepOutcome) -> dict[str, Any]:
    """One line of the pipeline's versions table."""
    from lifecycle.sizes import DEPLOYED, DEPLOYED_GZIP, version_sizes

    version = artifacts.load_version(outcome.version, verify=False) if outcome.version else None
    manifest = version.manifest if version else None
    # The step's own metrics when it logged them (lifecycle.sizes either way), so the table never gzips twice.
    sizes = {DEPLOYED: outcome.metrics[DEPLOYED], DEPLOYED_GZIP: outcome.metrics.get(DEPLOYED_GZIP)} \
        if DEPLOYED in outcome.metrics or version is None else version_sizes(version).metrics()
    return {
        "version": str(outcome.version),
        "kind": manifest.kind if manifest else "",
        "recipe": (recipe_label(manifest.recipe_dicts()) if manifest else "") or "-",
        "size_bytes": sizes.get(DEPLOYED, 0),
        "size_gzip_bytes": sizes.get(DEPLOYED_GZIP),
        "test_accuracy": outcome.metrics.get("test_accuracy"),
        "test_macro_f1": outcome.metrics.get("test_macro_f1"),
        "run_id": outcome.run_id,
        # The budgeted pick: what the search asked and found (None for the fixed variants).
        "budget": _budget_summary(manifest.raw.get("budget") if manifest else None),
    }


def _budget_summary(record: Any) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in ("budget", "metric", "unit", "trials", "seconds", "validation")}
