"""`compress --budget 1.0` on real sets: how small the chosen version is, counted on what `serve` loads and on graph.pb,
how accurate it stays, whether it retrains, and how fast its serving form answers beside the int8 form's.

For each set, from the frozen float32 version of a trained word (or BPE) model:

- the budget search (``workflows.run_compress_budget``, 1 point of validation accuracy): trials, wall time, the
  chosen recipe;
- sizes: the serving file (model.tflite or model.tflite.pack) + tokenizer, and graph.pb + tokenizer, each against
  the frozen parent's; test accuracy of the chosen version (graph.pb and serving form) against the parent's, on the
  test split, read once;
- retrain: `run_retrain` of the chosen version for 1 epoch on the parent's validation texts; the new compressed
  version must carry the chosen recipe again;
- batch-1 latency of the serving form, paired with the parent's int8 version in one process: 7 rounds alternating
  the two, 200 calls each per round on test ids, the p50 of each and their ratio (chosen / int8).

The trained versions are benchmarks/calibration_bench.py's (benchmarks/out/calibration-versions/SET/, trained with
the shipped configs/SET.yaml on ../shared/data, seed 13); a set whose checkpoint is missing there is trained here the
same way first (TREC BPE too, from configs/trec-bpe.yaml). Results: benchmarks/out/budget.json, README's
``bench:budget`` block.

    .venv/bin/python benchmarks/budget_bench.py                     # all sets (~1 h on 2 cores)
    .venv/bin/python benchmarks/budget_bench.py --only trec-word --no-readme
    .venv/bin/python benchmarks/budget_bench.py --readme-only
    .venv/bin/python benchmarks/budget_bench.py --tokenizers   # the chosen versions' tokenizers, plain vs compact

``--paired-se`` adds to each row the standard error of its test delta: both versions' graph.pb predictions on the
test split, text by text (chosen correct minus parent correct, each 0 or 1), the sample std of that difference over
the square root of the texts. It is what the test half of "within 1 point of the parent" can tell apart.

    .venv/bin/python benchmarks/budget_bench.py --paired-se --no-readme

``--tokenizers`` measures what the compact tokenizer (xz-compressed data files, what compressed versions ship) saves
and costs at load, on each set's chosen version (benchmarks/out/budget-work/SET/chosen): bytes of the directory in
both forms and the median of LOADS ``load_tokenizer`` calls of each, alternating.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from readme import bench_parser, cpu_model, write_block  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
RESULTS = OUT / "budget.json"
VERSIONS = OUT / "calibration-versions"
# Each set's shipped config (configs/SET.yaml); its versions live in VERSIONS / SET.
SETS = ("mr-word", "trec-word", "trec-bpe", "stackoverflow-word", "banking77-word")
BUDGET = 1.0
ROUNDS, CALLS = 7, 200
LOADS = 21


def _deployed(version: Any) -> int:
    """What `serve` loads (lifecycle.sizes' deployed size: the serving file + tokenizer)."""
    from lifecycle.sizes import version_sizes

    return int(version_sizes(version, gzip=False).deployed)


def _graph(version: Any) -> int:
    from lifecycle import artifacts

    return (version.path / "graph.pb").stat().st_size + artifacts.dir_bytes(version.path / artifacts.TOKENIZER_DIR)


def _recipe(version: Any) -> str:
    from lifecycle.compress import step_text

    return "+".join(step_text(step.name, dict(step.params)) for step in version.manifest.recipe)


def _parents(name: str) -> tuple[Path, Path]:
    """The set's frozen parent and its int8 sibling, trained (calibration_bench's way), frozen and compressed first
    when missing."""
    from calibration_bench import int8_sibling, trained_checkpoint

    from lifecycle.workflows import run_freeze

    checkpoint, _ = trained_checkpoint(name, f"{name}.yaml")
    int8 = int8_sibling(checkpoint)
    frozen = checkpoint.parent / "frozen"
    if not (frozen / "manifest.json").is_file():
        run_freeze(str(checkpoint), frozen, track=False)
    return frozen, int8


def _paired_p50(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[float, float]:
    """Batch-1 p50 (ms) of two (LiteRT runner, its own id rows) pairs, alternated in rounds in this process."""
    import numpy as np

    times: list[list[float]] = [[], []]
    pairs = (a, b)
    for round_ in range(ROUNDS):
        for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            runner, ids = pairs[which]
            for i in range(CALLS):
                row = ids[i % len(ids)][None, :]
                started = time.perf_counter()
                runner.run(row)
                times[which].append(time.perf_counter() - started)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def _retrain(chosen: Any, corpus: Any, work: Path) -> dict[str, Any]:
    from lifecycle import artifacts
    from lifecycle.workflows import RetrainOptions, run_retrain

    new = work / "new.csv"
    with new.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(corpus.validation.texts, corpus.validation.labels, strict=True))
    shutil.rmtree(work / "retrained", ignore_errors=True)  # an earlier run's
    started = time.perf_counter()
    outcomes = run_retrain(str(chosen.path), new, RetrainOptions(epochs=1), work / "retrained", track=False)
    again = artifacts.load_version(outcomes[-1].version)
    return {"seconds": round(time.perf_counter() - started, 1), "kind": again.kind, "recipe": _recipe(again),
            "recipe_reapplied": _recipe(again) == _recipe(chosen),
            "new_test_accuracy": outcomes[0].metrics.get("new_test_accuracy"),
            "parent_test_accuracy": outcomes[0].metrics.get("parent_test_accuracy")}


def bench_set(name: str) -> dict[str, Any]:
    from lifecycle import artifacts
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.litert import LiteRunner
    from lifecycle.workflows.budgeting import BudgetRequest, run_compress_budget
    from tokenization.factory import load_tokenizer

    work = OUT / "budget-work" / name
    work.mkdir(parents=True, exist_ok=True)
    frozen_path, int8_path = _parents(name)
    parent, int8 = artifacts.load_version(frozen_path), artifacts.load_version(int8_path)
    chosen_dir = work / "chosen"
    shutil.rmtree(chosen_dir, ignore_errors=True)
    started = time.perf_counter()
    searched = run_compress_budget(str(frozen_path), BudgetRequest(BUDGET), chosen_dir, track=False)
    seconds = time.perf_counter() - started
    chosen = artifacts.load_version(searched.outcome.version)
    result = searched.result
    metrics = searched.outcome.metrics
    corpus = load_corpus(parent.config.data, name, report=False)
    tokenizer = load_tokenizer(chosen.tokenizer_dir)
    ids = encode_examples(corpus.test, tokenizer, chosen.labels, chosen.max_len).x[:CALLS]
    ids_int8 = encode_examples(corpus.test, load_tokenizer(int8.tokenizer_dir), int8.labels, int8.max_len).x[:CALLS]

    def runner(version: Any) -> Any:
        dtype = version.manifest.input.dtype
        return LiteRunner(version.path / version.manifest.serving.file, version.max_len, dtype, threads=1)

    # Each runner on its own tokenizer's ids for the same test texts (the chosen version's vocabulary may be pruned).
    p50 = _paired_p50((runner(chosen), ids), (runner(int8), ids_int8))
    retrain = _retrain(chosen, corpus, work)
    parent_test = float(metrics["test_accuracy"]) - float(metrics["accuracy_delta_vs_parent"])
    row = {
        "set": name, "parent": str(frozen_path.relative_to(ROOT)), "budget_points": BUDGET,
        "trials": len(result.trials), "search_seconds": round(result.seconds, 1), "wall_seconds": round(seconds, 1),
        "stopped": result.stopped, "recipe": _recipe(chosen),
        "validation_parent": result.parent_metric, "validation_chosen": result.chosen.metric if result.chosen else None,
        "validation_loss_points": result.chosen.loss if result.chosen else None,
        "parent_test_accuracy": parent_test, "test_accuracy": float(metrics["test_accuracy"]),
        "serving_test_accuracy": chosen.manifest.serving.test_accuracy,
        "test_delta_points": 100 * float(metrics["accuracy_delta_vs_parent"]),
        "parent_deployed_bytes": _deployed(parent), "deployed_bytes": _deployed(chosen),
        "parent_graph_bytes": _graph(parent), "graph_bytes": _graph(chosen),
        "int8_deployed_bytes": _deployed(int8), "serving_file": chosen.manifest.serving.file,
        "p50_ms": p50[0], "int8_p50_ms": p50[1], "p50_ratio_vs_int8": p50[0] / p50[1],
        "retrain": retrain,
    }
    row["deployed_ratio"] = row["parent_deployed_bytes"] / row["deployed_bytes"]
    row["graph_ratio"] = row["parent_graph_bytes"] / row["graph_bytes"]
    print(json.dumps(row, indent=1))
    return row


def tokenizer_forms(directory: Path) -> dict[str, dict[str, float]]:
    """The tokenizer in ``directory`` saved plain and compact: bytes and median load time (ms) of each form."""
    import statistics

    from lifecycle import artifacts
    from tokenization.base import serving_copy
    from tokenization.factory import load_tokenizer

    tokenizer = serving_copy(load_tokenizer(directory))
    with tempfile.TemporaryDirectory() as tmp:
        forms = {form: Path(tmp) / form for form in ("plain", "compact")}
        for form, path in forms.items():
            tokenizer.save(path, compact=form == "compact")
        times: dict[str, list[float]] = {form: [] for form in forms}
        for index in range(LOADS):
            for form in (("plain", "compact") if index % 2 == 0 else ("compact", "plain")):
                started = time.perf_counter()
                load_tokenizer(forms[form])
                times[form].append(time.perf_counter() - started)
        return {form: {"bytes": artifacts.dir_bytes(path), "load_ms": 1e3 * statistics.median(times[form])}
                for form, path in forms.items()}


def _times(ratio: float) -> str:
    """A ratio cut (not rounded) to one decimal, so 29.95x does not print as 30.0x."""
    return f"{math.floor(ratio * 10) / 10:.1f}x"


def _se(row: dict[str, Any]) -> str:
    return f" ± {row['test_delta_se_points']:.2f}" if "test_delta_se_points" in row else ""


def paired_se(row: dict[str, Any]) -> float:
    """The standard error (points) of one row's test delta, text by text on graph.pb (module doc)."""
    import numpy as np

    from lifecycle import artifacts
    from lifecycle.corpus import load_corpus
    from lifecycle.inference import Predictor

    parent = artifacts.load_version(ROOT / row["parent"])
    chosen = artifacts.load_version(OUT / "budget-work" / row["set"] / "chosen")
    test = load_corpus(parent.config.data, row["set"], report=False).test
    right = []
    for version in (parent, chosen):
        probabilities = Predictor(version, runtime="graph").predict_proba(test.texts, calibrated=False)
        right.append(np.array([version.labels[i] for i in probabilities.argmax(axis=1)]) == np.array(test.labels))
    difference = right[1].astype(float) - right[0].astype(float)
    delta = 100 * float(difference.mean())
    if abs(delta - row["test_delta_points"]) > 0.05:
        raise SystemExit(f"{row['set']}: test delta {delta:.2f} here, {row['test_delta_points']:.2f} in the row")
    return 100 * float(difference.std(ddof=1)) / len(difference) ** 0.5


def render(results: dict[str, Any]) -> str:
    rows = [r for r in results["rows"].values() if r]
    lines = [
        f"`compress --budget {BUDGET:g}` (validation accuracy, absolute points) from each frozen float32 version; "
        f"{results['machine']}, {results['date']}. Command: `.venv/bin/python benchmarks/budget_bench.py`.",
        "",
        "| set | chosen recipe | trials / wall | deployed (serving + tokenizer) | x smaller | graph.pb + tokenizer "
        "| x smaller | validation loss | test acc. parent -> chosen (serving) | test delta ± se | retrain re-applies "
        "| batch-1 p50 vs int8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | `{r['recipe']}` | {r['trials']} / {r['wall_seconds'] / 60:.1f} min "
            f"| {r['deployed_bytes'] / 1e6:.3f} MB ({r['serving_file']}) | {_times(r['deployed_ratio'])} "
            f"| {r['graph_bytes'] / 1e6:.3f} MB | {_times(r['graph_ratio'])} "
            f"| {r['validation_loss_points']:.2f} "
            f"| {100 * r['parent_test_accuracy']:.1f} -> {100 * r['test_accuracy']:.1f} "
            f"({100 * (r['serving_test_accuracy'] or 0):.1f}) "
            f"| {r['test_delta_points']:+.2f}{_se(r)} "
            f"| {'yes' if r['retrain']['recipe_reapplied'] else 'NO'} ({r['retrain']['seconds']:.0f} s) "
            f"| {r['p50_ms']:.3f} vs {r['int8_p50_ms']:.3f} ms ({r['p50_ratio_vs_int8']:.2f}x) |")
    # Rows of an earlier run kept as the README printed them (sets not re-run since), marked as such.
    for name, line in (results.get("earlier_lines") or {}).items():
        if name not in results["rows"]:
            lines.append(line.replace(f"| {name} |", f"| {name} (earlier run) |", 1))
    forms = results.get("tokenizers") or {}
    if forms:
        lines += ["", f"The chosen versions' tokenizers, plain and compact (`budget_bench.py --tokenizers`, median of "
                      f"{LOADS} loads each, alternating; {results.get('tokenizers_date', '')}):", "",
                  "| set | kind | plain | compact | saved | load plain -> compact |", "|---|---|---|---|---|---|"]
        for name, row in forms.items():
            plain, compact = row["plain"], row["compact"]
            lines.append(f"| {name} | {row['kind']} | {plain['bytes'] / 1e3:.1f} KB | {compact['bytes'] / 1e3:.1f} KB "
                         f"| {(plain['bytes'] - compact['bytes']) / 1e3:.1f} KB "
                         f"| {plain['load_ms']:.1f} -> {compact['load_ms']:.1f} ms |")
    for note in results.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def _update(change: Any) -> dict[str, Any]:
    """Apply ``change`` to budget.json's content and return it. Concurrent invocations (``--only``) each hold an
    exclusive lock on budget.json.lock while they read, change and replace the file (temp file + rename), so no row
    another one wrote meanwhile is lost and no reader sees half a file."""
    import fcntl

    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / f"{RESULTS.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
        change(results)
        staged = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps(results, indent=1))
        os.replace(staged, RESULTS)
    return results


