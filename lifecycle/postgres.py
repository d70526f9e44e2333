"""A PostgreSQL cluster of our own for ``mlflow server``: in a folder we choose, on a free loopback port, with one
database and one password user.

``make server`` and the tests that need a real tracking store use it (:mod:`lifecycle.tracking_server` puts
``mlflow server --backend-store-uri postgresql://...`` on top). Standard library only; the server binaries are
Debian's ``postgresql`` package (``make install-postgres`` installs it when ``initdb`` is missing).

PostgreSQL refuses to run as root (initdb and postgres both check the effective uid). Run as root, every server
command goes through ``runuser -u postgres`` (the user Debian's package creates; ``lifecycle-pg``, a system user
made here, when there is none), the data folder is owned by that user, and the folder that holds it must be
reachable by it: a parent that only root may enter (pytest's ``/tmp/pytest-of-root``) is refused with the fix.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from lifecycle.errors import DependencyError, TrackingError, mask_password

INSTALL_HINT = "Install PostgreSQL's server (`make install-postgres`, i.e. `apt-get install -y postgresql`)."
# The unprivileged user a root process runs the server as when Debian's `postgres` user does not exist.
FALLBACK_USER = "lifecycle-pg"


def server_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$LIFECYCLE_PG_BINDIR``, else the newest
    ``/usr/lib/postgresql/<major>/bin`` (where Debian puts them, off PATH), else ``initdb`` on PATH.

    Raises:
        DependencyError: none of them holds ``initdb`` and ``pg_ctl``.
    """
    candidates = [os.environ.get("LIFECYCLE_PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in filter(None, candidates):
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise DependencyError("PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed.", INSTALL_HINT)


def _major(folder: str) -> int:
    found = re.search(r"/(\d+)/bin$", folder)
    return int(found.group(1)) if found else 0


# What PostgreSQL answers that no retry mends: a wrong password, an unknown role or database, a refused host.
FATAL_MARKERS = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def is_postgres_uri(uri: str) -> bool:
    """A ``postgresql://`` (or ``postgresql+<driver>://``, ``postgres://``) store."""
    return re.match(r"^postgres(ql)?(\+\w+)?://", uri) is not None


def check_database(uri: str, seconds: float) -> None:
    """Return once the PostgreSQL database of ``uri`` accepts a login; a server that is not up yet is tried again
    with doubling waits for up to ``seconds``, a refused login (wrong password, unknown user or database) at once.

    mlflow would retry any failure ten times over about 100 s before saying why, so lifecycle asks first.

    Raises:
        TrackingError: one line naming the URI (password masked), PostgreSQL's reason and the fix.
        DependencyError: the driver (psycopg) is not installed.
    """
    import time

    try:
        import psycopg
    except ImportError:
        raise DependencyError("PostgreSQL's driver psycopg is not installed.",
                              "pip install 'psycopg[binary]' (lifecycle's own dependencies list it).") from None
    conninfo = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", uri)
    deadline = time.monotonic() + seconds
    delay = 0.25
    while True:
        try:
            psycopg.connect(conninfo, connect_timeout=5).close()
            return
        except psycopg.Error as exc:
            text = " ".join(str(exc).split())
            reason = text.split("FATAL:", 1)[-1].strip() if "FATAL:" in text else text
            refused = any(marker in text for marker in FATAL_MARKERS)
            if refused or time.monotonic() + delay > deadline:
                hint = ("Fix the password in the tracking URI (tracking.uri / MLFLOW_TRACKING_URI)."
                        if "password authentication failed" in text else
                        "Fix the user or database name in the tracking URI." if refused else
                        "Start PostgreSQL (`make server` starts one with a tracking server on it), fix the host and "
                        "port in the tracking URI, or pass --no-track.")
                raise TrackingError(f"PostgreSQL at {uri} refused the connection: {reason[:300]}.", hint) from None
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


class PostgresCluster:
    """A PostgreSQL cluster in ``root`` (``root/pgdata``, its log in ``root/postgres.log``).

    :meth:`start` creates it on first use (initdb, a password user ``user`` owning database ``database``) and
    starts it on a free loopback port, or on the port it had before; the password and port are kept in ``root`` so a
    restarted ``make server`` finds the same database. :meth:`stop` shuts it down fast.
    """

    def __init__(self, root: Path, database: str = "mlflow", user: str = "mlflow", port: int | None = None) -> None:
        self.root = root.resolve()
        self.data = self.root / "pgdata"
        self.log = self.root / "postgres.log"
        self.database = database
        self.user = user
        self.bindir = server_bindir()
        self.os_user = _server_os_user()
        self.port = port or self._saved_port()
        self.password = self._saved_password()

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI ``mlflow server --backend-store-uri`` takes (psycopg2 driver, TCP on loopback)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresCluster:
        """Create the cluster if needed, start it unless it runs, and make sure the user and database exist.

        Raises:
            TrackingError: initdb, the server start or the role/database creation failed (with the end of the log).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        if not (self.data / "PG_VERSION").is_file():
            self._initdb()
        if not self.running():
            self._server(["-l", str(self.log), "-w", "-t", "60", "-o",
                          f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start"], "start")
        self._ensure_database()
        return self

    def running(self) -> bool:
        """Whether a server runs on this cluster's data folder (``pg_ctl status``)."""
        if not (self.data / "PG_VERSION").is_file():
            return False
        return self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def stop(self) -> None:
        """Shut the server down (fast mode: open sessions are ended); nothing if it is not running."""
        if self.running():
            self._server(["-m", "fast", "-w", "-t", "60", "stop"], "stop")

    def psql(self, sql: str) -> str:
        """Run ``sql`` as the cluster's superuser over its Unix socket (trusted there) and return the output."""
        psql = self.bindir / "psql"
        done = self._run([str(psql) if psql.is_file() else "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                          "-h", str(self.data), "-p", str(self.port), "-U", self.os_user, "-d", "postgres", "-c", sql],
                         check=False)
        if done.returncode != 0:
            raise TrackingError(f"PostgreSQL in {self.data} refused {sql.split()[0]} ... : "
                                f"{mask_password(done.stderr.strip())[-300:]}")
        return done.stdout.strip()

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers -----------------------------------------------------------------------------------------------

    def _saved_port(self) -> int:
        from lifecycle.tracking_server import free_port

        saved = self.root / "port"
        if saved.is_file():
            return int(saved.read_text().strip())
        port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        saved.write_text(str(port))
        return port

    def _saved_password(self) -> str:
        saved = self.root / "password"
        if saved.is_file():
            return saved.read_text().strip()
        password = secrets.token_hex(16)
        self.root.mkdir(parents=True, exist_ok=True)
        saved.touch(mode=0o600)
        saved.write_text(password)
        return password

    def _check_reachable(self) -> None:
        """As root, the server's user must be able to enter ``root``: each parent searchable by it."""
        if os.geteuid() != 0:
            return
        account = pwd.getpwnam(self.os_user)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        if self._run(["test", "-x", str(self.root)], check=False).returncode != 0:
            raise TrackingError(
                f"PostgreSQL's user {self.os_user!r} cannot enter {self.root} (a parent folder is closed to it).",
                "Put the cluster under a folder other users may enter (e.g. /tmp or /var/lib), since PostgreSQL "
                "refuses to run as root.")

    def _initdb(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)  # an initdb killed half-way leaves a folder it refuses
        pwfile = self.root / ".initdb-password"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.os_user)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            done = self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.os_user, "-E", "UTF8",
                              "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256",
                              f"--pwfile={pwfile}"], check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise TrackingError(f"initdb of {self.data} failed: {(done.stderr or done.stdout).strip()[-400:]}",
                                INSTALL_HINT)

    def _server(self, args: list[str], what: str) -> None:
        if os.geteuid() == 0 and not self.log.exists():
            account = pwd.getpwnam(self.os_user)
            self.log.touch()
            os.chown(self.log, account.pw_uid, account.pw_gid)
        done = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=False)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-800:] if self.log.is_file() else ""
            raise TrackingError(f"PostgreSQL in {self.data} did not {what} (pg_ctl exit {done.returncode}): "
                                f"{done.stderr.strip()[-300:]} {tail}".strip())

    def _ensure_database(self) -> None:
        quoted = self.password.replace("'", "''")
        if not self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'"):
            self.psql(f"CREATE ROLE \"{self.user}\" LOGIN PASSWORD '{quoted}'")
        else:  # the password file is the truth: a cluster kept from an earlier start gets it again
            self.psql(f"ALTER ROLE \"{self.user}\" LOGIN PASSWORD '{quoted}'")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self.psql(f"CREATE DATABASE \"{self.database}\" OWNER \"{self.user}\"")

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """``args`` as the server's user (through ``runuser`` when we are root), from a folder it may enter."""
        if os.geteuid() == 0:
            args = ["runuser", "-u", self.os_user, "--", *args]
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGPASSWORD", None)
        return subprocess.run(args, capture_output=True, text=True, check=check, cwd="/", env=env, timeout=120)


def _server_os_user() -> str:
    """The operating-system user PostgreSQL runs as: ourselves, or (as root) ``postgres``, made if missing."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise TrackingError(f"PostgreSQL refuses to run as root and user {FALLBACK_USER!r} could not be created: "
                            f"{done.stderr.strip()}", "Create an unprivileged user named postgres and run again.")
    return FALLBACK_USER
