"""A version's manifest.json as typed, frozen objects, and the checks every manifest passes before it is believed.

``Manifest.from_dict(raw, where)`` runs the field checks (one ModelError naming the manifest, the field, the rule and
what it holds), then builds the typed view. The manifest keeps the JSON object it was parsed from, unknown fields
included, and ``to_dict()`` returns a copy of it: writing that back gives the same bytes, so the digest
(``artifacts.manifest_digest``, over the raw JSON) of every existing version stays what it was. The typed
attributes are read-only views; nothing is ever written from them.

Which fields are typed: those lifecycle reads (kind, files, labels, max_len, input, tensors, architecture, serving,
calibration, parent, recipe, metrics, sizes, training...). Free-form records written for people and MLflow (data,
teacher, retrain, check, restored_from, imported_from, upgraded, versions, the resolved config) are read-only mappings.

Plain Python only, as artifacts: a serving process loads manifests and must not pay for pydantic, yaml or TensorFlow.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lifecycle.errors import ModelError

# 2: the manifest carries its own digest (``DIGEST_FIELD``); 1 had none (``artifacts.upgrade_version`` converts).
FORMAT_VERSION = 2
DIGEST_FIELD = "digest"
# The files the schema names (artifacts re-exports them with the rest of a version's layout).
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = f"{TOKENIZER_DIR}/tokenizer.json"
KERAS_FILE = "model.keras"
# Spelled here rather than imported: lifecycle.freeze imports TensorFlow (tests check they agree).
GRAPH_FILE = "graph.pb"
WEIGHT_MAP_FILE = "weight_map.json"
SERVING_FILE = "model.tflite"
SERVING_PACK_FILE = "model.tflite.pack"  # lifecycle.litepack.PACK_FILE: the flatbuffer stored in fewer bits
SERVING_FILES = (SERVING_FILE, SERVING_PACK_FILE)
KINDS = ("tokenizer", "checkpoint", "frozen", "compressed")
# The model files each kind holds; a model file of another kind in its directory is refused.
KIND_FILES: dict[str, frozenset[str]] = {
    "tokenizer": frozenset(),
    "checkpoint": frozenset({KERAS_FILE}),
    "frozen": frozenset({GRAPH_FILE, WEIGHT_MAP_FILE}),
    "compressed": frozenset({GRAPH_FILE, WEIGHT_MAP_FILE}),
}
MODEL_FILES = frozenset({KERAS_FILE, GRAPH_FILE, WEIGHT_MAP_FILE, *SERVING_FILES})
# Input dtypes a version's model may take (lifecycle.freeze.input_dtype_for; checkpoints take int32).
INPUT_DTYPES = ("uint8", "uint16", "int32")
# Recipe step names (lifecycle.compress STEPS and CONTEXT_STEPS; spelled here for the same reason, tests compare).
RECIPE_STEPS = frozenset({"fp16", "int8", "int4", "int3", "prune", "dim", "fold", "vocab", "tune", "int8-act"})
SERVING_KERNELS = ("hybrid", "exact")  # lifecycle.litert.KERNELS
# The output layer's bias, whose length is the number of classes: frozen/compressed tables, then checkpoints'.
OUTPUT_BIAS = ("weights/output/bias", "output/bias")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Record = Mapping[str, Any]  # a free-form JSON object, read-only
_EMPTY: Record = MappingProxyType({})


def _record(value: Any) -> Record:
    """A read-only copy of a JSON object (an empty one for anything else: such fields are records, never checked)."""
    return MappingProxyType(copy.deepcopy(value)) if isinstance(value, dict) else _EMPTY


def _optional_record(value: Any) -> Record | None:
    return _record(value) if isinstance(value, dict) else None


def _numbers(value: Any) -> Mapping[str, float]:
    return MappingProxyType(dict(value)) if isinstance(value, dict) else _EMPTY


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class _Part:
    """A typed section that keeps the JSON object it was read from (``to_dict`` copies it, extra keys included)."""

    raw: Record = field(repr=False)  # compared: two parts are equal when their JSON is

    def to_dict(self) -> dict[str, Any]:
        """The section's JSON object as it was read, fields the typed view does not name included: a deep copy."""
        return copy.deepcopy(dict(self.raw))


