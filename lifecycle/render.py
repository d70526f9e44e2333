"""What the commands print: each command's summary and tables, from typed rows.

The workflows hand back outcomes and plain rows; each is turned into a frozen row here (``*.of``) at the edge, and
the tables are laid out from those. Imports stay as light as cli.py's (rich, stdlib) so ``lifecycle --help`` is
instant; nothing here computes a figure, it only formats what a workflow measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from lifecycle import console

# The metrics a step's summary shows, in this order (those the step measured); its facts follow.
OUTCOME_KEYS = ("test_accuracy", "test_macro_f1", "accuracy_delta_vs_parent", "train_seconds", "size_bytes",
                "size_gzip_bytes", "size_disk_bytes", "size_ratio_vs_checkpoint", "size_checkpoint_bytes",
                "size_checkpoint_weights_bytes", "params_total", "params_nonzero", "max_abs_diff_vs_parent",
                "load_seconds", "first_call_ms", "latency_p50_ms", "latency_p99_ms", "throughput_per_s")
# How a summary line names a size (lifecycle.sizes) and shows a fraction.
SIZE_NAMES = {"size_bytes": "size deployed", "size_gzip_bytes": "size deployed gzip", "size_disk_bytes": "size on disk",
              "size_checkpoint_bytes": "size checkpoint", "size_checkpoint_weights_bytes": "size checkpoint weights",
              "size_bytes_tokenizer": "size tokenizer"}
FRACTIONS = ("test_accuracy", "test_macro_f1", "size_ratio_vs_checkpoint", "nonzero_fraction", "tokenizer_unk_rate")
RETRAIN_FACTS = ("labels added", "words added", "note", "teacher")


def mb(value: float | None) -> str:
    """``1.23 MB``, or ``-`` when not measured."""
    return "-" if value is None else f"{value / 1e6:.2f} MB"


def pct(value: float | None) -> str:
    """``81.2%`` from a fraction, or ``-`` when not measured."""
    return "-" if value is None else f"{100 * value:.1f}%"


def error(message: str) -> None:
    """``Error: <message>`` on stderr, the message as it is (no markup read from it)."""
    console.err.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)


def _json_line(data: Any) -> None:
    """One compact JSON object on one stdout line, however wide (no wrapping, markup or highlighting)."""
    console.out.print(json.dumps(data, ensure_ascii=False), markup=False, highlight=False, emoji=False,
                      soft_wrap=True)


def _path_line(path: Any) -> None:
    console.out.print(str(path), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Field:
    """One line of a two-column summary: a name and its value (floats to 4 places)."""

    name: str
    value: Any

    @property
    def text(self) -> str:
        return f"{self.value:.4f}" if isinstance(self.value, float) else str(self.value)


def fields(values: Mapping[str, Any]) -> list[Field]:
    """Summary lines from name -> value, in order."""
    return [Field(name, value) for name, value in values.items()]


def summary(title: str, lines: Iterable[Field]) -> None:
    """A headerless two-column table of ``lines`` under ``title``."""
    table = Table(title=title, show_header=False, title_justify="left")
    for line in lines:
        table.add_row(line.name, line.text)
    console.out.print(table)


def outcome_fields(outcome: Any) -> list[Field]:
    """A step's summary: its measured metrics (:data:`OUTCOME_KEYS`), facts, MLflow run and registered version."""
    values = {_metric_name(k): _metric_text(k, outcome.metrics[k]) for k in OUTCOME_KEYS if k in outcome.metrics}
    values.update(outcome.facts)
    if outcome.run_id:
        values["mlflow run"] = outcome.run_id
    if outcome.registered:
        values["registered"] = f"version {outcome.registered}"
    return fields(values)


def _metric_name(key: str) -> str:
    return SIZE_NAMES.get(key, key)


