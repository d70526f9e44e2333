"""A local ``mlflow server`` process: for the tests and benchmarks that need a real tracking server, and for a
developer who wants one (``make server``, i.e. ``python -m lifecycle.tracking_server``).

:class:`TrackingServer` runs ``mlflow server`` over any backend URI with artifact proxying (clients see
``mlflow-artifacts:`` URIs and send files through the server); :class:`PostgresTrackingServer` puts it on a
PostgreSQL cluster of our own (:mod:`lifecycle.postgres`), as a team's server would be.

Standard library only; ``mlflow`` is the executable beside this interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lifecycle.errors import TrackingError, mask_password
from lifecycle.postgres import FATAL_MARKERS, PostgresCluster


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
        self.backend_uri = backend_uri
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                # The backend URI (which may hold a password) goes in the environment, not in `ps`'s listing.
                [str(Path(sys.executable).parent / "mlflow"), "server", "--artifacts-destination",
                 str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # MLflow's job runner (GenAI scorers; four huey consumers of ~240 MB each) serves nothing here.
                env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                     "MLFLOW_BACKEND_STORE_URI": backend_uri},
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
                raise self._exit_error()
            if self._refused():  # mlflow would retry a refused database login for about 100 s first
                self.stop()
                raise self._exit_error(refused=True)
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    self._ready = True
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TrackingError(f"mlflow server over {mask_password(self.backend_uri)} not up after "
                                        f"{timeout:.0f} s: {self._last_error()}", f"See {self.log}.") from None
                time.sleep(0.25)
        return self.url

    def _refused(self) -> bool:
        """Whether the server's log shows its database refusing the login (wrong password, unknown user or db)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return False
        return any("FATAL:" in line and any(m in line for m in FATAL_MARKERS) for line in text.splitlines())

    def _last_error(self) -> str:
        """The most telling line of the server's log: PostgreSQL's FATAL reason, else the last error line."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "no log"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        fatal = [line.split("FATAL:", 1)[-1].strip() for line in lines if "FATAL:" in line]
        errors = [line for line in lines if re.search(r"error|fatal|refused|denied|failed", line, re.IGNORECASE)
                  and not line.startswith("(Background on this error")]
        return mask_password((fatal or errors or lines or ["no output"])[-1])[-400:]

    def _exit_error(self, refused: bool = False) -> TrackingError:
        """One line for a server that exited during its start: the backend (password masked), the last error its
        log names, and the fix."""
        reason = self._last_error()
        backend = mask_password(self.backend_uri)
        if "password authentication failed" in reason:
            hint = (f"The database password in {backend} is wrong: fix the backend URI (a server from `make server` "
                    "keeps its password in mlruns/server/postgres/password).")
        elif any(marker in reason for marker in FATAL_MARKERS):
            hint = f"Fix the user or database name in {backend}."
        elif "address already in use" in reason.lower():
            hint = f"Port {self.port} is taken: pass another port."
        else:
            hint = f"Fix the backend store URI or see {self.log}."
        how = "its database refused the login" if refused else f"exit {self.process.returncode}"
        return TrackingError(f"mlflow server over {backend} did not start ({how}): {reason}.", hint)

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


class PostgresTrackingServer:
    """PostgreSQL (:class:`lifecycle.postgres.PostgresCluster` in ``root/postgres``) and ``mlflow server`` on it,
    artifacts proxied into ``root/artifacts``. :meth:`wait` returns the tracking URI; :meth:`stop` ends both."""

    def __init__(self, root: Path, port: int | None = None, workers: int = 1, pg_port: int | None = None) -> None:
        self.cluster = PostgresCluster(root / "postgres", port=pg_port).start()
        try:
            self.server = TrackingServer(self.cluster.uri, root, port=port, workers=workers)
        except BaseException:
            self.cluster.stop()
            raise
        self.url = self.server.url
        self.log = self.server.log

    def wait(self, timeout: float = 240.0) -> str:
        """The server's URL once it answers (see :meth:`TrackingServer.wait`); on failure both are stopped."""
        try:
            return self.server.wait(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End ``mlflow server``, then PostgreSQL."""
        try:
            self.server.stop()
        finally:
            self.cluster.stop()

    def __enter__(self) -> PostgresTrackingServer:
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``make server``: PostgreSQL and ``mlflow server`` on it (or over another backend URI) until Ctrl-C."""
    from lifecycle.config import project_root

    parser = argparse.ArgumentParser(prog="python -m lifecycle.tracking_server", description=main.__doc__)
    parser.add_argument("backend", nargs="?", default="postgres",
                        help="postgres (a cluster of our own, the default) or a backend store URI (sqlite:///...)")
    parser.add_argument("--port", type=int, default=5000, help="the tracking server's port (default 5000)")
    parser.add_argument("--root", type=Path, default=project_root() / "mlruns" / "server",
                        help="where the database, artifacts and logs live (default mlruns/server)")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes (default 2)")
    args = parser.parse_args()
    from lifecycle.errors import LifecycleError

    # `kill` (SIGTERM) stops both as Ctrl-C does: the servers run in their own sessions and would outlive us.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    try:
        if args.backend == "postgres":
            server: TrackingServer | PostgresTrackingServer = PostgresTrackingServer(args.root, args.port,
                                                                                     args.workers)
        else:
            server = TrackingServer(args.backend, args.root, port=args.port, workers=args.workers)
        url = server.wait()
    except LifecycleError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    backend = mask_password(server.cluster.uri if isinstance(server, PostgresTrackingServer) else args.backend)
    try:
        print(f"mlflow server over {backend}, artifacts proxied into {args.root / 'artifacts'} (log: {server.log})\n"
              f"export MLFLOW_TRACKING_URI={url}\n(Ctrl-C stops both)", flush=True)
        (server.server if isinstance(server, PostgresTrackingServer) else server).process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
