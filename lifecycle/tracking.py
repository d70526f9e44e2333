"""The only importer of mlflow: ``Tracker`` (MLflow-backed) and ``NullTracker`` share one interface.

Facts this module relies on (mlflow 3.17): the tracking URI is always set explicitly (a stray ./mlruns folder would
otherwise be picked up); the SQLite schema and the experiment are created once, then runs get ``experiment_id=``;
a ``with mlflow.start_run()`` block that raises ends its run FAILED; sizes and accuracies are metrics, not params.

Many processes on one store: mlflow's tracking and registry stores each create and migrate a fresh SQLite schema
with no lock, so concurrent first use races (``duplicate column name``, ``_alembic_tmp_*`` tables left behind).
:func:`open_client` opens a store once per process under an ``flock`` on ``<db>.lock`` (and switches the file to
WAL, so readers never wait for a writer); every write goes through :func:`_retry`, which retries what a busy store
answers (locked database, a dataset or model row another process just inserted, a 5xx, a dropped connection) with
backoff and then fails with one line. Each run carries the pid, host and start time of its process
(``lifecycle.pid|host|process_start``); a RUNNING run whose process is gone is marked FAILED by the next
``Tracker`` on that host (:func:`fail_dead_runs`).

The registry read without mlflow (registry references, REST look-ups, copies of version directories, the default
tracking URI) lives in :mod:`lifecycle.registry_client`; :func:`lookup_registry` and :func:`download_source` here use
it where it suffices and the mlflow client for every other store.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lifecycle import housekeeping
from lifecycle.config import TrackingConfig
from lifecycle.errors import ConfigError, ModelError, TrackingError, first_line
from lifecycle.postgres import check_database, is_postgres_uri
from lifecycle.registry_client import (
    VERSION_ARTIFACT,
    RegistryEntry,
    absolute_uri,
    copies_without_mlflow,
    copy_source,
    default_tracking_uri,
    download_cleanup,
    is_http_uri,
    is_model_source,
    parse_registry_ref,
    rest_lookup,
    version_dir_in,
    wait_reachable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def artifact_root(uri: str) -> str | None:
    """Where experiments of a SQLite store keep their artifacts: ``<the database's folder>/artifacts`` (None for any
    other store, whose server decides)."""
    db = sqlite_path(absolute_uri(uri))
    return str(db.parent / "artifacts") if db is not None else None


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Our own progress bars cover the steps; mlflow's per-download bar would interleave with them on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


# What a busy store answers for a while and then no longer: SQLite's lock (past mlflow's 20 s busy timeout), a row
# that another process inserted between our look-up and our insert (datasets, registered models), a server's 5xx
# or a connection it dropped.
_TRANSIENT = ("database is locked", "database table is locked", "UNIQUE constraint failed", "TEMPORARILY_UNAVAILABLE",
              "RESOURCE_ALREADY_EXISTS", "already exists", "deadlock", "Connection refused", "Connection reset",
              "Connection aborted", "Max retries exceeded", "Remote end closed", "Read timed out", "timed out",
              "502 ", "503 ", "504 ", "Bad Gateway", "Service Unavailable", "Gateway Timeout",
              # PostgreSQL (a postgresql:// store, or its text in a server's 5xx): serialization failures, a unique
              # key another writer just took, a connection the server dropped.
              "could not serialize access", "duplicate key value", "server closed the connection",
              "terminating connection", "too many clients")
RETRY_SECONDS = 90.0
# Opening a store: a server that is down should fail soon (mlflow's own HTTP client already retries each call).
OPEN_RETRY_SECONDS = float(os.environ.get("LIFECYCLE_TRACKING_CONNECT_SECONDS", "20"))


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _TRANSIENT)


def _retry(what: str, call: Callable[[], T], uri: str, *, seconds: float = RETRY_SECONDS) -> T:
    """``call()``, retried with jittered exponential backoff while the store answers something transient.

    Raises:
        TrackingError: one line naming the store and what failed, once ``seconds`` have passed or the error is not
            transient.
    """
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                hint = ("Fix the password in the tracking URI (tracking.uri / MLFLOW_TRACKING_URI)."
                        if "password authentication failed" in str(exc) else
                        "Check tracking.uri / MLFLOW_TRACKING_URI and that the store is reachable, or pass --no-track.")
                raise TrackingError(f"MLflow at {uri} failed to {what}: {first_line(exc)}.", hint) from None
            log.info("MLflow at %s was busy (%s); retrying %s in %.1f s", uri, first_line(exc), what, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)


_OPENED: set[str] = set()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def open_client(uri: str, sweep: bool = True) -> Any:
    """An ``MlflowClient`` on ``uri`` whose tracking and registry stores are open, their schema created or migrated
    exactly once even when many processes start on a fresh store together. On the first open in a process (and with
    ``sweep``), runs of this host whose process died are marked FAILED (:func:`fail_dead_runs`).

    Raises:
        TrackingError: the store cannot be opened (unreachable server, a database that is not mlflow's, a schema
            left half-migrated), in one line naming it.
    """
    mlflow = _mlflow()
    uri = absolute_uri(uri)
    if uri in _OPENED:
        return mlflow.MlflowClient(uri)
    db = sqlite_path(uri)
    opened: list[Any] = []

    def first_use() -> None:
        # The client's constructor opens the tracking store (creating its schema on a fresh database); the
        # registry store is opened on its first call.
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
        opened.append(client)

    try:
        if db is None:
            if is_http_uri(uri):  # a server that is down: one line from our own probe, not urllib3's retries
                wait_reachable(uri, OPEN_RETRY_SECONDS)
            elif is_postgres_uri(uri):  # a wrong password: at once, not after mlflow's ~100 s of retries
                check_database(uri, OPEN_RETRY_SECONDS)
            with _few_http_retries():
                _retry("open the store", first_use, uri, seconds=OPEN_RETRY_SECONDS)
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            with housekeeping.exclusive_lock(db.with_name(f"{db.name}.lock")):
                if not _prepare_sqlite(db):
                    _retry("create the store", lambda: _create_sqlite_store(uri), uri)
                _retry("open the store", first_use, uri, seconds=OPEN_RETRY_SECONDS)
    except TrackingError:
        raise
    except Exception as exc:
        where = db or uri
        raise TrackingError(
            f"MLflow store {where} cannot be opened: {first_line(exc)}.",
            "If an older lifecycle left its schema half-migrated (concurrent first use), move the file aside and run "
            "again; otherwise fix tracking.uri / MLFLOW_TRACKING_URI, or pass --no-track.",
        ) from None
    client = opened[0]
    if sweep:
        fail_dead_runs(client, uri)
    _OPENED.add(uri)
    return client


@contextmanager
def _few_http_retries() -> Iterator[None]:
    """mlflow's HTTP client retries a refused connection 7 times with doubling waits (minutes for a server that is
    down): while a store is first opened, retry twice and let :func:`_retry` pace the rest, unless the user set it."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    set_here = [name for name in names if name not in os.environ]
    os.environ.update({name: names[name] for name in set_here})
    try:
        yield
    finally:
        for name in set_here:
            os.environ.pop(name, None)