def _metric_text(key: str, value: float) -> Any:
    """A summary value in human units: sizes in MB, fractions as percentages (one decimal), differences of
    accuracy in points; other figures as they are."""
    if key in SIZE_NAMES:
        return mb(value)
    if key in FRACTIONS:
        return pct(value)
    if key == "accuracy_delta_vs_parent":
        return f"{100 * value:+.1f} points"
    if key in ("params_total", "params_nonzero"):
        return f"{int(value):,}"
    if key.endswith("_seconds"):
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if key.endswith("_ms"):
        return f"{value:.2f} ms"
    if key == "throughput_per_s":
        return f"{value:,.0f} texts/s"
    return value


def step(title: str, outcome: Any) -> None:
    """A finished step (train, freeze, compress, restore, import): its summary, then the new version's path."""
    summary(title, outcome_fields(outcome))
    console.out.print(str(outcome.version))


def step_title(verb: str, outcome: Any) -> str:
    """``frozen <version folder name>`` (empty name when the step wrote none)."""
    return f"{verb} {outcome.version.name if outcome.version else ''}"


def tokenizer(kind: str, outcome: Any) -> None:
    """``lifecycle tokenizer train``: the tokenizer's figures, its run, then the version's path."""
    summary(f"tokenizer {kind}", fields({**outcome.metrics, "mlflow run": outcome.run_id or "-"}))
    console.out.print(str(outcome.version))


# -------------------------------------------------------------------------------------------------- version tables


@dataclass(frozen=True)
class VersionRow:
    """A version a pipeline or retrain wrote (see ``workflows.version_row``)."""

    version: str
    kind: str
    recipe: str
    size_bytes: float | None
    size_gzip_bytes: float | None
    test_accuracy: float | None
    test_macro_f1: float | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> VersionRow:
        return cls(row["version"], row["kind"], row["recipe"], row["size_bytes"], row["size_gzip_bytes"],
                   row["test_accuracy"], row["test_macro_f1"])


def pipeline(name: str, outcomes: Sequence[Any], rows: Iterable[Mapping[str, Any]]) -> None:
    """``lifecycle pipeline``: the versions table, each version's path numbered, the MLflow run, the last path."""
    rows_kept = list(rows)
    versions = [VersionRow.of(row) for row in rows_kept]
    table = Table("#", "kind", "recipe", "deployed", "gzip", "test acc", "macro-F1", title=f"{name} versions",
                  title_justify="left")
    for number, row in enumerate(versions, start=1):
        table.add_row(str(number), row.kind, row.recipe, mb(row.size_bytes), mb(row.size_gzip_bytes),
                      pct(row.test_accuracy), pct(row.test_macro_f1))
    console.out.print(table)
    for number, row in enumerate(versions, start=1):
        console.out.print(f"{number}. {row.version}", highlight=False, soft_wrap=True)
    for number, raw in enumerate(rows_kept, start=1):
        if raw.get("budget"):
            console.out.print(budget_pick_line(number, raw["budget"]), highlight=False, soft_wrap=True)
    if outcomes[0].run_id:
        console.out.print(f"MLflow: experiment {name!r}, train run {outcomes[0].run_id}")
    _path_line(outcomes[-1].version)


def budget_pick_line(number: int, record: Mapping[str, Any]) -> str:
    """The budgeted pick of a pipeline: which row, what it was allowed to lose and what it lost on validation."""
    metric = record.get("metric") or "accuracy"
    validation = record.get("validation") or {}
    parent, chosen = validation.get(f"parent_{metric}"), validation.get(metric)
    figures = f" ({pct(parent)} -> {pct(chosen)})" if parent is not None and chosen is not None else ""
    loss = validation.get("loss")
    return (f"{number}. is the budgeted pick: the smallest version losing at most {record.get('budget'):g} "
            f"{record.get('unit') or 'points'} of validation {metric}; it lost "
            f"{'?' if loss is None else format(loss, '.2f')}{figures}, {record.get('trials')} trials.")


