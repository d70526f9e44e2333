"""Fixtures shared by the lifecycle tests: one small tracked MR model, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import mr_config


@pytest.fixture(scope="session")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, tracking_uri: str) -> dict:
    """One tracked training run on an 800-example MR slice, shared by the assertions below."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from lifecycle.workflows import run_train

    root = tmp_path_factory.mktemp("trained")
    cfg = mr_config()
    outcome = run_train(cfg, root / "v1", versions_dir=root / "versions")
    return {"cfg": cfg, "outcome": outcome, "root": root}




@pytest.fixture(scope="session")
def frozen(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The session's MR model frozen once."""
    from lifecycle.workflows import run_freeze

    out = tmp_path_factory.mktemp("frozen") / "f1"
    return {"outcome": run_freeze(str(trained["outcome"].version), out), "parent": trained["outcome"]}
