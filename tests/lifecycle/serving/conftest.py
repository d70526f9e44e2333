"""Fixtures for the serving tests: the session's MR model as int8 and float32 serving forms, and a tampered copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer


@pytest.fixture(scope="session")
def serving_versions(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``int8`` and ``float32`` versions of one model, and ``tampered``: the int8 one with a flipped flatbuffer byte."""
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("serving")
    int8 = run_compress(str(frozen["outcome"].version), "int8", root / "int8", track=False).version
    tampered = root / "tampered"
    shutil.copytree(int8, tampered)
    flatbuffer = tampered / "model.tflite"
    data = bytearray(flatbuffer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flatbuffer.write_bytes(bytes(data))
    return {"int8": Path(int8), "float32": Path(frozen["outcome"].version), "tampered": tampered}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """The server handle (call ``.wait()`` for its URL), over its own SQLite store: nothing else writes to it, so
    it can start (and create its schema) while the session's model is still training."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root)
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_mlflow_server_early(request: pytest.FixtureRequest) -> None:
    if any(item.path.name == "test_rollout.py" for item in request.session.items):
        request.getfixturevalue("mlflow_server")
