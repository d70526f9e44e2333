"""A real ``mlflow server`` for tests that need a tracking server: lifecycle's own, failing the test if it does not
come up."""

from __future__ import annotations

import pytest

from lifecycle.errors import TrackingError
from lifecycle.tracking_server import TrackingServer


class MlflowServer(TrackingServer):
    def wait(self, timeout: float = 240.0) -> str:
        try:
            return super().wait(timeout)
        except TrackingError as exc:
            pytest.fail(str(exc))
