"""The config schema (pydantic v2, strict), YAML loading, ``--set`` overrides and the resolved-config dump.

Precedence, low to high: schema defaults < YAML file < ``--set section.key=value`` < first-class flags. The merged
mapping is validated once; every error names the file, the dotted key, the value received and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lifecycle.errors import ConfigError

DATA_DIR_ENV = "LIFECYCLE_DATA_DIR"
SchemaT = TypeVar("SchemaT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    validation: float = Field(0.1, gt=0, lt=1, description="Fraction of the training data held out for validation.")
    test: float = Field(
        0.1, gt=0, lt=1, description="Fraction held out for test when the data set has no test split of its own."
    )
    seed: int = Field(13, description="Seed of the stratified split, so every run sees the same examples.")


class DataConfig(_Section):
    format: Literal["csv", "tsv", "jsonl", "mr", "trec", "stackoverflow", "chatterbot"] = Field(
        "chatterbot",
        description="Reader: csv/tsv/jsonl with text and label columns, the published mr/trec/stackoverflow layouts, "
        "or chatterbot, the topic-labelled corpus that the chatterbot-corpus package ships (no file needed).",
    )
    path: str | None = Field(
        None,
        description="File (csv/tsv/jsonl) or directory (mr/trec/stackoverflow); relative paths are resolved "
        "against data_dir. Unused for chatterbot.",
    )
    test_path: str | None = Field(None, description="Optional separate test file for csv/tsv/jsonl.")
    data_dir: str | None = Field(
        None,
        description="Base directory of relative paths; default $LIFECYCLE_DATA_DIR, else ../shared/data beside the "
        "project root.",
    )
    text_field: str = Field("text", description="Column (csv/tsv) or key (jsonl) holding the text.")
    label_field: str = Field("label", description="Column (csv/tsv) or key (jsonl) holding the label.")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files (mr is always cp1252).")
    language: str = Field("english", description="chatterbot only: the corpus language directory.")
    deduplicate: bool = Field(
        True,
        description="Drop repeated (text, label) pairs before splitting, so no test text also sits in train "
        "(chatterbot's English corpus repeats 57% of its utterances; an official test split is left as it is).",
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N examples of each split (smoke runs).")
    split: SplitConfig = SplitConfig()


class BPEConfig(_Section):
    vocab_size: int = Field(8000, ge=8, description="Number of BPE tokens including pad, unk, bos and eos.")
    coverage: float = Field(
        1.0, gt=0, le=1, description="Fraction of characters covered; rarer characters become unk."
    )
    threads: int = Field(-1, description="youtokentome training threads; -1 uses every core.")
    lowercase: bool = Field(True, description="Lower-case text before training and encoding.")


class Word2VecConfig(_Section):
    enabled: bool = Field(
        False, description="Train word2vec vectors on the training texts (gensim) for embedding_init static or "
        "non-static."
    )
    dim: int = Field(300, ge=2, description="Vector size; must equal model.embedding_dim.")
    window: int = Field(5, ge=1, description="Context window of word2vec.")
    min_count: int = Field(1, ge=1, description="Words rarer than this get no trained vector.")
    epochs: int = Field(10, ge=1, description="Passes of word2vec over the training texts.")
    sg: bool = Field(True, description="Skip-gram (true) or CBOW (false).")
    workers: int = Field(2, ge=1, description="gensim worker threads (word2vec is deterministic only with 1).")


class WordConfig(_Section):
    lowercase: bool = Field(True, description="Lower-case text before tokenizing.")
    token_pattern: str = Field(r"[\w']+|[^\w\s]", description="Regular expression that finds the tokens.")
    min_count: int = Field(1, ge=1, description="Words seen fewer times in training become unk.")
    max_size: int | None = Field(None, ge=5, description="Keep at most this many ids (specials included).")
    word2vec: Word2VecConfig = Word2VecConfig()


class TokenizerConfig(_Section):
    kind: Literal["bpe", "word"] = Field("word", description="bpe (youtokentome) or word (vocabulary + word2vec).")
    max_len: int = Field(64, ge=1, description="Token ids per text: longer texts are truncated, shorter padded.")
    bpe: BPEConfig = BPEConfig()
    word: WordConfig = WordConfig()


class ModelConfig(_Section):
    embedding_dim: int = Field(300, ge=2, description="Embedding width k (Kim 2014: 300).")
    embedding_init: Literal["rand", "static", "non-static"] = Field(
        "rand",
        description="Kim's modes: rand (random, trained), static (word2vec, frozen), non-static (word2vec, "
        "fine-tuned). static and non-static need tokenizer.kind=word with word2vec enabled.",
    )
    kernel_sizes: tuple[int, ...] = Field((3, 4, 5), min_length=1, description="Widths of the conv filters.")
    filters: int = Field(100, ge=1, description="Feature maps per width.")
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout before the softmax layer.")
    max_norm: float | None = Field(3.0, gt=0, description="Kim's l2 constraint on the output weights; null: none.")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(50, ge=1, description="Examples per step (Kim 2014: 50).")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    adam_epsilon: float = Field(
        1e-7, gt=0, description="Adam epsilon; raise it (e.g. 1e-4) for float16, as the field report had to."
    )
    precision: Literal["float32", "mixed_bfloat16", "float16"] = Field(
        "float32", description="Compute dtype; variables stay float32 under the mixed policies."
    )
    patience: int = Field(3, ge=1, description="Early stopping: epochs without a better monitored value.")
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="Validation metric that picks the kept epoch and drives early stopping."
    )
    seed: int = Field(13, description="Seed of weights, shuffling and dropout.")
    threads: int = Field(0, ge=0, description="CPU threads for TensorFlow ops (intra and inter); 0: TF's default.")


class TrackingConfig(_Section):
    enabled: bool = Field(True, description="Log runs to MLflow; false uses no tracking at all.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
        "sqlite:///<project root>/mlruns/mlflow.db.",
    )
    experiment: str | None = Field(None, description="Experiment name; default the config name.")
    register_model: bool = Field(True, description="Register each version in the model registry under the config name.")


class Config(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Config name.")
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        if self.model.embedding_init != "rand":
            if self.tokenizer.kind != "word" or not self.tokenizer.word.word2vec.enabled:
                raise ValueError(
                    f"model.embedding_init={self.model.embedding_init} needs word2vec vectors: set "
                    "tokenizer.kind=word and tokenizer.word.word2vec.enabled=true, or use embedding_init=rand"
                )
            if self.tokenizer.word.word2vec.dim != self.model.embedding_dim:
                raise ValueError(
                    f"tokenizer.word.word2vec.dim ({self.tokenizer.word.word2vec.dim}) must equal "
                    f"model.embedding_dim ({self.model.embedding_dim}) when the embedding starts from word2vec"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved config as YAML, the form saved in every version."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self, sections: Iterable[str] | None = None) -> str:
        """A short stable hash of the whole config, or of some sections only."""
        data = self.to_dict()
        if sections is not None:
            data = {key: data[key] for key in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def flat(self) -> dict[str, str]:
        """The config as ``section.key -> value`` strings, the form logged as MLflow params."""
        return {key: json.dumps(value) if isinstance(value, list | dict) else str(value)
                for key, value in _flatten(self.to_dict()).items()}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding this project's pyproject.toml, else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and 'name = "lifecycle"' in candidate.read_text(encoding="utf-8", errors="replace"):
            return folder
    return here


def default_data_dir() -> Path:
    """Where relative data paths point: $LIFECYCLE_DATA_DIR, else ../shared/data beside the project root."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (project_root().parent / "shared" / "data").resolve()


