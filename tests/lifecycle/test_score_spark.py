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
