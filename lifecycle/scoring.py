"""Batch scoring: csv, jsonl or parquet texts in, parquet rows out (``lifecycle score``), on the local engine.

The local engine streams: the parent process reads the input in chunks with pyarrow, hands each chunk to one of a
pool of worker processes, and appends the scored chunks to one parquet file as row groups, in input order; at most
two chunks per worker are in flight, so memory stays flat whatever the input's length. Each worker loads the
version's LiteRT serving form (``Predictor(runtime="litert")``: no TensorFlow import) once. The Spark engine
(:mod:`lifecycle.scoring_spark`) shares the reading checks and :func:`score_texts`, so both write the same rows.

Output directory: ``part-*.parquet`` (columns :data:`OUTPUT_COLUMNS`) and ``score.json`` (what scored what). It is
built in a temp directory beside the target and renamed at the end: a failure leaves no partial output.

A text's id is the input's ``id`` column (as a string) when it has one, else ``<file>:<row>`` (the row counted from
0 in that file; ``<file>`` relative to an input directory). Input rules shared by both engines: csv files have a
header row and one record per line (no newlines inside quoted values; ``""`` escapes a quote), jsonl is one object
per line, all text is UTF-8; an empty or missing text scores as the empty string.

No TensorFlow or mlflow import here (the workers import this module).
"""

from __future__ import annotations

import codecs
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import housekeeping
from lifecycle.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
ENGINES = ("local", "spark")
ID_COLUMN = "id"
OUTPUT_COLUMNS = ("id", "label", "probability", "top_labels", "top_probabilities", "abstained", "version")
SUMMARY_FILE = "score.json"
# Rows per chunk handed to a worker (and per parquet row group): big enough that pickling and the interpreter call
# are amortised, small enough that 2 x workers chunks in flight stay a few MB.
CHUNK_ROWS = 8192
# Modules an engine's workers must never import; each worker reports which of them it found loaded.
HEAVY_MODULES = ("tensorflow", "mlflow")


@dataclass(frozen=True)
class InputFile:
    """One input file: its path, format and the name its rows' default ids carry."""

    path: Path
    format: str
    name: str


@dataclass(frozen=True)
class ScoreOptions:
    """What to score and how (the ``lifecycle score`` options)."""

    text_column: str = "text"
    top_k: int = 1
    engine: str = "local"
    workers: int | None = None
    master: str | None = None  # None: spark-submit's master when run under it, else local[2]
    chunk_rows: int = CHUNK_ROWS


@dataclass(frozen=True)
class ScoreResult:
    """A finished scoring: the output directory, rows written, seconds, and what the workers had imported."""

    output: Path
    rows: int
    seconds: float
    engine: str
    version: str
    files: int
    workers: int
    worker_heavy_modules: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def texts_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- Input --------------------------------------------------------------------------------------------------------


def list_inputs(path: Path) -> list[InputFile]:
    """The files an ``--input`` stands for: the file itself, or a directory's csv/jsonl/parquet files (recursively,
    sorted by path, hidden files and Spark's ``_SUCCESS``-style markers skipped)."""
    path = path.expanduser()
    if not path.exists():
        raise DataError(f"--input {path}: no such file or directory. Pass a .csv, .jsonl or .parquet file or a "
                        "directory of them.")
    if path.is_file():
        return [InputFile(path.resolve(), _format_of(path), path.name)]
    found = [
        InputFile(p.resolve(), FORMATS[p.suffix.lower()], p.relative_to(path).as_posix())
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.suffix.lower() in FORMATS
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    ]
    if not found:
        raise DataError(f"--input {path}: the directory holds no .csv, .jsonl or .parquet file. Put the texts to "
                        "score there or pass a file.")
    return found


def _format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"--input {path}: unknown file type {path.suffix!r}. Pass a .csv, .jsonl or .parquet "
                        "file.") from None


def input_bytes(files: Sequence[InputFile]) -> int:
    return sum(f.path.stat().st_size for f in files)


