"""Did training converge? The whole-path compressed version against its own checkpoint, on every set, and what
``tune:`` costs.

A model that stopped too early gets better under the fine-tune epochs of ``tune:E``, so its compressed version beats
the checkpoint it came from; a converged one loses a little. For each set of the calibration benchmark (its trained
checkpoint under benchmarks/out/calibration-versions/, trained there first when missing), this freezes it,
compresses it with the whole-path recipe and records: checkpoint and compressed test accuracy, the difference, the
tune step's epochs (run, peak, why it stopped) and its seconds per epoch against one training epoch of the
checkpoint's own model, timed in the same process. Rows go to benchmarks/out/converged.json and the table into
README.md between the `bench:converged` markers.

    .venv/bin/python benchmarks/converged_bench.py                     # every set (about 30 minutes on 2 cores)
    .venv/bin/python benchmarks/converged_bench.py --only trec-word --no-readme
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The calibration benchmark's sets and their trained checkpoints (benchmarks/calibration_bench.py, beside this one),
# and TREC's BPE model (trained there too, by the budget benchmark, under the same name).
from calibration_bench import RUNS, trained_checkpoint  # noqa: E402
from readme import bench_parser, cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

OUT = ROOT / "benchmarks" / "out"
RECIPE = "vocab:coverage=0.97,prune:0.85,tune:5,int8"
SETS = [*RUNS, ("trec-bpe", "trec-bpe.yaml")]


def _train_epoch_seconds(checkpoint: Path, frozen: Path) -> float:
    """Seconds of one training epoch of the checkpoint's own model (with its Adam state) on its training split, timed
    on a second epoch so that tracing is not counted: what a tune epoch is compared with, on the same machine now."""
    import time

    import keras

    from lifecycle import artifacts
    from lifecycle.compress import RecipeContext
    from lifecycle.workflows import load_graph_version
    from tokenization.factory import load_tokenizer

    version = artifacts.load_version(frozen)
    source = load_graph_version(version)
    context = RecipeContext(version.config, version.labels, version.max_len, source.kernel_sizes, source.weight_map,
                            load_tokenizer(version.tokenizer_dir), str(version.path))
    train = context.arrays("train", "timing")
    model = keras.models.load_model(checkpoint / artifacts.KERAS_FILE)
    batch = version.config.train.batch_size
    model.fit(train.x, train.y, batch_size=batch, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(train.x, train.y, batch_size=batch, epochs=1, verbose=0)
    return time.perf_counter() - started


def run_one(name: str, config: str, work: Path) -> dict:
    from lifecycle import artifacts
    from lifecycle.workflows import run_compress, run_freeze

    checkpoint, _ = trained_checkpoint(name, config)
    parent = artifacts.load_version(checkpoint, verify=False).manifest
    frozen = run_freeze(str(checkpoint), work / f"{name}-frozen", track=False)
    compressed = run_compress(str(frozen.version), RECIPE, work / f"{name}-whole", track=False)
    manifest = artifacts.load_version(compressed.version, verify=False).manifest
    [tune] = [step.report for step in manifest.recipe if step.name == "tune"]
    training = parent.training
    return {
        "name": name,
        "checkpoint_accuracy": parent.metrics["test_accuracy"],
        "compressed_accuracy": manifest.metrics["test_accuracy"],
        "train_epochs": training.epochs_run,
        "train_peak": training.peak_epoch,
        "train_epoch_seconds": _train_epoch_seconds(checkpoint, frozen.version),
        "tune": {key: tune[key] for key in ("epochs_run", "peak_epoch", "stop_reason", "patience_epochs",
                                             "train_seconds", "seconds_per_epoch")},
        "checkpoint": str(checkpoint),
    }


def table(rows: list[dict]) -> str:
    lines = ["| set | checkpoint % | whole-path % | difference (pt) | train epochs (peak) | tune epochs (peak, stop) "
             "| s per train epoch | s per tune epoch |", "|" + "---|" * 8]
    for r in rows:
        tune = r["tune"]
        per_train = f"{r['train_epoch_seconds']:.1f}"
        lines.append(
            f"| {r['name']} | {100 * r['checkpoint_accuracy']:.1f} | {100 * r['compressed_accuracy']:.1f} | "
            f"{100 * (r['compressed_accuracy'] - r['checkpoint_accuracy']):+.1f} | {r['train_epochs']} "
            f"({r['train_peak']}) | {tune['epochs_run']} ({tune['peak_epoch']}, {tune['stop_reason']}) | {per_train} | "
            f"{tune['seconds_per_epoch']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, "converged.json")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    results = OUT / "converged.json"
    rows = {r["name"]: r for r in json.loads(results.read_text())} if results.is_file() else {}
    work = OUT / f"converged-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    for name, config in SETS:
        if args.readme_only or (wanted and name not in wanted):
            continue
        print(f"== {name}", flush=True)
        rows[name] = run_one(name, config, work)
        print(json.dumps(rows[name]), flush=True)
        temp = results.with_suffix(".json.tmp")
        temp.write_text(json.dumps(list(rows.values()), indent=1))
        temp.replace(results)
    ordered = [rows[n] for n, _ in SETS if n in rows]
    print(table(ordered))
    if not args.no_readme:
        stamp = datetime.fromtimestamp(results.stat().st_mtime, UTC).strftime("%Y-%m-%d")
        meta = (f"Measured {stamp} on {cpu_model(('avx2',))} ({os.cpu_count()} cores), "
                f"`python benchmarks/converged_bench.py`; recipe `{RECIPE}`; one seed per set (13); test split.")
        write_block("converged", f"{meta}\n\n{table(ordered)}")


if __name__ == "__main__":
    main()
