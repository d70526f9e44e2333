"""Compression benchmark (issue 3): our frozen and compressed versions against the peers, on the same trained model.

For each data set and tokenizer (MR and TREC, word 300-d and BPE), one run: train a checkpoint
(``lifecycle.workflows.run_train``), freeze it, compress it with each recipe (int8, pruned, and int4 with and without
a narrowed embedding among them) and with ``compress --budget 1`` (``--budget``; its pick is measured like the
recipes and judged on issue 15's 30x at the budget), and build the peers from the SAME trained Keras model: Keras
``.keras`` (no optimizer), a TF SavedModel (``model.export``), the TFLite converter (float32, float16, dynamic-range
int8), ONNX (tf2onnx) with ONNX Runtime's ``quantize_dynamic``, and TF-MOT 80% magnitude pruning (fine-tuned) + the
TFLite converter's dynamic-range int8. Then, for every variant:

- size of the model file(s), raw and gzip -6; for our versions the tokenizer directory too (listed apart);
- test accuracy on the same test split: our versions through the Predictor on their own tokenizer's ids (checked
  against ``run_evaluate``), the peers on the same padded id arrays as the checkpoint's tokenizer makes;
- load time, first call, batch-1 p50/p99, throughput (batch 256) and memory, each measured in a FRESH worker
  process per variant (``--worker``): RSS before the runtime import, after it (the baseline: TensorFlow plus an empty
  session for graph.pb, the bare interpreter for LiteRT, onnxruntime for ONNX), after load and after the calls.

Plus the field report's fixed-size case (``field-30k``): MR with a 30,000-token BPE vocabulary (real text; a word
vocabulary of MR reaches only 17.7k) and a 300-d embedding, for the graph.pb first-call and memory criteria, and ten
int8 copies served from one process (our serving form, and the TFLite dynamic-range peer).

Results go to benchmarks/out/compress.json and README.md between the ``bench:compress`` markers.

    .venv/bin/python benchmarks/compress_bench.py --quick                # smoke run: trec-word + field-30k, tiny
    .venv/bin/python benchmarks/compress_bench.py                        # everything (~45 min on 2 quiet cores)
    .venv/bin/python benchmarks/compress_bench.py --only mr-word,field-30k --no-readme
    .venv/bin/python benchmarks/compress_bench.py --readme-only          # re-render README from the JSON
"""

# The parts, beside this script: compress_setup (paths, runs, recipes, memory and subprocess helpers), compress_runs
# (Bench: train, freeze, compress, measure; the fixed runs), compress_peers (the converters' peers and TF-MOT),
# compress_worker (the fresh measuring process) and compress_report (tables, criteria, the README block).

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime

from compress_peers import tfmot_main
from compress_report import render, write_readme
from compress_runs import add_pairs, add_recipes, bench_dataset, bench_field
from compress_setup import ALL_RUNS, BUDGET_POINTS, DEFAULT_RECIPES, FIELD, OUT, QUICK_RUNS, RESULTS, RUNS
from compress_worker import worker_main
from readme import cpu_model  # (benchmarks/readme.py, beside this script)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx",
                    "tensorflow-model-optimization", "tf-keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--tfmot"]:
        tfmot_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated runs (default: all: {', '.join(ALL_RUNS)}; with --quick: "
                        f"{', '.join(QUICK_RUNS)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: data.limit=600 and 1 epoch (the 30k case keeps all of MR for its vocabulary, "
                             "1 epoch), 200 calls, 3 rounds, 1 TF-MOT epoch")
    parser.add_argument("--recipe", action="append", help="a compression recipe (repeatable; default: "
                        + " | ".join(DEFAULT_RECIPES) + "); unknown steps are skipped with a note")
    parser.add_argument("--budget", type=float, default=BUDGET_POINTS,
                        help=f"also run `compress --budget POINTS` on each frozen version and measure its pick "
                             f"(default {BUDGET_POINTS:g}; -1 skips the search)")
    parser.add_argument("--calls", type=int, help="batch-1 calls per variant (default 1000; --quick 200)")
    parser.add_argument("--rounds", type=int, help="timed batch-256 calls per variant (default 10; --quick 3)")
    parser.add_argument("--tfmot-epochs", type=int, help="TF-MOT fine-tune epochs (default 2; --quick 1)")
    parser.add_argument("--track", action="store_true", help="also log every step and the results to MLflow")
    parser.add_argument("--add-recipe", action="append",
                        help="compress the frozen versions of an earlier run (benchmarks/out/compress-work) with one "
                             "more recipe and measure only it, adding its rows to the results (repeatable)")
    parser.add_argument("--pairs-only", action="store_true",
                        help="only (re)measure our int8 serving form against the converter's dynamic-range int8 in "
                             "one process, over the versions of the last run")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--readme-only", action="store_true",
                        help="rewrite README.md from benchmarks/out/compress.json")
    args = parser.parse_args()
    args.recipe = args.recipe or list(DEFAULT_RECIPES)
    args.calls = args.calls or (200 if args.quick else 1000)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.tfmot_epochs = args.tfmot_epochs or (1 if args.quick else 2)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    wanted = args.only.split(",") if args.only else (QUICK_RUNS if args.quick else ALL_RUNS)
    unknown = sorted(set(wanted) - set(ALL_RUNS))
    if unknown:
        parser.error(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(ALL_RUNS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {"runs": {}}
    if args.pairs_only and not args.readme_only:
        for name in wanted:
            if name in previous["runs"]:
                add_pairs(previous, name, args)
        previous.setdefault("meta", {})["pairs"] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"),
                                                    "command": "python benchmarks/compress_bench.py --pairs-only"}
        RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    elif args.add_recipe and not args.readme_only:
        for name in wanted:
            if name != FIELD[0] and name in previous["runs"]:
                add_recipes(previous, name, args)
                RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    elif not args.readme_only:
        started = time.perf_counter()
        for name, config, overrides in [*RUNS, FIELD]:
            if name not in wanted:
                continue
            if name == FIELD[0]:
                previous["runs"][name] = bench_field(args)
            else:
                previous["runs"][name] = bench_dataset(name, config, overrides, args)
            versions = _versions()
            previous["meta"] = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
                "python": platform.python_version(), "versions": versions,
                "versions_text": ", ".join(f"{k} {v}" for k, v in versions.items()),
                "command": "python benchmarks/compress_bench.py" + " ".join([""] + sys.argv[1:]),
                "quick": args.quick, "calls": args.calls, "rounds": args.rounds, "recipes": args.recipe,
                "budget": args.budget,
                "tfmot_epochs": args.tfmot_epochs, "seconds": time.perf_counter() - started,
            }
            RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    if not previous.get("runs"):
        raise SystemExit(f"no results in {RESULTS}; run the benchmark first")
    text = render(previous)
    print(text)
    if not args.no_readme:
        write_readme(text)


if __name__ == "__main__":
    main()
