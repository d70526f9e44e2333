"""The ``lifecycle`` command line: thin Typer commands over ``lifecycle.workflows``.

Each command parses and merges its options, makes one workflow call and hands the result to ``lifecycle.render``,
which prints it (a test keeps every command body within 15 lines). Imports here stay light (typer, config, errors,
console, render: rich, pydantic, yaml) so ``lifecycle --help`` is instant; TensorFlow, MLflow, gensim and
youtokentome are imported inside the commands that need them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from lifecycle import console, render
from lifecycle.config import load_config
from lifecycle.errors import EXPECTED_ERRORS, ConfigError, DataError, exit_code_of


class _HelpFlag:
    """``--help`` shown as the flag it is: typer prints a type after every option without a metavar, ``--help
    <bool>`` included (our own flags get one from :func:`flag`)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_HelpFlag, typer.core.TyperCommand):
    pass


class _Group(_HelpFlag, typer.core.TyperGroup):
    pass


class _Typer(typer.Typer):
    """A Typer whose group and commands show ``--help`` without a type."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="lifecycle",
    help="Train, freeze, compress and retrain small CPU text classifiers, every version tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def flag(*names: str, help: str) -> Any:
    """A boolean flag: ``--json`` in the help, not ``--json <bool>`` (typer shows a type for every option that has
    no metavar, flags included)."""
    return typer.Option(*names, help=help, metavar="")


tokenizer_app = _Typer(help="Train and compare tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
experiment_app = _Typer(help="Grids of end-to-end runs compared in MLflow.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
runs_app = _Typer(help="Housekeeping of runs and temp folders.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/default.yaml.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set train.epochs=3 (repeatable).", show_default=False),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="New version directory (default: a new folder under versions/).",
                 show_default=False),
]
NoTrackOpt = Annotated[bool, flag("--no-track", help="Do not log to MLflow.")]
RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", help="Model form of a frozen/compressed version: auto (the LiteRT serving form when present, no "
    "TensorFlow import), litert, or graph (graph.pb in TensorFlow).")]
AbstainOpt = Annotated[float | None, typer.Option(
    "--abstain", min=0.0, max=1.0, help="Answer 'unknown' for texts whose calibrated top probability is under this "
    "(default: the version's calibration.abstain_threshold, if any; 0: always answer).", show_default=False)]
VersionArg = Annotated[str, typer.Argument(help="Version: a directory, runs:/<run_id> or models:/<name>/<n>.",
                                           show_default=False)]


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, flag("--quiet", "-q", help="Only results and errors; no progress.")] = False,
) -> None:
    """Train, freeze, compress and retrain small CPU text classifiers, every version tracked in MLflow."""
    console.configure(verbose, quiet)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so a `kill`ed command unwinds as an interrupted one does:
    its MLflow run is marked KILLED, its temp paths are removed and worker pools are shut down."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _on_sigterm() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _errors(sweep: bool = True, sigterm: bool = True) -> Iterator[None]:
    """Turn library errors into one stderr line and their exit code; Ctrl-C into exit 130, SIGTERM into 143
    (``sigterm=False``: a command with its own SIGTERM handling, the server).

    First, sweep what killed commands left (temp folders whose process is gone): every command starts clean.
    """
    if sweep:
        _sweep()
    try:
        with _on_sigterm() if sigterm else contextlib.nullcontext():
            yield
    except EXPECTED_ERRORS as exc:
        render.error(str(exc))
        raise typer.Exit(exit_code_of(exc)) from None
    except Terminated:
        console.err.print("Terminated (SIGTERM): nothing half-written was kept. Run the same command again to "
                          "continue from the last finished epoch.")
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        console.err.print("Interrupted. Run the same command again to continue from the last finished epoch.")
        raise typer.Exit(130) from None


def _sweep(legacy: bool = False, dry_run: bool = False) -> list[Any]:
    import tempfile

    from lifecycle.artifacts import temp_journal_root, versions_root
    from lifecycle.housekeeping import sweep_debris

    return sweep_debris([versions_root(), temp_journal_root(), Path(tempfile.gettempdir())], legacy=legacy,
                        dry_run=dry_run)


def _config(path: Path | None, overrides: list[str] | None, no_track: bool, **flags: Any) -> Any:
    flat = {key.replace("__", "."): value for key, value in flags.items()}
    if no_track:
        flat["tracking.enabled"] = False
    return load_config(path, overrides or [], flat)


def _read_lines(file: Path) -> list[str]:
    """A --file of texts, one per line (split on \\n only)."""
    try:
        return file.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise DataError(f"{file}: no such file (--file). Pass a UTF-8 text file, one text per line.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 at byte {exc.start} (--file). Convert it to UTF-8.") from None


def _with_progress(work: Callable[[Any], Any]) -> Any:
    with console.make_progress() as progress:
        return work(progress)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    output: OutputOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    fresh: Annotated[bool, flag("--fresh", help="Ignore an interrupted run of this config.")] = False,
    no_track: NoTrackOpt = False,
) -> None:
    """Train the CNN on a config's data and write a checkpoint version.

    Trains the tokenizer, then the model with early stopping on validation loss, evaluates on the test split, and
    writes manifest.json, config.yaml, tokenizer/ and model.keras. An interrupted run continues where it stopped.
    """
    with _errors():
        cfg = _config(config, set_, no_track, train__epochs=epochs, train__seed=seed)
        from lifecycle.workflows import run_train

        outcome = _with_progress(lambda p: run_train(cfg, output, resume=not fresh, progress=p))
        render.step(f"trained {cfg.name}", outcome)


@app.command()
def pipeline(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default: the schema defaults, which read the "
                                                       "embedded chatterbot corpus).", show_default=False)] = None,
    set_: SetOpt = None,
    output: OutputOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    no_track: NoTrackOpt = False,
    budget: Annotated[float, typer.Option(help="The budgeted pick may lose this many points of validation "
                                               "accuracy; a negative value skips it.")] = 1.0,
    max_trials: Annotated[int, typer.Option("--max-trials", help="Recipes the budget search may try.")] = 16,
) -> None:
    """Run the main job: tokenizer, training, evaluation and freezing as one MLflow parent run.

    With no CONFIG it uses the schema defaults: the chatterbot corpus that the chatterbot-corpus package ships, so it
    needs no data files.
    """
    with _errors():
        from lifecycle.budget import check_limits

        check_limits(max_trials, None)  # before training, not after it
        cfg = _config(config, set_, no_track, train__epochs=epochs)
        from lifecycle.workflows import run_pipeline, version_row

        outcomes = _with_progress(lambda p: run_pipeline(cfg, output, progress=p,
                                                         budget=budget if budget >= 0 else None,
                                                         budget_trials=max_trials))
        render.pipeline(cfg.name, outcomes, map(version_row, outcomes))


@tokenizer_app.command("train")
def tokenizer_train(config: ConfigArg, set_: SetOpt = None, output: OutputOpt = None, no_track: NoTrackOpt = False
                    ) -> None:
    """Train a config's tokenizer and report vocabulary size, unk rate, tokens per text, truncation and size."""
    with _errors():
        cfg = _config(config, set_, no_track)
        from lifecycle.workflows import run_tokenize

        with console.spinner("training tokenizer"):
            outcome = run_tokenize(cfg, output)
        render.tokenizer(cfg.tokenizer.kind, outcome)


