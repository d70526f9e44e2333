"""The Spark engine of ``lifecycle score``: the version's serving form and tokenizer shipped to the executors with
``SparkContext.addFile``, texts scored with ``DataFrame.mapInArrow`` by :func:`lifecycle.scoring.score_texts` into
the local engine's own arrow rows (:func:`lifecycle.scoring.scored_table`).

Executors load the version with ``Predictor(runtime="litert")`` (once per Python worker, which Spark reuses) and
import neither TensorFlow nor mlflow: every batch reports the heavy modules its process holds through an
accumulator, and ``score.json`` records them (a test asserts the list is empty). The lifecycle and tokenization
packages travel to the executors as a zip (``addPyFile``); their third-party imports (numpy, pandas, pyarrow,
ai-edge-litert, the tokenizer's library) must be installed on the cluster's Python.

Row ids without an ``id`` column are ``<file>:<row>`` as the local engine writes them: a first, JVM-only pass counts
each (file, partition)'s rows, which (Spark keeps a file's splits in offset order) turns
``monotonically_increasing_id`` into the row number within the file.

pyspark is imported only inside these functions: ``pip install 'lifecycle[spark]'``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lifecycle.errors import ConfigError, DataError, DependencyError, first_line
from lifecycle.scoring import (
    ID_COLUMN,
    InputFile,
    ProgressFn,
    ScoreOptions,
    ScoreResult,
    check_columns,
    check_utf8,
    input_bytes,
    output_schema,
)

log = logging.getLogger(__name__)

SPARK_OUTPUT_SCHEMA = ("id string, label string, probability float, top_labels array<string>, "
                       "top_probabilities array<float>, abstained boolean, version string")
# A TCP probe of a spark:// master before the JVM starts: Spark itself retries an absent master for a minute.
PROBE_TIMEOUT_S = 5.0
# JVM flags of a local[N] session this module starts (driver and executor are one JVM there). On 2 cores the JVM's
# start-up is mostly C2 compiler and parallel-GC threads competing with the Python workers; the JVM's share of the
# work (reading csv, arrow batches, writing parquet) is small next to the model's, so the quick C1 compiler and the
# serial collector start it faster and cost no throughput. A cluster's executors keep the cluster's settings.
LOCAL_JAVA_OPTIONS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
# An AppCDS archive of the classes a scoring session loads (`make install-spark` writes it with
# build_class_archive): mapped at start instead of read from Spark's jars and verified, it cuts the JVM's fixed cost.
# Missing, it is not asked for; stale (another JDK or Spark jars) the JVM finds it does not match and runs without it
# (-Xshare:auto, the default). -Xlog:cds=off keeps that case's warnings off the user's terminal.
CLASS_ARCHIVE_OPTIONS = "-Xlog:cds=off -Xlog:cds+dynamic=off"
# Largest input split one task reads; the split is then cut so the task count is a multiple of the cores.
MAX_SPLIT_BYTES = 16 << 20


def _pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise DependencyError("the Spark engine needs pyspark, which is not installed.",
                              "pip install 'lifecycle[spark]' (or pyspark), or use --engine local.") from None
    return pyspark


def check_master(master: str) -> None:
    """Refuse a ``spark://host:port`` master nothing listens on, in a few seconds and one line."""
    if not master.startswith("spark://"):
        if not (master.startswith(("local", "yarn", "k8s://", "mesos://"))):
            raise ConfigError(f"--master {master}: not a Spark master URL. Use local[N], spark://HOST:PORT, yarn "
                              "or k8s://...")
        return
    for address in master[len("spark://"):].split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
                return
        except (OSError, ValueError) as exc:
            reason = first_line(exc)
    raise ConfigError(f"--master {master}: no Spark master answers there ({reason}). Start it "
                      "(`$SPARK_HOME/sbin/start-master.sh`), fix the URL, or use --master local[2].")


DEFAULT_MASTER = "local[2]"


