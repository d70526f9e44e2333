"""The local engine's memory against the input's length: ``lifecycle score --engine local`` over csv files of
1,000,000 and 10,000,000 short texts (the first four words of StackOverflow titles, cycled, generated on the fly),
the resident memory of the command's parent and of each worker sampled every quarter second.

For each length: wall seconds, texts/s, each process's peak RSS (VmHWM), and its RSS (VmRSS) at 10%, 50% and 90% of
the run. Flat means the peaks do not grow with the length and the late samples are not above the early ones.

    python benchmarks/score_memory.py                       # writes benchmarks/out/score/score_memory.json
    python benchmarks/score_memory.py --lines 1000000,10000000 --readme

The version is a tiny one (the embedded default corpus, 16-d random embeddings, 8 filters, 16 tokens, 2 epochs;
trained and frozen into --out once) unless --version: what is measured is the engine's streaming, not the model.
Inputs and outputs are deleted after each run (the 10M csv is 335 MB); only the figures are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.score_bench import TITLES, describe, run_measured  # noqa: E402

AT = (0.1, 0.5, 0.9)
WORDS = 4
TINY = ["model.embedding_dim=16", "model.embedding_init=rand", "model.filters=8", "tokenizer.max_len=16",
        "tokenizer.word.word2vec.enabled=false", "train.epochs=2"]


def tiny_version(out: Path, cli: list[str]) -> Path:
    """A tiny frozen version of configs/default.yaml (:data:`TINY` overrides), made once under ``out``."""
    frozen = out / "versions" / "tiny-frozen"
    if not (frozen / "manifest.json").exists():
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        trained = out / "versions" / "tiny"
        shutil.rmtree(trained, ignore_errors=True)
        sets = [arg for item in TINY for arg in ("--set", item)]
        subprocess.run([*cli, "train", str(REPO / "configs/default.yaml"), *sets, "--no-track", "--output",
                        str(trained)], check=True, env=env)
        subprocess.run([*cli, "freeze", str(trained), "--no-track", "--output", str(frozen)], check=True, env=env)
    return frozen


def write_input(path: Path, lines: int) -> int:
    """A csv (id, text) of ``lines`` short texts (titles' first :data:`WORDS` words) cycled; its bytes."""
    titles = [" ".join(t.split()[:WORDS]) for t in TITLES.read_text(encoding="utf-8").split("\n") if t.strip()]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for i in range(lines):
            writer.writerow([i, titles[i % len(titles)]])
    return path.stat().st_size


def rss_at(trace: list[tuple[float, int, str, int]], seconds: float) -> dict[str, list[float]]:
    """Per role, each process's RSS (MB) in the sample nearest each fraction :data:`AT` of the run."""
    by_pid: dict[int, tuple[str, list[tuple[float, int]]]] = {}
    for at, pid, role, rss in trace:
        by_pid.setdefault(pid, (role, []))[1].append((at, rss))
    found: dict[str, list[list[float]]] = {}
    for role, samples in by_pid.values():
        if max(rss for _, rss in samples) < 5e6:
            continue
        found.setdefault(role, []).append(
            [round(min(samples, key=lambda s, f=f: abs(s[0] - f * seconds))[1] / 1e6, 1) for f in AT])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="1000000,10000000", help="comma-separated input lengths")
    parser.add_argument("--version", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/score")
    parser.add_argument("--readme", action="store_true", help="write README.md's bench:score-memory block")
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args()
    results_path = args.out / "score_memory.json"
    if not args.readme_only:
        cli = [sys.executable, "-m", "lifecycle", "-q"]
        version = args.version or tiny_version(args.out, cli)
        work = args.out / "memory"
        work.mkdir(parents=True, exist_ok=True)
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results["about"] = describe(version)
        for lines in (int(n) for n in args.lines.split(",")):
            source, target = work / f"input-{lines}.csv", work / f"scored-{lines}"
            shutil.rmtree(target, ignore_errors=True)
            size = write_input(source, lines)
            trace: list[tuple[float, int, str, int]] = []
            measured = run_measured([*cli, "score", str(version), "--input", str(source), "--output", str(target),
                                     "--engine", "local"], trace=trace)
            import pyarrow.parquet as pq

            rows = sum(pq.ParquetFile(part).metadata.num_rows for part in target.glob("part-*.parquet"))
            if rows != lines:
                raise SystemExit(f"{target}: {rows:,} rows written for {lines:,} lines")
            measured.update({"input_mb": round(size / 1e6, 1), "rows": rows,
                             "texts_per_s": round(lines / measured["seconds"], 1),
                             "rss_mb_at": rss_at(trace, measured["seconds"]), "load_average": os.getloadavg()[0],
                             "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
            results.setdefault("runs", {})[str(lines)] = measured
            print(lines, json.dumps(measured), flush=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            source.unlink()
            shutil.rmtree(target)
    if args.readme or args.readme_only:
        write_readme(results_path)


def write_readme(results_path: Path) -> None:
    import datetime

    from benchmarks.readme import cpu_model, write_block

    results = json.loads(results_path.read_text())
    runs = results["runs"]
    lines = [f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} cores shared with "
             f"other work), `python benchmarks/score_memory.py --lines {','.join(runs)}`; {results['about']}, "
             "`score --engine local` with its default workers (one per core).", "",
             "| lines | input MB | seconds | texts/s | load avg | peak RSS MB per process | RSS MB at 10% / 50% / 90% "
             "of the run |", "|---|---|---|---|---|---|---|"]
    for count, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
        peaks = "; ".join(f"{role} {', '.join(f'{v:.0f}' for v in values)}"
                          for role, values in run["peak_rss_mb"].items() if max(values) >= 5)
        at = "; ".join(f"{role} " + ", ".join(" / ".join(f"{v:.0f}" for v in one) for one in values)
                       for role, values in run["rss_mb_at"].items())
        lines.append(f"| {int(count):,} | {run['input_mb']:,.0f} | {run['seconds']:.0f} | {run['texts_per_s']:,.0f} "
                     f"| {run['load_average']:.1f} | {peaks} | {at} |")
    write_block("score-memory", "\n".join(lines))


if __name__ == "__main__":
    main()