@experiment_app.command("tokenizers")
def experiment_tokenizers(
    config: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. configs/experiments/trec-tokenizers.yaml.",
                                           show_default=False)],
    workers: Annotated[int | None, typer.Option(min=1, help="Cells at once, each in its own process (default: the "
                                                "file's workers; auto is one per core).")] = None,
    fresh: Annotated[bool, flag("--fresh", help="Run every cell again, ignoring finished ones.")] = False,
    no_track: NoTrackOpt = False,
) -> None:
    """Train a grid of tokenizers (BPE sizes, word vocabularies, word2vec) end to end through the same CNN.

    Each cell is trained, frozen and int8-compressed as a nested MLflow run under one parent run, which gets the
    table, an accuracy-vs-deployed-size plot, an unk-rate-vs-vocabulary plot and the Pareto front. A rerun skips
    finished cells; a failed cell is marked FAILED and the others go on (the exit code is then 1).
    """
    with _errors():
        from lifecycle.workflows.experiment import run_experiment

        outcome = _with_progress(lambda p: run_experiment(config, workers=workers, fresh=fresh, track=not no_track,
                                                          progress=p, on_cell=render.experiment_cell))
        render.experiment(outcome)
        if outcome.failed:
            raise typer.Exit(1)


@app.command()
def evaluate(
    version: VersionArg,
    data: Annotated[Path | None, typer.Option(help="Labelled .csv/.tsv/.jsonl file or a config .yaml (default: the "
                                                   "version's own test split).", show_default=False)] = None,
    text_field: Annotated[str, typer.Option(help="Text column or key of --data.")] = "text",
    label_field: Annotated[str, typer.Option(help="Label column or key of --data.")] = "label",
    encoding: Annotated[str, typer.Option(help="Encoding of --data.")] = "utf-8",
    runtime: RuntimeOpt = "auto",
    abstain: AbstainOpt = None,
    no_track: NoTrackOpt = False,
) -> None:
    """Score a version on labelled data: accuracy, macro-F1, a per-class report and calibration.

    Calibration: the expected calibration error (15 equal-width bins) and NLL without and with the version's
    temperature; with an abstain threshold, the share of texts answered and the accuracy on them.
    """
    with _errors():
        from lifecycle.config import DataConfig
        from lifecycle.workflows import run_evaluate

        data_cfg = DataConfig(text_field=text_field, label_field=label_field, encoding=encoding)
        outcome = run_evaluate(version, data, data_cfg, track=not no_track, runtime=runtime, abstain=abstain)
        render.evaluation(outcome)


