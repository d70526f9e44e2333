"""Where a served model comes from: a version directory, or a registry reference fetched into a private folder.

A ``models:/name@alias`` source is *watched*: ``lookup`` reads where the alias points now, and the registry loads a
new version when that changes. Lookups and downloads against an MLflow tracking server use its REST API in this
process (:mod:`lifecycle.registry_client`), as do copies of local version directories; lookups in any other store
(sqlite, file) and downloads from artifact stores only mlflow reads (s3:, gs:, ...) run ``python -m
lifecycle.serving.sources`` in a helper process, so the server never imports mlflow (4 s and 118 MB, more than ten
int8 models); a SQLite store whose files have not changed since the last lookup is not asked again.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from lifecycle import registry_client
from lifecycle.errors import LifecycleError, TrackingError

log = logging.getLogger(__name__)

HELPER_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Fetched:
    """A version on local disk, ready for ``load_version``; ``owned`` folders are deleted when released."""

    path: Path
    label: str  # what responses name: models:/name/<n>, runs:/<id>, or the directory's name
    registered: str | None  # the registry version number, when it came from the registry
    owned: bool


class Source:
    """One configured VERSION: a directory, ``runs:/``, ``models:/name/<n>`` or a watched ``models:/name@alias``."""

    def __init__(self, ref: str, tracking_uri: str | None, work_dir: Path) -> None:
        self.ref = ref
        self.registry = ref.startswith(("models:/", "runs:/"))
        self.form = registry_client.parse_registry_ref(ref)[0] if self.registry else "path"
        self.watched = self.form == "alias"
        self.tracking_uri = tracking_uri or registry_client.default_tracking_uri()
        self.in_process = registry_client.is_http_uri(self.tracking_uri)
        self.work_dir = work_dir
        self._store_stamp: tuple[int, ...] | None = None
        self._last: registry_client.RegistryEntry | None = None

    def lookup(self) -> registry_client.RegistryEntry | None:
        """Where the reference points now (None for a directory)."""
        if not self.registry:
            return None
        if self.in_process:
            return registry_client.rest_lookup(self.ref, self.tracking_uri)
        stamp = self._sqlite_stamp()
        if stamp is not None and stamp == self._store_stamp and self._last is not None:
            return self._last  # the database has not been written since: the alias cannot have moved
        self._last = registry_client.RegistryEntry(**_helper(["lookup", self.ref, self.tracking_uri]))
        self._store_stamp = stamp
        return self._last

    def _sqlite_stamp(self) -> tuple[int, ...] | None:
        """Size and mtime of a SQLite store and its journal files (None for other stores)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        database = Path(self.tracking_uri.removeprefix("sqlite:///"))
        stamp: list[int] = []
        for suffix in ("", "-wal", "-journal"):
            path = database.with_name(database.name + suffix)
            try:
                info = path.stat()
                stamp += [info.st_mtime_ns, info.st_size]
            except OSError:
                stamp += [0, 0]
        return tuple(stamp)

    def fetch(self, entry: registry_client.RegistryEntry | None) -> Fetched:
        """The version ``entry`` names, copied into a new private folder (a directory source is used in place)."""
        if entry is None:
            path = Path(self.ref).expanduser().resolve()
            return Fetched(path, path.name, None, owned=False)
        label = f"models:/{entry.name}/{entry.version}" if entry.version is not None else entry.ref
        stem = f"{entry.name}-v{entry.version}" if entry.version is not None else f"run-{entry.run_id}"
        target = self.work_dir / f"{stem}-{uuid.uuid4().hex[:8]}"
        if registry_client.copies_without_mlflow(entry.source, self.tracking_uri):
            registry_client.copy_source(entry.source, target, self.tracking_uri)
        else:
            _helper(["download", entry.source, str(target), self.tracking_uri])
        return Fetched(target, label, entry.version, owned=True)


def discard(fetched: Fetched) -> None:
    """Delete a fetched folder this process owns."""
    if fetched.owned:
        shutil.rmtree(fetched.path, ignore_errors=True)


def _helper(args: list[str]) -> dict:
    """Run this module in a child process (it may import mlflow) and return its JSON answer."""
    try:
        done = subprocess.run([sys.executable, "-m", "lifecycle.serving.sources", *args], capture_output=True,
                              text=True, timeout=HELPER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise TrackingError(f"MLflow lookup {' '.join(args[:2])} took over {HELPER_TIMEOUT_S:.0f} s; is the "
                            "tracking store reachable?") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if done.returncode != 0 or "error" in answer or not answer:
        message = answer.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise TrackingError(message)
    return answer


def _main(argv: list[str]) -> int:
    """``lookup REF URI`` -> the entry as JSON; ``download SOURCE DST URI`` -> {"path": DST}."""
    from lifecycle import tracking  # the helper process may import mlflow; the server never does

    try:
        if argv[0] == "lookup":
            answer = asdict(tracking.lookup_registry(argv[1], argv[2]))
        elif argv[0] == "download":
            answer = {"path": str(tracking.download_source(argv[1], Path(argv[2]), argv[3]))}
        else:
            raise TrackingError(f"unknown helper command {argv[0]!r}")
    except LifecycleError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
