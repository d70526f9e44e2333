"""``lifecycle score``: the local streaming engine, its output, and its one-line refusals (Spark: test_score_spark)."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifecycle.cli import app

TEXTS = [
    "a gripping, beautifully acted film",
    "dull and far too long",
    'he said "wow", twice',
    "",
    "the plot, sadly, goes nowhere",
    "ünïcode ok — quotes ' and commas, fine",
]


def _texts(n: int) -> list[str]:
    return [f"{TEXTS[i % len(TEXTS)]} {i}" if TEXTS[i % len(TEXTS)] else "" for i in range(n)]


def write_csv(path: Path, texts: list[str], column: str = "text") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["n", column])
        for i, text in enumerate(texts):
            writer.writerow([i, text])
    return path


def read_rows(output: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(output.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def _score(*args: str) -> object:
    return CliRunner().invoke(app, ["score", *args])


@pytest.fixture(scope="module")
def version(frozen: dict) -> Path:
    return frozen["outcome"].version


def test_local_engine_scores_like_predict_without_tensorflow_in_workers(version: Path, tmp_path: Path) -> None:
    """Rows in input order with ids <file>:<row>, the same labels and probabilities as Predictor, top-k sorted, the
    version column; the workers (spawned, two of them) report no TensorFlow or mlflow import."""
    from lifecycle.artifacts import load_version
    from lifecycle.inference import Predictor
    from lifecycle.scoring import ScoreOptions
    from lifecycle.workflows.scoring import run_score

    texts = _texts(700)
    source = write_csv(tmp_path / "in.csv", texts)
    options = ScoreOptions(top_k=2, workers=2, chunk_rows=128)  # several chunks in flight over two workers
    seen: list[tuple[int, int, int | None]] = []
    result = run_score(str(version), source, tmp_path / "out", options, lambda *a: seen.append(a))
    rows = read_rows(tmp_path / "out")
    assert result.rows == len(rows) == 700 and result.workers == 2
    assert [r["id"] for r in rows] == [f"in.csv:{i}" for i in range(700)]
    expected = Predictor(load_version(version), runtime="litert").predict(texts, top_k=2)
    assert [r["label"] for r in rows] == [p.label for p in expected]
    np.testing.assert_allclose([r["probability"] for r in rows], [p.probability for p in expected], atol=1e-6)
    assert all(r["top_labels"] == [label for label, _ in p.top] for r, p in zip(rows, expected, strict=True))
    assert all(r["top_probabilities"][0] >= r["top_probabilities"][1] for r in rows)
    assert {r["version"] for r in rows} == {str(version)}
    summary = json.loads((tmp_path / "out" / "score.json").read_text())
    assert summary["worker_heavy_modules"] == [] and summary["rows"] == 700
    assert seen and seen[-1][0] == 700 and seen[-1][1] == seen[-1][2] == source.stat().st_size


def test_directory_of_jsonl_and_parquet_keeps_the_id_column(version: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "in"
    (source / "day2").mkdir(parents=True)
    with open(source / "a.jsonl", "w", encoding="utf-8") as handle:
        for i, text in enumerate(_texts(40)):
            handle.write(json.dumps({"id": f"j{i}", "body": text, "extra": i}) + "\n")
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(30)], "body": _texts(30)}), source / "day2" / "b.parquet")
    (source / "_SUCCESS").write_text("")
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "out"), "--text-column",
                    "body", "--workers", "1")
    assert result.exit_code == 0, result.output
    ids = [r["id"] for r in read_rows(tmp_path / "out")]
    assert ids == [f"j{i}" for i in range(40)] + [f"p{i}" for i in range(30)]
    assert "scored 70 texts" in result.output


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".lifecycle-"))


def test_missing_text_column_names_file_column_and_flag(version: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", _texts(10), column="sentence")
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "out"))
    assert result.exit_code == 3
    line = " ".join(result.output.split())
    assert str(source) in line and "no column 'text'" in line and "sentence" in line and "--text-column" in line
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_undecodable_bytes_name_the_line_and_leave_no_output(version: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", _texts(50))
    lines = source.read_bytes().split(b"\n")
    lines[31] = lines[31] + b" caf\xe9"  # latin-1, not UTF-8, on line 32
    source.write_bytes(b"\n".join(lines))
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "out"))
    assert result.exit_code == 3
    line = " ".join(result.output.split())
    assert str(source) in line and "not UTF-8 at line 32" in line and "iconv" in line
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_a_spark_master_that_is_not_there_is_one_line(version: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = write_csv(tmp_path / "in.csv", _texts(10))
    master = f"spark://127.0.0.1:{port}"
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "out"), "--engine", "spark",
                    "--master", master)
    assert result.exit_code == 2
    line = " ".join(result.output.split())
    assert master in line and "no Spark master answers" in line and "--master local[2]" in line
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_existing_output_and_unknown_engine_are_refused(version: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", _texts(5))
    (tmp_path / "out").mkdir()
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2 and "already exists" in result.output
    result = _score(str(version), "--input", str(source), "--output", str(tmp_path / "new"), "--engine", "dask")
    assert result.exit_code == 2 and "--engine 'dask'" in result.output
    result = _score(str(version), "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "new"))
    assert result.exit_code == 3 and "nope.csv" in result.output


_PEAK = """
import sys
from pathlib import Path
from lifecycle.procstat import memory_status
from lifecycle.scoring import ScoreOptions
from lifecycle.workflows.scoring import run_score
run_score(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), ScoreOptions(workers=2))
print(memory_status()["VmHWM"])
"""


@pytest.mark.slow
def test_local_engine_memory_is_flat_in_the_input_length(version: Path, tmp_path: Path) -> None:
    """The parent's peak RSS scoring 300,000 lines is within 25 MB of its peak scoring 10,000: it streams."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    peaks = {}
    for n in (10_000, 300_000):
        source = write_csv(tmp_path / f"in-{n}.csv", _texts(n))
        done = subprocess.run([sys.executable, "-c", _PEAK, str(version), str(source), str(tmp_path / f"out-{n}")],
                              capture_output=True, text=True, env=env, check=True)
        peaks[n] = int(done.stdout.split()[-1])
        assert len(read_rows(tmp_path / f"out-{n}")) == n
    assert peaks[300_000] - peaks[10_000] < 25e6, peaks


