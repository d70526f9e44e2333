"""The tokenizer experiments of the README: `lifecycle experiment tokenizers` on MR, TREC and StackOverflow, one
table per data set with the Pareto front, and the word-vs-BPE size comparison at comparable accuracy.

    .venv/bin/python benchmarks/tokenizer_grid.py [--dataset trec ...] [--workers 2] [--readme]

Cells already finished (by the same command or by `lifecycle experiment tokenizers`) are reused, so the tables can be
rendered again without training anything; a grid that was interrupted resumes. Needs the published data sets
(../shared/data or $LIFECYCLE_DATA_DIR).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme import cpu_model, write_block  # noqa: E402

DATASETS = ("mr", "trec", "stackoverflow")
COMPARABLE_POINTS = 1.0  # a BPE cell "matches" a word cell when its accuracy is at most this many points lower


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| cell | vocab | unk % (test) | texts with unk % | tokens/text | truncated % | encode texts/s | "
            "tokenizer train s | embedding MB (f32) | deployed MB (int8) | test acc % | macro-F1 % | train s | "
            "Pareto |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["status"] == "FAILED":
            lines.append(f"| {r['cell']} | failed: {r['error']} |" + " |" * 12)
            continue
        lines.append(
            f"| {r['cell']} | {r['vocab_size']:.0f} | {100 * r['test_unk_rate']:.2f} | "
            f"{100 * r['test_unk_text_rate']:.1f} | {r['mean_tokens']:.1f} | {100 * r['truncation_rate']:.1f} | "
            f"{r['encode_texts_per_s']:,.0f} | {r['tokenizer_train_seconds']:.1f} | {_mb(r['embedding_bytes'])} | "
            f"{_mb(r.get('deployed_bytes'))} | {100 * r['test_accuracy']:.1f} | {100 * r['test_macro_f1']:.1f} | "
            f"{r['train_seconds']:.0f} | {'**yes**' if r['pareto'] else ''} |")
    return "\n".join(lines)


def _versus(word: dict[str, Any], bpes: list[dict[str, Any]]) -> str:
    close = [r for r in bpes if r["test_accuracy"] >= word["test_accuracy"] - COMPARABLE_POINTS / 100]
    if not close:
        best = max(bpes, key=lambda r: r["test_accuracy"])
        return (f"no BPE cell comes within {COMPARABLE_POINTS:g} point of {word['cell']} "
                f"({100 * word['test_accuracy']:.1f}%, {_mb(word['deployed_bytes'])} MB); the best, {best['cell']}, "
                f"scores {100 * best['test_accuracy']:.1f}% in {_mb(best['deployed_bytes'])} MB")
    bpe = min(close, key=lambda r: r["deployed_bytes"])
    return (f"{word['cell']} {100 * word['test_accuracy']:.1f}% in {_mb(word['deployed_bytes'])} MB deployed "
            f"({_mb(word['embedding_bytes'])} MB float32 embedding) against {bpe['cell']} "
            f"{100 * bpe['test_accuracy']:.1f}% in {_mb(bpe['deployed_bytes'])} MB ({_mb(bpe['embedding_bytes'])} MB): "
            f"**{word['deployed_bytes'] / bpe['deployed_bytes']:.2f}x** deployed, "
            f"{word['embedding_bytes'] / bpe['embedding_bytes']:.2f}x embedding")


def word_vs_bpe(rows: list[dict[str, Any]]) -> str:
    """At the same embedding width: the full word vocabulary (min_count 1, the field report's set-up) and the most
    accurate word cell, each against the smallest BPE cell within COMPARABLE_POINTS of it."""
    done = [r for r in rows if r["status"] != "FAILED" and r.get("deployed_bytes")]
    parts = []
    for dim in sorted({r["dim"] for r in done}, reverse=True):
        words = [r for r in done if r["kind"] == "word" and r["dim"] == dim]
        bpes = [r for r in done if r["kind"] == "bpe" and r["dim"] == dim]
        if not words or not bpes:
            continue
        full = next((r for r in words if r["min_count"] == "1" and r["vocab_size_requested"] == "-"), None)
        best = max(words, key=lambda r: r["test_accuracy"])
        found = [f"full vocabulary: {_versus(full, bpes)}"] if full else []
        if best is not full:
            found.append(f"most accurate word cell: {_versus(best, bpes)}")
        parts.append(f"Word vs BPE at {dim}-d and comparable accuracy (within {COMPARABLE_POINTS:g} point) — "
                     + "; ".join(found) + ".")
    return " ".join(parts) or "Word vs BPE: not enough finished cells."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", choices=DATASETS, help="default: all three")
    parser.add_argument("--workers", type=int, default=None, help="cells at once (default: the grid file's)")
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md")
    parser.add_argument("--no-run", action="store_true", help="tables of the finished cells only; train nothing")
    args = parser.parse_args()

    from lifecycle.workflows.experiment import collect_experiment, run_experiment

    parts = [f"Measured {datetime.now(UTC):%Y-%m-%d} on {cpu_model()} ({_cores()} cores), "
             "`python benchmarks/tokenizer_grid.py` over `configs/experiments/<set>-tokenizers.yaml`: each cell "
             "trained (Kim's CNN, 300-d unless the cell says d100, early stopping on validation loss), frozen and "
             "int8-compressed; two cells at a time with one TensorFlow thread each, so `train s` is per cell on a "
             "shared machine. "
             "Deployed = int8 graph.pb + tokenizer; unk % = unk ids over all ids of the test split (the OOV rate)."]
    for name in args.dataset or DATASETS:
        path = ROOT / "configs" / "experiments" / f"{name}-tokenizers.yaml"
        if args.no_run:
            rows, pareto = collect_experiment(path)
            where = f"MLflow experiment `{name}-tokenizers`; finished cells only"
        else:
            outcome = run_experiment(path, workers=args.workers)
            rows, pareto = outcome.rows, outcome.pareto
            where = f"MLflow experiment `{outcome.name}`, parent run `{outcome.run_id}`"
        front = ", ".join(rows[i]["cell"] for i in pareto)
        parts.append(f"**{name}** ({where})\n\n{table(rows)}\n\nPareto front (deployed size vs test accuracy): "
                     f"{front}. {word_vs_bpe(rows)}")
        print(parts[-1], flush=True)
    if args.readme:
        write_block("experiments", "\n\n".join(parts))


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