def under_spark_submit() -> bool:
    """Whether this process is a driver spark-submit started (it hands the Python driver its JVM gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def class_archive_path() -> Path:
    """Where the class archive of this pyspark (its version and where its jars are), java and
    :data:`LOCAL_JAVA_OPTIONS` lives (a user cache dir): the name changes with any of them, so an upgrade or another
    virtualenv finds no archive rather than a stale one."""
    pyspark = _pyspark()
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else Path(shutil.which("java") or "java")
    java = java.resolve() if java.exists() else java
    stamp = java.stat().st_mtime_ns if java.exists() else 0
    jars = Path(pyspark.__file__).resolve().parent / "jars"  # the archive holds the class path: another venv's jars
    key = hashlib.sha256(f"{pyspark.__version__}|{jars}|{java}|{stamp}|{LOCAL_JAVA_OPTIONS}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lifecycle" / f"spark-classes-{key}.jsa"


def local_java_options() -> str:
    """The driver JVM's flags in local[N]: ``LIFECYCLE_SPARK_JAVA_OPTIONS`` when set, else
    :data:`LOCAL_JAVA_OPTIONS` plus the class archive when one has been built."""
    override = os.environ.get("LIFECYCLE_SPARK_JAVA_OPTIONS")
    if override is not None:
        return override
    archive = class_archive_path()
    if not archive.is_file():
        return LOCAL_JAVA_OPTIONS
    return f'{LOCAL_JAVA_OPTIONS} "-XX:SharedArchiveFile={archive}" {CLASS_ARCHIVE_OPTIONS}'


def spark_session(master: str | None, app_name: str = "lifecycle-score",
                  java_options: str | None = None) -> tuple[Any, bool]:
    """A SparkSession on ``master`` and whether this call started it (and so must stop it).

    An active session in this process (a test's fixture, a notebook's) is reused as it is. ``master`` None: the one
    spark-submit was given, when run under it, else :data:`DEFAULT_MASTER`. ``java_options``: the driver JVM's flags
    in local[N] (default :func:`local_java_options`).
    """
    _pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName(app_name)
    if master is not None or not under_spark_submit():
        master = master or DEFAULT_MASTER
        check_master(master)
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        # Local executors run this Python (with lifecycle's dependencies) unless the user chose another; a
        # cluster's nodes use their own PYSPARK_PYTHON / spark.pyspark.python.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.driver.extraJavaOptions",
                                 java_options if java_options is not None else local_java_options())
    try:
        session = (builder
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   .getOrCreate())
    except Exception as exc:
        raise ConfigError(f"--master {master}: Spark did not start ({first_line(exc)}). Check that java is "
                          "installed (`make install-spark`) and the master URL.") from None
    session.sparkContext.setLogLevel("ERROR")
    return session, True


class _SetUnion:
    """The accumulator of the heavy modules executors found imported: sets of names merged by union (pyspark's
    AccumulatorParam interface, which needs no base class)."""

    def zero(self, value: frozenset[str]) -> frozenset[str]:
        return frozenset()

    def addInPlace(self, first: frozenset[str], second: frozenset[str]) -> frozenset[str]:  # noqa: N802 (Spark's)
        return frozenset(first) | frozenset(second)


_EXECUTOR: dict[str, Any] = {}


def _executor_predictor(version_name: str) -> Any:
    """The version shipped with addFile, loaded once per Python worker."""
    predictor = _EXECUTOR.get(version_name)
    if predictor is None:
        from pyspark import SparkFiles

        from lifecycle.artifacts import load_version
        from lifecycle.inference import Predictor

        predictor = Predictor(load_version(Path(SparkFiles.get(version_name)), verify=False), runtime="litert",
                              threads=1)
        _EXECUTOR[version_name] = predictor
    return predictor


def make_scorer(version_name: str, label: str, top_k: int, names: dict[str, str],
                offsets: dict[tuple[str, int], tuple[int, int]] | None, heavy: Any, batches_seen: Any) -> Any:
    """The mapInArrow function: arrow batches of (text, id | file + mono id) in, the local engine's output rows
    (:func:`lifecycle.scoring.scored_table`) out, with no pandas in between."""

    def score_batches(batches: Iterator[Any]) -> Iterator[Any]:
        from lifecycle.scoring import heavy_modules, score_texts, scored_table

        predictor = _executor_predictor(version_name)
        for batch in batches:
            texts = [t if t is not None else "" for t in batch.column("text").to_pylist()]
            scored = score_texts(predictor, texts, top_k)
            if offsets is None:
                ids = [str(i) for i in batch.column(ID_COLUMN).to_pylist()]
            else:
                ids = []
                for file, value in zip(batch.column("_file").to_pylist(), batch.column("_mono").to_pylist(),
                                       strict=True):
                    start, first = offsets[(file, value >> 33)]
                    ids.append(f"{names[_uri_path(file)]}:{start + value - first}")
            heavy.add(frozenset(heavy_modules()))
            batches_seen.add(1)
            yield from scored_table(ids, scored, label).to_batches()

    return score_batches


def package_zip(target: Path) -> Path:
    """lifecycle/ and tokenization/ (their .py files) zipped for ``addPyFile``."""
    root = Path(__file__).resolve().parent.parent
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in ("lifecycle", "tokenization"):
            for path in sorted((root / package).rglob("*.py")):
                archive.write(path, path.relative_to(root).as_posix())
    return target


def _read(spark: Any, files: Sequence[InputFile], columns: list[str]) -> Any:
    """The inputs as one DataFrame of ``columns`` plus the source file's URI, per format, then unioned."""
    from pyspark.sql import functions as F  # noqa: N812 (Spark's own idiom)

    frames = []
    for fmt in ("csv", "jsonl", "parquet"):
        paths = [str(f.path) for f in files if f.format == fmt]
        if not paths:
            continue
        if fmt == "csv":
            # RFC 4180 quoting as pyarrow reads it: "" inside quotes is a quote; one record per line.
            reader = (spark.read.option("header", "true").option("escape", '"').option("multiLine", "false")
                      .option("mode", "FAILFAST").option("encoding", "UTF-8"))
            frame = reader.csv(paths)
        elif fmt == "jsonl":
            frame = spark.read.option("mode", "FAILFAST").json(paths)
        else:
            frame = spark.read.parquet(*paths)
        frames.append(frame.select(*[F.col(c).cast("string").alias(c) for c in columns],
                                   F.input_file_name().alias("_file")))
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame


