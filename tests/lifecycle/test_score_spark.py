"""``lifecycle score --engine spark`` in local[2]: the same rows as the local engine, no TensorFlow or mlflow in the
executors. One small Spark session for the module (its start is most of the cost)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.lifecycle.test_score import _texts, read_rows, write_csv

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("no java on PATH (make install-spark)", allow_module_level=True)


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    import os
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("lifecycle-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               # Splits of 8 KB: the 24 KB file below is read as several partitions, so ids <file>:<row> must be
               # put back together across them.
               .config("spark.sql.files.maxPartitionBytes", "8192").config("spark.sql.files.openCostInBytes", "1024")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_rows_equal_the_local_engine_and_executors_stay_light(spark: object, frozen: dict,
                                                                     tmp_path: Path) -> None:
    from lifecycle.artifacts import load_version
    from lifecycle.inference import Predictor
    from lifecycle.scoring import ScoreOptions
    from lifecycle.workflows.scoring import run_score

    version = frozen["outcome"].version
    source = tmp_path / "in"
    source.mkdir()
    write_csv(source / "big.csv", _texts(600))
    write_csv(source / "small.csv", _texts(37))
    with open(source / "c.jsonl", "w", encoding="utf-8") as handle:
        for text in _texts(25):
            handle.write(json.dumps({"text": text}) + "\n")
    ticks: list[tuple] = []
    result = run_score(str(version), source, tmp_path / "spark", ScoreOptions(top_k=3, engine="spark"),
                       lambda *a: ticks.append(a))
    texts = {f"big.csv:{i}": t for i, t in enumerate(_texts(600))}
    texts.update({f"small.csv:{i}": t for i, t in enumerate(_texts(37))})
    texts.update({f"c.jsonl:{i}": t for i, t in enumerate(_texts(25))})
    rows = {r["id"]: r for r in read_rows(tmp_path / "spark")}
    assert result.rows == len(rows) == 662 and set(rows) == set(texts)
    ids = sorted(texts)
    # The local engine's rows equal Predictor's (test_score), so these equal the local engine's too.
    expected = Predictor(load_version(version), runtime="litert").predict([texts[i] for i in ids], top_k=3)
    assert [rows[i]["label"] for i in ids] == [p.label for p in expected]
    assert [rows[i]["top_labels"] for i in ids] == [[label for label, _ in p.top] for p in expected]
    np.testing.assert_allclose([rows[i]["top_probabilities"] for i in ids],
                               [[q for _, q in p.top] for p in expected], atol=1e-6)
    summary = json.loads((tmp_path / "spark" / "score.json").read_text())
    assert summary["engine"] == "spark" and summary["worker_heavy_modules"] == []
    assert summary["executor_batches"] >= 3  # every partition's batches reported in: the check above has teeth
    assert spark.sparkContext._jsc is not None  # a session passed in is left running for its owner  # type: ignore


def test_spark_rows_with_an_id_column_equal_the_local_engines(spark: object, frozen: dict, tmp_path: Path) -> None:
    """The input's own ids (the path that hands Python no file names): every column equal to the local engine's."""
    import csv

    from lifecycle.scoring import ScoreOptions
    from lifecycle.workflows.scoring import run_score

    version = frozen["outcome"].version
    source = tmp_path / "with-id.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([f"row-{i}", text] for i, text in enumerate(_texts(500)))
    engines = {}
    for engine in ("local", "spark"):
        run_score(str(version), source, tmp_path / engine, ScoreOptions(top_k=3, engine=engine))
        engines[engine] = {r["id"]: r for r in read_rows(tmp_path / engine)}
    local, on_spark = engines["local"], engines["spark"]
    assert set(on_spark) == set(local) == {f"row-{i}" for i in range(500)}
    ids = sorted(local)
    for column in ("label", "top_labels", "abstained", "version"):
        assert [on_spark[i][column] for i in ids] == [local[i][column] for i in ids], column
    np.testing.assert_allclose([on_spark[i]["top_probabilities"] for i in ids],
                               [local[i]["top_probabilities"] for i in ids], atol=1e-6)


def test_java_options_ask_for_the_class_archive_only_when_it_exists(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle import scoring_spark

    monkeypatch.delenv("LIFECYCLE_SPARK_JAVA_OPTIONS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archive = scoring_spark.class_archive_path()
    assert archive.is_relative_to(tmp_path)
    assert scoring_spark.local_java_options() == scoring_spark.LOCAL_JAVA_OPTIONS
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"x")
    assert f'"-XX:SharedArchiveFile={archive}"' in scoring_spark.local_java_options()
    monkeypatch.setenv("LIFECYCLE_SPARK_JAVA_OPTIONS", "-Xmx1g")
    assert scoring_spark.local_java_options() == "-Xmx1g"


def test_ensure_class_archive_builds_only_when_the_archive_of_this_setup_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive of another JDK or other flags has another name: it is missing for this setup, and one rebuild
    brings it back; a present one is not rebuilt. (The real build runs in ``make install-spark``.)"""
    from lifecycle import scoring_spark

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built: list[Path] = []

    def build(target: Path | None = None) -> Path:
        assert target is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"archive")
        built.append(target)
        return target

    monkeypatch.setattr(scoring_spark, "build_class_archive", build)
    archive = scoring_spark.class_archive_path()
    (tmp_path / "lifecycle").mkdir()
    (tmp_path / "lifecycle" / "spark-classes-0000000000000000.jsa").write_bytes(b"another setup's")
    assert scoring_spark.ensure_class_archive() == (archive, True) and built == [archive]
    assert scoring_spark.ensure_class_archive() == (archive, False) and built == [archive]
    archive.write_bytes(b"")  # cut short: as good as missing
    assert scoring_spark.ensure_class_archive() == (archive, True) and len(built) == 2


@pytest.mark.parametrize("archive", ["missing", "corrupt"])
def test_a_missing_or_corrupt_class_archive_does_not_stop_a_session(archive: str, tmp_path: Path) -> None:
    """The archive flag given a path that holds nothing, or no archive of this JDK (a file left by another
    version, cut short): the JVM runs without it."""
    import subprocess
    import sys

    stale = tmp_path / "classes.jsa"
    if archive == "corrupt":
        stale.write_bytes(b"not a class archive" * 100)
    code = ("from lifecycle import scoring_spark as s\n"
            f"o = s.LOCAL_JAVA_OPTIONS + ' \"-XX:SharedArchiveFile={stale}\" ' + s.CLASS_ARCHIVE_OPTIONS\n"
            "spark, _ = s.spark_session('local[1]', java_options=o)\n"
            "print('rows', spark.range(5).count())\n"
            "print('opts', spark.sparkContext.getConf().get('spark.driver.extraJavaOptions'))\n"
            "spark.stop()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows 5" in done.stdout and "SharedArchiveFile" in done.stdout
    assert "cds" not in done.stderr.lower()  # the JVM's archive warnings are kept off the terminal