def _merge_row(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Add one set's row to budget.json (``_update``) and return the file's new content."""
    def merge(results: dict[str, Any]) -> None:
        results["rows"][name] = row
        results["machine"] = cpu_model()
        results["date"] = time.strftime("%Y-%m-%d")

    return _update(merge)


def _merge_tokenizers(only: str | None) -> dict[str, Any]:
    """``--tokenizers``: measure each set's chosen version and store the figures in budget.json."""
    from lifecycle import artifacts

    measured = {}
    for name in (only.split(",") if only else SETS):
        chosen = OUT / "budget-work" / name / "chosen"
        if not (chosen / "manifest.json").is_file():
            print(f"{name}: no chosen version in {chosen}; skipped")
            continue
        version = artifacts.load_version(chosen)
        kind = json.loads((version.tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["kind"]
        measured[name] = {"kind": kind, **tokenizer_forms(version.tokenizer_dir)}
        print(name, json.dumps(measured[name]))

    def merge(results: dict[str, Any]) -> None:
        results["tokenizers"] = {**results.get("tokenizers", {}), **measured}
        results["tokenizers_date"] = time.strftime("%Y-%m-%d")

    return _update(merge)


def main() -> None:
    parser = bench_parser(__doc__, RESULTS.name)
    parser.add_argument("--paired-se", action="store_true", help="add each row's test-delta standard error "
                        "(module doc)")
    parser.add_argument("--tokenizers", action="store_true", help="measure the chosen versions' tokenizers, plain "
                        "vs compact (module doc)")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    if args.tokenizers:
        results = _merge_tokenizers(args.only)
    elif args.paired_se:
        for name, row in list(results["rows"].items()):
            if not args.only or name in args.only.split(","):
                row = {**row, "test_delta_se_points": paired_se(row)}
                print(name, f"{row['test_delta_points']:+.2f} ± {row['test_delta_se_points']:.2f}")
                results = _merge_row(name, row)
    elif not args.readme_only:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
        only = set(args.only.split(",")) if args.only else set(SETS)
        for name in SETS:
            if name in only:
                results = _merge_row(name, bench_set(name))
    if not args.no_readme and results.get("rows"):
        write_block("budget", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
