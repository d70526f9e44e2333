"""``compress --budget``: search recipes on the validation split, then write the chosen one as a compressed version.

The search itself is :mod:`lifecycle.budget`; this module gives it an evaluator. Each trial's steps run through
``compress.apply_recipe`` one at a time, the weights and tokenizer after every prefix cached
(:class:`lifecycle.budget.PrefixCache`), the graph is emitted over the weights and run on the validation split, and
the serving form (model.tflite) is exported to count what ``serve`` loads. The data-aware steps see the parent's data
through a view whose test split is the validation split (``vocab`` reports an unk rate on it), so nothing of the test
split is read until the chosen recipe is written, through :func:`run_compress` like any recipe: it re-applies the
recipe from the parent, reads the test split for the version's report, and records the search in the manifest's
``budget`` section. Every trial is a nested MLflow run under the search's run, which gets the trials table, the
size-vs-metric plot and the chosen recipe.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import artifacts, budget
from lifecycle.errors import ConfigError, ModelError
from lifecycle.workflows.common import StepOutcome, load_graph_version, open_version
from lifecycle.workflows.graphs import run_compress, serving_kernels_of
from lifecycle.workflows.publish import step_tracker

log = logging.getLogger(__name__)


class BudgetNotMetError(ModelError):
    """No trial of the search was within the budget; the message names the closest one."""


@dataclass(frozen=True)
class BudgetRequest:
    """What ``compress --budget`` asks for (checked when the search starts; see :class:`lifecycle.budget.Budget`)."""

    budget: float
    metric: str = "accuracy"
    relative: bool = False
    max_trials: int = 24
    timeout: float | None = None


@dataclass(frozen=True)
class BudgetOutcome:
    """The search's trials and result, and the compressed version written for the chosen recipe."""

    result: budget.SearchResult
    outcome: StepOutcome
    run_id: str | None


class _HeldOutView:
    """The parent's corpus as the search's steps see it: ``test`` is the validation split, so ``vocab``'s unk rate
    is measured there and the test split is not looked at before the chosen version is written."""

    def __init__(self, corpus: Any) -> None:
        self._corpus = corpus

    def __getattr__(self, name: str) -> Any:
        return getattr(self._corpus, "validation" if name == "test" else name)


def _search_context(parent: artifacts.Version, source: Any, tokenizer: Any, teacher: bool = True) -> Any:
    from lifecycle.compress import RecipeContext

    class _SearchContext(RecipeContext):
        def corpus(self, step: str) -> Any:
            return _HeldOutView(super().corpus(step))

    return _SearchContext(parent.config, parent.labels, parent.max_len, source.kernel_sizes, source.weight_map,
                          tokenizer, str(parent.path), teacher=teacher)


def search_space(width: int | None = None) -> budget.SearchSpace:
    """The default space, with ``int4`` tried first when this build's recipe steps have it (then ``int3`` on the
    smallest trials within budget, when it has that too), and the embedding widths below ``width`` (the parent's;
    None: the width is left alone)."""
    from dataclasses import replace

    from lifecycle.compress import STEPS

    space = budget.SearchSpace()
    space = space.with_storage_first("int4") if "int4" in STEPS else space
    space = replace(space, finer=("int3",)) if "int4" in STEPS and "int3" in STEPS else space
    return space.with_dims_for(width) if width and "dim" in STEPS else space