def columns_of(item: InputFile) -> list[str]:
    """The column names of an input file, read from its header (csv), first object (jsonl) or schema (parquet)."""
    import pyarrow as pa

    try:
        if item.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(item.path).schema_arrow.names)
        if item.format == "csv":
            with open(item.path, "rb") as handle:
                header = handle.readline().removeprefix(codecs.BOM_UTF8)  # pyarrow's reader skips it too
            import pyarrow.csv as pcsv

            # The header alone parsed as csv: quoted names, commas in them.
            table = pcsv.read_csv(pa.py_buffer(header), read_options=pcsv.ReadOptions(autogenerate_column_names=True))
            return [str(table.column(i)[0]) for i in range(table.num_columns)] if table.num_rows else []
        with open(item.path, "rb") as handle:
            line = handle.readline()
        first = json.loads(line) if line.strip() else {}
        return list(first) if isinstance(first, dict) else []
    except UnicodeDecodeError:
        raise _not_utf8(item) from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        from lifecycle.errors import first_line

        raise DataError(f"{item.path}: cannot be read as {item.format} ({first_line(exc)}). Check the file.") from None


def check_columns(files: Sequence[InputFile], text_column: str) -> bool:
    """Check that every file has the text column; returns whether they all have an ``id`` column (else ids are
    ``<file>:<row>`` for all of them, so one input never mixes the two)."""
    with_id = True
    for item in files:
        names = columns_of(item)
        if text_column not in names:
            shown = ", ".join(names[:12]) or "none"
            raise DataError(f"{item.path}: no column {text_column!r} (columns: {shown}). Pass the column holding "
                            "the texts with --text-column NAME.")
        with_id = with_id and ID_COLUMN in names
    return with_id


def find_bad_utf8(path: Path) -> tuple[int, int] | None:
    """The (1-based line, byte offset) of the first byte sequence that is not UTF-8 in a file, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return line + block.count(b"\n", 0, exc.start), offset + exc.start
            line += block.count(b"\n")
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line, offset
    return None


def check_utf8(files: Sequence[InputFile]) -> None:
    """Refuse a csv/jsonl file holding bytes that are not UTF-8 (parquet strings are UTF-8 by definition)."""
    for item in files:
        if item.format != "parquet" and find_bad_utf8(item.path) is not None:
            raise _not_utf8(item)


def _not_utf8(item: InputFile) -> DataError:
    where = find_bad_utf8(item.path)
    at = f" at line {where[0]} (byte {where[1]})" if where else ""
    return DataError(f"{item.path}: bytes that are not UTF-8{at}. Convert the file to UTF-8 (e.g. `iconv -f "
                     "latin1 -t utf-8`) or remove the line.")


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive input rows: their ids and texts, and the input bytes read so far in their file."""

    ids: list[str]
    texts: list[str]
    file_bytes_read: int