def _row_offsets(frame: Any) -> dict[tuple[str, int], tuple[int, int]]:
    """(file URI, partition) -> (rows of that file in earlier partitions, the partition's first mono id there)."""
    from pyspark.sql import functions as F  # noqa: N812

    counts = (frame.groupBy("_file", F.shiftright("_mono", 33).alias("_part"))
              .agg(F.min("_mono").alias("first"), F.count(F.lit(1)).alias("n")).collect())
    offsets: dict[tuple[str, int], tuple[int, int]] = {}
    running: dict[str, int] = {}
    for row in sorted(counts, key=lambda r: (r["_file"], r["_part"])):
        start = running.get(row["_file"], 0)
        offsets[(row["_file"], int(row["_part"]))] = (start, int(row["first"]))
        running[row["_file"]] = start + int(row["n"])
    return offsets


def _watch_progress(spark: Any, on_progress: ProgressFn, stop: threading.Event) -> None:
    """Report finished tasks of the running stages every half second (the Spark engine's progress: tasks)."""
    tracker = spark.sparkContext.statusTracker()
    done_stages: dict[int, int] = {}
    while not stop.wait(0.5):
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                done_stages[stage_id] = info.numCompletedTasks
        completed = sum(done_stages.values())
        on_progress(completed, 0, None)