@app.command()
def predict(
    version: VersionArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="UTF-8 file, one text per line.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Show the k most likely labels.")] = 1,
    as_json: Annotated[bool, flag("--json", help="One JSON object per text on stdout.")] = False,
    runtime: RuntimeOpt = "auto",
    abstain: AbstainOpt = None,
) -> None:
    """Classify texts with a version: label and (calibrated) probability for each.

    With an abstain threshold (--abstain, else the version's calibration.abstain_threshold), a text whose top
    probability is under it gets the label "unknown"; its probability and top-k still show the best guesses, and
    --json marks it "abstained": true.
    """
    with _errors():
        items = list(texts or [])
        if file is not None:
            items += [line for line in _read_lines(file) if line.strip()]
        from lifecycle.workflows import run_predict

        results = run_predict(version, items, top_k=top_k, runtime=runtime, abstain=abstain)
        render.predictions(results, top_k, as_json)


@app.command()
def score(
    version: VersionArg,
    source: Annotated[Path, typer.Option("--input", "-i", help="A .csv, .jsonl or .parquet file of texts, or a "
                                         "directory of them.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="New directory for the parquet output.",
                                         show_default=False)],
    engine: Annotated[str, typer.Option("--engine", help="local (worker processes on this machine) or spark.")
                      ] = "local",
    master: Annotated[str | None, typer.Option("--master", help="Spark master URL (--engine spark): local[N], "
                                               "spark://HOST:PORT, yarn... Default: spark-submit's --master "
                                               "under spark-submit, else local[2].", show_default=False)] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="The column holding the texts.")] = "text",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Labels kept per text, most likely first.")] = 1,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes of the local engine "
                                                "(default: one per core).", show_default=False)] = None,
) -> None:
    """Score files of texts with a version into parquet: id, label, probability, top-k, the version.

    The local engine streams the input (flat memory on any length) over worker processes running the version's
    LiteRT serving form; the Spark engine ships that form and the tokenizer to the executors and scores with
    mapInArrow. Neither imports TensorFlow to score. The output directory appears whole or not at all.
    """
    with _errors():
        from lifecycle.scoring import ScoreOptions
        from lifecycle.workflows.scoring import run_score

        options = ScoreOptions(text_column=text_column, top_k=top_k, engine=engine, workers=workers, master=master)
        with console.score_progress() as on_progress:
            result = run_score(version, source, output, options, on_progress)
        render.scored(result)


