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
import math
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

if TYPE_CHECKING:
    from lifecycle.config import Config

# 2: the manifest carries its own digest (``DIGEST_FIELD``); 1 had none (``upgrade_version`` converts).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DIGEST_FIELD = "digest"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = f"{TOKENIZER_DIR}/tokenizer.json"
KERAS_FILE = "model.keras"
# Spelled here rather than imported: lifecycle.freeze imports TensorFlow (tests check they agree).
GRAPH_FILE = "graph.pb"
WEIGHT_MAP_FILE = "weight_map.json"
SERVING_FILE = "model.tflite"
KINDS = ("tokenizer", "checkpoint", "frozen", "compressed")
# The model files each kind holds; a model file of another kind in its directory is refused.
KIND_FILES: dict[str, frozenset[str]] = {
    "tokenizer": frozenset(),
    "checkpoint": frozenset({KERAS_FILE}),
    "frozen": frozenset({GRAPH_FILE, WEIGHT_MAP_FILE}),
    "compressed": frozenset({GRAPH_FILE, WEIGHT_MAP_FILE}),
}
MODEL_FILES = frozenset({KERAS_FILE, GRAPH_FILE, WEIGHT_MAP_FILE, SERVING_FILE})
# Input dtypes a version's model may take (lifecycle.freeze.input_dtype_for; checkpoints take int32).
INPUT_DTYPES = ("uint8", "uint16", "int32")
# Recipe step names (lifecycle.compress STEPS and CONTEXT_STEPS; spelled here for the same reason, tests compare).
RECIPE_STEPS = frozenset({"fp16", "int8", "prune", "fold", "vocab", "tune", "int8-act"})
SERVING_KERNELS = ("hybrid", "exact")  # lifecycle.litert.KERNELS
# The output layer's bias, whose length is the number of classes: frozen/compressed tables, then checkpoints'.
OUTPUT_BIAS = ("weights/output/bias", "output/bias")
# Files a version directory may hold that its manifest does not list, each with the reason it is harmless. Nothing
# in lifecycle reads them; anything else unlisted is refused.
IGNORED_FILES: dict[str, str] = {
    ".DS_Store": "macOS Finder writes one into every folder it shows",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_TMP = re.compile(r"\.manifest\.json\.[0-9a-f]{8}\.tmp")  # _write_manifest's temp file


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
        check_manifest(manifest, tmp / MANIFEST)
        _check_directory(tmp, manifest, verify=False)  # the sha256 were computed just above
        _write_manifest(tmp, manifest)
        output = _rename_into_place(tmp, output, unique)
    finally:
        housekeeping.release_temp_dir(tmp, journal)
    return Version(output, manifest)


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
    check_manifest(manifest, manifest_path)
    _check_directory(path, manifest, verify)
    return Version(path, manifest)


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
    check_manifest(upgraded, manifest_path)
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


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Check every manifest field that lifecycle reads; ``where`` (the manifest's path) names it in errors.

    Raises:
        ModelError: one line naming the field, what it holds and what it must hold.
    """
    _check_fields(manifest, _Refuse(where))


class _Refuse:
    """Raises a ModelError naming the manifest, the field, the rule and what was received."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def __call__(self, field: str, rule: str, received: Any = None, *, show: bool = True) -> ModelError:
        text = f"{self.where}: {field} {rule}."
        if show:
            shown = json.dumps(received)
            text += f" Received: {shown if len(shown) <= 120 else shown[:117] + '...'}."
        return ModelError(text + " The manifest does not describe this version; re-create it.")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_fields(m: dict[str, Any], refuse: _Refuse) -> None:
    kind = m.get("kind")
    if kind not in KINDS:
        raise refuse("kind", f"must be one of {', '.join(KINDS)}", kind)
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise refuse("files", "must be a non-empty table of {path: {bytes, sha256}}", files, show=files is not None)
    for rel, meta in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(part in ("", ".", "..") for part in parts) or rel == MANIFEST:
            raise refuse("files", "must list paths inside the version (relative, no '..', not manifest.json)", rel)
        if not isinstance(meta, dict) or not _is_int(meta.get("bytes")) or not isinstance(meta.get("sha256"), str) \
                or not _SHA256.fullmatch(meta["sha256"]):
            raise refuse(f"files[{rel!r}]", "must be {bytes: int, sha256: 64 hex digits}", meta)
    present = set(files)
    if TOKENIZER_FILE not in present:
        raise refuse("kind", f"{kind} must list {TOKENIZER_FILE} (the tokenizer travels with every version)",
                     sorted(present))
    missing = sorted(KIND_FILES[kind] - present)
    if missing:
        raise refuse("kind", f"{kind} needs {missing[0]}, which the version does not list", kind)
    graph_kind = kind in ("frozen", "compressed")
    foreign = sorted((MODEL_FILES & present) - KIND_FILES[kind] - ({SERVING_FILE} if graph_kind else set()))
    if foreign:
        raise refuse("kind", f"{kind} holds no {foreign[0]}, yet the version lists one", kind)

    max_len = m.get("max_len")
    if not _is_int(max_len, 1):
        raise refuse("max_len", "must be a positive whole number of ids per text", max_len)
    recipe = m.get("recipe", [])
    if not isinstance(recipe, list):
        raise refuse("recipe", "must be a list of steps", recipe)
    for step in recipe:
        if not isinstance(step, dict) or step.get("name") not in RECIPE_STEPS:
            got = step.get("name") if isinstance(step, dict) else step
            raise refuse("recipe", f"steps must be among {', '.join(sorted(RECIPE_STEPS))}", got)
        if not isinstance(step.get("params", {}), dict):
            raise refuse(f"recipe step {step['name']!r} params", "must be a table", step["params"])
    for name in ("metrics", "sizes"):
        table = m.get(name, {})
        if not isinstance(table, dict) or not all(_is_number(v) for v in table.values()):
            raise refuse(name, "must be a table of numbers", table)
    if not isinstance(m.get("root_sizes") or {}, dict):
        raise refuse("root_sizes", "must be a table or null", m.get("root_sizes"))
    if m.get("calibration") is not None:  # absent in versions made before calibration: T = 1, no threshold
        _check_calibration(m["calibration"], refuse)
    if not isinstance(m.get("parent") or {}, dict):
        raise refuse("parent", "must be a table or null", m.get("parent"))
    if m.get("run_id") is not None and not isinstance(m.get("run_id"), str):
        raise refuse("run_id", "must be a string or null", m.get("run_id"))
    labels = m.get("labels")
    if kind == "tokenizer":
        if labels is not None:
            _check_labels(labels, refuse)
        return

    if not isinstance(m.get("config"), dict):
        raise refuse("config", "must be the resolved config (a table)", m.get("config"), show=False)
    _check_labels(labels, refuse)
    inputs = m.get("input")
    if not isinstance(inputs, dict):
        raise refuse("input", "must be a table {name, dtype, shape}", inputs)
    if inputs.get("dtype") not in INPUT_DTYPES:
        raise refuse("input.dtype", f"must be one of {', '.join(INPUT_DTYPES)}", inputs.get("dtype"))
    if inputs.get("shape") != [None, max_len]:
        raise refuse("input.shape", f"must be [null, max_len] with max_len {max_len}", inputs.get("shape"))
    tensors = m.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise refuse("tensors", "must be a non-empty table of {name: {shape, dtype, storage, bytes}}", tensors,
                     show=tensors is not None)
    for name, meta in tensors.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list) \
                or not all(_is_int(d) for d in meta["shape"]) or not isinstance(meta.get("storage"), str) \
                or not _is_int(meta.get("bytes")):
            raise refuse(f"tensors[{name!r}]", "must be {shape: [ints], storage: str, bytes: int, ...}", meta)
    bias = next((tensors[name] for name in OUTPUT_BIAS if name in tensors), None)
    if bias is None:
        raise refuse("tensors", f"must hold the output layer's bias ({' or '.join(OUTPUT_BIAS)})", sorted(tensors))
    width = bias["shape"][0] if len(bias["shape"]) == 1 else None
    if width != len(labels):
        raise refuse("labels", f"must name one class per output of the model ({width}, the output bias's length); "
                     f"it names {len(labels)}", labels)
    if kind == "checkpoint":
        return

    arch = m.get("architecture")
    if not isinstance(arch, dict):
        raise refuse("architecture", "must be a table {kernel_sizes, vocab_size, embedding_dim, num_classes}", arch)
    widths = arch.get("kernel_sizes")
    if not isinstance(widths, list) or not widths or not all(_is_int(w, 1) for w in widths):
        raise refuse("architecture.kernel_sizes", "must be a non-empty list of positive whole numbers", widths)
    if max(widths) > max_len:
        raise refuse("max_len", f"must be at least the widest kernel ({max(widths)})", max_len)
    if arch.get("num_classes") != len(labels):
        raise refuse("architecture.num_classes", f"must equal the number of labels ({len(labels)})",
                     arch.get("num_classes"))
    serving = m.get("serving")
    if serving is None and SERVING_FILE not in present:
        return  # versions made before serving forms existed run graph.pb
    if not isinstance(serving, dict) or serving.get("file") != SERVING_FILE or SERVING_FILE not in present:
        raise refuse("serving", f"must describe {SERVING_FILE} ({{file: {SERVING_FILE!r}, bytes, ...}}) exactly "
                     "when the version lists it", serving)
    if serving.get("bytes") != files[SERVING_FILE]["bytes"]:
        raise refuse("serving.bytes", f"must equal the listed size of {SERVING_FILE} "
                     f"({files[SERVING_FILE]['bytes']})", serving.get("bytes"))
    if serving.get("kernels") not in (None, *SERVING_KERNELS):
        raise refuse("serving.kernels", f"must be one of {', '.join(SERVING_KERNELS)} or absent",
                     serving.get("kernels"))


def _check_calibration(entry: Any, refuse: _Refuse) -> None:
    """The fields of ``calibration`` that predictions read (lifecycle.calibration): temperature, abstain_threshold."""
    if not isinstance(entry, dict):
        raise refuse("calibration", "must be a table {temperature, abstain_threshold, ...} or absent", entry)
    temperature = entry.get("temperature")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise refuse("calibration.temperature", "must be a finite number > 0 (1: the model's own probabilities)",
                     temperature)
    threshold = entry.get("abstain_threshold")
    if threshold is not None and (not _is_number(threshold) or not 0 <= threshold <= 1):
        raise refuse("calibration.abstain_threshold", "must be a probability in [0, 1] or null", threshold)


def _check_labels(labels: Any, refuse: _Refuse) -> None:
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise refuse("labels", "must be a list of at least 2 non-empty strings", labels)
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise refuse("labels", f"must be distinct; {', '.join(map(repr, repeated))} repeats", labels)


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
