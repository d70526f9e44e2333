"""A version directory: its layout, manifest.json, file sizes and hashes, atomic creation and verified loading.

A version is built in a hidden temp folder beside its target and renamed into place only when complete, so a crash
or an error leaves no half-written version.

What loading guarantees (format 2): the manifest carries a digest of itself (sha256 over the canonical JSON of every
other field, the ``files`` table included), checked before anything in it is believed; then every field the code
reads is checked (kind against the files present, labels against the output layer's width, max_len against the
input shape, input dtype, recipe steps, the serving form, the calibration temperature and abstain threshold),
every listed file against its sha256, and a file the manifest does not list is refused. The digest detects edits
and damage (a changed label, a deleted ``files`` table, a truncated copy); it is not a signature: someone who can
rewrite the directory can recompute it, and nothing here stops that. Loading also refuses format-1 manifests (no
digest): ``upgrade_version`` checks such a version's files against its table and rewrites the manifest as format 2.
A manifest field added since format 2 began is optional, so older format-2 versions still load: one without
``calibration`` predicts with temperature 1 and no abstain threshold.

Plain Python only: a serving process loads versions and must not pay for pydantic, yaml or TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import __version__, housekeeping
from lifecycle.errors import ConfigError, ModelError

# The schema's names, defined with it in lifecycle.manifest and re-exported: a version's layout is read from here.
from lifecycle.manifest import (  # noqa: F401 (names other modules read as artifacts.X)
    DIGEST_FIELD,
    FORMAT_VERSION,
    GRAPH_FILE,
    INPUT_DTYPES,
    KERAS_FILE,
    KIND_FILES,
    KINDS,
    MANIFEST,
    MODEL_FILES,
    OUTPUT_BIAS,
    RECIPE_STEPS,
    SERVING_FILE,
    SERVING_KERNELS,
    TOKENIZER_DIR,
    TOKENIZER_FILE,
    WEIGHT_MAP_FILE,
    Manifest,
)

if TYPE_CHECKING:
    from lifecycle.config import Config

CONFIG_FILE = "config.yaml"
# Files a version directory may hold that its manifest does not list, each with the reason it is harmless. Nothing
# in lifecycle reads them; anything else unlisted is refused.
IGNORED_FILES: dict[str, str] = {
    ".DS_Store": "macOS Finder writes one into every folder it shows",
}
_MANIFEST_TMP = re.compile(r"\.manifest\.json\.[0-9a-f]{8}\.tmp")  # _write_manifest's temp file


@dataclass(frozen=True)
class Version:
    """A loaded, verified version directory."""

    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def max_len(self) -> int:
        return self.manifest.max_len

    @property
    def config(self) -> Config:
        # Imported here: loading a version to predict (graph.pb or the serving form) never needs pydantic or yaml,
        # which cost a serving process about 10 MB (benchmarks/graph_memory.py).
        from lifecycle.config import validate

        return validate(dict(self.manifest.config or {}), f"{self.path / MANIFEST} (config)")

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


def temp_journal_root() -> Path:
    """This user's journal folder in the system temp directory (see :func:`journal_root`)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"lifecycle-{getattr(os, 'getuid', lambda: 'user')()}"


def journal_root() -> Path:
    """Where a version being built outside the versions directory is journalled (so the next command's sweep finds
    it if its process is killed): the versions directory when it exists, else :func:`temp_journal_root`. A command
    given ``--output`` elsewhere never makes a versions/ folder in the working directory just for that."""
    root = versions_root()
    return root if root.is_dir() else temp_journal_root()


