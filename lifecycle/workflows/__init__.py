"""The steps wired together: tokenize, train, evaluate, predict, freeze, compress, restore, retrain, bench,
versions and the pipeline. Only this package knows their order; each step runs inside one tracker run (MLflow or
none), and a failure inside it marks the run FAILED and leaves no version behind.

Modules: ``common`` (shared pieces), ``training``, ``graphs`` (freeze, compress, restore), ``retraining``,
``importing`` (foreign .pb / .tflite models), ``reports`` (evaluate, predict, bench, versions, inspect), ``pipeline``.
"""

from lifecycle.workflows.common import (
    StepOutcome,
    data_config_for,
    evaluation_examples,
    load_graph_version,
    open_version,
    recipe_label,
    recipe_text,
)
from lifecycle.workflows.graphs import run_compress, run_freeze, run_restore
from lifecycle.workflows.importing import run_import
from lifecycle.workflows.pipeline import PIPELINE_RECIPES, run_pipeline, version_row
from lifecycle.workflows.reports import run_bench, run_evaluate, run_inspect, run_predict, run_versions
from lifecycle.workflows.retraining import RetrainOptions, run_retrain
from lifecycle.workflows.training import TokenizerReport, run_tokenize, run_train

__all__ = [
    "PIPELINE_RECIPES",
    "RetrainOptions",
    "StepOutcome",
    "TokenizerReport",
    "data_config_for",
    "evaluation_examples",
    "load_graph_version",
    "open_version",
    "recipe_label",
    "recipe_text",
    "run_bench",
    "run_compress",
    "run_evaluate",
    "run_freeze",
    "run_import",
    "run_inspect",
    "run_pipeline",
    "run_predict",
    "run_restore",
    "run_retrain",
    "run_tokenize",
    "run_train",
    "run_versions",
    "version_row",
]
