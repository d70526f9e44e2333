"""The one definition of each size of a version; every screen (metrics, train summary, `versions`, versions.json,
the size-vs-accuracy plot, `bench`, the registered version's tags) reads it from here.

- **deployed** (``size_bytes``): what a server loads to answer requests: the model form it runs plus the tokenizer,
  summed from the manifest's file list. A frozen or compressed version runs its serving form (the files under the
  manifest's ``serving.file``, or its ``serving.files`` when it lists several), or graph.pb when it has none; a
  checkpoint runs model.keras (optimizer state included: the file is what is loaded).
- **deployed gzip** (``size_gzip_bytes``): those same files after gzip -6, each file on its own.
- **on disk** (``size_disk_bytes``): every file of the version directory, manifest.json included.
- **checkpoint** (``size_checkpoint_bytes``): the lineage's root checkpoint file, model.keras, with the optimizer
  state; **checkpoint weights** (``size_checkpoint_weights_bytes``): its weights alone, without the optimizer state.
- ``size_mb``: the deployed size again, in MB (10^6 bytes): the number a user reads in the MLflow runs table.

The metric names are the keys of :meth:`VersionSizes.metrics`; nothing else is called ``size_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle.artifacts import Version
    from lifecycle.manifest import Manifest

DEPLOYED, DEPLOYED_GZIP, DISK = "size_bytes", "size_gzip_bytes", "size_disk_bytes"
DEPLOYED_MB = "size_mb"  # size_bytes / 10^6, for reading in the MLflow UI's runs table
CHECKPOINT, CHECKPOINT_WEIGHTS = "size_checkpoint_bytes", "size_checkpoint_weights_bytes"
LABELS = {DEPLOYED: "deployed", DEPLOYED_GZIP: "deployed gzip", DISK: "on disk", CHECKPOINT: "checkpoint",
          CHECKPOINT_WEIGHTS: "checkpoint weights"}

_TOKENIZER = "tokenizer"
_MODEL_FILES = {"checkpoint": "model.keras", "frozen": "graph.pb", "compressed": "graph.pb"}


def model_paths(manifest: Manifest) -> tuple[str, ...]:
    """The model form a server loads, as paths (files or folders) of the version: the serving form's, else the
    kind's model file; empty for a tokenizer."""
    serving = manifest.serving
    if serving is not None:
        listed = serving.to_dict().get("files")
        return tuple(listed) if isinstance(listed, list) and listed else (serving.file,)
    return (_MODEL_FILES[manifest.kind],) if manifest.kind in _MODEL_FILES else ()


def deployed_files(manifest: Manifest) -> list[str]:
    """The manifest's files a server loads: the model form (:func:`model_paths`) and the tokenizer folder."""
    roots = (*model_paths(manifest), _TOKENIZER)
    return [rel for rel in manifest.files if any(rel == root or rel.startswith(f"{root}/") for root in roots)]


@dataclass(frozen=True)
class VersionSizes:
    """A version's sizes in bytes (see the module docstring); None: the version has no such thing."""

    deployed: int
    deployed_gzip: int | None
    disk: int
    checkpoint: int | None
    checkpoint_weights: int | None

    def metrics(self) -> dict[str, float]:
        """The sizes under their metric names (the ones measured)."""
        values = {DEPLOYED: self.deployed, DEPLOYED_GZIP: self.deployed_gzip, DISK: self.disk,
                  CHECKPOINT: self.checkpoint, CHECKPOINT_WEIGHTS: self.checkpoint_weights}
        found = {key: float(value) for key, value in values.items() if value is not None}
        # The deployed size again in MB (10^6 bytes): the column a user reads in the MLflow runs table.
        return {**found, DEPLOYED_MB: self.deployed / 1e6}


def version_sizes(version: Version, gzip: bool = True) -> VersionSizes:
    """Every size of a version, from its manifest (and its files, for gzip and manifest.json)."""
    from lifecycle.artifacts import MANIFEST, gzip_bytes

    manifest = version.manifest
    files = deployed_files(manifest)
    deployed = sum(manifest.files[rel].bytes for rel in files)
    disk = sum(entry.bytes for entry in manifest.files.values()) + (version.path / MANIFEST).stat().st_size
    root = manifest.sizes if manifest.kind == "checkpoint" else (manifest.root_sizes or {})
    checkpoint = root.get("checkpoint_bytes")
    weights = None
    if manifest.kind == "checkpoint" and "weights_bytes" in root:
        weights = root["weights_bytes"]
    elif checkpoint is not None and "optimizer_bytes" in root:
        weights = checkpoint - root["optimizer_bytes"]
    return VersionSizes(
        deployed=int(deployed),
        deployed_gzip=gzip_bytes([version.path / rel for rel in files]) if gzip and files else None,
        disk=int(disk),
        checkpoint=None if checkpoint is None else int(checkpoint),
        checkpoint_weights=None if weights is None else int(weights),
    )