class _Evaluator:
    """Measures recipes on the validation split, sharing the work of common prefixes."""

    def __init__(self, parent: artifacts.Version, metric: str, serving_kernels: str, teacher: bool = True) -> None:
        from tokenization.factory import load_tokenizer

        self.parent = parent
        self.metric = metric
        self.serving_kernels = serving_kernels
        self.source = load_graph_version(parent)
        tokenizer = load_tokenizer(parent.tokenizer_dir)
        self.context = _search_context(parent, self.source, tokenizer, teacher)
        self.cache: budget.PrefixCache[tuple[Any, Any]] = budget.PrefixCache((self.source.weights, tokenizer),
                                                                              self._apply)

    def _apply(self, state: tuple[Any, Any], step: str) -> tuple[Any, Any]:
        from lifecycle.compress import apply_recipe, parse_recipe

        weights, tokenizer = state
        self.context.tokenizer = tokenizer
        weights, _ = apply_recipe(weights, parse_recipe(step), self.context)
        return weights, self.context.tokenizer

    def parent_metric(self) -> float:
        return self._score(self.source, self.cache.initial[1])

    def _score(self, frozen: Any, tokenizer: Any) -> float:
        from lifecycle import evaluate
        from lifecycle.workflows.graphs import _graph_probabilities

        self.context.tokenizer = tokenizer
        validation = self.context.arrays("validation", "budget")
        scores = evaluate.evaluate_probabilities(_graph_probabilities(frozen, validation.x), validation.y,
                                                 self.parent.labels)
        return float(scores.accuracy if self.metric == "accuracy" else scores.macro_f1)

    def __call__(self, recipe: budget.Recipe) -> budget.Measurement:
        from lifecycle import litert
        from lifecycle.freeze import FrozenGraph, emit_graph, input_dtype_for
        from tokenization.base import serving_copy

        weights, tokenizer = self.cache.state(recipe)
        source = self.source
        input_dtype = input_dtype_for(weights["weights/embedding"].shape[0])
        graph_def = emit_graph(weights, source.kernel_sizes, source.max_len, input_dtype)
        frozen = FrozenGraph(graph_def, weights, source.kernel_sizes, source.weight_map, input_dtype, source.max_len)
        serving = litert.export(weights, source.kernel_sizes, source.max_len, input_dtype, self.serving_kernels)
        with tempfile.TemporaryDirectory() as tmp:
            serving_copy(tokenizer).save(Path(tmp) / artifacts.TOKENIZER_DIR, compact=True)  # as compress writes it
            tokenizer_bytes = artifacts.dir_bytes(Path(tmp) / artifacts.TOKENIZER_DIR)
        return budget.Measurement(len(litert.serving_file(serving.content).content) + tokenizer_bytes,
                                  len(graph_def.SerializeToString()) + tokenizer_bytes, self._score(frozen, tokenizer))


TrialCallback = Callable[[budget.Trial], None]