@app.command()
def freeze(version: VersionArg, output: OutputOpt = None, no_track: NoTrackOpt = False) -> None:
    """Freeze a checkpoint version into one GraphDef of named constants, without optimizer state.

    Checks that the frozen graph's probabilities equal the checkpoint's on the test split (float32: within 1e-5)
    before it writes graph.pb, tokenizer/, weight_map.json and manifest.json.
    """
    with _errors():
        from lifecycle.workflows import run_freeze

        with console.spinner("freezing"):
            outcome = run_freeze(version, output, track=not no_track)
        render.step(render.step_title("frozen", outcome), outcome)


@app.command()
def compress(
    version: VersionArg,
    recipe: Annotated[str | None, typer.Option("--recipe", "-r", help="Steps in order, comma-separated: fp16 | int8 "
                                               "| prune:S | vocab:N | vocab:coverage=C | tune:E (e.g. prune:0.8,"
                                               "tune:1,vocab:20000,int8).", show_default=False)] = None,
    output: OutputOpt = None,
    no_track: NoTrackOpt = False,
    serving_kernels: Annotated[str | None, typer.Option(
        "--serving-kernels", help="How the int8 serving form (model.tflite) runs conv and output kernels: hybrid "
        "(LiteRT's dynamic-range kernels, activations rounded to int8 per call; the fastest) or exact (dequantized "
        "once at load; equal to graph.pb). Default: the parent's choice, else hybrid.", show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(
        "--budget", help="Instead of --recipe: search recipes for the smallest version (model.tflite + tokenizer) "
        "losing at most this much of the parent's validation metric (points; --relative: percent).",
        show_default=False)] = None,
    metric: Annotated[str, typer.Option("--metric", help="The budget's metric: accuracy or macro_f1.")] = "accuracy",
    relative: Annotated[bool, flag("--relative", help="--budget is percent of the parent's figure.")] = False,
    max_trials: Annotated[int, typer.Option("--max-trials", help="Recipes the budget search may try.")] = 24,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds after which the budget search starts "
                                                  "no new trial.", show_default=False)] = None,
    no_teacher: Annotated[bool, flag("--no-teacher", help="A distilled version: its tune:E steps train on the "
                                     "labels alone, without loading its teacher.")] = False,
) -> None:
    """Compress a frozen version: float16 or int8 storage, magnitude pruning, vocabulary pruning, a short fine-tune.

    The result stays a graph of named constants whose storage is recorded per tensor, so it can be restored and
    retrained. vocab:N keeps the N ids most frequent in the training data (vocab:coverage=C: those covering a fraction C
    of its tokens) and ships the matching tokenizer; tune:E trains E epochs on the training data with pruned weights
    kept at zero. Accuracy and size are compared with the parent's and logged. --budget B searches the recipes on the
    validation split instead and writes the smallest within B (the test split is read once, for its report).
    """
    with _errors():
        if _check_compress_mode(recipe, budget) is not None:
            from lifecycle.workflows.budgeting import BudgetRequest, run_compress_budget
            request = BudgetRequest(float(budget or 0), metric, relative, max_trials, timeout)
            with console.trial_progress(max_trials, metric) as on_trial:
                searched = run_compress_budget(version, request, output, track=not no_track,
                                               serving_kernels=serving_kernels, on_trial=on_trial,
                                               teacher=not no_teacher)
            return render.budget_search(searched)
        from lifecycle.workflows import run_compress

        with console.spinner(f"compressing ({recipe})"):
            outcome = run_compress(version, recipe or "", output, track=not no_track, serving_kernels=serving_kernels,
                                   on_step=console.compress_step_printer(), teacher=not no_teacher)
        render.step(render.step_title("compressed", outcome), outcome)