def test_spark_splits_are_a_multiple_of_the_cores() -> None:
    from lifecycle.scoring_spark import MAX_SPLIT_BYTES, split_bytes

    for total, cores in [(45 << 20, 2), (3 << 20, 2), (200 << 20, 2), (45 << 20, 8), (1 << 20, 3)]:
        split = split_bytes(total, cores)
        tasks = -(-total // split)  # one file cut at every split bytes, as Spark cuts it
        assert tasks % cores == 0 and split <= MAX_SPLIT_BYTES, (total, cores, split, tasks)
    assert -(-(45 << 20) // split_bytes(45 << 20, 2)) == 4  # not 3 tasks, the third alone on a core


def _children(pid: int) -> set[int]:
    from lifecycle.procstat import process_tree

    return set(process_tree(pid)) - {pid}


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_workers_and_leaves_no_output(version: Path, tmp_path: Path) -> None:
    """`kill` (SIGTERM) of a scoring command unwinds like Ctrl-C: exit 143, one line, its worker processes gone and
    no output or temp directory left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    source = write_csv(tmp_path / "in.csv", _texts(400_000))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, "-m", "lifecycle", "-q", "score", str(version), "--input",
                                str(source), "--output", str(tmp_path / "out"), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 2:  # the two pool workers (beside the resource tracker) have started
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            workers = {pid for pid in _children(process.pid)
                       if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()}
            time.sleep(0.2)
        time.sleep(2.0)  # scoring under way
        assert process.poll() is None, "the input was scored before the signal: make it longer"
        everyone = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "Terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in everyone) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in everyone if _alive(pid)]
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)