def score_spark(version: Any, label: str, files: Sequence[InputFile], tmp: Path, options: ScoreOptions,
                on_progress: ProgressFn | None = None) -> ScoreResult:
    """Score ``files`` on Spark into ``tmp/part-*.parquet`` (see the module docstring)."""
    from lifecycle.inference import Predictor

    Predictor._pick_runtime(version, "litert")
    with_id = check_columns(files, options.text_column)
    check_utf8(files)  # Spark would read undecodable bytes as U+FFFD and score them silently
    started = time.perf_counter()  # the session's start counts, as the local engine's worker start does
    spark, started_here = spark_session(options.master)
    if started_here:
        # A session passed in keeps its own split sizes.
        split = split_bytes(input_bytes(files), spark.sparkContext.defaultParallelism)
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(split))
        spark.conf.set("spark.sql.files.openCostInBytes", str(min(split, 1 << 20)))
    stop = threading.Event()
    watcher = None
    token = secrets.token_hex(4)
    ship = tmp / ".ship"
    ship.mkdir()
    try:
        from pyspark.sql import functions as F  # noqa: N812

        context = spark.sparkContext
        # Shipped under names of their own: a session reused for a second call refuses a file name already
        # registered with another path (two versions both named int8, say).
        shipped = ship / f"lifecycle-version-{token}"
        shutil.copytree(version.path, shipped)
        context.addFile(str(shipped), recursive=True)
        context.addPyFile(str(package_zip(ship / f"lifecycle-packages-{token}.zip")))
        columns = [options.text_column] + ([ID_COLUMN] if with_id else [])
        frame = _read(spark, files, columns).withColumnRenamed(options.text_column, "text")
        offsets = None
        if not with_id:
            frame = frame.withColumn("_mono", F.monotonically_increasing_id())
            offsets = _row_offsets(frame)
        names = {str(f.path): f.name for f in files}
        heavy = context.accumulator(frozenset(), _SetUnion())
        batches_seen = context.accumulator(0)
        scorer = make_scorer(shipped.name, label, options.top_k, names, offsets, heavy, batches_seen)
        if on_progress is not None:
            watcher = threading.Thread(target=_watch_progress, args=(spark, on_progress, stop), daemon=True)
            watcher.start()
        with warnings.catch_warnings():
            # mapInArrow hands no pandas frames around, but pyspark 4.x builds it on pandas_udf, whose version
            # check warns "PySpark does not yet fully support pandas >= 3.0.0" (FutureWarning) all the same.
            warnings.simplefilter("ignore", FutureWarning)
            frame.mapInArrow(scorer, SPARK_OUTPUT_SCHEMA).write.parquet(str(tmp / "spark"), compression="zstd")
        rows = _move_parts(tmp / "spark", tmp)
        seconds = time.perf_counter() - started
        workers = context.defaultParallelism
        master = context.master
    except Exception as exc:
        if isinstance(exc, DataError | ConfigError | DependencyError):
            raise
        raise DataError(f"Spark failed scoring {', '.join(str(f.path) for f in files[:3])} "
                        f"({first_line(_java_message(exc))}). Check the input files and the Spark "
                        "master.") from None
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        shutil.rmtree(ship, ignore_errors=True)
        if started_here:
            spark.stop()
    return ScoreResult(tmp, rows, seconds, "spark", label, len(files), workers, tuple(sorted(heavy.value)),
                       {"master": master, "executor_batches": batches_seen.value})


