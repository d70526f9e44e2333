"""A version directory: its layout, manifest.json, file sizes and hashes, atomic creation and verified loading.

A version is built in a hidden temp folder beside its target and renamed into place only when complete, so a crash
or an error leaves no half-written version. Loading checks every file against the sha256 in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import __version__
from lifecycle.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from lifecycle.config import Config

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
KERAS_FILE = "model.keras"
KINDS = ("tokenizer", "checkpoint", "frozen", "compressed")


@dataclass(frozen=True)
class Version:
    """A loaded, verified version directory."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("labels", ()))

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    @property
    def config(self) -> Config:
        # Imported here: loading a version to predict (graph.pb or the serving form) never needs pydantic or yaml,
        # which cost a serving process about 10 MB (benchmarks/graph_memory.py).
        from lifecycle.config import validate

        return validate(self.manifest["config"], f"{self.path / MANIFEST} (config)")

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read through one reused buffer (``hashlib.file_digest``)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dir_bytes(path: Path) -> int:
    """Total size of the files below a directory (or of one file)."""
    return sum(file.stat().st_size for file in files_below(path))


def files_below(path: Path) -> list[Path]:
    """The files of a directory (sorted), or the one file."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def gzip_bytes(paths: Sequence[Path]) -> int:
    """Bytes after gzip -6 of each file, summed (what a compressed transfer or image layer would hold)."""
    import gzip

    return sum(len(gzip.compress(file.read_bytes(), compresslevel=6)) for path in paths for file in files_below(path))


def versions_root() -> Path:
    """Where versions go when no --output is given: ``$LIFECYCLE_VERSIONS_DIR`` or ``<project root>/versions``."""
    env = os.environ.get("LIFECYCLE_VERSIONS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    from lifecycle.config import project_root

    return project_root() / "versions"


def default_output(name: str, kind: str, root: Path | None = None) -> Path:
    """A new folder name under the versions directory: ``<config>-<kind>-<UTC timestamp>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = (root or versions_root()) / f"{name}-{kind}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_output(output: Path) -> Path:
    """Refuse an --output that already exists (a version is never overwritten in place)."""
    output = output.expanduser().resolve()
    if output.exists():
        raise ConfigError(f"--output {output} already exists. Choose a new directory or remove the old one.")
    return output


def write_version(output: Path, kind: str, build: Callable[[Path], dict[str, Any]]) -> Version:
    """Create a version atomically.

    Args:
        output: the final directory; must not exist.
        kind: one of KINDS.
        build: fills the temp directory it is given and returns the manifest fields it knows (labels, max_len,
            config, tensors, sizes, parent, recipe...). ``files``, ``format``, ``kind``, versions and ``created`` are
            added here.

    Returns:
        The finished version.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown version kind {kind!r}")
    output = check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".tmp-{output.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fields = build(tmp)
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _library_versions(),
            **fields,
        }
        manifest["files"] = {
            str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Version(output, manifest)


def load_version(path: Path, verify: bool = True) -> Version:
    """Open a version directory, checking its manifest and (by default) every file's sha256.

    Raises:
        ModelError: naming the file that is missing, unreadable or altered.
    """
    path = path.expanduser().resolve()
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ModelError(f"{path}: no such version directory. Pass a version path, runs:/ or models:/ URI.")
    if not manifest_path.is_file():
        raise ModelError(f"{manifest_path}: missing; {path} is not a lifecycle version (or it is incomplete).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path}: not valid JSON ({exc}). The version is damaged; re-create it.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("kind") not in KINDS:
        raise ModelError(
            f"{manifest_path}: unsupported manifest (format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None}); this lifecycle reads format "
            f"{FORMAT_VERSION}."
        )
    if verify:
        for rel, meta in manifest.get("files", {}).items():
            file = path / rel
            if not file.is_file():
                raise ModelError(
                    f"{file}: listed in the manifest but missing. The version is incomplete; re-create it."
                )
            if sha256_file(file) != meta["sha256"]:
                raise ModelError(
                    f"{file}: sha256 does not match manifest.json (file altered or truncated). Restore the file or "
                    "re-create the version."
                )
    return Version(path, manifest)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory (tokenizer files) into a version under construction."""
    shutil.copytree(src, dst)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"lifecycle": __version__}
    for package in ("tensorflow-cpu", "keras", "numpy", "youtokentome", "gensim"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
