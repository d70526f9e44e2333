"""A local ``mlflow server`` process: for the tests and benchmarks that need a real tracking server, and for a
developer who wants one (``python -m lifecycle.tracking_server``).

Standard library only; ``mlflow`` is the executable beside this interpreter.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lifecycle.errors import TrackingError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class TrackingServer:
    """``mlflow server`` on a loopback port over ``backend_uri``, proxying artifacts into ``root/artifacts``.

    It starts at construction and is waited for by :meth:`wait`: its start takes 10-30 s (imports and the store
    check), which can overlap with other work. :meth:`stop` ends its whole process group.
    """

    def __init__(self, backend_uri: str, root: Path, port: int | None = None, workers: int = 1) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
                 "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", str(workers)],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # MLflow's job runner (GenAI scorers; four huey consumers of ~240 MB each) serves nothing here.
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            )
        self._ready = False

    def wait(self, timeout: float = 240.0) -> str:
        """The server's URL once ``/health`` answers.

        Raises:
            TrackingError: the server exited or did not answer within ``timeout`` (with the end of its log).
        """
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.process.poll() is not None:
                raise TrackingError(f"mlflow server exited ({self.process.returncode}): "
                                    f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    self._ready = True
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TrackingError(f"mlflow server not up after {timeout:.0f} s: "
                                        f"{self.log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.25)
        return self.url

    def stop(self) -> None:
        """End the server's process group: mlflow, its uvicorn worker and its job consumers (which can outlive a
        SIGTERM to the group, so whatever is left gets SIGKILL)."""
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def __enter__(self) -> TrackingServer:
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve ``mlruns/server.db`` (or $1) on port 5000 (or $2) until Ctrl-C."""
    from lifecycle.config import project_root

    root = project_root() / "mlruns" / "server"
    backend = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{root / 'mlflow.db'}"
    server = TrackingServer(backend, root, port=int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
    try:
        print(f"MLFLOW_TRACKING_URI={server.wait()}  (log: {server.log}; Ctrl-C stops it)", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
