"""Fixtures for the serving tests: the session's MR model as int8 and float32 serving forms, and a tampered copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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


class MlflowServer:
    """A real ``mlflow server`` subprocess on a free port over its own SQLite store, serving artifacts.

    It starts as soon as the serving tests begin and is waited for only when a test needs it: its start takes
    10-30 s (imports and the store check), which then overlaps with the in-process tests.
    """

    def __init__(self, backend_uri: str, root: Path) -> None:
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "mlflow-server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
                 "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            )
        self._ready = False

    def wait(self, timeout: float = 240.0) -> str:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    self._ready = True
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not up after {timeout:.0f} s: {self.log.read_text()[-2000:]}")
                time.sleep(0.25)
        return self.url

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        # The group this fixture started: mlflow, its uvicorn worker and its job consumers (which can outlive a
        # SIGTERM to the group, so whatever is left gets SIGKILL).
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


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