@dataclass(frozen=True)
class FileEntry(_Part):
    """``files[path]``: a listed file's size and sha256."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class InputSpec(_Part):
    """``input``: the model's input placeholder (a name, one of INPUT_DTYPES, ``[None, max_len]``)."""

    name: str | None
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class OutputSpec(_Part):
    """``output``: the model's output (its name)."""

    name: str | None


@dataclass(frozen=True)
class TensorEntry(_Part):
    """``tensors[name]``: one stored weight (shape, dtype, storage, bytes; graph versions add layout and nodes)."""

    shape: tuple[int, ...]
    dtype: str | None
    storage: str
    bytes: int
    layout: str  # "dense" for checkpoints and manifests written before sparse layouts
    nodes: tuple[str, ...] | None  # graph versions: the Const nodes holding it
    folded_into: str | None  # the consumer's node the fold step moved it into
    nonzero: int | None
    sparsity: float | None


@dataclass(frozen=True)
class Architecture(_Part):
    """``architecture`` (frozen and compressed versions): what restore and compress rebuild the CNN from."""

    kernel_sizes: tuple[int, ...]
    vocab_size: int | None
    embedding_dim: int | None
    num_classes: int


@dataclass(frozen=True)
class ServingForm(_Part):
    """``serving``: the LiteRT serving form beside graph.pb (lifecycle.litert)."""

    file: str
    bytes: int
    kernels: str | None  # None: made before the choice existed (hybrid)
    runtime: str | None
    quantization: str | None
    int8_kernels: tuple[str, ...]
    max_abs_diff_vs_graph: float | None
    agreement_with_graph: float | None  # None: compared on no rows
    test_accuracy: float | None  # None: not compared on the test split
    calibration_samples: int | None  # full-integer forms: the rows their activations were calibrated on
    pack: Record | None  # a packed file (lifecycle.litepack): the flatbuffer's size and sha256, what load expands


@dataclass(frozen=True)
class Calibration(_Part):
    """``calibration`` (lifecycle.calibration): the temperature and the default abstain threshold; the rest (NLL,
    ECE, where it was fitted, inheritance) is kept as written."""

    temperature: float
    abstain_threshold: float | None


@dataclass(frozen=True)
class ParentRef(_Part):
    """``parent``: the version (or foreign file) this one was made from."""

    version: str | None
    run_id: str | None
    sha256: str | None
    kind: str | None


@dataclass(frozen=True)
class RecipeStep(_Part):
    """One ``recipe`` entry (lifecycle.compress): a step name, its parameters and what it reported."""

    name: str
    params: Record
    bytes_before: int | None  # the stored weights' bytes before and after the step
    bytes_after: int | None
    tensors: tuple[str, ...]  # the tensors it changed
    layouts: Record  # changed tensor -> dense | sparse
    report: Record | None  # what a data-aware step measured (vocab, tune) or the fold step did


@dataclass(frozen=True)
class Training(_Part):
    """``training`` (lifecycle.train.TrainResult.summary): how long a checkpoint trained and why it stopped."""

    epochs_run: int | None
    best_epoch: int | None  # 0-based
    peak_epoch: int | None  # 1-based (best_epoch + 1)
    stopped_early: bool | None
    stop_reason: str | None
    monitor: str | None
    best_value: float | None
    resumed_from: int | None
    train_seconds: float | None
    max_epochs: int | None
    steps_per_epoch: int | None
    patience_epochs: int | None
    reduce_lr_patience: int | None
    lr_reductions: int | None
    final_learning_rate: float | None


def _parse_recipe(steps: list[Any]) -> tuple[RecipeStep, ...]:
    return tuple(RecipeStep(_record(step), step["name"], _record(step.get("params", {})),
                            _int_or_none(step.get("bytes_before")), _int_or_none(step.get("bytes_after")),
                            tuple(step.get("tensors") or ()), _record(step.get("layouts")),
                            _optional_record(step.get("report"))) for step in steps)