class _CountingReader:
    """A binary file that counts the bytes read through it (progress of a streaming reader)."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 (closed by the reader's owner)
        self.read_bytes = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.read_bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.handle.close()
        self.closed = True


def iter_chunks(item: InputFile, text_column: str, with_id: bool, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Stream one file's rows as chunks of at most ``chunk_rows`` (pyarrow's streaming csv/json readers, parquet
    record batches): memory holds a block or a row group at a time, never the file."""
    import pyarrow as pa

    columns = [text_column] + ([ID_COLUMN] if with_id else [])
    row = 0
    counter: _CountingReader | None = None
    try:
        if item.format == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(item.path)
            total = max(1, parquet.metadata.num_rows)
            size = item.path.stat().st_size
            batches: Iterator[Any] = parquet.iter_batches(batch_size=chunk_rows, columns=columns)
        else:
            counter = _CountingReader(item.path)
            types = {name: pa.string() for name in columns}
            if item.format == "csv":
                import pyarrow.csv as pcsv

                batches = iter(pcsv.open_csv(
                    counter, read_options=pcsv.ReadOptions(block_size=1 << 20),
                    convert_options=pcsv.ConvertOptions(column_types=types, include_columns=columns,
                                                        strings_can_be_null=False)))
            else:
                import pyarrow.json as pjson

                batches = iter(pjson.open_json(
                    counter, read_options=pjson.ReadOptions(block_size=1 << 20),
                    parse_options=pjson.ParseOptions(explicit_schema=pa.schema(list(types.items())),
                                                     unexpected_field_behavior="ignore")))
        for batch in batches:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                texts = [t if t is not None else "" for t in part.column(text_column).to_pylist()]
                if with_id:
                    ids = [str(i) for i in part.column(ID_COLUMN).to_pylist()]
                else:
                    ids = [f"{item.name}:{row + i}" for i in range(len(texts))]
                row += len(texts)
                done = counter.read_bytes if counter is not None else int(size * row / total)
                yield Chunk(ids, texts, done)
    except pa.ArrowInvalid as exc:
        if item.format != "parquet" and find_bad_utf8(item.path) is not None:
            raise _not_utf8(item) from None
        from lifecycle.errors import first_line

        raise DataError(f"{item.path}: cannot be read as {item.format} near row {row} ({first_line(exc)}). Fix "
                        "the file (csv: a header row, one record per line; jsonl: one object per line).") from None
    finally:
        if counter is not None:
            counter.close()


# --- Scoring ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """Scored rows as columns: label, probability, top-k labels and probabilities, abstained."""

    labels: list[str]
    probabilities: np.ndarray
    top_labels: list[list[str]]
    top_probabilities: np.ndarray
    abstained: np.ndarray


def score_texts(predictor: Any, texts: Sequence[str], top_k: int) -> Scored:
    """Score texts with a loaded Predictor, as ``predict`` does (calibrated probabilities, the version's abstain
    threshold): the one function both engines call, so their rows agree."""
    from lifecycle.calibration import UNKNOWN, abstains

    proba = predictor.predict_proba(list(texts))
    k = max(1, min(top_k, proba.shape[1]))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(proba, order, axis=1).astype(np.float32)
    refused = np.asarray(abstains(proba, predictor.abstain_threshold), dtype=bool)
    names = predictor.labels
    top_labels = [[names[i] for i in row] for row in order.tolist()]
    labels = [UNKNOWN if no else row[0] for row, no in zip(top_labels, refused.tolist(), strict=True)]
    return Scored(labels, top_p[:, 0].copy(), top_labels, top_p, refused)


def heavy_modules() -> tuple[str, ...]:
    """Which of :data:`HEAVY_MODULES` this process has imported."""
    return tuple(name for name in HEAVY_MODULES if name in sys.modules)


def output_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("label", pa.string()), ("probability", pa.float32()),
        ("top_labels", pa.list_(pa.string())), ("top_probabilities", pa.list_(pa.float32())),
        ("abstained", pa.bool_()), ("version", pa.string()),
    ])


def scored_table(ids: list[str], scored: Scored, version: str) -> Any:
    """One chunk's output rows as an arrow table of :func:`output_schema`."""
    import pyarrow as pa

    n, k = scored.top_probabilities.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    top_labels = pa.ListArray.from_arrays(offsets, pa.array([x for row in scored.top_labels for x in row],
                                                           pa.string()))
    top_p = pa.ListArray.from_arrays(offsets, pa.array(scored.top_probabilities.reshape(-1), pa.float32()))
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(scored.labels, pa.string()),
         pa.array(scored.probabilities, pa.float32()), top_labels, top_p, pa.array(scored.abstained),
         pa.array([version] * n, pa.string()).dictionary_encode().cast(pa.string())],
        schema=output_schema(),
    )


# --- The output directory -----------------------------------------------------------------------------------------


def check_score_output(output: Path) -> Path:
    """Refuse an --output that exists (scores are never written over)."""
    output = output.expanduser().resolve()
    if output.exists():
        raise ConfigError(f"--output {output} already exists. Choose a new directory or remove the old one.")
    return output


