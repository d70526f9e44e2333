"""What a killed command leaves behind, made recognisable and swept by the next one.

Every temporary directory lifecycle makes is named ``.lifecycle-<pid>-<host>-<label>-<random>`` (``<host>``: eight
hex digits of the host name's sha1), beside the version it builds or under the system temp folder. A directory
whose process is gone (no such pid on this host, or a pid that started after the directory was made, i.e. reused)
belongs to nobody and is removed by :func:`sweep_debris`, which every command calls on start. A temp directory
beside an ``--output`` outside the swept folders is also linked from ``<versions>/.work/.inflight/``, so the sweep
finds it there. Directories of other hosts (a shared file system) are left to commands on those hosts.

Standard library only: the CLI and the serving process call it without importing TensorFlow or MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = ".lifecycle-"
_NAME = re.compile(r"^\.lifecycle-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-")
# Temp directories of lifecycle before names carried their owner (`.tmp-<version>-<8 hex>`): swept by hand only
# (`lifecycle runs clean`), once older than this, since their owner cannot be told.
LEGACY = re.compile(r"^\.tmp-.+-[0-9a-f]{8}$")
LEGACY_AGE_S = 3600.0


def host_tag() -> str:
    """Eight hex digits naming this host (a host name may hold any character; this never holds a '-')."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def owner_prefix(label: str) -> str:
    """The name prefix of a temp directory this process owns: ``.lifecycle-<pid>-<host>-<label>-``."""
    clean = re.sub(r"[^A-Za-z0-9_.]+", "_", label)[:60] or "tmp"
    return f"{PREFIX}{os.getpid()}-{host_tag()}-{clean}-"


INFLIGHT = ".inflight"


def make_temp_dir(label: str, parent: Path | None = None, journal: Path | None = None) -> Path:
    """A new, empty temp directory owned by this process, under ``parent`` (default: the system temp folder).

    ``journal``: a swept root whose ``.work/.inflight/`` gets a link to the directory (for parents no sweep visits);
    :func:`release_temp_dir` removes it.
    """
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    if journal is None:
        return Path(tempfile.mkdtemp(prefix=owner_prefix(label), dir=parent))
    links = journal / ".work" / INFLIGHT
    with contextlib.suppress(OSError):
        links.mkdir(parents=True, exist_ok=True)
    base = parent if parent is not None else Path(tempfile.gettempdir())
    for _ in range(100):
        path = base / f"{owner_prefix(label)}{secrets.token_hex(4)}"
        # The link is written before the folder exists: a process killed at any moment leaves nothing, a link to
        # nothing (which the sweep drops once the owner is gone) or a linked folder, never an unlinked folder.
        link: Path | None = links / path.name
        try:
            os.symlink(path, link)
        except FileExistsError:
            continue
        except OSError:  # no journal to write (read-only root): the folder is still made, as before
            link = None
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if link is not None:
                link.unlink(missing_ok=True)
            continue
        return path
    raise FileExistsError(f"{base}: no free temp directory name for {owner_prefix(label)}*; remove stale ones.")


def release_temp_dir(path: Path, journal: Path | None = None) -> None:
    """Remove a temp directory (if still there) and its journal link."""
    shutil.rmtree(path, ignore_errors=True)
    if journal is not None:
        with contextlib.suppress(OSError):
            (journal / ".work" / INFLIGHT / path.name).unlink()