def retrained(outcomes: Sequence[Any], imported: int, rows: Iterable[Mapping[str, Any]]) -> None:
    """``lifecycle retrain``: the retrained version's accuracies and facts, then every new version (``imported``
    of them came first, from importing a foreign file) and the last one's path."""
    trained = outcomes[imported]
    summary("retrained", fields({**{k: v for k, v in trained.metrics.items() if "accuracy" in k or k == "forgetting"},
                                 **{k: v for k, v in trained.facts.items() if k in RETRAIN_FACTS}}))
    table = Table("kind", "recipe", "deployed", "test acc", title="new versions", title_justify="left")
    table.add_column("version", overflow="fold")
    for row in map(VersionRow.of, rows):
        table.add_row(row.kind, row.recipe, mb(row.size_bytes), pct(row.test_accuracy), row.version)
    console.out.print(table)
    console.out.print(str(outcomes[-1].version))


# ------------------------------------------------------------------------------------------------------ experiment


@dataclass(frozen=True)
class CellRow:
    """One cell of a tokenizer experiment's table (a failed cell has only its name and kind)."""

    cell: str
    kind: str
    failed: bool
    vocab_size: float = 0.0
    test_unk_rate: float = 0.0
    mean_tokens: float = 0.0
    encode_texts_per_s: float = 0.0
    embedding_bytes: float | None = None
    deployed_bytes: float | None = None
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    train_seconds: float = 0.0
    pareto: bool = False

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> CellRow:
        if row["status"] == "FAILED":
            return cls(row["cell"], row["kind"], True)
        return cls(row["cell"], row["kind"], False, row["vocab_size"], row["test_unk_rate"], row["mean_tokens"],
                   row["encode_texts_per_s"], row["embedding_bytes"], row.get("deployed_bytes"),
                   row.get("test_accuracy"), row.get("test_macro_f1"), row["train_seconds"], bool(row["pareto"]))


def experiment_cell(result: Any) -> None:
    """One stderr line as each experiment cell ends: its status and accuracy/size, or its error."""
    detail = result.error or (f"test acc {pct(result.metrics.get('test_accuracy'))}, deployed "
                              f"{mb(result.metrics.get('deployed_bytes'))}")
    console.err.print(f"{result.status.lower():>8}  {escape(result.label)}: {escape(detail)}", highlight=False)


def experiment(outcome: Any) -> None:
    """``lifecycle experiment tokenizers``: the cells table, the parent run, the folder; then which cells failed."""
    table = Table("cell", "kind", "vocab", "unk %", "tokens", "enc texts/s", "emb MB", "deployed", "test acc",
                  "macro-F1", "train s", "Pareto", title=f"{outcome.name}: {len(outcome.rows)} cells",
                  title_justify="left")
    for row in map(CellRow.of, outcome.rows):
        if row.failed:
            table.add_row(escape(row.cell), row.kind, "-", "-", "-", "-", "-", "-", "failed", "-", "-", "")
            continue
        table.add_row(escape(row.cell), row.kind, f"{row.vocab_size:.0f}", f"{100 * row.test_unk_rate:.2f}",
                      f"{row.mean_tokens:.1f}", f"{row.encode_texts_per_s:,.0f}", mb(row.embedding_bytes),
                      mb(row.deployed_bytes), pct(row.test_accuracy), pct(row.test_macro_f1),
                      f"{row.train_seconds:.0f}", "*" if row.pareto else "")
    console.out.print(table)
    if outcome.run_id:
        console.out.print(f"MLflow: experiment {outcome.name!r}, parent run {outcome.run_id}")
    _path_line(outcome.directory)
    if outcome.failed:
        console.err.print(f"Error: {len(outcome.failed)} of {len(outcome.results)} cells failed "
                          f"({', '.join(r.label for r in outcome.failed)}); rerun the same command to retry them.")


# ------------------------------------------------------------------------------------------ evaluate and predict


