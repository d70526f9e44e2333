"""Training benchmark: each tokenizer on MR, TREC, Banking77 and StackOverflow, plus MR under each precision policy.

Runs `lifecycle.workflows.run_train` on the shipped configs (real data from ../shared/data or $LIFECYCLE_DATA_DIR),
writes every row to benchmarks/out/train.json and the table into README.md between the `bench:train` markers.

    .venv/bin/python benchmarks/train_bench.py                 # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/train_bench.py --only trec-word,trec-bpe --no-readme
    .venv/bin/python benchmarks/train_bench.py --only trec-word --seeds 13 --no-readme   # one seed first

Every data set row uses the schema's training defaults (configs set only data, max_len and the tokenizer), so the
table shows whether one schedule converges on all of them: each run's peak epoch and why it stopped are listed.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme import bench_parser, cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

from lifecycle.artifacts import load_version  # noqa: E402
from lifecycle.config import load_config  # noqa: E402
from lifecycle.manifest import plain  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
KIM_RAND = {"mr": 76.1, "trec": 91.2}
# Published baselines of the sets Kim did not use (see each set's SOURCE.md): StackOverflow's TF-IDF + SVM (Xu et al.
# 2017), Banking77's BERT-fixed full-data accuracy (Casanueva et al. 2020, Table 3; their best, BERT-tuned, is 93.7).
BASELINES = {"stackoverflow": ("TF-IDF+SVM", 81.55), "csv:Banking77": ("BERT-fixed", 87.19)}
SEEDS3 = (13, 1, 2)
# The opt-in BPE settings against TREC's gap to words (README, Training): one id per distinct training word, the word
# tokenizer's pattern before BPE, an end-of-word mark, and ids the training split never encodes to read as unk.
WORDS_BPE = ["tokenizer.bpe.vocab_size=words", "tokenizer.bpe.token_pattern='[\\w'']+|[^\\w\\s]'",
             "tokenizer.bpe.word_end=true", "tokenizer.bpe.drop_unseen=true"]
# Every training word whole (vocab_size: all) with the same pattern, mark and unk rule: the training split encodes as
# the word tokenizer's, and with BPE-dropout the pieces an unseen word is cut into are trained too.
ALL_BPE = ["tokenizer.bpe.vocab_size=all", *WORDS_BPE[1:]]
# (row name, config file, --set overrides, seeds). Test accuracy moves by about a point between seeds on these
# small test sets (TREC: 500 questions), so the rows compared with Kim (2014) average three seeds.
RUNS: list[tuple[str, str, list[str], tuple[int, ...]]] = [
    ("mr-word", "mr-word.yaml", [], SEEDS3),
    ("mr-word2vec", "mr-word2vec.yaml", [], SEEDS3),
    ("mr-bpe", "mr-bpe.yaml", [], SEEDS3),
    ("mr-bpe/words-end-unseen", "mr-bpe.yaml", WORDS_BPE, (13,)),
    ("trec-word", "trec-word.yaml", [], SEEDS3),
    ("trec-word2vec", "trec-word2vec.yaml", [], SEEDS3),
    ("trec-bpe", "trec-bpe.yaml", [], SEEDS3),
    ("trec-bpe/words-end-unseen", "trec-bpe.yaml", WORDS_BPE, SEEDS3),
    ("trec-bpe/words-end-unseen-dropout0.1", "trec-bpe.yaml", [*WORDS_BPE, "tokenizer.bpe.dropout=0.1"], SEEDS3),
    ("mr-bpe/words-end-unseen-dropout0.1", "mr-bpe.yaml", [*WORDS_BPE, "tokenizer.bpe.dropout=0.1"], (13,)),
    ("trec-bpe/all-end-unseen-dropout0.1", "trec-bpe.yaml", [*ALL_BPE, "tokenizer.bpe.dropout=0.1"], SEEDS3),
    ("mr-bpe/all-end-unseen-dropout0.1", "mr-bpe.yaml", [*ALL_BPE, "tokenizer.bpe.dropout=0.1"], SEEDS3),
    # Word dropout (train.word_dropout): training tokens read as unk, so the model learns to do without a word.
    ("trec-word/word-dropout0.1", "trec-word.yaml", ["train.word_dropout=0.1"], SEEDS3),
    ("trec-bpe/all-end-unseen-dropout0.1-word-dropout0.1", "trec-bpe.yaml",
     [*ALL_BPE, "tokenizer.bpe.dropout=0.1", "train.word_dropout=0.1"], SEEDS3),
    # BPE-dropout (training split only, re-encoded each epoch), the probability of Provilkov et al. (2020).
    ("trec-bpe/dropout0.1", "trec-bpe.yaml", ["tokenizer.bpe.dropout=0.1"], SEEDS3),
    ("trec-bpe/dropout0.2", "trec-bpe.yaml", ["tokenizer.bpe.dropout=0.2"], SEEDS3),
    ("banking77-word", "banking77-word.yaml", [], SEEDS3),
    ("stackoverflow-word", "stackoverflow-word.yaml", [], SEEDS3),
    ("stackoverflow-bpe", "stackoverflow-bpe.yaml", [], (13,)),
    ("mr-word/bf16", "mr-word.yaml", ["train.precision=mixed_bfloat16"], (13,)),
    # The field report: float16 needed a larger Adam epsilon (and a lower learning rate) to keep accuracy.
    ("mr-word/fp16", "mr-word.yaml", ["train.precision=float16", "train.adam_epsilon=1e-4"], (13,)),
]


def run_one(name: str, config: str, overrides: list[str], seed: int, track: bool, versions: Path) -> dict:
    from lifecycle.workflows import run_train

    cfg = load_config(ROOT / "configs" / config,
                      [*overrides, f"train.seed={seed}", f"tracking.enabled={str(track).lower()}"])
    started = time.perf_counter()
    outcome = run_train(cfg, versions / f"{name.replace('/', '-')}-seed{seed}", versions_dir=versions, resume=False)
    wall = time.perf_counter() - started
    manifest = load_version(outcome.version, verify=False).manifest
    training, sizes = manifest.training, manifest.sizes
    return {
        "name": name,
        "seed": seed,
        "data": cfg.data.format if cfg.data.format != "csv" else f"csv:{Path(cfg.data.path or '').parts[0]}",
        "tokenizer": cfg.tokenizer.kind,
        "embedding_init": cfg.model.embedding_init,
        "precision": cfg.train.precision,
        "test_accuracy": outcome.metrics["test_accuracy"],
        "test_macro_f1": outcome.metrics["test_macro_f1"],
        "train_seconds": outcome.metrics["train_seconds"],
        "wall_seconds": wall,
        "epochs_run": outcome.facts["epochs_run"],
        "best_epoch": training.best_epoch,
        "stop_reason": training.stop_reason or "",
        "patience_epochs": training.patience_epochs,
        "lr_reductions": training.lr_reductions,
        "vocab_size": outcome.facts["vocab_size"],
        "weights_bytes": sizes["weights_bytes"],
        "optimizer_bytes": sizes["optimizer_bytes"],
        "checkpoint_bytes": sizes["checkpoint_bytes"],
        "tokenizer_bytes": sizes["tokenizer_bytes"],
        "split": plain(manifest.data),
        "run_id": outcome.run_id,
    }


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(groups: list[list[dict]]) -> str:
    head = ("| run | tokenizer | embedding | precision | seeds | test acc % | macro-F1 % | Kim rand % | train s/run | "
            "epochs (peak) | stopped on | vocab | weights MB | checkpoint MB (with Adam) | tokenizer KB |")
    lines = [head, "|" + "---|" * 15]
    for rows in groups:
        r = rows[0]
        kim: Any = KIM_RAND.get(r["data"], "") if r["embedding_init"] == "rand" else ""
        if r["data"] in BASELINES:
            kim = "{} {}".format(*BASELINES[r["data"]])
        stops = ", ".join(sorted({x.get("stop_reason") or "?" for x in rows}))
        epochs = ", ".join(f"{x['epochs_run']} ({x['best_epoch'] + 1})" for x in rows)
        lines.append(
            f"| {r['name']} | {r['tokenizer']} | {r['embedding_init']} | {r['precision']} | {len(rows)} | "
            f"{_spread([x['test_accuracy'] for x in rows])} | {_spread([x['test_macro_f1'] for x in rows])} | {kim} | "
            f"{statistics.fmean(x['train_seconds'] for x in rows):.0f} | {epochs} | {stops} | {r['vocab_size']} | "
            f"{r['weights_bytes'] / 1e6:.1f} | {r['checkpoint_bytes'] / 1e6:.1f} | {r['tokenizer_bytes'] / 1e3:.0f} |"
        )
    return "\n".join(lines)


def write_readme(rows: list[list[dict]], meta: str) -> None:
    write_block("train", f"{meta}\n\n{table(rows)}")


def _save_row(results_file: Path, row: str, group: list[dict], partial: bool) -> dict[str, list[dict]]:
    """Merge one row into train.json as it is on disk now (other passes may run beside this one), under a lock,
    written to a temp file and renamed. A partial pass (``--seeds``) adds its seeds to the row's earlier ones."""
    import fcntl

    with open(results_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {g[0]["name"]: g for g in json.loads(results_file.read_text())} if results_file.is_file() else {}
        if partial:
            done = {x["seed"] for x in group}
            group = [x for x in rows.get(row, []) if x["seed"] not in done] + group
        rows[row] = group
        temp = results_file.with_suffix(".json.tmp")
        temp.write_text(json.dumps(list(rows.values()), indent=1))
        temp.replace(results_file)
    return rows


def main() -> None:
    parser = bench_parser(__doc__, "train.json", "comma-separated run names (default: all)")
    parser.add_argument("--seeds", help="comma-separated seeds instead of each row's own (e.g. 13 for a first pass)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="an extra --set override for every run (an ablation), e.g. train.monitor=val_loss")
    parser.add_argument("--tag", default="", help="suffix of the row names of an ablation (kept apart in train.json)")
    parser.add_argument("--track", action="store_true", help="also log the runs to MLflow (mlruns/)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    OUT.mkdir(parents=True, exist_ok=True)
    versions = OUT / f"versions-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    results_file = OUT / "train.json"
    previous: dict[str, list[dict]] = (
        {group[0]["name"]: group for group in json.loads(results_file.read_text())} if results_file.is_file() else {}
    )
    for name, config, overrides, seeds in RUNS:
        if args.readme_only or (wanted and name not in wanted):
            continue
        row = name + args.tag
        group = []
        for seed in (tuple(int(x) for x in args.seeds.split(",")) if args.seeds else seeds):
            print(f"== {row} seed {seed}", flush=True)
            group.append(run_one(row, config, [*overrides, *args.overrides], seed, args.track, versions))
            print(json.dumps(group[-1]), flush=True)
        previous = _save_row(results_file, row, group, partial=bool(args.seeds))
    ordered = [previous[n] for n, *_ in RUNS if n in previous]
    print(table(ordered))
    if not args.no_readme:
        import tensorflow as tf

        stamp = datetime.fromtimestamp(results_file.stat().st_mtime, UTC).strftime("%Y-%m-%d")
        cpu = cpu_model(("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"))
        meta = (f"Measured {stamp} on {cpu} ({os.cpu_count()} cores), TensorFlow {tf.__version__}, "
                "`python benchmarks/train_bench.py`; seeds 13, 1, 2 where three are given (mean ± sample std). "
                "Epochs: run (peak, 1-based); stopped on: plateau of the monitored value or the max_epochs cap.")
        write_readme(ordered, meta)


if __name__ == "__main__":
    main()