def _check_compress_mode(recipe: str | None, budget: float | None) -> float | None:
    """The budget when compress searches, None when it applies --recipe (exactly one of the two is given)."""
    if (recipe is None) == (budget is None):
        raise ConfigError("compress takes exactly one of --recipe R (apply R) and --budget B (search for the "
                          f"smallest recipe within B). Received: {'both' if recipe else 'neither'}.")
    return budget


@app.command()
def restore(version: VersionArg, output: OutputOpt = None, no_track: NoTrackOpt = False) -> None:
    """Turn a frozen or compressed version back into a trainable checkpoint version.

    Reads every constant as the manifest says it is stored (float32, float16, int8 with scales; pruned zeros kept),
    rebuilds the CNN with those values as trainable variables, and checks it reproduces the graph (within 1e-5).
    """
    with _errors():
        from lifecycle.workflows import run_restore

        with console.spinner("restoring"):
            outcome = run_restore(version, output, track=not no_track)
        render.step(render.step_title("restored", outcome), outcome)


@app.command()
def retrain(
    version: VersionArg,
    data: Annotated[Path, typer.Option("--data", help="New labelled data: .csv/.tsv/.jsonl or a config .yaml.",
                                       show_default=False)],
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the parent's train.epochs).")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate (default: the parent's).")] = None,
    freeze_embedding: Annotated[bool, flag("--freeze-embedding", help="Keep the embedding fixed.")] = False,
    keep_sparsity: Annotated[bool, flag("--keep-sparsity", help="Pruned weights stay zero.")] = False,
    replay: Annotated[float, typer.Option(help="Fraction of the parent's training data to train on again.")] = 0.0,
    grow_labels: Annotated[bool, flag("--grow-labels", help="Labels of NEW the model lacks get new output "
                                              "columns (old label ids unchanged).")] = False,
    grow_vocab: Annotated[bool, flag("--grow-vocab", help="Word tokenizers: words of NEW not in the "
                                             "vocabulary become new ids (BPE stays as it is).")] = False,
    min_count: Annotated[int | None, typer.Option(min=1, help="--grow-vocab: a new word's count in NEW's training "
                                                  "part (default: the parent's tokenizer.word.min_count).")] = None,
    vocab_init: Annotated[str, typer.Option(help="--grow-vocab: new embedding rows from word2vec trained on NEW "
                                            "and mapped into the model's space, or random.")] = "word2vec",
    no_teacher: Annotated[bool, flag("--no-teacher", help="A distilled version: train on the labels alone, without "
                                     "its teacher's soft targets (needed with --grow-labels).")] = False,
    mapping: Annotated[Path | None, typer.Option(help="VERSION is a .pb/.tflite: its mapping YAML (see import).",
                                                 show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="VERSION is a .pb/.tflite: its vocabulary (see import).",
                                                   show_default=False)] = None,
    output: OutputOpt = None,
    no_track: NoTrackOpt = False,
) -> None:
    """Fine-tune a deployed (frozen or compressed) version on new data and ship the next version.

    Restores the constants into trainable variables, fine-tunes on NEW (early stopping on its validation part),
    freezes again and re-applies the parent's compression recipe. Accuracy before and after is reported on NEW's
    test part and on the parent's own test split (forgetting). VERSION may also be a foreign .pb or .tflite file
    with --mapping and --tokenizer: it is imported first (as `lifecycle import` does). A distilled version learns
    from its recorded teacher again (soft targets plus labels; the teacher runs only on texts it has not seen).
    """
    with _errors():
        from lifecycle.workflows import RetrainOptions, run_retrain, version_row

        imported = _import_first(version, mapping, tokenizer, output, no_track)
        version = str(imported[0].version) if imported else version
        options = RetrainOptions(epochs, lr, freeze_embedding, keep_sparsity, replay, grow_labels, grow_vocab,
                                 min_count, vocab_init, teacher=not no_teacher)
        outcomes = imported + _with_progress(lambda p: run_retrain(version, data, options, output, track=not no_track,
                                                                   progress=p))
        render.retrained(outcomes, len(imported), map(version_row, outcomes))


