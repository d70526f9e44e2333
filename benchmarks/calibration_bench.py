"""Calibration benchmark: temperature scaling and abstaining on the chatterbot corpus, MR, TREC, Banking77 and
StackOverflow.

Each set is trained once with its shipped config (`lifecycle.workflows.run_train`, seed 13, untracked), which fits
the temperature on the validation split as every `train` does; the checkpoint is then frozen and compressed to int8
(`run_freeze`, `run_compress`), which re-fits the temperature for the int8 probabilities. Reported on the test split
(never used by the fit): ECE (15 equal-width bins of the top probability) and NLL before and after, and for each
abstain threshold the share of texts answered and the accuracy on them, with the calibrated probabilities that
`predict` and `serve` use. Rows go to benchmarks/out/calibration.json and the table into README.md between the
`bench:calibration` markers.

    .venv/bin/python benchmarks/calibration_bench.py                    # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/calibration_bench.py --only trec-word --no-readme
    .venv/bin/python benchmarks/calibration_bench.py --readme-only      # the table again from calibration.json

A set's trained checkpoint is kept under benchmarks/out/calibration-versions/ and reused by the next run (delete
it, or pass --retrain, to train again).
"""

from __future__ import annotations

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

from readme import bench_parser, cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

from lifecycle.config import load_config  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
VERSIONS = OUT / "calibration-versions"
THRESHOLDS = (0.5, 0.7, 0.9)
# (row name, config file): the shipped configs, unchanged.
RUNS = [
    ("chatterbot", "default.yaml"),
    ("mr-word", "mr-word.yaml"),
    ("trec-word", "trec-word.yaml"),
    ("banking77-word", "banking77-word.yaml"),
    ("stackoverflow-word", "stackoverflow-word.yaml"),
]


def trained_checkpoint(name: str, config: str, retrain: bool = False) -> tuple[Path, float | None]:
    """The set's trained checkpoint (trained now unless a finished one is kept) and the seconds training took."""
    from lifecycle.workflows import run_train

    target = VERSIONS / name / "checkpoint"
    if target.is_dir() and not retrain:
        return target, None
    shutil.rmtree(VERSIONS / name, ignore_errors=True)
    cfg = load_config(ROOT / "configs" / config, ["train.seed=13", "tracking.enabled=false"])
    started = time.perf_counter()
    run_train(cfg, target, versions_dir=VERSIONS / name / "work", resume=False)
    return target, time.perf_counter() - started


def int8_sibling(checkpoint: Path) -> Path:
    from lifecycle.workflows import run_compress, run_freeze

    target = checkpoint.parent / "int8"
    if not target.is_dir():
        frozen = checkpoint.parent / "frozen"
        if not frozen.is_dir():
            run_freeze(str(checkpoint), frozen, track=False)
        run_compress(str(frozen), "int8", target, track=False)
    return target


