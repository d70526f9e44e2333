"""Batch scoring on 2 cores: StackOverflow titles (../shared/data/StackOverflow, repeated to --rows) scored by
``predict --file``, ``score --engine local``, ``score --engine spark`` (local[2]) and ``mlflow.pyfunc.spark_udf``
over the pyfunc that freeze/compress log, each in its own process tree.

For each: wall seconds of the whole command (start-up included), texts/s, and the peak RSS (VmHWM) of each process
of its tree, by role (the CLI or driver, local workers, the JVM, Spark's Python workers); then the rows of every
engine checked equal to ``predict``'s (labels equal, probabilities within 1e-5), matched by the input's ``id``.

    python benchmarks/score_bench.py --rows 1000000            # writes benchmarks/out/score/score_bench.json
    python benchmarks/score_bench.py --rows 200000 --only local,spark

Needs pyspark (``pip install '.[spark]'``) and java for the Spark rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lifecycle.procstat import memory_status  # noqa: E402 (standard library only)

DEFAULT_VERSION = REPO / "benchmarks/out/calibration-versions/stackoverflow-word/int8"
TITLES = REPO.parent / "shared/data/StackOverflow/title_StackOverflow.txt"
ENGINES = ("predict", "local", "spark", "spark_udf")


def prepare(out: Path, rows: int) -> tuple[Path, Path]:
    """input.csv (id, text) and input.txt (one text per line) of ``rows`` titles, the 20,000 repeated."""
    titles = [t for t in TITLES.read_text(encoding="utf-8").split("\n") if t.strip()]
    table, lines = out / f"input-{rows}.csv", out / f"input-{rows}.txt"
    if not table.exists():
        with open(table, "w", newline="", encoding="utf-8") as handle, open(lines, "w", encoding="utf-8") as plain:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            for i in range(rows):
                text = titles[i % len(titles)]
                writer.writerow([i, text])
                plain.write(text + "\n")
    return table, lines


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _role(pid: int, root: int) -> str:
    """What a process of the tree is, from its executable and command line."""
    if pid == root:
        return "driver"
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if exe == "java":
        return "jvm"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "multiprocessing" in command:
        return "local worker"
    if "pyspark" in command or "daemon" in command:
        return "spark python worker"
    return exe


def run_measured(command: list[str], stdout: Path | None = None) -> dict:
    """Run a command; its wall seconds and the peak RSS (MB) of every process of its tree, by role."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    peaks: dict[int, tuple[str, int]] = {}
    started = time.perf_counter()
    with open(stdout or os.devnull, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE, env=env, text=True)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.25):
                for pid in _tree(process.pid):
                    hwm = memory_status(pid)["VmHWM"]
                    if hwm:
                        # The role is read again each time: spark-submit's bash becomes the JVM by exec.
                        peaks[pid] = (_role(pid, process.pid), max(hwm, peaks.get(pid, ("", 0))[1]))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, err = process.communicate()
        done.set()
        watcher.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    by_role: dict[str, list[float]] = {}
    for role, hwm in peaks.values():
        by_role.setdefault(role, []).append(round(hwm / 1e6, 1))
    return {"seconds": round(seconds, 2), "peak_rss_mb": {role: sorted(v, reverse=True) for role, v in by_role.items()}}