@dataclass(frozen=True)
class ClassRow:
    """One label of an evaluation's per-class report."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int

    @classmethod
    def of(cls, label: str, row: Mapping[str, Any]) -> ClassRow:
        return cls(label, row["precision"], row["recall"], row["f1"], row["support"])


def evaluation(outcome: Any) -> None:
    """``lifecycle evaluate``: the per-class table, then the overall scores, the number of texts and the runtime."""
    table = Table("label", "precision", "recall", "f1", "support", title=f"{outcome.version}")
    for row in (ClassRow.of(label, row) for label, row in outcome.facts["per_class"].items()):
        table.add_row(row.label, f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", str(row.support))
    console.out.print(table)
    summary("overall", fields({**outcome.metrics, "n": outcome.facts["n"], "runtime": outcome.facts["runtime"]}))


def predictions(results: Sequence[Any], top_k: int, as_json: bool) -> None:
    """``lifecycle predict``: one JSON object per text, each on one line (NDJSON), or a table (label and probability;
    or the top k)."""
    if as_json:
        for r in results:
            _json_line({"text": r.text, "label": r.label, "probability": r.probability, "abstained": r.abstained,
                        "top": [{"label": k, "probability": p} for k, p in r.top]})
        return
    table = Table("label", "probability", "text") if top_k == 1 else Table("text", f"top {top_k}")
    for r in results:
        if top_k == 1:
            label = f"{r.label} (best: {r.top[0][0]})" if r.abstained else r.label
            table.add_row(label, f"{r.probability:.3f}", r.text)
        else:
            table.add_row(r.text, ("unknown: " if r.abstained else "")
                          + ", ".join(f"{label} {p:.3f}" for label, p in r.top))
    console.out.print(table)


# ------------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegisteredRow:
    """A registered version with its lineage (see ``workflows.run_versions``)."""

    name: str
    version: int
    kind: str
    recipe: str
    run_id: str
    parent_run: str
    test_accuracy: float | None
    size_bytes: float | None
    aliases: tuple[str, ...]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> RegisteredRow:
        return cls(row["name"], row["version"], row["kind"], row["recipe"], row["run_id"], row["parent_run"],
                   row["test_accuracy"], row["size_bytes"], tuple(row["aliases"]))


def lineage(raw: Iterable[Mapping[str, Any]]) -> None:
    """``lifecycle versions``: one tree per registered model, each version under the one it was made from."""
    rows = [RegisteredRow.of(row) for row in raw]
    if not rows:
        console.out.print("no registered versions (train something first, with tracking on)")
        return
    by_run = {r.run_id: r for r in rows}
    for model_name in sorted({r.name for r in rows}):
        tree = Tree(f"[bold]{model_name}[/]")
        nodes: dict[str, Any] = {}
        for row in (r for r in rows if r.name == model_name):
            label = (f"v{row.version} {row.kind} {row.recipe if row.recipe != '-' else ''} "
                     f"acc {pct(row.test_accuracy)} deployed {mb(row.size_bytes)}"
                     + (f" @{','.join(row.aliases)}" if row.aliases else ""))
            anchor = nodes.get(row.parent_run) if row.parent_run in by_run else None
            nodes[row.run_id] = (anchor or tree).add(label)
        console.out.print(tree)


def promoted(entry: Any, alias: str) -> None:
    """``lifecycle promote``: where the alias points now."""
    console.out.print(f"models:/{entry.name}@{alias} -> version {entry.version}", highlight=False)


# ---------------------------------------------------------------------------------------------------------- bench


@dataclass(frozen=True)
class BenchRow:
    """One version's serving figures (see ``workflows.run_bench``)."""

    version: str
    kind: str
    runtime: str
    recipe: str
    size_bytes: float  # deployed (lifecycle.sizes)
    test_accuracy: float | None
    load_seconds: float
    first_call_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    rss_mb: float

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> BenchRow:
        return cls(row["version"], row["kind"], row["runtime"], row["recipe"], row["size_bytes"],
                   row.get("test_accuracy"), row["load_seconds"], row["first_call_ms"], row["latency_p50_ms"],
                   row["latency_p99_ms"], row["throughput_per_s"], row["rss_mb"])