@contextlib.contextmanager
def temp_dir(label: str, parent: Path | None = None) -> Iterator[Path]:
    """:func:`make_temp_dir`, removed when the block ends (and by the next sweep if the process is killed)."""
    path = make_temp_dir(label, parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_file(target: Path, write: Callable[[Path], object]) -> None:
    """Write ``target`` whole or not at all: ``write`` fills a temp file beside it (named for this process, with the
    target's suffix, which Keras and numpy read the format from), then ``os.replace`` puts it in place. Concurrent
    writers of the same target each replace it with a complete file; a failed write leaves no temp file."""
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """When a process started (seconds since the epoch), from /proc; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    boot = _boot_time()
    if boot is None or len(fields) < 20:
        return 0.0
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int, since: float | None = None) -> bool:
    """True while process ``pid`` exists on this host and (when ``since`` is given) started before ``since``.

    A pid that started after ``since`` is a reused number, not the process that made the thing dated ``since``.
    """
    started = process_start_time(pid)
    if started is None:
        return False
    return since is None or started <= since + 2.0  # clock ticks and file times are coarse


def owner_of(name: str) -> tuple[int, str] | None:
    """(pid, host tag) of a temp directory name made by :func:`owner_prefix`, else None."""
    found = _NAME.match(name)
    return (int(found["pid"]), found["host"]) if found else None


def is_orphan(path: Path) -> bool:
    """True for a lifecycle temp directory of this host whose owning process is gone."""
    owner = owner_of(path.name)
    if owner is None or owner[1] != host_tag():
        return False
    if owner[0] == os.getpid():
        return False
    try:
        made = path.stat().st_mtime
    except OSError:
        return False
    return not pid_alive(owner[0], since=made)


def _owner_gone(link: Path) -> bool:
    """True unless the journal link's name says it belongs to a live process of this host (or of another host)."""
    owner = owner_of(link.name)
    if owner is None:
        return True
    if owner[1] != host_tag():
        return False
    if owner[0] == os.getpid():
        return False
    try:
        made = os.lstat(link).st_mtime
    except OSError:
        return False
    return not pid_alive(owner[0], since=made)


@dataclass(frozen=True)
class Swept:
    """One directory removed by a sweep, and its size."""

    path: Path
    bytes: int


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def sweep_debris(roots: Iterable[Path], *, legacy: bool = False, dry_run: bool = False) -> list[Swept]:
    """Remove orphaned temp directories directly under each root (and under each root's ``.work``).

    Args:
        roots: folders to look in (missing ones are skipped).
        legacy: also remove pre-ownership ``.tmp-*-<hex>`` directories older than an hour.
        dry_run: report what would go, remove nothing.
    """
    swept: list[Swept] = []
    seen: set[Path] = set()
    roots = list(roots)
    for root in roots:
        swept.extend(_sweep_journal(root / ".work" / INFLIGHT, dry_run))
        for folder in (root, root / ".work"):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                path = Path(entry.path)
                if path in seen or not entry.is_dir(follow_symlinks=False):
                    continue
                seen.add(path)
                orphan = is_orphan(path)
                if not orphan and legacy and LEGACY.match(entry.name):
                    with contextlib.suppress(OSError):
                        orphan = time.time() - path.stat().st_mtime > LEGACY_AGE_S
                if orphan and (found := _remove(path, dry_run)):
                    swept.append(found)
    return swept


def _remove(path: Path, dry_run: bool) -> Swept | None:
    """Remove an orphaned folder (unless ``dry_run``); None if it could not be removed."""
    size = _size(path)
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            return None
        log.info("removed %s (%d bytes) left by a process that is gone", path, size)
    return Swept(path, size)


def _sweep_journal(links: Path, dry_run: bool) -> list[Swept]:
    """Follow ``.inflight`` links: remove orphaned targets, and links whose target is gone."""
    swept: list[Swept] = []
    try:
        entries = list(os.scandir(links))
    except OSError:
        return swept
    for entry in entries:
        link = Path(entry.path)
        try:
            target = Path(os.readlink(link))
        except OSError:
            continue
        if not target.exists():
            # A link to nothing: its folder was removed, or its owner was killed before making it; while the owner
            # lives, it may be making the folder right now.
            if not dry_run and _owner_gone(link):
                with contextlib.suppress(OSError):
                    link.unlink()
            continue
        if not is_orphan(target) or not (found := _remove(target, dry_run)):
            continue
        if not dry_run:
            with contextlib.suppress(OSError):
                link.unlink()
        swept.append(found)
    return swept


@contextlib.contextmanager
def exclusive_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An ``flock`` on ``path`` (created if missing) for the block; yields False if ``blocking`` is off and another
    process holds it. The kernel drops the lock when its holder dies, so a killed process never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(path: Path) -> int | None:
    """The pid written into a lock file by its last holder, if readable."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