def build_class_archive(target: Path | None = None) -> Path:
    """Write the class archive :func:`local_java_options` uses (default :func:`class_archive_path`): a local[2]
    session runs a small job down the Spark engine's path (csv read, row counts, mapInArrow, zstd parquet) with
    ``-XX:ArchiveClassesAtExit``, and its JVM is then made to exit, which writes the archive. It is written under a
    temporary name and renamed, so a scoring run never maps a half-written file.

    Raises:
        DependencyError: the JVM exited without writing the archive (e.g. a JDK older than 13).
    """
    import pyarrow as pa
    from pyspark import SparkContext

    target = target or class_archive_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lifecycle-cds-"))
    try:
        source = work / "warm-up.csv"
        source.write_text("text\n" + "".join(f"warm-up text {i}\n" for i in range(2000)), encoding="utf-8")
        options = f"{LOCAL_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={partial} {CLASS_ARCHIVE_OPTIONS}"
        spark, _ = spark_session(DEFAULT_MASTER, "lifecycle-class-archive", java_options=options)
        from pyspark.sql import functions as F  # noqa: N812

        files = [InputFile(source, "csv", source.name)]
        frame = _read(spark, files, ["text"]).withColumn("_mono", F.monotonically_increasing_id())
        _row_offsets(frame)

        schema = output_schema()

        def fake_scores(batches: Iterator[Any]) -> Iterator[Any]:
            for batch in batches:
                n = batch.num_rows
                yield pa.RecordBatch.from_pydict(
                    {"id": [str(i) for i in range(n)], "label": ["a"] * n, "probability": [0.5] * n,
                     "top_labels": [["a"]] * n, "top_probabilities": [[0.5]] * n, "abstained": [False] * n,
                     "version": ["v"] * n}, schema=schema)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            frame.mapInArrow(fake_scores, SPARK_OUTPUT_SCHEMA).write.parquet(str(work / "out"), compression="zstd")
        spark.stop()
        gateway = SparkContext._gateway
        process = getattr(gateway, "proc", None)
        if gateway is not None:
            gateway.shutdown()
            SparkContext._gateway = None
            SparkContext._jvm = None
        if process is not None:
            process.stdin.close()  # the JVM exits when its stdin closes, and writes the archive as it exits
            process.wait(timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise DependencyError("java wrote no class archive (-XX:ArchiveClassesAtExit needs JDK 13 or newer).",
                              "Scoring works without it, only its start-up is slower.")
    partial.replace(target)
    return target


def ensure_class_archive() -> tuple[Path, bool]:
    """The class archive of this pyspark, java and flags, built when it is missing (and whether this call built it).

    Its name changes with any of them, so an archive built at install time goes unused after a JDK upgrade or a
    change of flags, and every session starts without it (about 8 s slower, measured on 2 cores); ``make
    install-spark`` and the scoring benchmark call this so that such a change costs one rebuild instead.

    Raises:
        DependencyError: as :func:`build_class_archive`.
    """
    target = class_archive_path()
    if target.is_file() and target.stat().st_size > 0:
        return target, False
    return build_class_archive(target), True


def split_bytes(total: int, cores: int) -> int:
    """The input split size that cuts ``total`` bytes into a multiple of ``cores`` tasks of at most
    :data:`MAX_SPLIT_BYTES`: every core busy to the end. (Spark's defaults, 128 MB splits, give a 45 MB file one
    task; 16 MB splits alone give it 3 tasks on 2 cores, one of them running alone at the end.)"""
    cores = max(1, cores)
    tasks = cores * max(1, -(-total // (cores * MAX_SPLIT_BYTES)))
    return max(64 << 10, -(-total // tasks))


def _uri_path(uri: str) -> str:
    """The local path of a file URI as Spark's input_file_name() spells it (``file:/p`` or ``file:///p``)."""
    return unquote(urlparse(uri).path)


def _move_parts(spark_dir: Path, target: Path) -> int:
    """Move Spark's part files up into the output directory; returns the rows they hold (parquet footers)."""
    import pyarrow.parquet as pq

    rows = 0
    for number, part in enumerate(sorted(spark_dir.glob("part-*.parquet"))):
        rows += pq.ParquetFile(part).metadata.num_rows
        part.rename(target / f"part-{number:05d}.parquet")
    for leftover in spark_dir.iterdir():
        leftover.unlink()
    spark_dir.rmdir()
    if rows == 0:
        raise DataError("--input holds no rows to score.")
    return rows


def _java_message(exc: BaseException) -> BaseException:
    """The innermost cause of a Py4J/Spark error, whose first line says what went wrong."""
    text = str(exc)
    for marker in ("Caused by: ", "SparkException: "):
        if marker in text:
            return RuntimeError(text.rsplit(marker, 1)[1])
    return exc
