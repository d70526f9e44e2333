"""A version logged as an MLflow models-from-code pyfunc loads with mlflow.pyfunc and predicts like the version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle.artifacts import load_version
from lifecycle.errors import ModelError
from lifecycle.inference import Predictor
from lifecycle.tracking import log_pyfunc


def test_pyfunc_loads_and_predicts_a_list_of_texts(serving_versions: dict[str, Path], tracking_uri: str,
                                                    trained: dict) -> None:
    import mlflow

    uri = log_pyfunc(serving_versions["int8"], registered_name="serve-pyfunc", tracking_uri=tracking_uri)
    assert uri == "models:/serve-pyfunc/1"
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_input_schema().inputs[0].type.name == "string"  # list[str]
    texts = ["a gripping, beautifully acted film", "tedious and far too long"]
    rows = model.predict(texts)
    expected = Predictor(load_version(serving_versions["int8"]), runtime="litert").predict_proba(texts)
    assert [row.label for row in rows] == [("negative", "positive")[i] for i in expected.argmax(axis=1)]
    got = np.array([[row.probabilities["negative"], row.probabilities["positive"]] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(ModelError, match="not a lifecycle version"):
        log_pyfunc(serving_versions["int8"] / "tokenizer", tracking_uri=tracking_uri)


def test_tracked_compress_logs_the_version_as_a_pyfunc_too(frozen: dict, tracking_uri: str, data_dir: Path,
                                                           tmp_path: Path) -> None:
    import mlflow

    from lifecycle.workflows import run_compress

    outcome = run_compress(str(frozen["outcome"].version), "int8", tmp_path / "tracked")
    uri = outcome.facts["pyfunc"]
    assert uri.startswith("models:/")
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.get_run(outcome.run_id).data.tags["lifecycle.pyfunc"] == uri
    texts = [line.decode("cp1252") for line in (data_dir / "MR" / "rt-polarity.pos").read_bytes().split(b"\n")[:5]]
    rows = mlflow.pyfunc.load_model(uri).predict(texts)
    expected = Predictor(load_version(outcome.version), runtime="litert").predict_proba(texts)
    got = np.array([[row.probabilities["negative"], row.probabilities["positive"]] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    untracked = run_compress(str(frozen["outcome"].version), "int8", tmp_path / "untracked", track=False)
    assert "pyfunc" not in untracked.facts
