"""Roll-out through the MLflow registry: alias moves are followed, bad versions refused, no request fails.

The registry is a real ``mlflow server`` (REST lookups and proxied artifact downloads in the serving process), plus
the SQLite store directly (lookups in a helper process). The server under load is a real ``lifecycle serve``
subprocess, checked from outside for TensorFlow and mlflow.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from starlette.testclient import TestClient
from typer.testing import CliRunner

from lifecycle.cli import app as cli_app
from lifecycle.config import TrackingConfig
from lifecycle.registry_client import VERSION_ARTIFACT
from lifecycle.serving.app import build_app
from lifecycle.serving.config import ServeConfig
from lifecycle.serving.registry import Registry
from lifecycle.tracking import Tracker, set_alias
from tests.lifecycle.serving.helpers import start_serve

MODEL = "serve-rollout"


def _register(uri: str, path: Path, model: str = MODEL, as_model: bool = True) -> str:
    """Log a version directory as a run's artifacts and as an MLflow model, and register that model (as every step
    does; ``as_model=False``: the folder itself, as versions were registered before, and as a tampered version that
    MLflow cannot load must be); returns the version number."""
    tracker = Tracker(TrackingConfig(uri=uri), model)
    with tracker.run("compress", path.name):
        tracker.log_artifacts(path, VERSION_ARTIFACT)
        if as_model:
            tracker.log_pyfunc(path)
        number = tracker.register(model)
    assert number is not None
    return number


@pytest.fixture(scope="module", autouse=True)
def _restore_tracking_uri(tracking_uri: str):
    """Registering through the server points mlflow's process-wide URI at it; later tests expect the session's."""
    yield
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


@pytest.fixture(scope="module")
def registered(mlflow_server, serving_versions: dict[str, Path]) -> dict[str, str]:
    """int8, float32 and tampered versions registered through the server: name -> version number."""
    url = mlflow_server.wait()
    return {which: _register(url, serving_versions[which], as_model=which != "tampered")
            for which in ("int8", "float32", "tampered")}


def _predict(client: TestClient, text: str = "a fine film") -> dict:
    response = client.post("/v1/models/sentiment:predict", json={"texts": [text]})
    assert response.status_code == 200, response.text
    return response.json()


def test_alias_moves_are_followed_and_a_tampered_version_is_refused(mlflow_server, registered: dict[str, str]
                                                                    ) -> None:
    url = mlflow_server.wait()
    v1, v2, bad = (f"models:/{MODEL}/{registered[k]}" for k in ("int8", "float32", "tampered"))
    set_alias(v1, "champion", url)
    cfg = ServeConfig.model_validate({"models": {"sentiment": f"models:/{MODEL}@champion"}, "tracking_uri": url,
                                      "poll_seconds": 0})
    registry = Registry(cfg)
    registry.load()
    try:
        with TestClient(build_app(registry, cfg)) as client:
            assert _predict(client)["version"] == v1
            first = registry.slots["sentiment"].current

            set_alias(bad, "champion", url)
            assert registry.check() == {"sentiment": "refused"}
            info = client.get("/v1/models/sentiment").json()
            assert info["version"] == v1 and info["refusing"] and info["last_refused"]["version"] == bad
            assert "sha256 does not match" in info["last_refused"]["reason"]
            assert _predict(client)["version"] == v1  # the old version keeps serving
            assert registry.check() == {"sentiment": "refused"}  # not fetched again until the alias moves
            assert "lifecycle_model_refusing{model=\"sentiment\"} 1" in client.get("/metrics").text

            held = registry.slots["sentiment"].acquire()  # a request in flight across the switch
            set_alias(v2, "champion", url)
            assert registry.check() == {"sentiment": "switched"}
            assert _predict(client)["version"] == v2
            assert held is first and held.label == v1
            assert held.submit(["still answered by the old version"]).result(timeout=10).shape == (1, 2)
            assert first.fetched.path.is_dir()  # not released while the request holds it
            registry.slots["sentiment"].release(held, 1)
            first.join(timeout=10)
            assert not first.fetched.path.exists()  # released: worker stopped, downloaded folder deleted

            info = client.get("/v1/models/sentiment").json()
            assert info["version"] == v2 and info["switches"] == 1 and not info["refusing"]
            assert info["last_refused"]["version"] == bad and info["registered_version"] == registered["float32"]
            assert registry.check() == {"sentiment": "unchanged"}
    finally:
        registry.close()


def test_reload_under_concurrent_requests_fails_none_and_never_loads_tensorflow(
        mlflow_server, registered: dict[str, str], serving_versions: dict[str, Path], tmp_path: Path) -> None:
    url = mlflow_server.wait()
    v1, v2 = (f"models:/{MODEL}/{registered[k]}" for k in ("int8", "float32"))
    set_alias(v1, "live", url)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "port": 0, "tracking_uri": url, "poll_seconds": 0,  # only SIGHUP triggers the check
        "models": {"sentiment": f"models:/{MODEL}@live", "fixed": str(serving_versions["int8"])},
        "batching": {"max_batch": 16, "max_wait_ms": 1},
    }))
    process, base = start_serve(config, tmp_path / "serve.log")
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(8)]
    failures: list[str] = []

    def client(slot: int) -> None:
        with httpx2.Client(base_url=base, timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post("/v1/models/sentiment:predict", json={"texts": ["a fine film", "dull"]})
                except httpx2.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    continue
                seen[slot].append(response.json()["version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        set_alias(v2, "live", url)
        os.kill(process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        with httpx2.Client(base_url=base, timeout=10) as http:
            while http.get("/v1/models/sentiment").json()["version"] != v2:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.1)
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(30)
            health = http.get("/healthz").json()
            maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert not failures, failures[:5]
    for versions in seen:
        # Each client sends one request at a time, so after its first answer from v2 it never sees v1 again.
        switch = versions.index(v2)
        assert switch > 0 and set(versions[:switch]) == {v1} and set(versions[switch:]) == {v2}
    assert health["tensorflow_imported"] is False and health["mlflow_imported"] is False
    assert not re.search(r"/tensorflow/|libtensorflow|_pywrap_tensorflow", maps)
    assert "ai_edge_litert" in maps  # the check reads the right process
    assert process.returncode == 0


def test_a_sqlite_store_is_read_through_a_helper_process(serving_versions: dict[str, Path],
                                                         tracking_uri: str) -> None:
    # The alias lookup runs `python -m lifecycle.serving.sources` (it imports mlflow: seconds, so one call only);
    # the version's files sit in the store's local artifact folder and are copied here. A check while the database
    # file is unchanged answers from the last lookup.
    model = "serve-sqlite"
    number = _register(tracking_uri, serving_versions["int8"], model)
    set_alias(f"models:/{model}/{number}", "champion", tracking_uri)
    registry = Registry(ServeConfig.model_validate({"models": {"m": f"models:/{model}@champion"},
                                                    "poll_seconds": 0}))  # tracking_uri: the env's SQLite store
    registry.load()
    try:
        current = registry.slots["m"].current
        assert current.label == f"models:/{model}/{number}" and current.fetched.owned
        assert current.fetched.path.parent == registry.work_dir
        started = time.monotonic()
        assert registry.check() == {"m": "unchanged"}
        assert time.monotonic() - started < 1.5  # the database file is unchanged: no helper process was started
    finally:
        registry.close()
    assert not registry.work_dir.exists()


def test_promote_command(mlflow_server, registered: dict[str, str], serving_versions: dict[str, Path],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = mlflow_server.wait()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    runner = CliRunner()
    done = runner.invoke(cli_app, ["promote", f"models:/{MODEL}/{registered['float32']}", "--alias", "staging"])
    assert done.exit_code == 0, done.output
    assert f"models:/{MODEL}@staging -> version {registered['float32']}" in done.output
    untracked = runner.invoke(cli_app, ["promote", str(serving_versions["int8"])])
    assert untracked.exit_code == 2 and "made without tracking" in untracked.output
    missing = runner.invoke(cli_app, ["promote", f"models:/{MODEL}/999"])
    assert missing.exit_code == 5 and "999" in missing.output


def test_promote_a_version_directory_finds_its_registered_version(frozen: dict) -> None:
    # The frozen version was made by a tracked run (the session's SQLite store), which registered it.
    done = CliRunner().invoke(cli_app, ["promote", str(frozen["outcome"].version), "--alias", "serve-test"])
    assert done.exit_code == 0, done.output
    assert f"models:/mr-slice@serve-test -> version {frozen['outcome'].registered}" in done.output
