"""Batch scoring on 2 cores: StackOverflow titles (../shared/data/StackOverflow, repeated to --rows) scored by
``predict --file``, ``score --engine local``, ``score --engine spark`` (local[2]) and ``mlflow.pyfunc.spark_udf``
over the pyfunc that freeze/compress log, each in its own process tree.

The version scored is the one a user would deploy: by default StackOverflow's budget-searched recipe (README's
bench:budget) applied by ``lifecycle compress`` to the frozen parent that ``make bench-calibration`` keeps, made
once into ``--out``; ``--version DIR`` scores another (e.g. that parent's int8 sibling). Figures are kept per version
name and row count in score_bench.json.

For each: wall seconds of the whole command (start-up included), texts/s, and the peak RSS (VmHWM) of each process
of its tree, by role (the CLI or driver, local workers, the JVM, Spark's Python workers); then the rows of every
engine checked equal to ``predict``'s (labels equal, probabilities within 1e-5), matched by the input's ``id``.

    python benchmarks/score_bench.py --rows 1000000            # writes benchmarks/out/score/score_bench.json
    python benchmarks/score_bench.py --rows 200000 --only local,spark \
        --version benchmarks/out/calibration-versions/stackoverflow-word/int8

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

from lifecycle.procstat import memory_status, process_tree  # noqa: E402 (standard library only)

PARENT = REPO / "benchmarks/out/calibration-versions/stackoverflow-word/frozen"
RECIPE = "vocab:coverage=0.95,dim:40,prune:0.7,tune:3,int3"  # StackOverflow's pick in README's bench:budget
BUDGET_NAME = "stackoverflow-budget"
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (its threads included), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(command: list[str], stdout: Path | None = None, trace: list | None = None) -> dict:
    """Run a command; its wall seconds, the peak RSS (MB) of every process of its tree, by role, and the CPU seconds
    of the whole tree (each process's last reading; on a loaded machine a fairer comparison than wall time).
    ``trace``, when given, gets a (seconds since start, pid, role, VmRSS bytes) sample of every process at every
    poll."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    peaks: dict[int, tuple[str, int]] = {}
    cpu: dict[int, float] = {}
    started = time.perf_counter()
    with open(stdout or os.devnull, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE, env=env, text=True)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.25):
                for pid in process_tree(process.pid):
                    cpu[pid] = max(cpu.get(pid, 0.0), _cpu_seconds(pid))
                    status = memory_status(pid)
                    if status["VmHWM"]:
                        # The role is read again each time: spark-submit's bash becomes the JVM by exec.
                        role = _role(pid, process.pid)
                        peaks[pid] = (role, max(status["VmHWM"], peaks.get(pid, ("", 0))[1]))
                        if trace is not None:
                            trace.append((time.perf_counter() - started, pid, role, status["VmRSS"]))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, err = process.communicate()
        done.set()
        watcher.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    by_role: dict[str, list[float]] = {}
    cpu_by_role: dict[str, float] = {}
    for pid, (role, hwm) in peaks.items():
        by_role.setdefault(role, []).append(round(hwm / 1e6, 1))
        cpu_by_role[role] = cpu_by_role.get(role, 0.0) + cpu.get(pid, 0.0)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(sum(cpu.values()), 1),
            "cpu_seconds_by_role": {role: round(v, 1) for role, v in cpu_by_role.items()},
            "peak_rss_mb": {role: sorted(v, reverse=True) for role, v in by_role.items()}}


def read_predict(path: Path) -> tuple[list[str], list[float]]:
    """predict --json's output: one JSON object per line and text, in input order."""
    labels, probabilities = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                item = json.loads(line)
                labels.append(item["label"])
                probabilities.append(item["probability"])
    return labels, probabilities


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


def output_path(out: Path, name: str, engine: str, rows: int) -> Path:
    """Where ``engine``'s rows for ``rows`` texts of version ``name`` go: a .jsonl for predict, else a parquet
    directory. The one place these are named, for the run that writes them and a later one that checks them."""
    target = out / name / f"{engine}-{rows}"
    return target.with_suffix(".jsonl") if engine == "predict" else target