def _import_first(version: str, mapping: Path | None, tokenizer: Path | None, output: Path | None, no_track: bool
                  ) -> list[Any]:
    """Retrain of a foreign .pb/.tflite: import it first (as `lifecycle import`), into OUTPUT/imported; else none."""
    if Path(version).suffix.lower() not in (".pb", ".tflite"):
        return []
    if mapping is None or tokenizer is None:
        raise ConfigError(f"{version}: retraining a .pb/.tflite imports it first and needs --mapping and "
                          "--tokenizer (see `lifecycle import --help`).")
    from lifecycle.workflows import run_import

    return [run_import(Path(version), mapping, tokenizer, output / "imported" if output else None,
                       track=not no_track)]


@app.command("import")
def import_model(
    model: Annotated[Path, typer.Argument(help="A TF1 frozen graph (.pb) or a TFLite flatbuffer (.tflite) of a text "
                                                "CNN.", show_default=False)],
    mapping: Annotated[Path, typer.Option("--mapping", "-m", help="Mapping YAML: labels; node names (.pb); tensor "
                                          "names where the .tflite's ops are ambiguous.", show_default=False)],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="Directory with the model's vocab.txt (UTF-8, "
                                            "line i = id i) or a lifecycle tokenizer directory.",
                                            show_default=False)],
    output: OutputOpt = None,
    no_track: NoTrackOpt = False,
) -> None:
    """Import a foreign text CNN (TF1 frozen .pb or TFLite fp32/fp16/int8) as a trainable checkpoint version.

    Reads the weights as the file stores them, maps them into the lifecycle CNN and checks it reproduces the file's
    outputs (float: 1e-5; dynamic-range int8: 1e-2) before writing a checkpoint that retrain, freeze and compress
    accept. A graph with an op outside the import allow-list, or a mapping naming a node it lacks, is refused.
    """
    with _errors():
        from lifecycle.workflows import run_import

        with console.spinner("importing"):
            outcome = run_import(model, mapping, tokenizer, output, track=not no_track)
        render.step(f"imported {model.name}", outcome)


@app.command()
def versions(
    name: Annotated[str | None, typer.Argument(help="Registered model name (default: all).",
                                               show_default=False)] = None,
) -> None:
    """Show registered versions as lineage trees: each version under the version it was made from."""
    with _errors():
        from lifecycle.workflows import run_versions

        render.lineage(run_versions(name))


@app.command()
def bench(
    versions: Annotated[list[str], typer.Argument(help="Versions to measure side by side.", show_default=False)],
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Sample texts, one per line (default: the first "
                                                                   "version's test split).")] = None,
    calls: Annotated[int, typer.Option(min=10, help="Batch-1 calls for the latency percentiles.")] = 200,
    as_json: Annotated[bool, flag("--json", help="One JSON object per version and line on stdout.")] = False,
    runtime: RuntimeOpt = "auto",
) -> None:
    """Measure versions in one process: load time, first call, batch-1 p50/p99, throughput, memory, size."""
    with _errors():
        texts = None
        if file is not None:
            texts = [line for line in _read_lines(file) if line.strip()]
        from lifecycle.workflows import run_bench

        with console.counted("measuring") as progress:
            rows = run_bench(versions, texts, calls, runtime, progress)
        render.bench(rows, as_json)


@app.command()
def inspect(version: VersionArg) -> None:
    """List every tensor of a version (name, shape, dtype, storage, layout, bytes, share), its ops and its files."""
    with _errors():
        from lifecycle.workflows import run_inspect

        render.inspection(run_inspect(version))