def resolve_data_path(data: DataConfig, path: str) -> Path:
    """A data path from the config made absolute (relative ones sit under data_dir)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    base = Path(data.data_dir).expanduser() if data.data_dir else default_data_dir()
    return (base / candidate).resolve()


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.kernel_sizes=[3,4]"]`` -> a nested mapping; values are YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set {pair!r} is malformed: expected section.key=value, e.g. --set train.epochs=3."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: the value {raw!r} is not a YAML scalar; quote it.") from None
        set_dotted(nested, key, value, f"--set {pair!r}")
    return nested


def set_dotted(nested: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Put ``value`` at the dotted ``key`` of a nested mapping; an error (starting with ``source``) when a part of the
    key already holds a value, not a section."""
    parts = key.split(".")
    node = nested
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part!r} is set twice, once as a value and once as a section.")
        node = child
    node[parts[-1]] = value


def merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two mappings; values of ``delta`` win."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with errors naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Pass an existing YAML file, e.g. configs/default.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Save the config as UTF-8.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem}). Fix the syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, tokenizer, model, ...).")
    return data


def validate_schema(schema: type[SchemaT], data: Mapping[str, Any], source: str, unknown_hint: str,
                    missing_hint: str = "") -> SchemaT:
    """Validate ``data`` against a strict pydantic schema (this config, an experiment grid, a serve config, an import
    mapping); the first error becomes one ConfigError line naming ``source``, the dotted key, the value received and
    what is allowed. ``unknown_hint`` follows a misspelt key's message, ``missing_hint`` a missing required key's."""
    try:
        return schema.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {key!r}. {unknown_hint}") from None
        if error["type"] == "missing" and missing_hint:
            raise ConfigError(f"{source}: {key} is required ({missing_hint}).") from None
        if not key:  # a check across fields: its message says what is wrong
            raise ConfigError(f"{source}: {message}.") from None
        raise ConfigError(f"{source}: {key}: {message}. Received: {error.get('input')!r}.") from None


def validate(data: Mapping[str, Any], source: str) -> Config:
    """Validate a merged config mapping (see ``validate_schema``)."""
    return validate_schema(Config, data, source, "Check the spelling; `lifecycle config` lists every key.")


def load_config(
    path: Path | None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Load, merge and validate a config.

    Args:
        path: YAML file, or None for the schema defaults (the embedded chatterbot data set).
        overrides: ``section.key=value`` strings from ``--set``.
        flags: dotted keys set by first-class flags (``{"train.epochs": 3}``); None values are ignored.

    Returns:
        The validated, frozen config. Its name defaults to the file's stem.

    Raises:
        ConfigError: naming the file, key, value and fix.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    if path is not None and "name" not in data:
        data["name"] = path.stem
    override_list = list(overrides)
    data = merge(data, parse_overrides(override_list))
    flag_pairs = {key: value for key, value in (flags or {}).items() if value is not None}
    for dotted, value in flag_pairs.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    source = str(path) if path is not None else "defaults"
    if override_list:
        source += " with --set " + " ".join(override_list)
    return validate(data, source)