def default_output(name: str, kind: str, root: Path | None = None) -> Path:
    """A new folder name under the versions directory: ``<config>-<kind>-<UTC timestamp>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = (root or versions_root()) / f"{name}-{kind}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def resolve_output(output: Path | None, name: str, kind: str, root: Path | None = None) -> tuple[Path, bool]:
    """The directory a step writes: ``--output`` (checked to be new), else a default name; and whether that name may
    move to ``-2``, ``-3``... when another process takes it first (the ``unique`` of :func:`write_version`)."""
    if output is not None:
        return check_output(output), False
    return default_output(name, kind, root), True


def check_output(output: Path) -> Path:
    """Refuse an --output that already exists (a version is never overwritten in place)."""
    output = output.expanduser().resolve()
    if output.exists():
        raise ConfigError(f"--output {output} already exists. Choose a new directory or remove the old one.")
    return output


def write_version(output: Path, kind: str, build: Callable[[Path], dict[str, Any]], *, unique: bool = False
                  ) -> Version:
    """Create a version atomically.

    Args:
        output: the final directory; must not exist.
        unique: ``output`` is a default name (:func:`default_output`): if another process took it meanwhile, the
            version goes to the next free ``<name>-2``, ``-3``... instead of failing.
        kind: one of KINDS.
        build: fills the temp directory it is given and returns the manifest fields it knows (labels, max_len,
            config, tensors, sizes, parent, recipe...). ``files``, ``format``, ``kind``, versions, ``created`` and
            the manifest's ``digest`` are added here.

    Returns:
        The finished version (its manifest as ``load_version`` reads it back).

    Raises:
        ModelError: the manifest would not load (a field ``load_version`` refuses); nothing is written.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown version kind {kind!r}")
    output = output.expanduser().resolve() if unique else check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its target (a rename is atomic only within one file system); a process killed meanwhile leaves a
    # temp folder that names its pid, found by the next command's sweep (via the journal link when the folder is
    # outside the versions directory).
    journal = journal_root()
    housekeeping.sweep_debris([output.parent, journal])
    tmp = housekeeping.make_temp_dir(output.name, output.parent, journal)
    try:
        fields = build(tmp)
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _library_versions(),
            **fields,
        }
        manifest.pop(DIGEST_FIELD, None)
        manifest["files"] = {
            p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        # The digest covers the manifest as it will be read back (tuples become lists, keys strings).
        manifest = json.loads(json.dumps(manifest))
        manifest[DIGEST_FIELD] = manifest_digest(manifest)
        typed = Manifest.from_dict(manifest, tmp / MANIFEST)
        _check_directory(tmp, manifest, verify=False)  # the sha256 were computed just above
        _write_manifest(tmp, manifest)
        output = _rename_into_place(tmp, output, unique)
    finally:
        housekeeping.release_temp_dir(tmp, journal)
    return Version(output, typed)


def _rename_into_place(tmp: Path, output: Path, unique: bool) -> Path:
    """Rename the finished temp folder to ``output`` (or, when ``unique``, the next free name beside it)."""
    candidate, n = output, 1
    while True:
        try:
            if candidate.exists():  # rename(2) would replace an empty directory: never overwrite anything
                raise FileExistsError(candidate)
            os.rename(tmp, candidate)
            return candidate
        except OSError as exc:
            if not unique or not candidate.exists():
                raise ConfigError(f"--output {candidate} cannot be created ({exc.strerror or exc}). Choose a new "
                                  "directory.") from None
            n += 1
            candidate = output.with_name(f"{output.name}-{n}")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON (sorted keys, no spaces) of every manifest field but the digest.

    It detects a manifest that was edited or damaged after it was written; it is no signature, since anyone who can
    rewrite the file can recompute it.
    """
    body = {key: value for key, value in manifest.items() if key != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def load_version(path: Path, verify: bool = True) -> Version:
    """Open a version directory, checking its manifest's digest and fields, its files and (by default) their sha256.

    Raises:
        ModelError: one line naming what is wrong (the manifest's format, digest or a field; a file missing, altered
            or not listed) and how to fix it.
    """
    path = path.expanduser().resolve()
    manifest = _read_manifest(path)
    manifest_path = path / MANIFEST
    found = manifest.get("format")
    if found == 1:
        raise ModelError(f"{manifest_path}: manifest format 1 has no digest of its own, and this lifecycle reads "
                         f"format {FORMAT_VERSION}. Run `lifecycle upgrade {path}` "
                         "(lifecycle.artifacts.upgrade_version) to check its files and rewrite the manifest.")
    if found != FORMAT_VERSION:
        raise ModelError(f"{manifest_path}: unsupported manifest format {found!r}; this lifecycle reads format "
                         f"{FORMAT_VERSION}. Open it with the lifecycle release that wrote it, or re-create it.")
    digest = manifest.get(DIGEST_FIELD)
    if not isinstance(digest, str) or digest != manifest_digest(manifest):
        what = "has no digest" if digest is None else "does not match its digest"
        raise ModelError(f"{manifest_path}: {what} (the manifest was edited or damaged after it was written), so "
                         "nothing in it can be trusted. Restore the version from its source or re-create it.")
    typed = Manifest.from_dict(manifest, manifest_path)
    _check_directory(path, manifest, verify)
    return Version(path, typed)


def upgrade_version(path: Path) -> Version:
    """Check a format-1 version's files against its manifest's sha256 table, then rewrite the manifest as format 2."""
    path = path.expanduser().resolve()
    manifest = _read_manifest(path)
    manifest_path = path / MANIFEST
    found = manifest.get("format")
    if found == FORMAT_VERSION:
        return load_version(path)
    if found != 1:
        raise ModelError(f"{manifest_path}: manifest format {found!r} cannot be upgraded; upgrade reads format 1 "
                         f"and writes format {FORMAT_VERSION}.")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise ModelError(f"{manifest_path}: this format-1 manifest has no files table, so its files cannot be "
                         "checked; nothing was changed. Re-create the version from its source.")
    for leftover in path.iterdir():  # an earlier upgrade killed before its rename: run again, as the error says
        if _MANIFEST_TMP.fullmatch(leftover.name) and leftover.is_file():
            leftover.unlink()
    upgraded = {key: value for key, value in manifest.items() if key != DIGEST_FIELD}
    upgraded["format"] = FORMAT_VERSION
    # Children record their parent's manifest sha256 (Version.sha256), which the rewrite changes: keep the old one.
    upgraded["upgraded"] = {"from_format": 1, "manifest_sha256": sha256_file(manifest_path),
                            "at": datetime.now(UTC).isoformat(timespec="seconds")}
    upgraded[DIGEST_FIELD] = manifest_digest(upgraded)
    Manifest.from_dict(upgraded, manifest_path)  # checked as load_version will check it
    _check_directory(path, upgraded)
    _write_manifest(path, upgraded)
    return load_version(path)


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ModelError(f"{path}: no such version directory. Pass a version path, runs:/ or models:/ URI.")
    if not manifest_path.is_file():
        raise ModelError(f"{manifest_path}: missing; {path} is not a lifecycle version (or it is incomplete).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path}: not valid JSON ({exc}). The version is damaged; re-create it.") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{manifest_path}: not a manifest (a JSON {type(manifest).__name__}, not an object). The "
                         "version is damaged; re-create it.")
    return manifest


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json through a temp file and ``os.replace``: a reader sees the old manifest or the new one."""
    target = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"  # _MANIFEST_TMP
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_directory(path: Path, manifest: dict[str, Any], verify: bool = True) -> None:
    """Every listed file present (and, with ``verify``, equal to its sha256); no file the manifest does not list."""
    files: dict[str, Any] = manifest["files"]
    for rel, meta in files.items():
        file = path / rel
        if not file.is_file():
            raise ModelError(f"{file}: listed in the manifest but missing. The version is incomplete; re-create it.")
        if verify and sha256_file(file) != meta["sha256"]:
            raise ModelError(
                f"{file}: sha256 does not match manifest.json (file altered or truncated). Restore the file or "
                "re-create the version."
            )
    for root, dirs, names in os.walk(path):
        base = Path(root)
        for name in sorted(dirs):
            if (base / name).is_symlink():  # os.walk does not descend into it, so its files would go unchecked
                raise ModelError(f"{base / name}: a link to a directory, not listed in {path / MANIFEST}. Remove it "
                                 "(a version holds only the files its manifest lists).")
        for name in sorted(names):
            rel = (base / name).relative_to(path).as_posix()
            if rel == MANIFEST or rel in files or name in IGNORED_FILES:
                continue
            raise ModelError(f"{base / name}: not listed in {path / MANIFEST} (a version holds only the files its "
                             "manifest lists, so this one was added after it was written). Remove it, or re-create "
                             "the version if it belongs there.")


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