@app.command("config")
def show_config(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default: schema defaults).",
                                                  show_default=False)] = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config (defaults < file < --set) as YAML."""
    with _errors():
        console.out.print(_config(config, set_, False).to_yaml(), highlight=False, markup=False)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Serve config YAML (models, host, port, "
                                                "limits, batching, poll_seconds); see configs/serve/example.yaml.",
                                                show_default=False)] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="NAME=VERSION to serve (repeatable); VERSION is a directory, runs:/, models:/<name>/<n> "
        "or models:/<name>@<alias> (followed as the alias moves).", show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1, or the config's).",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one (default 8000, or the config's).",
                                             show_default=False)] = None,
) -> None:
    """Serve frozen/compressed versions over HTTP JSON from one process, without TensorFlow.

    POST /v1/models/NAME:predict {"texts": [...], "top_k": 2}; GET /v1/models, /healthz, /metrics. Models given as
    models:/NAME@ALIAS are checked every poll_seconds and on SIGHUP; a new version is loaded beside the old one,
    checked (sha256, op allow-list, warm-up) and switched in atomically, or refused while the old one keeps serving.
    """
    with _errors(sigterm=False):  # uvicorn stops gracefully on SIGTERM itself
        import logging

        from lifecycle.serving.app import run_server
        from lifecycle.serving.config import load_serve_config

        cfg = load_serve_config(config, model or [], host, port)
        if logging.getLogger("lifecycle").level < logging.ERROR:  # roll-outs are worth seeing unless -q
            logging.getLogger("lifecycle.serving").setLevel(logging.INFO)
        run_server(cfg, ready=lambda url: console.out.print(f"serving {len(cfg.models)} model(s) on {url}",
                                                            highlight=False))


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="A registered version: models:/<name>/<n>, models:/<name>@<alias>, "
                                                "or a version directory that was registered.", show_default=False)],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to point at it.")] = "champion",
) -> None:
    """Point a registry alias at a version; `lifecycle serve` processes following the alias switch to it."""
    with _errors():
        from lifecycle.tracking import set_alias

        render.promoted(set_alias(version, alias), alias)


@app.command()
def upgrade(
    version: Annotated[Path, typer.Argument(help="A version directory written by an older lifecycle.",
                                            show_default=False)],
) -> None:
    """Check an older version's files against its manifest and rewrite the manifest in today's format.

    Versions from before manifests carried a digest of their own (format 1) are refused by every command until this
    has checked each listed file's sha256; nothing is changed if any file differs or is unlisted. Registered versions
    in MLflow are immutable: download one, upgrade it, and freeze or compress from it again.
    """
    with _errors():
        if str(version).startswith(("runs:/", "models:/")):
            raise ConfigError(f"{version}: upgrade rewrites a version directory in place, not an MLflow artifact; "
                              "download the version, upgrade the folder, and log it again.")
        from lifecycle.artifacts import upgrade_version

        render.upgraded(upgrade_version(version))


@runs_app.command("clean")
def runs_clean(
    dry_run: Annotated[bool, flag("--dry-run", help="Only list what would be cleaned.")] = False,
    no_track: NoTrackOpt = False,
) -> None:
    """Remove what killed commands left and mark their runs FAILED.

    Every command already does this on start for this host; this also removes temp folders of older lifecycle
    releases (.tmp-*, once an hour old) and prints what it found.
    """
    with _errors(sweep=False):
        swept = _sweep(legacy=True, dry_run=dry_run)
        dead: list[Any] = []
        if not no_track:
            from lifecycle.tracking import default_tracking_uri, fail_dead_runs, open_client

            uri = default_tracking_uri()
            dead = fail_dead_runs(open_client(uri, sweep=False), uri, dry_run=dry_run)
        render.cleaned(swept, dead, dry_run)


if __name__ == "__main__":
    app()