def bench(rows: Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """``lifecycle bench``: one JSON object per version and line (every figure measured, as ``predict --json``),
    or a table that fits 100 columns with each version's path under it, one per line, never wrapped."""
    if as_json:
        for row in rows:
            _json_line(dict(row))
        return
    table = _light_table("#", "kind", "recipe", "deployed", "acc", "load s", "1st ms", "p50 ms", "p99 ms",
                         "texts/s", "RSS MB", title="")
    table.columns[2].overflow, table.columns[2].max_width = "fold", 19
    bench_rows = [BenchRow.of(row) for row in rows]
    for number, r in enumerate(bench_rows, 1):
        kind = r.kind if r.runtime in ("litert", "keras") else f"{r.kind} {r.runtime}"
        table.add_row(str(number), kind, escape(_packed(r.recipe, 19)), mb(r.size_bytes), pct(r.test_accuracy),
                      f"{r.load_seconds:.2f}", f"{r.first_call_ms:.2f}", f"{r.latency_p50_ms:.2f}",
                      f"{r.latency_p99_ms:.2f}", f"{r.throughput_per_s:.0f}", f"{r.rss_mb:.1f}")
    console.out.print(table)
    for number, r in enumerate(bench_rows, 1):
        _path_line(f"{number}  {r.version}")


def _packed(recipe: str, width: int) -> str:
    """A recipe's ``+``-joined steps on lines of at most ``width`` characters, broken between steps."""
    lines: list[str] = []
    for part in recipe.split("+"):
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += f"+{part}"
        else:
            lines.append(part if not lines else f"+{part}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class TensorRow:
    """One stored tensor of a version, as its manifest lists it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: str
    layout: str
    bytes: int
    share: float

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> TensorRow:
        return cls(row["name"], tuple(row["shape"]), row["dtype"], row["storage"], row["layout"], row["bytes"],
                   row["share"])


@dataclass(frozen=True)
class ConstantRow:
    """One constant of a version's serving form (LiteRT flatbuffer), with its number of quantization scales."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scales: int
    bytes: int
    share: float

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ConstantRow:
        return cls(row["name"], tuple(row["shape"]), row["dtype"], row["scales"], row["bytes"], row["share"])


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _light_table(*columns: str, title: str) -> Table:
    # A light frame keeps a 30000x300 model's rows whole on an 80-column (piped) output.
    return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                 collapse_padding=True)


def inspection(report: Mapping[str, Any]) -> None:
    """``lifecycle inspect``: the tensors table, the ops, the serving form's constants, the files."""
    found = report["version"]
    table = _light_table("tensor", "shape", "dtype", "storage", "layout", "bytes", "share",
                         title=f"{found.path} ({found.kind})")
    for row in sorted(map(TensorRow.of, report["tensors"]), key=lambda r: -r.bytes):
        table.add_row(row.name, _shape(row.shape), row.dtype, row.storage, row.layout, f"{row.bytes:,}",
                      f"{100 * row.share:.1f}%")
    table.add_row("total", "", "", "", "", f"{report['total_bytes']:,}", "100%", style="bold")
    console.out.print(table)
    if report["ops"]:
        console.out.print("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(report["ops"].items())))
    if report["serving_tensors"]:
        serving = report["serving"]
        lite = _light_table("constant", "shape", "dtype", "scales", "bytes", "share",
                            title=f"serving form {serving['file']} ({serving.get('quantization', '?')}"
                            + (f", {serving['kernels']} kernels" if serving.get("kernels") else "") + ")")
        rows = sorted(map(ConstantRow.of, report["serving_tensors"]), key=lambda r: -r.bytes)
        for row in rows:
            lite.add_row(row.name, _shape(row.shape), row.dtype, str(row.scales or ""), f"{row.bytes:,}",
                         f"{100 * row.share:.1f}%")
        lite.add_row("total", "", "", "", f"{sum(r.bytes for r in rows):,}", "100%", style="bold")
        console.out.print(lite)
    files = Table("file", "bytes", title="files", title_justify="left")
    for name, meta in report["files"].items():
        files.add_row(name, f"{meta['bytes']:,}")
    console.out.print(files)


# ---------------------------------------------------------------------------------------------------- housekeeping


def upgraded(upgraded: Any) -> None:
    """``lifecycle upgrade``: the rewritten manifest's format, the version's kind and how many files were checked."""
    console.out.print(f"{upgraded.path}: manifest format {upgraded.manifest.format}, {upgraded.kind}, "
                      f"{len(upgraded.manifest.files)} files checked", highlight=False, soft_wrap=True)


def cleaned(swept: Sequence[Any], dead: Sequence[Any], dry_run: bool) -> None:
    """``lifecycle runs clean``: each temp folder removed and run marked FAILED (or that would be), then counts."""
    verb = "would remove" if dry_run else "removed"
    for item in swept:
        console.out.print(f"{verb} {item.path} ({mb(item.bytes)})", highlight=False, soft_wrap=True)
    for run in dead:
        console.out.print(f"{'would mark' if dry_run else 'marked'} run {run.info.run_id} ({run.info.run_name}) "
                          f"FAILED: process {run.data.tags.get('lifecycle.pid')} is gone", highlight=False)
    console.out.print(f"{len(swept)} temp folder(s), {len(dead)} run(s) of dead processes", highlight=False)


# -------------------------------------------------------------------------------------------------- budget search


@dataclass(frozen=True)
class TrialRow:
    """One trial of ``compress --budget`` (a ``lifecycle.budget.Trial``)."""

    number: int
    recipe: str
    size_bytes: int | None
    graph_size_bytes: int | None
    metric: float | None
    loss: float | None
    within: bool
    chosen: bool
    error: str | None

    @classmethod
    def of(cls, trial: Any, chosen: Any) -> TrialRow:
        return cls(trial.number, trial.label, trial.size_bytes, trial.graph_size_bytes, trial.metric, trial.loss,
                   trial.within, chosen is not None and trial.number == chosen.number, trial.error)


def budget_search(searched: Any) -> None:
    """``lifecycle compress --budget``: every trial (the chosen one starred), then the written version's summary."""
    result = searched.result
    wanted = result.budget
    table = _light_table("trial", "recipe", "serving", "graph.pb", f"val {wanted.metric}", f"lost ({wanted.unit})",
                         "", title=f"budget {wanted.amount:g} {wanted.unit} of validation {wanted.metric} (parent "
                         f"{pct(result.parent_metric)}): {len(result.trials)} trials, {result.seconds:.1f} s")
    for row in (TrialRow.of(trial, result.chosen) for trial in result.trials):
        verdict = "* chosen" if row.chosen else "within" if row.within else row.error or "over"
        table.add_row(str(row.number), escape(row.recipe), mb(row.size_bytes), mb(row.graph_size_bytes),
                      pct(row.metric), "-" if row.loss is None else f"{row.loss:.2f}", escape(verdict))
    console.out.print(table)
    step(step_title("compressed", searched.outcome), searched.outcome)


def scored(result: Any) -> None:
    """A finished ``lifecycle score``: rows, rate, engine, then the output directory."""
    summary(f"scored {result.rows:,} texts", fields({
        "engine": result.engine if result.engine == "local" else f"{result.engine} ({result.facts.get('master')})",
        "workers": result.workers, "seconds": f"{result.seconds:.1f}", "texts per s": f"{result.texts_per_s:,.0f}",
        "input files": result.files, "version": result.version,
    }))
    _path_line(result.output)