def run_compress_budget(ref: str, request: BudgetRequest, output: Path | None = None, *,
                        versions_dir: Path | None = None, track: bool = True, serving_kernels: str | None = None,
                        on_trial: TrialCallback | None = None, space: budget.SearchSpace | None = None,
                        teacher: bool = True) -> BudgetOutcome:
    """Find the smallest recipe within ``request``'s budget on the validation split and write it as a version.

    ``teacher`` False: a distilled version's ``tune`` steps, in the trials and in the version written, train on the
    labels alone (``compress --no-teacher``).

    Raises:
        ConfigError: a negative budget, an unknown metric, ``max_trials`` < 1, a timeout <= 0.
        ModelError: the version is a checkpoint.
        BudgetNotMetError: no trial was within budget (nothing is written; the search's run keeps the trials).
    """
    wanted = budget.Budget(request.budget, request.metric, request.relative)
    budget.check_limits(request.max_trials, request.timeout)
    parent = open_version(ref)
    if parent.kind not in ("frozen", "compressed"):
        raise ModelError(f"--budget: {parent.path} is a {parent.kind} version; the search compresses a frozen or "
                         "compressed one. Run `lifecycle freeze` on it first.")
    kernels = serving_kernels or serving_kernels_of(parent)
    evaluator = _Evaluator(parent, wanted.metric, kernels, teacher)
    space = space or search_space(parent.manifest.tensors["weights/embedding"].shape[1])
    tracker = step_tracker(parent.config, track)
    name = f"budget-{wanted.amount:g}{'pct' if wanted.relative else ''}-{wanted.metric}"
    with tracker.run("budget", name, {"lifecycle.parent": str(parent.path),
                                      "lifecycle.parent_run": str(parent.manifest.run_id or "")}):
        parent_metric = evaluator.parent_metric()
        tracker.log_params({"budget": wanted.amount, "metric": wanted.metric, "relative": wanted.relative,
                            "max_trials": request.max_trials, "timeout": request.timeout})
        tracker.log_metrics({f"parent_validation_{wanted.metric}": parent_metric})

        def trial_done(trial: budget.Trial) -> None:
            _log_trial(tracker, trial, wanted.metric)
            if on_trial is not None:
                on_trial(trial)

        result = budget.search(evaluator, parent_metric, wanted, space, max_trials=request.max_trials,
                               timeout=request.timeout, on_trial=trial_done,
                               refused=(ModelError, ConfigError))  # a step that refuses the weights: next trial
        log.info("budget search: %d trials, %d step applications", len(result.trials), evaluator.cache.applied)
        _log_search(tracker, result, parent.config.name)
        run_id = tracker.run_id
        if result.chosen is None:
            tracker.set_tags({"lifecycle.budget_met": "false"})
        else:
            tracker.set_tags({"lifecycle.budget_met": "true", "lifecycle.recipe": result.chosen.label})
            del evaluator  # the cached weights of every prefix are no longer needed
            outcome = run_compress(ref, ",".join(result.chosen.recipe), output, versions_dir=versions_dir,
                                   track=track, serving_kernels=kernels,
                                   sections={"budget": budget_record(result, request)}, teacher=teacher)
    if result.chosen is None:
        raise BudgetNotMetError(result.why_not())
    return BudgetOutcome(result, outcome, run_id)


def budget_record(result: budget.SearchResult, request: BudgetRequest) -> dict[str, Any]:
    """The manifest's ``budget`` section: what was asked, how the search went, what it chose and its figures."""
    chosen = result.chosen
    assert chosen is not None
    wanted = result.budget
    return {
        "budget": wanted.amount, "metric": wanted.metric, "relative": wanted.relative, "unit": wanted.unit,
        "judged_on": "validation split", "max_trials": request.max_trials, "timeout": request.timeout,
        "trials": len(result.trials), "stopped": result.stopped, "seconds": round(result.seconds, 3),
        "chosen": chosen.label,
        "validation": {f"parent_{wanted.metric}": result.parent_metric, wanted.metric: chosen.metric,
                       "loss": chosen.loss},
        "size_bytes": chosen.size_bytes, "graph_size_bytes": chosen.graph_size_bytes,
        "table": [trial.row() for trial in result.trials],
    }


def _log_trial(tracker: Any, trial: budget.Trial, metric: str) -> None:
    with tracker.run("budget-trial", f"trial-{trial.number}-{trial.label}", {"lifecycle.recipe": trial.label}):
        tracker.log_params({"recipe": trial.label, "trial": trial.number})
        values = {"size_bytes": trial.size_bytes, "graph_size_bytes": trial.graph_size_bytes,
                  f"validation_{metric}": trial.metric, "loss": trial.loss, "seconds": trial.seconds}
        tracker.log_metrics({key: float(value) for key, value in values.items() if value is not None})
        tracker.set_tags({"lifecycle.within_budget": str(trial.within).lower(),
                          **({"lifecycle.failure": trial.error[:500]} if trial.error else {})})


def _log_search(tracker: Any, result: budget.SearchResult, title: str) -> None:
    from lifecycle.evaluate import plot_budget_search

    if not tracker.enabled:
        return
    rows = [trial.row() for trial in result.trials]
    tracker.log_table(rows, "trials.json")
    tracker.log_metrics({"trials": len(result.trials), "search_seconds": result.seconds})
    if result.chosen is not None:
        tracker.log_dict({"recipe": result.chosen.label, **result.chosen.row()}, "chosen.json")
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(plot_budget_search(result, Path(tmp) / "size_vs_validation.png", title))
