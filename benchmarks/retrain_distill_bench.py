"""Retrain of a distilled version with its teacher against --no-teacher, on TREC (one seed).

TREC's training split is cut in two seeded stratified halves; a student is distilled on half A (configs/trec-word.yaml
with a frozen-encoder teacher unless --set says otherwise, no augmentation, a fresh teacher cache) and frozen; the
frozen version is retrained on half B twice: with the recorded teacher (its soft targets plus the labels) and with
--no-teacher (labels alone). Reported: the teacher's seconds and the texts it ran on (new) or read from the cache,
and the test accuracy on TREC's official test split (TREC_10, less the few texts also in a half) of the parent and
of both retrained checkpoints. One seed: a difference under a point or two is within seed noise on TREC.

    .venv/bin/python benchmarks/retrain_distill_bench.py --set train.epochs=15 --epochs 10      # ~5 min, 2 cores
    .venv/bin/python benchmarks/retrain_distill_bench.py --set teacher.fine_tune_epochs=1 --name retrain-distill-ft1
    .venv/bin/python benchmarks/retrain_distill_bench.py --quick    # smoke run: small model, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrain_bench import _data_yaml, _halves, _write_csv  # noqa: E402  (benchmarks/, beside this script)

# benchmarks/tokenizers.py would shadow the Hugging Face `tokenizers` package that the teacher imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from lifecycle.config import load_config  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
QUICK = ["model.embedding_dim=32", "model.filters=16", "train.epochs=2", "train.patience=2"]


def run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lifecycle import artifacts
    from lifecycle.corpus import load_corpus
    from lifecycle.workflows import RetrainOptions, run_freeze, run_retrain, run_train

    overrides = [*(QUICK if args.quick else []), "tracking.enabled=false", "teacher.enabled=true",
                 "teacher.fine_tune_epochs=0", "teacher.augment=0", f"teacher.cache_dir={work / 'teacher-cache'}",
                 f"train.seed={args.seed}", "name=retrain-distill-bench-trec", *args.set]
    base = load_config(ROOT / "configs" / "trec-word.yaml", overrides)
    corpus = load_corpus(base.data, base.name)
    a, b = _halves(list(corpus.train.labels), args.seed)
    texts, labels = list(corpus.train.texts), list(corpus.train.labels)
    test = _write_csv(work / "trec-test.csv", list(corpus.test.texts), list(corpus.test.labels))
    half_a = _write_csv(work / "trec-half-a.csv", [texts[i] for i in a], [labels[i] for i in a])
    half_b = _write_csv(work / "trec-half-b.csv", [texts[i] for i in b], [labels[i] for i in b])
    new_yaml = _data_yaml(work / "trec-half-b.yaml", "trec-half-b", half_b, test, base)
    cfg = load_config(ROOT / "configs" / "trec-word.yaml", overrides,
                      {"data.format": "csv", "data.path": str(half_a), "data.test_path": str(test)})
    started = time.perf_counter()
    trained = run_train(cfg, work / "a-checkpoint", resume=False)
    frozen = run_freeze(str(trained.version), work / "a-frozen", track=False)
    trained_teacher = dict(artifacts.load_version(trained.version).manifest.teacher or {})
    row: dict[str, Any] = {"data": "TREC", "seed": args.seed, "train_a": len(a), "train_b": len(b),
                           "test": len(corpus.test), "parent_test_accuracy": frozen.metrics["test_accuracy"],
                           "teacher_record": {k: trained_teacher[k] for k in ("head", "test_accuracy",
                                                                              "validation_accuracy", "seconds")},
                           "overrides": args.set,
                           "parent_seconds": round(time.perf_counter() - started, 1)}
    for name, teacher in (("teacher", True), ("no_teacher", False)):
        started = time.perf_counter()
        outcomes = run_retrain(str(frozen.version), new_yaml, RetrainOptions(epochs=args.epochs, teacher=teacher),
                               work / f"b-{name}", track=False)
        metrics = outcomes[0].metrics
        row[name] = {"test_accuracy": metrics["test_accuracy"], "new_test_accuracy": metrics["new_test_accuracy"],
                     "epochs_run": outcomes[0].facts["epochs_run"], "train_seconds": round(metrics["train_seconds"], 1),
                     "seconds": round(time.perf_counter() - started, 1),
                     **{k: metrics[k] for k in ("teacher_texts_new", "teacher_texts_reused", "teacher_seconds")
                        if k in metrics}}
        print(name, row[name], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=13, help="seed of the halves and of training")
    parser.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the parent's schedule)")
    parser.add_argument("--quick", action="store_true", help="small model, 2 epochs (a smoke run)")
    parser.add_argument("--set", action="append", default=[], help="a config override (section.key=value), "
                        "applied last (e.g. teacher.fine_tune_epochs=1 for a fine-tuned teacher)")
    parser.add_argument("--name", default="retrain-distill", help="names the work folder and the JSON under "
                        "benchmarks/out/")
    args = parser.parse_args()
    work = OUT / f"{args.name}-work"
    shutil.rmtree(work, ignore_errors=True)  # a fresh teacher cache: the teacher's seconds are honest
    work.mkdir(parents=True)
    row = run(work, args)
    row["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    (OUT / f"{args.name}.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