def read_predict(path: Path) -> tuple[list[str], list[float]]:
    """predict --json's output: one (pretty-printed) JSON object per text, in input order."""
    decoder, text, labels, probabilities, at = json.JSONDecoder(), path.read_text(encoding="utf-8"), [], [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return labels, probabilities
        item, at = decoder.raw_decode(text, at)
        labels.append(item["label"])
        probabilities.append(item["probability"])


def read_parquet_dir(path: Path) -> tuple[list[str], list[float]]:
    """A parquet output's labels and probabilities ordered by the integer id."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(path.glob("part-*.parquet")), columns=["id", "label", "probability"])
    table = table.append_column("n", pc.cast(table["id"], "int64")).sort_by("n")
    return table["label"].to_pylist(), table["probability"].to_pylist()


def udf_worker(version: str, table: str, output: str, uri: str) -> None:
    """The spark_udf row, in its own process: mlflow's pyfunc UDF over the logged model, in local[2]."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import mlflow
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.files.maxPartitionBytes", str(16 << 20))
             .config("spark.sql.files.openCostInBytes", str(1 << 20)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    frame = spark.read.option("header", "true").option("escape", '"').csv(table)
    udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local", result_type="label string, probability double")
    (frame.select("id", udf("text").alias("p")).select("id", "p.label", "p.probability")
     .write.parquet(output))
    spark.stop()


def log_model(version: Path, out: Path) -> str:
    """The pyfunc freeze/compress log (lifecycle.tracking.log_pyfunc), logged into a store of its own."""
    from lifecycle.tracking import log_pyfunc

    return log_pyfunc(version, tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--version", type=Path, default=DEFAULT_VERSION)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/score")
    parser.add_argument("--only", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--readme", action="store_true", help="write the figures of --rows into README.md")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite README.md from score_bench.json")
    parser.add_argument("--udf-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.udf_worker:
        udf_worker(*args.udf_worker)
        return
    if args.readme_only:
        write_readme(args.out / "score_bench.json", args.rows)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    table, lines = prepare(args.out, args.rows)
    python, version = sys.executable, str(args.version)
    cli = [python, "-m", "lifecycle", "-q"]
    results_path = args.out / "score_bench.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    runs = results.setdefault(str(args.rows), {})
    outputs = {}
    for engine in args.only.split(","):
        target = args.out / f"{engine}-{args.rows}"
        shutil.rmtree(target, ignore_errors=True)
        if engine == "predict":
            outputs[engine] = target.with_suffix(".jsonl")
            measured = run_measured([*cli, "predict", version, "--file", str(lines), "--json"], outputs[engine])
        elif engine in ("local", "spark"):
            outputs[engine] = target
            measured = run_measured([*cli, "score", version, "--input", str(table), "--output", str(target),
                                     "--engine", engine, "--master", "local[2]"])
        elif engine == "spark_udf":
            uri = log_model(args.version, args.out)
            outputs[engine] = target
            measured = run_measured([python, __file__, "--udf-worker", version, str(table), str(target), uri])
        else:
            raise SystemExit(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
        measured["texts_per_s"] = round(args.rows / measured["seconds"], 1)
        measured["load_average"] = os.getloadavg()[0]
        runs[engine] = measured
        print(engine, json.dumps(measured), flush=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    for engine in ENGINES:  # rows an earlier invocation wrote for the same count are checked too
        earlier = args.out / (f"{engine}-{args.rows}.jsonl" if engine == "predict" else f"{engine}-{args.rows}")
        if engine in runs and engine not in outputs and earlier.exists():
            outputs[engine] = earlier
    check_equal(outputs, args.rows, runs)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.readme:
        write_readme(results_path, args.rows)


NAMES = {"predict": "`predict --file --json`", "local": "`score --engine local`",
         "spark": "`score --engine spark` (local[2])", "spark_udf": "`mlflow.pyfunc.spark_udf` (local[2])"}


def write_readme(results_path: Path, rows: int) -> None:
    """The ``bench:score`` block of README.md: a table per size measured (``rows`` first), from score_bench.json."""
    import datetime
    import platform

    from benchmarks.readme import cpu_model, write_block

    everything = json.loads(results_path.read_text())
    sizes = [str(rows)] + sorted((k for k in everything if k != str(rows)), key=int, reverse=True)
    lines = [f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} cores shared with "
             f"other work: the load average at the end of each row is given), Python {platform.python_version()}; "
             "the StackOverflow word int8 version (10,423 x 300, 20 labels)."]
    for size in sizes:
        runs = everything[size]
        lines += ["", f"`python benchmarks/score_bench.py --rows {size} --only {','.join(runs)}`: {int(size):,} titles",
                  "", "| engine | seconds | texts/s | load avg | peak RSS MB per process | rows checked |",
                  "|---|---|---|---|---|---|"]
        for engine, run in runs.items():
            memory = "; ".join(f"{role} {', '.join(f'{v:.0f}' for v in values)}"
                               for role, values in run["peak_rss_mb"].items() if max(values) >= 5)
            check = run.get("check", {})
            equal = (f"{check['labels_equal']:,}/{check['rows']:,} labels equal to {check['against']}'s, max "
                     f"probability diff {check['max_abs_probability_diff']:.1e}" if check else "not checked")
            lines.append(f"| {NAMES.get(engine, engine)} | {run['seconds']:.1f} | {run['texts_per_s']:,.0f} | "
                         f"{run['load_average']:.1f} | {memory} | {equal} |")
    write_block("score", "\n".join(lines))


def check_equal(outputs: dict[str, Path], rows: int, runs: dict) -> None:
    """Every engine's rows against predict's (else the first engine's): counts, labels, probabilities."""
    import numpy as np

    read = {e: read_predict(p) if e == "predict" else read_parquet_dir(p) for e, p in outputs.items()}
    if not read:
        return
    reference = "predict" if "predict" in read else next(iter(read))
    labels, probabilities = read[reference]
    for engine, (other_labels, other_probabilities) in read.items():
        same = sum(a == b for a, b in zip(labels, other_labels, strict=False))
        diff = float(np.max(np.abs(np.asarray(probabilities) - np.asarray(other_probabilities)))) \
            if len(other_probabilities) == len(probabilities) else float("nan")
        runs[engine]["check"] = {"against": reference, "rows": len(other_labels), "labels_equal": same,
                                 "max_abs_probability_diff": diff}
        print(engine, "rows", len(other_labels), "of", rows, "labels equal", same, "max |dp|", diff, flush=True)


if __name__ == "__main__":
    main()