def _prepare_sqlite(db: Path) -> bool:
    """WAL journal (kept by the file), and a refusal of a schema that an interrupted migration left behind.

    Returns:
        Whether the database already holds MLflow's schema (False: a new or empty file).
    """
    import sqlite3

    try:
        with sqlite3.connect(db, timeout=60) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            left = [row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name GLOB '_alembic_tmp_*'")]
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='experiments'").fetchone() is not None
        conn.close()
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"MLflow store {db} is not a usable SQLite database ({exc}).",
                            "Move the file aside (mlflow will create a new one) or fix tracking.uri.") from None
    if left:
        raise TrackingError(
            f"MLflow store {db} was left half-migrated (table {left[0]} of an interrupted schema migration).",
            "Move the file aside and run again (a new store is created), or repair it with `mlflow db upgrade`.")
    return exists


def _create_sqlite_store(uri: str) -> None:
    """Create MLflow's schema in a new SQLite database with the store's artifact root beside it. An ``MlflowClient``
    would create it with MLflow's default root, ``./mlruns`` of the working directory, so that the experiment MLflow
    makes itself ("Default", where runs started without an experiment go) would keep its artifacts wherever the
    first command happened to run."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    _mlflow()
    SqlAlchemyStore(uri, artifact_root(uri))


def process_tags() -> dict[str, str]:
    """The tags that let any later command tell whether the process running a run is still alive."""
    pid = os.getpid()
    started = housekeeping.process_start_time(pid)
    return {"lifecycle.pid": str(pid), "lifecycle.host": socket.gethostname(),
            "lifecycle.process_start": f"{started or 0.0:.2f}"}


def run_is_orphaned(tags: Mapping[str, str]) -> bool:
    """True for a run started on this host by a process that is gone (or whose pid now names another process)."""
    if tags.get("lifecycle.host") != socket.gethostname():
        return False
    try:
        pid = int(tags["lifecycle.pid"])
        started = float(tags.get("lifecycle.process_start", "0"))
    except (KeyError, ValueError):
        return False
    now = housekeeping.process_start_time(pid)
    return now is None or (started > 0 and abs(now - started) > 2.0)


def fail_dead_runs(client: Any, uri: str, dry_run: bool = False) -> list[Any]:
    """Mark FAILED every RUNNING run of this host whose process is gone; returns those runs.

    A killed command (kill -9, a crashed machine) cannot end its own run. Detection: each run is tagged with its
    process's pid, host name and start time; a run is orphaned when that pid no longer exists on this host, or
    now belongs to a process that started at another time (a reused pid). Runs of other hosts are left alone.
    """
    host = socket.gethostname().replace("'", "")
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`lifecycle.host` = '{host}'",
                                  max_results=1000) if experiments else []
    except Exception as exc:
        log.warning("could not look for runs of dead processes in %s: %s", uri, first_line(exc))
        return []
    dead = [run for run in runs if run_is_orphaned(run.data.tags)]
    if dry_run:
        return dead
    for run in dead:
        note = (f"process {run.data.tags.get('lifecycle.pid')} on {host} ended without closing this run; marked "
                f"FAILED by pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        try:
            client.set_tag(run.info.run_id, "lifecycle.failure", note)
            client.set_terminated(run.info.run_id, "FAILED")
        except Exception as exc:
            log.warning("could not mark run %s FAILED: %s", run.info.run_id, first_line(exc))
            continue
        log.warning("run %s (%s): %s", run.info.run_id, run.info.run_name, note)
    return dead


class NullTracker:
    """Tracking switched off: every call is accepted and nothing is recorded."""

    enabled = False
    run_id: str | None = None
    last_run_id: str | None = None
    experiment_id: str | None = None

    @contextmanager
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None,
            parent_run_id: str | None = None) -> Iterator[NullTracker]:
        yield self

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        pass

    def log_input(self, texts: Sequence[str], labels: Sequence[str], *, name: str, source: str, context: str) -> None:
        pass

    @property
    def registers(self) -> bool:
        """Whether :meth:`register` registers versions (tracking on, ``tracking.register_model``)."""
        return False

    def register(self, model_name: str, tags: Mapping[str, str] | None = None, description: str | None = None
                 ) -> str | None:
        return None

    def log_pyfunc(self, version_path: Path, example: Sequence[str] | None = None) -> str | None:
        return None

    def registered_version_of(self, run_id: str | None, model_name: str) -> str | None:
        """``models:/<model_name>/<n>`` registered by run ``run_id``, None when there is none (or no store)."""
        return None

    def move_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point ``alias`` of ``model_name`` at registered ``version``."""

    def resumable_run(self, run_file: Path) -> str | None:
        """The run recorded in ``run_file`` by ``remember_run``, if it lives in this tracker's store."""
        return None

    def remember_run(self, run_file: Path) -> None:
        """Record the active run in ``run_file`` so an interrupted step can resume it."""


