"""One fixed recipe on one set: deployed and graph.pb sizes against the frozen float32 parent, and test accuracy.

A quick, repeatable check of what a storage change does to a known recipe, without the budget search or the peers
(benchmarks/budget_bench.py and compress_bench.py do those). The set's checkpoint is trained once with its shipped
config (seed 13, untracked) and frozen, both kept under benchmarks/out/recipe-sizes/SET/ and reused by the next run;
the recipe is applied to the frozen version each run. Sizes are counted as budget_bench counts them: the serving file
(model.tflite or model.tflite.pack) + tokenizer ("deployed", what `serve` loads) and graph.pb + tokenizer. Prints
one JSON row and writes it to benchmarks/out/recipe-sizes/SET/result.json; the README is not touched.

    .venv/bin/python benchmarks/recipe_sizes.py                       # MR word, the budget search's MR pick
    .venv/bin/python benchmarks/recipe_sizes.py --config trec-word.yaml --recipe vocab:coverage=0.9,int4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "out" / "recipe-sizes"
RECIPE = "vocab:coverage=0.97,dim:136,prune:0.5,tune:3,int4"  # the budget search's MR pick (README, bench:budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mr-word.yaml", help="a config in configs/ (default: mr-word.yaml)")
    parser.add_argument("--recipe", default=RECIPE, help=f"the compression recipe (default: {RECIPE})")
    args = parser.parse_args()

    from lifecycle import artifacts
    from lifecycle.config import load_config
    from lifecycle.sizes import version_sizes
    from lifecycle.workflows import run_compress, run_freeze, run_train

    name = Path(args.config).stem
    work = OUT / name
    checkpoint, frozen, chosen = work / "checkpoint", work / "frozen", work / "compressed"
    if not (checkpoint / "manifest.json").is_file():
        cfg = load_config(ROOT / "configs" / args.config, ["train.seed=13", "tracking.enabled=false"])
        run_train(cfg, checkpoint, versions_dir=work / "runs", resume=False)
    if not (frozen / "manifest.json").is_file():
        run_freeze(str(checkpoint), frozen, track=False)
    shutil.rmtree(chosen, ignore_errors=True)
    outcome = run_compress(str(frozen), args.recipe, chosen, track=False)

    def deployed(version: artifacts.Version) -> int:
        return int(version_sizes(version, gzip=False).deployed)

    def graph(version: artifacts.Version) -> int:
        return (version.path / "graph.pb").stat().st_size + artifacts.dir_bytes(version.path / artifacts.TOKENIZER_DIR)

    parent, version = artifacts.load_version(frozen), artifacts.load_version(outcome.version)
    row = {"set": name, "recipe": args.recipe, "serving_file": version.manifest.serving.file,
           "parent_deployed_bytes": deployed(parent), "deployed_bytes": deployed(version),
           "parent_graph_bytes": graph(parent), "graph_bytes": graph(version),
           "tokenizer_bytes": artifacts.dir_bytes(version.path / artifacts.TOKENIZER_DIR),
           "test_accuracy": outcome.metrics.get("test_accuracy"),
           "serving_test_accuracy": version.manifest.serving.test_accuracy,
           "test_delta_points": 100 * float(outcome.metrics.get("accuracy_delta_vs_parent", 0.0))}
    row["deployed_ratio"] = row["parent_deployed_bytes"] / row["deployed_bytes"]
    row["graph_ratio"] = row["parent_graph_bytes"] / row["graph_bytes"]
    (work / "result.json").write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