def measure(version_dir: Path) -> dict[str, Any]:
    """Test-split calibration figures of one version, through the Predictor that predict/serve use."""
    from lifecycle import calibration
    from lifecycle.artifacts import load_version
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.inference import Predictor

    version = load_version(version_dir)
    corpus = load_corpus(version.config.data, version.config.name, report=False)
    predictor = Predictor(version)
    arrays = encode_examples(corpus.test, predictor.tokenizer, predictor.labels, predictor.max_len, corpus.source)
    validation = encode_examples(corpus.validation, predictor.tokenizer, predictor.labels, predictor.max_len,
                                 corpus.source)
    raw = predictor.predict_ids(arrays.x, calibrated=False)
    y = arrays.y
    # The entry as today's code fits it (what train and compress run on these same validation probabilities), so a
    # kept checkpoint trained before a change to the fit is measured as a new train would calibrate it.
    entry = calibration.fit_calibration((predictor.predict_ids(validation.x, calibrated=False), validation.y),
                                        (raw, y), fit=version.config.calibration.temperature,
                                        guard=version.config.calibration.guard)
    scaled = calibration.apply_temperature(raw, entry["temperature"])
    guard = entry.get("guard") or {}
    row: dict[str, Any] = {
        "kind": version.kind,
        "runtime": predictor.runtime,
        "labels": len(version.labels),
        "validation_n": entry["validation"]["n"],
        "test_n": int(len(y)),
        "temperature": entry["temperature"],
        "fitted_temperature": entry.get("fitted_temperature", entry["temperature"]),
        "held_out_nll_gain": guard.get("held_out_nll_gain"),
        "held_out_standard_error": guard.get("standard_error"),
        "kept": guard.get("kept"),
        "test_accuracy": float((scaled.argmax(axis=1) == y).mean()),
        "ece_before": calibration.expected_calibration_error(raw, y),
        "ece_after": calibration.expected_calibration_error(scaled, y),
        "nll_before": calibration.negative_log_likelihood(raw, y),
        "nll_after": calibration.negative_log_likelihood(scaled, y),
        "val_ece_before": entry["validation"]["ece_before"],
        "val_ece_after": entry["validation"]["ece_after"],
        "abstain": {},
    }
    for threshold in THRESHOLDS:
        after = calibration.selective(scaled, y, threshold)
        before = calibration.selective(raw, y, threshold)
        row["abstain"][str(threshold)] = {"coverage": after.coverage, "answered_accuracy": after.answered_accuracy,
                                          "raw_coverage": before.coverage,
                                          "raw_answered_accuracy": before.answered_accuracy}
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _gain(row: dict[str, Any]) -> str:
    if row.get("held_out_nll_gain") is None:
        return "-"
    verdict = "kept" if row["kept"] else "not kept"
    return f"{row['held_out_nll_gain']:+.4f} ± {row['held_out_standard_error']:.4f} ({verdict})"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| set | version | labels | val / test | T fitted | held-out NLL gain ± se | T applied | test acc % | "
            "ECE before → after | NLL before → after | "
            + " | ".join(f"≥ {t}: answered acc % (share %)" for t in THRESHOLDS) + " |")
    lines = [head, "|" + "---|" * (10 + len(THRESHOLDS))]
    for r in rows:
        cells = [f"{_pct(a['answered_accuracy'])} ({_pct(a['coverage'])})" for a in
                 (r["abstain"][str(t)] for t in THRESHOLDS)]
        version = "int8 (compress)" if r["kind"] == "compressed" else r["kind"]  # the only recipe run here
        lines.append(f"| {r['name']} | {version} | {r['labels']} | {r['validation_n']:,} / {r['test_n']:,} | "
                     f"{r.get('fitted_temperature', r['temperature']):.2f} | {_gain(r)} | "
                     f"{r['temperature']:.2f} | {_pct(r['test_accuracy'])} | {r['ece_before']:.3f} → "
                     f"{r['ece_after']:.3f} | {r['nll_before']:.3f} → {r['nll_after']:.3f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, "calibration.json")
    parser.add_argument("--retrain", action="store_true", help="train again even where a checkpoint is kept")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "calibration.json"
    previous: dict[str, list[dict]] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name, config in RUNS:
        if args.readme_only or (wanted and name not in wanted):
            continue
        print(f"== {name}", flush=True)
        checkpoint, seconds = trained_checkpoint(name, config, args.retrain)
        rows = []
        for version in (checkpoint, int8_sibling(checkpoint)):
            rows.append({"name": name, "config": config, **measure(version)})
            if seconds is not None and version == checkpoint:
                rows[-1]["train_wall_seconds"] = seconds
            print(json.dumps(rows[-1]), flush=True)
        previous[name] = rows
        results_file.write_text(json.dumps(previous, indent=1))
    ordered = [row for name, _ in RUNS for row in previous.get(name, [])]
    print(table(ordered))
    if not args.no_readme and ordered:
        stamp = datetime.fromtimestamp(results_file.stat().st_mtime, UTC).strftime("%Y-%m-%d")
        meta = (f"Measured {stamp} on {cpu_model()} ({os.cpu_count()} cores), `python benchmarks/calibration_bench.py`:"
                " each set trained once (seed 13) with its shipped config; T fitted on the validation split as "
                "`train` (checkpoint) and again `compress` (int8) fit it, then kept only if, fitted on 4 of 5 folds, "
                "it lowers the held-out fold's NLL by more than 1.645 standard errors (the guard; else T = 1); every "
                "figure on the test split, with the probabilities `predict` and `serve` return. ECE: 15 "
                "equal-width bins of the top probability. "
                "≥ P: texts whose calibrated top probability is at least P are answered, the rest get `unknown`; "
                "accuracy on the answered ones (their share of the test split).")
        write_block("calibration", f"{meta}\n\n{table(ordered)}")


if __name__ == "__main__":
    main()