class Tracker(NullTracker):
    """MLflow tracking: one experiment per config, one run per step, versions registered under the config name."""

    enabled = True

    def resumable_run(self, run_file: Path) -> str | None:
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return previous.get("run_id") if previous.get("uri") == self.uri else None

    def remember_run(self, run_file: Path) -> None:
        if self.run_id is None:
            return
        tmp = run_file.with_name(f".{run_file.name}.tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "uri": self.uri}), encoding="utf-8")
        tmp.replace(run_file)

    def __init__(self, cfg: TrackingConfig, experiment: str) -> None:
        self.cfg = cfg
        self.uri = absolute_uri(cfg.uri or default_tracking_uri())
        mlflow = _mlflow()
        self.client = open_client(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.experiment or experiment, self.uri)
        self.run_id = None
        self._logged: dict[str, Any] = {}  # run id -> the pyfunc's ModelInfo logged into it

    @contextmanager
    def run(self, step: str, name: str, tags: Mapping[str, str] | None = None, resume_run_id: str | None = None,
            parent_run_id: str | None = None) -> Iterator[Tracker]:
        """Start (or resume) a run for one step; nested under an active run (pipeline, experiment) if any, else
        under ``parent_run_id`` when given (an experiment cell in a worker process).

        An exception inside the block ends the run FAILED and propagates.
        """
        mlflow = _mlflow()
        all_tags = {"lifecycle.step": step, **(tags or {}), **process_tags()}
        parent = mlflow.active_run()
        if parent is not None:
            all_tags.setdefault("lifecycle.parent_run", parent.info.run_id)
        elif parent_run_id:
            all_tags.setdefault("lifecycle.parent_run", parent_run_id)
        kwargs: dict[str, Any] = {"run_id": resume_run_id} if resume_run_id else {
            "experiment_id": self.experiment_id, "run_name": name}
        if parent is None and parent_run_id and not resume_run_id:
            kwargs["parent_run_id"] = parent_run_id
        previous = self.run_id
        active = self._write("start a run", lambda: mlflow.start_run(nested=parent is not None, tags=all_tags,
                                                                    **kwargs))
        self.run_id = active.info.run_id
        if resume_run_id and "lifecycle.failure" in active.data.tags:  # resumed after its process was killed
            self._write("clear the failure tag", lambda: self.client.delete_tag(resume_run_id, "lifecycle.failure"))
        status = "FINISHED"
        try:
            yield self
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            self.last_run_id = active.info.run_id
            self.run_id = previous
            try:
                self._write(f"end run {active.info.run_id} as {status}", lambda: mlflow.end_run(status))
            except TrackingError:
                if status == "FINISHED":
                    raise
                log.warning("run %s could not be marked %s; the next command marks it FAILED", active.info.run_id,
                            status)

    def _write(self, what: str, call: Callable[[], T]) -> T:
        return _retry(what, call, self.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow = _mlflow()
        items = [(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 90):
            chunk = dict(items[start:start + 90])
            self._write("log params", lambda chunk=chunk: mlflow.log_params(chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._write("log metrics", lambda: _mlflow().log_metrics(values, step=step))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write("set tags", lambda: _mlflow().set_tags(dict(tags)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._write(f"log {artifact_file}", lambda: _mlflow().log_text(text, artifact_file))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._write(f"log {artifact_file}", lambda: _mlflow().log_dict(data, artifact_file))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._write(f"log {path.name}", lambda: _mlflow().log_artifact(str(path), artifact_path))

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        self._write(f"log {path.name}/", lambda: _mlflow().log_artifacts(str(path), artifact_path))

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        frame = pd.DataFrame(list(rows))
        self._write(f"log {artifact_file}", lambda: _mlflow().log_table(frame, artifact_file))

    def log_input(self, texts: Sequence[str], labels: Sequence[str], *, name: str, source: str, context: str) -> None:
        """Record a split as an MLflow dataset input (its digest, schema, size, source)."""
        import warnings

        import pandas as pd

        mlflow = _mlflow()
        frame = pd.DataFrame({"text": list(texts), "label": list(labels)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets="label")
            # Two processes logging the same split race on the datasets table's unique key: the loser retries and
            # finds the winner's row.
            self._write(f"log dataset {name}", lambda: mlflow.log_input(dataset, context=context))

    @property
    def registers(self) -> bool:
        return bool(self.cfg.register_model)

    def register(self, model_name: str, tags: Mapping[str, str] | None = None, description: str | None = None
                 ) -> str | None:
        """Register a new version of ``model_name``: the pyfunc this run logged (:meth:`log_pyfunc`; its source is
        that MLflow model, the version directory inside it), else this run's ``version`` artifact directory."""
        if not self.cfg.register_model or self.run_id is None:
            return None
        run = self._write("read the run", lambda: self.client.get_run(self.run_id))
        run_id = self.run_id

        def ensure_model() -> None:
            try:
                self.client.get_registered_model(model_name)
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
                try:
                    self.client.create_registered_model(
                        model_name, description="lifecycle text classifier versions (checkpoint, frozen, compressed)")
                except Exception as created:  # another process registered the name first: use theirs
                    if "already exists" not in str(created) and "RESOURCE_ALREADY_EXISTS" not in str(created):
                        raise

        self._write(f"register {model_name!r}", ensure_model)
        logged = self._logged.get(run_id)
        # models:/<model id>, as MLflow registers a logged model (the UI links the version to it; the store keeps
        # the model's artifact location as the version's download URI).
        source = logged.model_uri if logged else f"{run.info.artifact_uri}/{VERSION_ARTIFACT}"
        version = self._write(f"register a version of {model_name!r}", lambda: self.client.create_model_version(
            model_name, source=source, run_id=run_id, tags=dict(tags or {}), description=description,
            model_id=logged.model_id if logged else None))
        self.set_tags({"lifecycle.registered": f"models:/{model_name}/{version.version}"})
        return str(version.version)

    def log_pyfunc(self, version_path: Path, example: Sequence[str] | None = None) -> str | None:
        """Log a version into this run as a models-from-code pyfunc named after it (see :func:`log_pyfunc`), so
        ``mlflow models serve -m <uri>`` runs it and :meth:`register` registers it; the URI is returned and kept in
        the run's ``lifecycle.pyfunc`` tag."""
        if self.run_id is None:
            return None
        info = _log_pyfunc_model(version_path, self.uri, name=version_path.name, example=example)
        self._logged[self.run_id] = info
        self.set_tags({"lifecycle.pyfunc": info.model_uri})
        return str(info.model_uri)

    def registered_version_of(self, run_id: str | None, model_name: str) -> str | None:
        if not run_id:
            return None
        found = self._write("search model versions", lambda: self.client.search_model_versions(
            f"name = '{model_name}' and run_id = '{run_id}'"))
        return f"models:/{model_name}/{found[0].version}" if found else None

    def move_alias(self, model_name: str, alias: str, version: str) -> None:
        self._write(f"set alias {alias!r}", lambda: self.client.set_registered_model_alias(model_name, alias, version))


# The MLflow UI opens an experiment without this tag in its GenAI mode (traces, agent versions); ours are model
# development: the runs table and compare view.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts under ``<the SQLite database's folder>/artifacts``, whatever
    the working directory) if missing; a process that loses the race to create it reads the winner's. An existing
    experiment of a SQLite store whose artifacts live elsewhere (one made by MLflow itself or by other code, which
    default to ``./mlruns`` of the working directory they ran in) is used as it is, with a warning naming where."""
    location = artifact_root(uri)

    def get_or_create() -> Any:
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            if EXPERIMENT_KIND_TAG not in (existing.tags or {}):  # made by an older lifecycle or by other code
                client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return existing
        return client.get_experiment(client.create_experiment(name, artifact_location=location, tags={
            EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
            "mlflow.note.content": f"lifecycle versions of {name!r}: one run per step (train, freeze, compress, "
                                   "retrain...), each version registered as an MLflow model of the same name."}))

    experiment = _retry(f"open experiment {name!r}", get_or_create, uri)
    if location is not None and not _is_within(experiment.artifact_location, Path(location).parent):
        key = (absolute_uri(uri), name)
        if key not in _WARNED_LOCATIONS:
            _WARNED_LOCATIONS.add(key)
            log.warning("experiment %r keeps its artifacts in %s, not under %s (it was not created by lifecycle); "
                        "its new runs' artifacts go there too. Set tracking.experiment to a new name to keep them "
                        "beside the store.", name, experiment.artifact_location, location)
    return str(experiment.experiment_id)


_WARNED_LOCATIONS: set[tuple[str, str]] = set()


def _is_within(location: str, folder: Path) -> bool:
    """Whether an artifact location (a path or ``file:`` URI) is inside ``folder``."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else location)
    return path.resolve().is_relative_to(folder.resolve())


def make_tracker(cfg: TrackingConfig, experiment: str) -> NullTracker:
    """A Tracker when tracking is enabled, else a NullTracker."""
    return Tracker(cfg, experiment) if cfg.enabled else NullTracker()


def resolve_version(ref: str, tracking_uri: str | None = None) -> Path:
    """A VERSION argument as a local directory: a path, ``runs:/<id>/...``, ``models:/<name>/<n>`` or ``@alias``.

    URIs are downloaded from the tracking server's artifact store into a temp folder.
    """
    if not ref.startswith(("runs:/", "models:/")):
        return Path(ref)
    if ref.startswith("models:/"):  # the version directory inside the registered MLflow model, not the whole model
        uri = tracking_uri or default_tracking_uri()
        target = housekeeping.make_temp_dir("version")
        try:
            return download_source(lookup_registry(ref, uri).source, target / VERSION_ARTIFACT, uri)
        except TrackingError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise ModelError(f"{ref}: cannot be fetched from MLflow at {uri} ({exc}).",
                             "Check the name and number (`lifecycle versions`) or pass a version directory.") from None
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    uri = ref
    if ref.startswith("runs:/") and ref.rstrip("/").count("/") == 1:
        uri = f"{ref.rstrip('/')}/{VERSION_ARTIFACT}"
    target = housekeeping.make_temp_dir("version")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(
            f"{ref}: cannot be fetched from MLflow at {mlflow.get_tracking_uri()} ({first_line(exc)}).",
            "Check the name and number (`mlflow models` UI) or pass a version directory.",
        ) from None
    return Path(local)


def to_json(data: Any) -> str:
    """Compact JSON for tags and params."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


# --- The model registry, through the mlflow client where lifecycle.registry_client cannot go ---------------------


def lookup_registry(ref: str, tracking_uri: str | None = None) -> RegistryEntry:
    """Where a registry reference points now (an alias is read afresh on every call), in any store.

    Over HTTP this is :func:`lifecycle.registry_client.rest_lookup` (no mlflow import); other stores go through the
    mlflow client.

    Raises:
        ConfigError: a malformed reference.
        TrackingError: the store is unreachable, or the name, alias, version or run does not exist.
    """
    form, first, second = parse_registry_ref(ref)
    uri = tracking_uri or default_tracking_uri()
    if is_http_uri(uri):
        return rest_lookup(ref, uri)
    client = open_client(uri)
    try:
        if form == "run":
            return RegistryEntry(ref, None, None, f"{client.get_run(first).info.artifact_uri}/{second}", first)
        if form == "alias":
            found = client.get_model_version_by_alias(first, second)
        else:
            found = client.get_model_version(first, second)
    except Exception as exc:
        raise TrackingError(f"{ref}: not found in MLflow at {uri} ({first_line(exc)}).",
                            "Check the model name, alias or version in the registry.") from None
    source = found.source
    if is_model_source(source):
        source = version_dir_in(client.get_model_version_download_uri(found.name, found.version))
    return RegistryEntry(ref, found.name, str(found.version), source, found.run_id)


def download_source(source: str, dst: Path, tracking_uri: str | None = None) -> Path:
    """Copy a registry entry's artifact directory to ``dst`` (which must not exist) and return it, from any store.

    Local paths and ``mlflow-artifacts:`` sources behind an HTTP server go through
    :func:`lifecycle.registry_client.copy_source` (no mlflow import); other schemes (s3:, gs:, ...) use mlflow's
    artifact repositories.

    Raises:
        TrackingError: the source cannot be listed or read.
    """
    uri = tracking_uri or default_tracking_uri()
    if copies_without_mlflow(source, uri):
        return copy_source(source, dst, uri)
    with download_cleanup(source, dst, uri):
        dst.mkdir(parents=True)
        found = _mlflow().artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
        inner = Path(found)
        if inner != dst:  # download_artifacts nests the directory under its own name
            for child in inner.iterdir():
                child.rename(dst / child.name)
            inner.rmdir()
    return dst


def set_alias(ref: str, alias: str, tracking_uri: str | None = None) -> RegistryEntry:
    """Point ``alias`` of a registered model at a version: ``models:/name/<n>``, ``models:/name@other``, or a
    version directory whose run registered it.

    Raises:
        ConfigError: the reference is not a registered version.
        TrackingError: MLflow refuses (unknown model or version, store unreachable).
    """
    uri = tracking_uri or default_tracking_uri()
    if not ref.startswith(("models:/", "runs:/")):
        ref = _registered_ref(Path(ref), uri)
    form, name, _ = parse_registry_ref(ref)
    if form == "run":
        raise ConfigError(f"{ref!r}: promote takes a registered version (models:/<name>/<n> or models:/<name>@"
                          "<alias>), not a run; `lifecycle versions` lists them.")
    if not alias or "/" in alias or "@" in alias or alias.isdigit():
        raise ConfigError(f"--alias {alias!r} is not a valid alias; use a word such as champion (not a number).")
    entry = lookup_registry(ref, uri)
    try:
        open_client(uri).set_registered_model_alias(name, alias, str(entry.version))
    except Exception as exc:
        raise TrackingError(f"MLflow at {uri} refused alias {alias!r} for {ref}: {first_line(exc)}.") from None
    return entry


def _registered_ref(path: Path, uri: str) -> str:
    """``models:/name/<n>`` of the registered version a version directory's run created."""
    from lifecycle.artifacts import load_version

    run_id = load_version(path).manifest.run_id  # checked (digest, files) before its run id is believed
    if not run_id:
        raise ConfigError(f"{path}: this version was made without tracking (no run_id), so it is not registered; "
                          "re-run its step with tracking on, or pass models:/<name>/<n>.")
    try:
        found = open_client(uri).search_model_versions(f"run_id = '{run_id}'")
    except Exception as exc:
        raise TrackingError(f"MLflow at {uri} cannot search model versions: {first_line(exc)}.") from None
    if not found:
        raise TrackingError(f"{path}: run {run_id} registered no model version in MLflow at {uri}.",
                            "Check MLFLOW_TRACKING_URI, or pass models:/<name>/<n>.")
    return f"models:/{found[0].name}/{found[0].version}"


PYFUNC_ARTIFACT = "pyfunc"


@dataclass(frozen=True)
class LoggedPyfunc:
    """A version logged as an MLflow model: its id and ``models:/<id>`` URI."""

    model_id: str
    model_uri: str


def log_pyfunc(version_path: Path, registered_name: str | None = None, tracking_uri: str | None = None,
               experiment: str = "lifecycle-pyfunc", example: Sequence[str] | None = None) -> str:
    """Log a version as an MLflow models-from-code pyfunc taking a ``list[str]`` of texts (see
    :func:`_log_pyfunc_model`), into the active run, else into a new run of ``experiment``.

    Returns:
        The model URI (``models:/<model id>``), or ``models:/<registered_name>/<n>`` when registered.

    Raises:
        ModelError: the directory is not a version that predicts (a tokenizer, or unreadable).
        TrackingError: MLflow refuses the model.
    """
    mlflow = _mlflow()
    uri = absolute_uri(tracking_uri or default_tracking_uri())
    mlflow.set_tracking_uri(uri)
    with _active_or_new_run(mlflow, experiment, uri):
        info = _log_pyfunc_model(version_path, uri, name=version_path.name, example=example)
    if not registered_name:
        return info.model_uri
    client = open_client(uri)
    try:
        client.create_registered_model(registered_name)
    except Exception as exc:
        if "already exists" not in str(exc) and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise TrackingError(f"MLflow at {uri} refused model {registered_name!r}: {first_line(exc)}.") from None
    found = _retry(f"register a version of {registered_name!r}", lambda: client.create_model_version(
        registered_name, source=info.model_uri, run_id=mlflow.get_logged_model(info.model_id).source_run_id,
        model_id=info.model_id), uri)
    return f"models:/{registered_name}/{found.version}"


def _log_pyfunc_model(version_path: Path, uri: str, *, name: str, example: Sequence[str] | None) -> LoggedPyfunc:
    """Log a version (a checkpoint, frozen or compressed) into the active run as an MLflow models-from-code pyfunc.

    ``mlflow.pyfunc.load_model(uri)`` and ``mlflow models serve -m uri --env-manager local`` then run it: a frozen or
    compressed version in its LiteRT serving form (no TensorFlow), a checkpoint in Keras. The version directory is
    the model's ``version`` artifact (``artifacts/version/`` inside the model: ``registry_client.PYFUNC_VERSION_PATH``);
    the ``lifecycle`` and ``tokenization`` packages travel with it as code paths, so the target environment needs
    only the pip requirements logged with it. ``example``: a few of the version's own texts, saved as the input
    example (the signature, list[str] in and one prediction per text out, comes from the model's type hints).
    """
    from importlib.metadata import version as installed

    from lifecycle.artifacts import load_version
    from lifecycle.manifest import TOKENIZER_FILE

    package = Path(__file__).resolve().parent
    manifest = load_version(version_path).manifest  # what load_context will check, checked before logging
    try:
        kind = json.loads((version_path / TOKENIZER_FILE).read_text(encoding="utf-8"))["kind"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{version_path}: not a lifecycle version (manifest.json or {TOKENIZER_FILE} "
                         "unreadable).") from None
    if manifest.kind not in ("checkpoint", "frozen", "compressed"):
        raise ModelError(f"{version_path}: a {manifest.kind} version does not predict, so it cannot be logged as "
                         "a pyfunc; train, freeze or compress one.")
    packages = ["numpy", "pydantic", "pyyaml"]
    packages += ["ai-edge-litert"] if manifest.serving else ["tensorflow-cpu", "keras"]
    if kind == "bpe":
        packages.append("youtokentome")
    requirements = [f"{package_name}=={installed(package_name)}" for package_name in packages]
    mlflow = _mlflow()
    try:
        with housekeeping.temp_dir("pyfunc") as staging:
            # The artifact keeps its folder's name inside the model: staged as version/, whatever the version's own.
            staged = staging / VERSION_ARTIFACT
            shutil.copytree(version_path, staged)
            info = _retry("log the pyfunc", lambda: mlflow.pyfunc.log_model(
                name=_model_name(name),
                python_model=str(package / "serving" / "pyfunc_model.py"),
                artifacts={VERSION_ARTIFACT: str(staged)},
                code_paths=[str(package), str(package.parent / "tokenization")],
                pip_requirements=requirements,
                input_example=list(example)[:3] if example else None,
                tags={"lifecycle.kind": manifest.kind},
            ), uri)
    except (TrackingError, ModelError):
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow refused to log {version_path} as a pyfunc: {first_line(exc)}.") from None
    return LoggedPyfunc(info.model_id, info.model_uri)


def _model_name(name: str) -> str:
    """A logged model's name from a version folder's: MLflow refuses ``/ : . % " '`` in it (``prune-0.5+int8`` ->
    ``prune-0_5+int8``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_+-]", "_", name).strip("_") or "version"


@contextmanager
def _active_or_new_run(mlflow: Any, experiment: str, uri: str) -> Iterator[None]:
    if mlflow.active_run() is not None:
        yield
        return
    # Artifacts beside the database, as Tracker's, never in a ./mlruns or ./artifacts of the working directory.
    experiment_id = ensure_experiment(open_client(uri), experiment, uri)
    with mlflow.start_run(experiment_id=experiment_id, tags={"lifecycle.step": "pyfunc"}):
        yield


def registered_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their lineage tags, sizes, accuracy and aliases, sorted by model name and version.

    Each row: model name, version number, kind, recipe, run id, parent run id, parent version, test accuracy,
    deployed size (the registration's ``lifecycle.size_bytes`` tag, else its run's ``size_bytes`` metric), aliases.

    Raises:
        TrackingError: a SQLite store that does not exist (a read creates none).
    """
    uri = absolute_uri(tracking_uri or default_tracking_uri())
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingError(f"no MLflow store at {db}: nothing has been tracked here, so no version is registered.",
                            "Run a step with tracking on first, or point MLFLOW_TRACKING_URI at the store.")
    client = open_client(uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        # search_model_versions leaves a version's aliases out: the registered model lists them (alias -> version).
        by_version: dict[str, list[str]] = {}
        for alias, number in (client.get_registered_model(model_name).aliases or {}).items():
            by_version.setdefault(str(number), []).append(alias)
        for mv in client.search_model_versions(f"name='{model_name}'"):
            run = client.get_run(mv.run_id) if mv.run_id else None
            metrics = run.data.metrics if run else {}
            tags = mv.tags

            def number(key: str, tags: Mapping[str, str] = tags, metrics: Mapping[str, float] = metrics
                       ) -> float | None:
                value = tags.get(f"lifecycle.{key}")
                return float(value) if value not in (None, "") else metrics.get(key)

            rows.append({
                "name": model_name, "version": int(mv.version), "kind": tags.get("lifecycle.kind", ""),
                "recipe": tags.get("lifecycle.recipe", "-"), "run_id": mv.run_id,
                "parent_run": tags.get("lifecycle.parent_run", ""),
                "parent_version": tags.get("lifecycle.parent_version", ""),
                "test_accuracy": number("test_accuracy"), "size_bytes": number("size_bytes"),
                "aliases": sorted(set(getattr(mv, "aliases", []) or []) | set(by_version.get(str(mv.version), []))),
            })
    return sorted(rows, key=lambda r: (r["name"], r["version"]))


@dataclass(frozen=True)
class StoreAudit:
    """What a store holds for one registered model: runs by status, and versions that do not point at their own run.

    ``crossed`` lists ``(version, reason)`` for a registered version whose source is not its own run's ``version``
    artifact, whose run id another version also claims, or whose downloaded manifest names another run.
    """

    runs: dict[str, int]
    versions: int
    crossed: list[tuple[str, str]]

    @property
    def finished(self) -> int:
        return self.runs.get("FINISHED", 0)


def audit_store(uri: str, model_name: str, check_manifests: bool = True) -> StoreAudit:
    """Count a store's runs by status and check every registered version of ``model_name`` against its run."""
    from collections import Counter

    client = open_client(uri, sweep=False)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000) if experiments else []
    versions = client.search_model_versions(f"name='{model_name}'")
    crossed: list[tuple[str, str]] = []
    claimed = Counter(v.run_id for v in versions)
    for mv in versions:
        directory = mv.source
        if is_model_source(mv.source):  # registered from the pyfunc its run logged
            logged = client.get_logged_model(mv.source.removeprefix("models:/"))
            expected = mv.source if logged.source_run_id == mv.run_id else f"a model of run {mv.run_id}"
            directory = version_dir_in(client.get_model_version_download_uri(mv.name, mv.version))
        else:
            expected = f"{client.get_run(mv.run_id).info.artifact_uri}/{VERSION_ARTIFACT}"
        if mv.source != expected:
            crossed.append((mv.version, f"source {mv.source} is not its run's {expected}"))
        elif claimed[mv.run_id] > 1:
            crossed.append((mv.version, f"run {mv.run_id} is claimed by {claimed[mv.run_id]} versions"))
        elif check_manifests:
            with housekeeping.temp_dir("audit") as folder:
                local = download_source(directory, folder / "v", uri)
                found = json.loads((local / "manifest.json").read_text(encoding="utf-8")).get("run_id")
            if found != mv.run_id:
                crossed.append((mv.version, f"its manifest names run {found}, not {mv.run_id}"))
    return StoreAudit(dict(Counter(r.info.status for r in runs)), len(versions), crossed)
