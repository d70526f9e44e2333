"""Shared fixtures: CPU-only quiet TensorFlow, a temporary SQLite MLflow store, a temporary versions directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# pytest-xdist's workers run with COLUMNS=80, which the CLI subprocesses the tests start would inherit: their
# output off a terminal must be what a user's pipe gets (lines not cut at 80 columns).
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (real data, many epochs)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def shared_data_dir() -> Path:
    """Where the published data sets are: $LIFECYCLE_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get("LIFECYCLE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "MR").is_dir():
        pytest.skip(f"published data sets not found at {path} (set LIFECYCLE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the session: creating MLflow's schema takes seconds, so it is made once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def _point_at(tracking_uri: str) -> None:
    """Point the environment and, once imported, mlflow's process-wide state at the session's store.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ`` (so subprocesses inherit
    it): a test that tracks through another server leaks that URI into every later fixture unless it is reset.
    """
    import sys

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(tracking_uri)


@pytest.fixture(scope="session", autouse=True)
def _session_tracking(tracking_uri: str) -> Iterator[None]:
    """The session's store for the whole session, so session-scoped fixtures track there, never into mlruns/."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    _point_at(tracking_uri)
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module", autouse=True)
def _module_tracking(tracking_uri: str) -> None:
    """Module-scoped fixtures are set up before any function-scoped one: point them at the session's store too."""
    _point_at(tracking_uri)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tracking_uri: str) -> None:
    """Every test writes versions and runs into temporary places, never into the checkout's versions/ or mlruns/."""
    _point_at(tracking_uri)  # first, so the monkeypatch below records (and restores) the session's store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("LIFECYCLE_VERSIONS_DIR", str(tmp_path / "versions"))