def _parse_tensor(meta: dict[str, Any]) -> TensorEntry:
    # Lenient: the checks cover a model kind's table; a tokenizer version's (if any) is unchecked, and unread.
    nodes = meta.get("nodes")
    return TensorEntry(_record(meta), tuple(meta.get("shape") or ()), meta.get("dtype"), meta.get("storage", ""),
                       _int_or_none(meta.get("bytes")) or 0,
                       meta.get("layout", "dense"), tuple(nodes) if isinstance(nodes, list) else None,
                       meta.get("folded_into"), _int_or_none(meta.get("nonzero")), meta.get("sparsity"))


def _parse_training(entry: Any) -> Training | None:
    if not isinstance(entry, dict):
        return None
    ints = {key: _int_or_none(entry.get(key)) for key in (
        "epochs_run", "best_epoch", "peak_epoch", "resumed_from", "max_epochs", "steps_per_epoch", "patience_epochs",
        "reduce_lr_patience", "lr_reductions")}
    return Training(_record(entry), stopped_early=entry.get("stopped_early"), stop_reason=entry.get("stop_reason"),
                    monitor=entry.get("monitor"), best_value=entry.get("best_value"),
                    train_seconds=entry.get("train_seconds"), final_learning_rate=entry.get("final_learning_rate"),
                    **ints)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest.json. Build it with :meth:`from_dict`; ``to_dict()`` gives back the JSON it was read from.

    Fields a kind does not have are empty (tokenizer versions: no tensors, input or labels; checkpoints: no
    architecture or serving form); optional sections added after format 2 began are None when absent.
    """

    raw: Record = field(repr=False)  # compared: two manifests are equal when their JSON is
    format: int
    kind: str
    created: str | None
    digest: str | None
    files: Mapping[str, FileEntry]
    max_len: int
    labels: tuple[str, ...]
    config: Record | None  # the resolved config (artifacts.Version.config validates it)
    input: InputSpec | None
    output: OutputSpec | None
    tensors: Mapping[str, TensorEntry]
    architecture: Architecture | None
    serving: ServingForm | None
    calibration: Calibration | None
    parent: ParentRef | None
    recipe: tuple[RecipeStep, ...]
    run_id: str | None
    params_total: int | None
    metrics: Mapping[str, float]
    sizes: Mapping[str, float]
    root_sizes: Mapping[str, float] | None  # the lineage's root checkpoint's sizes (graph versions, their restores)
    training: Training | None
    teacher: Record | None
    data: Record | None
    retrain: Record | None
    restored_from: Record | None
    imported_from: Record | None
    check: Record | None
    upgraded: Record | None
    versions: Record

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: Path) -> Manifest:
        """Check a manifest's fields and build its typed view; ``where`` (the manifest's path) names it in errors.

        The digest and the format are the loader's to check (artifacts.load_version): they decide whether the
        fields are read at all.

        Raises:
            ModelError: one line naming the field, what it holds and what it must hold.
        """
        m = copy.deepcopy(dict(raw))
        _check_fields(m, _Refuse(where))
        # Built leniently from here on: what the checks guarantee for this kind is read as checked, and a section
        # they leave unchecked for it (a checkpoint's serving entry, say) never fails to load where it loaded before.
        inputs = m.get("input")
        arch = m.get("architecture")
        serving = m.get("serving")
        calibration = m.get("calibration")
        parent = m.get("parent")
        output = m.get("output")
        tensors = m["tensors"] if isinstance(m.get("tensors"), dict) else {}
        return cls(
            raw=MappingProxyType(m),
            format=_int_or_none(m.get("format")) or 0,
            kind=m["kind"],
            created=m.get("created"),
            digest=m.get(DIGEST_FIELD),
            files=MappingProxyType({rel: FileEntry(_record(meta), meta["bytes"], meta["sha256"])
                                    for rel, meta in m["files"].items()}),
            max_len=m["max_len"],
            labels=tuple(m.get("labels") or ()),
            config=_optional_record(m.get("config")),
            input=None if not isinstance(inputs, dict) else InputSpec(
                _record(inputs), inputs.get("name"), inputs.get("dtype", ""), tuple(inputs.get("shape") or ())),
            output=None if not isinstance(output, dict) else OutputSpec(_record(output), output.get("name")),
            tensors=MappingProxyType({name: _parse_tensor(meta) for name, meta in tensors.items()
                                      if isinstance(meta, dict)}),
            architecture=None if not isinstance(arch, dict) else Architecture(
                _record(arch), tuple(arch.get("kernel_sizes") or ()), _int_or_none(arch.get("vocab_size")),
                _int_or_none(arch.get("embedding_dim")), _int_or_none(arch.get("num_classes")) or 0),
            serving=None if not isinstance(serving, dict) else ServingForm(
                _record(serving), serving.get("file", ""), _int_or_none(serving.get("bytes")) or 0,
                serving.get("kernels"), serving.get("runtime"),
                serving.get("quantization"), tuple(serving.get("int8_kernels") or ()),
                serving.get("max_abs_diff_vs_graph"), serving.get("agreement_with_graph"), serving.get("test_accuracy"),
                _int_or_none(serving.get("calibration_samples")),
                _record(serving["pack"]) if isinstance(serving.get("pack"), dict) else None),
            calibration=None if calibration is None else Calibration(
                _record(calibration), float(calibration["temperature"]),
                None if calibration.get("abstain_threshold") is None else float(calibration["abstain_threshold"])),
            parent=None if not parent else ParentRef(
                _record(parent), parent.get("version"), parent.get("run_id"), parent.get("sha256"),
                parent.get("kind")),
            recipe=_parse_recipe(m.get("recipe", [])),
            run_id=m.get("run_id"),
            params_total=_int_or_none(m.get("params_total")),
            metrics=_numbers(m.get("metrics", {})),
            sizes=_numbers(m.get("sizes", {})),
            root_sizes=None if m.get("root_sizes") is None else _numbers(m["root_sizes"]),
            training=_parse_training(m.get("training")),
            teacher=_optional_record(m.get("teacher")),
            data=_optional_record(m.get("data")),
            retrain=_optional_record(m.get("retrain")),
            restored_from=_optional_record(m.get("restored_from")),
            imported_from=_optional_record(m.get("imported_from")),
            check=_optional_record(m.get("check")),
            upgraded=_optional_record(m.get("upgraded")),
            versions=_record(m.get("versions")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON object as it was read (or written), unknown fields included: a deep copy."""
        return copy.deepcopy(dict(self.raw))

    def recipe_dicts(self) -> list[dict[str, Any]]:
        """The recipe as JSON objects (what a child's manifest inherits, what ``recipe_label`` reads)."""
        return [step.to_dict() for step in self.recipe]

    def tensor_dicts(self) -> dict[str, dict[str, Any]]:
        """The ``tensors`` table as JSON objects (lifecycle.freeze.read_weights reads it)."""
        return {name: entry.to_dict() for name, entry in self.tensors.items()}

    @property
    def temperature(self) -> float:
        """The calibration temperature; 1 (the model's own probabilities) for versions made without one."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    @property
    def abstain_threshold(self) -> float | None:
        """The default abstain threshold, None when the version has none."""
        return self.calibration.abstain_threshold if self.calibration is not None else None

    @property
    def size_bytes(self) -> int:
        """Bytes of every listed file."""
        return sum(entry.bytes for entry in self.files.values())


def plain(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A read-only section as a new JSON object (None stays None), to write into another manifest."""
    return None if record is None else copy.deepcopy(dict(record))


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
    foreign = sorted((MODEL_FILES & present) - KIND_FILES[kind] - (set(SERVING_FILES) if graph_kind else set()))
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
    listed = [name for name in SERVING_FILES if name in present]
    if serving is None and not listed:
        return  # versions made before serving forms existed run graph.pb
    served = serving.get("file") if isinstance(serving, dict) else None
    if served not in SERVING_FILES or listed != [served]:
        raise refuse("serving", f"must describe the one serving file the version lists ({' or '.join(SERVING_FILES)}"
                     f": {{file, bytes, ...}}) exactly when it lists one", serving)
    if serving.get("bytes") != files[served]["bytes"]:
        raise refuse("serving.bytes", f"must equal the listed size of {served} "
                     f"({files[served]['bytes']})", serving.get("bytes"))
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


