"""Retraining benchmark: the issue's "done when" cases, on the published data sets.

- more-data (MR): split MR's training split in two seeded stratified halves; train on half A -> freeze ->
  prune:0.5,int8 -> retrain the compressed version on half B (--keep-sparsity) -> the child's MR test accuracy against
  its parent's, its storage (int8?) and its sparsity (unchanged?).
- new-labels (StackOverflow): train on half A's titles of 10 of the 20 topics -> freeze -> int8 -> retrain on half B
  (all 20 topics) with --grow-labels --replay 0.2 --grow-vocab (half A's vocabulary lacks the new topics' own words;
  --no-grow-vocab keeps it) -> old-topic and new-topic accuracy of the deployed (int8) child on the test split, and
  the old-topic drop against the parent.
- with ``--inits``, also the initialisation choices of growth, from the same parents: new output columns (glorot,
  zeros, mean of the old columns) on new-labels, and new embedding rows (none, random, word2vec) on more-data
  with --grow-vocab (words of half B that half A's vocabulary lacks).

Every version goes under benchmarks/out/retrain-work/; the rows go to benchmarks/out/retrain.json and, unless
--no-readme, into README.md between the ``bench:retrain`` markers.

    .venv/bin/python benchmarks/retrain_bench.py              # both cases at the configs' sizes (~20 min, 2 cores)
    .venv/bin/python benchmarks/retrain_bench.py --inits      # plus the init comparison
    .venv/bin/python benchmarks/retrain_bench.py --quick      # smoke run: small slices, small model, 2 epochs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from readme import write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

from lifecycle.config import load_config  # noqa: E402
from lifecycle.manifest import Manifest  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
QUICK = ["model.embedding_dim=32", "model.filters=16", "train.epochs=2", "train.patience=2"]
OLD_TOPICS = 10


def _write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


def _halves(labels: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified halves of a split: indices of A and of B."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for label in sorted(set(labels)):
        idx = rng.permutation([i for i, x in enumerate(labels) if x == label])
        a.extend(idx[: len(idx) // 2])
        b.extend(idx[len(idx) // 2:])
    return np.sort(a), np.sort(b)


def _data_yaml(path: Path, name: str, train_csv: Path, test_csv: Path, cfg: Any) -> Path:
    """A config whose data is train_csv (validation split off it) and the fixed test_csv."""
    data = {"format": "csv", "path": str(train_csv), "test_path": str(test_csv),
            "split": cfg.data.split.model_dump()}
    path.write_text(yaml.safe_dump({"name": name, "data": data}), encoding="utf-8")
    return path


def _accuracy(version: Path, texts: list[str], labels: list[str]) -> float:
    from lifecycle import artifacts
    from lifecycle.inference import Predictor

    found = artifacts.load_version(version)
    probabilities = Predictor(found).predict_proba(texts)
    predicted = [found.labels[i] for i in probabilities.argmax(1)]
    return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)])) if texts else float("nan")


def _tensors(version: Path) -> dict[str, dict[str, Any]]:
    return _manifest(version).tensor_dicts()


def _manifest(version: Path) -> Manifest:
    from lifecycle.artifacts import load_version

    return load_version(version, verify=False).manifest


def _mask_kept(parent: Path, child: Path) -> bool:
    """Whether every weight that is zero in the parent is still zero in the child (the pruning mask survived)."""
    from lifecycle import artifacts
    from lifecycle.workflows import load_graph_version

    before = load_graph_version(artifacts.load_version(parent)).weights
    after = load_graph_version(artifacts.load_version(child)).weights
    return all(np.all(after[name].value[before[name].value == 0] == 0) for name in before
               if not name.endswith("bias") and before[name].shape == after[name].shape)


def more_data(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """MR: half A -> prune:0.5,int8 -> retrain on half B; plus (--inits) vocabulary growth choices."""
    from lifecycle.corpus import load_corpus
    from lifecycle.workflows import RetrainOptions, run_compress, run_freeze, run_retrain, run_train

    base = load_config(ROOT / "configs" / "mr-word.yaml", args.overrides)
    corpus = load_corpus(base.data, base.name)
    a, b = _halves(list(corpus.train.labels), args.seed)
    texts, labels = list(corpus.train.texts), list(corpus.train.labels)
    test = _write_csv(work / "mr-test.csv", list(corpus.test.texts), list(corpus.test.labels))
    half_a = _write_csv(work / "mr-half-a.csv", [texts[i] for i in a], [labels[i] for i in a])
    half_b = _write_csv(work / "mr-half-b.csv", [texts[i] for i in b], [labels[i] for i in b])
    new_yaml = _data_yaml(work / "mr-half-b.yaml", "mr-half-b", half_b, test, base)
    cfg = load_config(ROOT / "configs" / "mr-word.yaml", [*args.overrides, "name=retrain-bench-mr",
                                                           f"tracking.enabled={str(args.track).lower()}"],
                      {"data.format": "csv", "data.path": str(half_a), "data.test_path": str(test)})
    started = time.perf_counter()
    trained = run_train(cfg, work / "mr-a-checkpoint", resume=False)
    frozen = run_freeze(str(trained.version), work / "mr-a-frozen", track=args.track)
    parent = run_compress(str(frozen.version), args.recipe, work / "mr-a-compressed", track=args.track)
    options = RetrainOptions(epochs=args.epochs, keep_sparsity=True)
    outcomes = run_retrain(str(parent.version), new_yaml, options, work / "mr-b", track=args.track)
    child = outcomes[-1]
    before, after = _tensors(parent.version), _tensors(child.version)
    row: dict[str, Any] = {
        "case": "more-data", "data": "MR", "recipe": args.recipe, "train_a": len(a), "train_b": len(b),
        "test": len(corpus.test), "parent_test_accuracy": parent.metrics["test_accuracy"],
        "child_test_accuracy": child.metrics["test_accuracy"],
        "checkpoint_a_test_accuracy": trained.metrics["test_accuracy"],
        "retrained_checkpoint_test_accuracy": outcomes[0].metrics.get("test_accuracy"),
        "storage_parent": sorted({t["storage"] for t in before.values()}),
        "storage_child": sorted({t["storage"] for t in after.values()}),
        "sparsity_parent": {k: round(t["sparsity"], 4) for k, t in before.items() if not k.endswith("bias")},
        "sparsity_child": {k: round(t["sparsity"], 4) for k, t in after.items() if not k.endswith("bias")},
        "mask_kept": _mask_kept(parent.version, child.version),
        "size_parent": parent.metrics["size_bytes"], "size_child": child.metrics["size_bytes"],
        "epochs_run": outcomes[0].facts["epochs_run"], "seconds": time.perf_counter() - started,
    }
    if args.inits:
        row["vocab_inits"] = {}
        for init in ("none", "random", "word2vec"):
            grow = init != "none"
            opts = RetrainOptions(epochs=args.epochs, grow_vocab=grow, vocab_init=init if grow else "word2vec",
                                  min_count=2)
            got = run_retrain(str(frozen.version), new_yaml, opts, work / f"mr-b-vocab-{init}", track=False)
            growth = _manifest(got[0].version).retrain["growth"].get("vocab", {})
            row["vocab_inits"][init] = {"test_accuracy": got[0].metrics["test_accuracy"],
                                        "words_added": growth.get("words_added", 0),
                                        "heldout_r2": growth.get("heldout_r2"),
                                        "shared_words": growth.get("shared_words")}
            print(init, row["vocab_inits"][init], flush=True)
    return row


def new_labels(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """StackOverflow: 10 topics (half A) -> int8 -> retrain with all 20 (half B) + replay 0.2."""
    from lifecycle.corpus import STACKOVERFLOW_LABELS, load_corpus
    from lifecycle.workflows import RetrainOptions, run_compress, run_freeze, run_retrain, run_train

    base = load_config(ROOT / "configs" / "stackoverflow-word.yaml", args.overrides)
    corpus = load_corpus(base.data, base.name)
    old_topics = set(STACKOVERFLOW_LABELS[:OLD_TOPICS])
    texts, labels = list(corpus.train.texts), list(corpus.train.labels)
    a, b = _halves(labels, args.seed)
    a = [i for i in a if labels[i] in old_topics]
    test_texts, test_labels = list(corpus.test.texts), list(corpus.test.labels)
    old_test = [i for i, x in enumerate(test_labels) if x in old_topics]
    new_test = [i for i, x in enumerate(test_labels) if x not in old_topics]
    test_old_csv = _write_csv(work / "so-test-old.csv", [test_texts[i] for i in old_test],
                              [test_labels[i] for i in old_test])
    test_all_csv = _write_csv(work / "so-test.csv", test_texts, test_labels)
    half_a = _write_csv(work / "so-half-a-old.csv", [texts[i] for i in a], [labels[i] for i in a])
    half_b = _write_csv(work / "so-half-b.csv", [texts[i] for i in b], [labels[i] for i in b])
    new_yaml = _data_yaml(work / "so-half-b.yaml", "so-half-b", half_b, test_all_csv, base)
    cfg = load_config(ROOT / "configs" / "stackoverflow-word.yaml",
                      [*args.overrides, "name=retrain-bench-so", f"tracking.enabled={str(args.track).lower()}"],
                      {"data.format": "csv", "data.path": str(half_a), "data.test_path": str(test_old_csv)})
    started = time.perf_counter()
    trained = run_train(cfg, work / "so-a-checkpoint", resume=False)
    frozen = run_freeze(str(trained.version), work / "so-a-frozen", track=args.track)
    parent = run_compress(str(frozen.version), "int8", work / "so-a-int8", track=args.track)

    def scores(version: Path) -> dict[str, float]:
        return {"old_topic_accuracy": _accuracy(version, [test_texts[i] for i in old_test],
                                                [test_labels[i] for i in old_test]),
                "new_topic_accuracy": _accuracy(version, [test_texts[i] for i in new_test],
                                                [test_labels[i] for i in new_test]),
                "all_topic_accuracy": _accuracy(version, test_texts, test_labels)}

    inits = ("glorot", "zeros", "mean") if args.inits else (None,)
    results = {}
    for init in inits:
        options = RetrainOptions(epochs=args.epochs, grow_labels=True, replay=0.2, grow_vocab=args.grow_vocab,
                                 min_count=2, **({"label_init": init} if init else {}))
        out = work / f"so-b{'-' + init if init else ''}"
        outcomes = run_retrain(str(parent.version), new_yaml, options, out, track=args.track and init is None)
        child = outcomes[-1]
        growth = _manifest(outcomes[0].version).retrain["growth"]
        results[init or "default"] = {**scores(child.version), "words_added": growth.get("vocab", {}).get(
            "words_added", 0), "storage": sorted(
            {t["storage"] for t in _tensors(child.version).values()}), "epochs_run": outcomes[0].facts["epochs_run"],
            "retrain_metrics": {k: v for k, v in outcomes[0].metrics.items() if "accuracy" in k or k == "forgetting"}}
        print(init, results[init or "default"], flush=True)
    parent_scores = scores(parent.version)
    return {"case": "new-labels", "data": "StackOverflow", "grow_vocab": args.grow_vocab,
            "old_topics": sorted(old_topics), "train_a_old": len(a),
            "train_b_all": len(b), "test_old": len(old_test), "test_new": len(new_test),
            "parent_old_topic_accuracy": parent_scores["old_topic_accuracy"], "children": results,
            "seconds": time.perf_counter() - started}


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["case"] == "more-data":
            drift = max(abs(row["sparsity_child"][k] - v) for k, v in row["sparsity_parent"].items())
            lines += [
                "| MR more data | parent (half A) | child (+ half B) |", "|---|---|---|",
                f"| test accuracy ({row['recipe']}) | {100 * row['parent_test_accuracy']:.1f}% | "
                f"{100 * row['child_test_accuracy']:.1f}% |",
                f"| storage | {', '.join(row['storage_parent'])} | {', '.join(row['storage_child'])} |",
                f"| embedding sparsity | {row['sparsity_parent'].get('weights/embedding', 0):.3f} | "
                f"{row['sparsity_child'].get('weights/embedding', 0):.3f} (kernels within {100 * drift:.2f} pt; "
                f"every pruned weight still zero: {'yes' if row['mask_kept'] else 'NO'}) |",
                f"| size | {row['size_parent'] / 1e6:.2f} MB | {row['size_child'] / 1e6:.2f} MB |",
                "",
            ]
            for init, got in (row.get("vocab_inits") or {}).items():
                r2 = "" if got["heldout_r2"] is None else f", held-out R^2 of the map {got['heldout_r2']:.2f}"
                lines.append(f"- --grow-vocab {init}: test accuracy {100 * got['test_accuracy']:.1f}% "
                             f"({got['words_added']} words added{r2})")
            lines.append("")
        else:
            vocab = "--grow-vocab" if row.get("grow_vocab") else "parent's vocabulary"
            lines += [f"| StackOverflow 10 -> 20 topics ({vocab}) | old-topic acc | new-topic acc | all 20 | "
                      "old-topic change | words added |", "|---|---|---|---|---|---|",
                      f"| parent (10 topics, int8) | {100 * row['parent_old_topic_accuracy']:.1f}% | - | - | - | - |"]
            for init, got in row["children"].items():
                change = got["old_topic_accuracy"] - row["parent_old_topic_accuracy"]
                lines.append(f"| child ({init} columns, int8) | {100 * got['old_topic_accuracy']:.1f}% | "
                             f"{100 * got['new_topic_accuracy']:.1f}% | {100 * got['all_topic_accuracy']:.1f}% | "
                             f"{100 * change:+.1f} pt | {got.get('words_added', 0)} |")
            lines.append("")
    return "\n".join(lines).rstrip()


def write_readme(rows: list[dict[str, Any]], meta: str) -> None:
    write_block("retrain", f"{meta}\n\n{table(rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small slices and model, 2 epochs, no README")
    parser.add_argument("--only", choices=("more-data", "new-labels"), help="run one case")
    parser.add_argument("--inits", action="store_true", help="also compare growth initialisations")
    parser.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the config's)")
    parser.add_argument("--recipe", default="prune:0.5,int8", help="the MR parent's compression recipe")
    parser.add_argument("--seed", type=int, default=13, help="seed of the halves")
    parser.add_argument("--no-grow-vocab", dest="grow_vocab", action="store_false",
                        help="new-labels: keep the parent's vocabulary (default: --grow-vocab, min count 2)")
    parser.add_argument("--track", action="store_true", help="also log the runs to MLflow (mlruns/)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args()
    args.overrides = [*QUICK, "data.limit=600"] if args.quick else []
    if args.quick:
        args.epochs = args.epochs or 2
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = OUT / "retrain-work" / f"{'quick-' if args.quick else ''}{stamp}"
    work.mkdir(parents=True)
    if not args.track:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    rows = []
    for case, run in (("more-data", more_data), ("new-labels", new_labels)):
        if args.only in (None, case):
            print(f"== {case}", flush=True)
            rows.append(run(work, args))
            print(json.dumps(rows[-1], indent=1), flush=True)
    results = OUT / ("retrain-quick.json" if args.quick else "retrain.json")
    results.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if args.quick:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.no_readme:
        import tensorflow as tf

        meta = (f"Measured {datetime.now(UTC).strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TensorFlow "
                f"{tf.__version__}, `python benchmarks/retrain_bench.py{' --inits' if args.inits else ''}`; "
                "accuracies on each data set's seeded test split, of the deployed (compressed) versions.")
        write_readme(rows, meta)


if __name__ == "__main__":
    main()
