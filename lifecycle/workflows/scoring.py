"""``lifecycle score``: a version (directory or registry reference) scoring files of texts into a parquet directory,
on the local streaming engine or on Spark (:mod:`lifecycle.scoring`, :mod:`lifecycle.scoring_spark`)."""

from __future__ import annotations

from pathlib import Path

from lifecycle.errors import ConfigError
from lifecycle.scoring import (
    ENGINES,
    ProgressFn,
    ScoreOptions,
    ScoreResult,
    check_score_output,
    list_inputs,
    write_output,
)
from lifecycle.workflows.common import open_version


def run_score(ref: str, source: Path, output: Path, options: ScoreOptions,
              on_progress: ProgressFn | None = None) -> ScoreResult:
    """Score every text of ``source`` (a csv/jsonl/parquet file or a directory of them) with version ``ref`` into
    ``output`` (parquet parts plus score.json), written whole or not at all.

    The rows' ``version`` column is ``ref`` as given for a registry reference (``models:/name/3``, ``runs:/...``),
    else the version directory's absolute path.
    """
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine {options.engine!r} is unknown; use one of {', '.join(ENGINES)}.")
    if options.top_k < 1 or (options.workers is not None and options.workers < 1):
        raise ConfigError("--top-k and --workers must be at least 1.")
    check_score_output(output)
    files = list_inputs(source)
    version = open_version(ref)
    label = ref if ref.startswith(("runs:/", "models:/")) else str(version.path)
    if options.engine == "spark":
        from lifecycle.scoring_spark import score_spark as engine
    else:
        from lifecycle.scoring import score_local as engine
    return write_output(output, lambda tmp: engine(version, label, files, tmp, options, on_progress))