def ensure_version(version: Path | None, out: Path, cli: list[str]) -> Path:
    """``version``, else the budget recipe compressed from :data:`PARENT` into ``out`` (once: reused after)."""
    if version is not None:
        if not (version / "manifest.json").exists():
            raise SystemExit(f"{version} is not a version directory (no manifest.json); pass --version DIR")
        return version
    made = out / "versions" / BUDGET_NAME
    if not (made / "manifest.json").exists():
        if not (PARENT / "manifest.json").exists():
            raise SystemExit(f"{PARENT} is missing: run `make bench-calibration` first, or pass --version DIR")
        print("compressing", PARENT, "with", RECIPE, flush=True)
        subprocess.run([*cli, "compress", str(PARENT), "--recipe", RECIPE, "--output", str(made), "--no-track"],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return made


def describe(version: Path) -> str:
    """One line on a version for the README: set, kind, recipe, vocabulary x width, labels, serving bytes."""
    manifest = json.loads((version / "manifest.json").read_text())
    arch = manifest.get("architecture") or {}
    recipe = "+".join(step["name"] + (":" + ",".join(f"{k}={v}" if k == "coverage" else str(v)
                                                     for k, v in step["params"].items()) if step["params"] else "")
                      for step in manifest.get("recipe", []))
    serving = manifest.get("serving", {})
    return (f"{manifest['config']['name']} {manifest['kind']}" + (f" with `{recipe}`" if recipe else "")
            + f" ({arch.get('vocab_size', '?'):,} x {arch.get('embedding_dim', '?')}, {len(manifest['labels'])} labels,"
              f" {serving.get('file', 'model.tflite')} {serving.get('bytes', 0) / 1e3:,.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--version", type=Path, default=None,
                        help=f"version directory to score (default: {RECIPE} compressed from {PARENT.name})")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/score")
    parser.add_argument("--only", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--readme", action="store_true", help="write the figures of --rows into README.md")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite README.md from score_bench.json")
    parser.add_argument("--check-only", action="store_true",
                        help="run nothing: check the outputs earlier runs left for --rows (and --version) equal")
    parser.add_argument("--udf-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.udf_worker:
        udf_worker(*args.udf_worker)
        return
    results_path = args.out / "score_bench.json"
    if args.readme_only:
        write_readme(results_path)
        return
    engines = [] if args.check_only else args.only.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engine {', '.join(sorted(unknown))}; use {', '.join(ENGINES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    cli = [python, "-m", "lifecycle", "-q"]
    version_path = ensure_version(args.version, args.out, cli)
    if "spark" in engines:  # a stale archive (another JDK, other flags) would add its start-up to every Spark row
        from lifecycle.scoring_spark import ensure_class_archive

        archive, built = ensure_class_archive()
        print("JVM class archive", "built" if built else "present", archive, flush=True)
    table, lines = prepare(args.out, args.rows)
    version, name = str(version_path), version_path.name
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    entry = results.setdefault(name, {"runs": {}})
    entry["about"] = describe(version_path)
    entry["path"] = os.path.relpath(version_path, REPO)
    runs = entry["runs"].setdefault(str(args.rows), {})
    outputs = {}
    for engine in engines:
        target = output_path(args.out, name, engine, args.rows)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        outputs[engine] = target
        if engine == "predict":
            measured = run_measured([*cli, "predict", version, "--file", str(lines), "--json"], target)
        elif engine in ("local", "spark"):
            measured = run_measured([*cli, "score", version, "--input", str(table), "--output", str(target),
                                     "--engine", engine, "--master", "local[2]"])
        else:
            uri = log_model(version_path, args.out / name)
            measured = run_measured([python, __file__, "--udf-worker", version, str(table), str(target), uri])
        measured["texts_per_s"] = round(args.rows / measured["seconds"], 1)
        measured["load_average"] = os.getloadavg()[0]
        measured["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        runs[engine] = measured
        print(engine, json.dumps(measured), flush=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    for engine in ENGINES:  # rows an earlier invocation wrote for the same version and count are checked too
        earlier = output_path(args.out, name, engine, args.rows)
        if engine in runs and engine not in outputs and earlier.exists():
            outputs[engine] = earlier
    check_equal(outputs, args.rows, runs)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.readme:
        write_readme(results_path)


NAMES = {"predict": "`predict --file --json`", "local": "`score --engine local`",
         "spark": "`score --engine spark` (local[2])", "spark_udf": "`mlflow.pyfunc.spark_udf` (local[2])"}


def write_readme(results_path: Path) -> None:
    """The ``bench:score`` block of README.md: per version (the budget one first) a table per row count measured,
    largest first, from score_bench.json."""
    import datetime
    import platform

    from benchmarks.readme import cpu_model, write_block

    everything = json.loads(results_path.read_text())
    names = sorted(everything, key=lambda n: (n != BUDGET_NAME, n))
    lines = [f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} cores shared with "
             f"other work: the load average at the end of each row is given), Python {platform.python_version()}."]
    for name in names:
        entry = everything[name]
        for size in sorted(entry["runs"], key=int, reverse=True):
            runs = entry["runs"][size]
            flag = "" if name == BUDGET_NAME else f" --version {entry['path']}"
            lines += ["", f"`python benchmarks/score_bench.py --rows {size} --only {','.join(runs)}{flag}`: "
                      f"{int(size):,} titles, version `{entry['path']}`: {entry['about']}", "",
                      "| engine | seconds | texts/s | CPU s | load avg | peak RSS MB per process | rows checked |",
                      "|---|---|---|---|---|---|---|"]
            for engine, run in runs.items():
                memory = "; ".join(f"{role} {', '.join(f'{v:.0f}' for v in values)}"
                                   for role, values in run["peak_rss_mb"].items() if max(values) >= 5)
                check = run.get("check", {})
                equal = (f"{check['labels_equal']:,}/{check['rows']:,} labels equal to {check['against']}'s, max "
                         f"probability diff {check['max_abs_probability_diff']:.1e}" if check else "not checked")
                cpu = f"{run['cpu_seconds']:,.0f}" if "cpu_seconds" in run else "-"
                lines.append(f"| {NAMES.get(engine, engine)} | {run['seconds']:.1f} | {run['texts_per_s']:,.0f} | "
                             f"{cpu} | {run['load_average']:.1f} | {memory} | {equal} |")
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