def write_output(output: Path, fill: Callable[[Path], ScoreResult]) -> ScoreResult:
    """Build the output in a temp directory beside it (``fill`` writes the parts and returns the result), write
    ``score.json``, then rename it into place; on any failure the temp directory goes and nothing is left."""
    from lifecycle.artifacts import journal_root

    output = check_score_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    journal = journal_root()
    tmp = housekeeping.make_temp_dir(f"score-{output.name}", output.parent, journal)
    try:
        result = fill(tmp)
        summary = {
            "version": result.version, "engine": result.engine, "rows": result.rows, "files": result.files,
            "workers": result.workers, "seconds": round(result.seconds, 3),
            "worker_heavy_modules": list(result.worker_heavy_modules), "columns": list(OUTPUT_COLUMNS),
            **result.facts,
        }
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if output.exists():
            raise ConfigError(f"--output {output} appeared while scoring. Choose a new directory.")
        os.rename(tmp, output)
    except BaseException:
        housekeeping.release_temp_dir(tmp, journal)
        raise
    housekeeping.release_temp_dir(tmp, journal)  # only the journal link is left to drop
    return ScoreResult(**{**result.__dict__, "output": output})


# --- The local engine ---------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(version_path: str) -> None:
    """Pool initializer: load the version's serving form once per worker (one interpreter thread: the pool is the
    parallelism)."""
    from lifecycle.artifacts import load_version
    from lifecycle.inference import Predictor

    _WORKER["predictor"] = Predictor(load_version(Path(version_path), verify=False), runtime="litert", threads=1)


def _score_chunk(texts: list[str], top_k: int) -> tuple[Scored, tuple[str, ...]]:
    return score_texts(_WORKER["predictor"], texts, top_k), heavy_modules()


ProgressFn = Callable[[int, int, int | None], None]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def score_local(version: Any, label: str, files: Sequence[InputFile], tmp: Path, options: ScoreOptions,
                on_progress: ProgressFn | None = None) -> ScoreResult:
    """Score ``files`` into ``tmp/part-00000.parquet`` over a pool of worker processes (see the module docstring).

    ``on_progress(rows, bytes, total)``: after every chunk written, the rows so far, the input bytes read so far and
    the input's size.
    """
    import pyarrow.parquet as pq

    from lifecycle.inference import Predictor

    Predictor._pick_runtime(version, "litert")  # a version without a serving form fails here, before any worker
    with_id = check_columns(files, options.text_column)
    workers = options.workers or default_workers()
    started = time.perf_counter()
    rows, heavy, done_before, total = 0, set[str](), 0, input_bytes(files)
    # spawn, not fork: a worker starts from a clean interpreter, whatever the parent has imported.
    context = multiprocessing.get_context("spawn")
    writer = pq.ParquetWriter(tmp / "part-00000.parquet", output_schema(), compression="zstd")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(str(version.path),)) as pool:
            pending: deque[tuple[Chunk, Any]] = deque()

            def drain(keep: int) -> None:
                nonlocal rows
                while len(pending) > keep:
                    chunk, future = pending.popleft()
                    scored, loaded = future.result()
                    heavy.update(loaded)
                    writer.write_table(scored_table(chunk.ids, scored, label))
                    rows += len(chunk.ids)
                    if on_progress is not None:
                        on_progress(rows, done_before + chunk.file_bytes_read, total)

            for item in files:
                for chunk in iter_chunks(item, options.text_column, with_id, options.chunk_rows):
                    pending.append((chunk, pool.submit(_score_chunk, chunk.texts, options.top_k)))
                    drain(2 * workers)
                drain(0)
                done_before += item.path.stat().st_size
    except BrokenProcessPool as exc:
        raise DataError(f"a scoring worker died ({exc}); the output was not written. Check memory (fewer "
                        "--workers) and retry.") from None
    finally:
        writer.close()
    if rows == 0:
        raise DataError(f"--input: {', '.join(str(f.path) for f in files[:3])} holds no rows to score.")
    return ScoreResult(tmp, rows, time.perf_counter() - started, "local", label, len(files), workers,
                       tuple(sorted(heavy)))
