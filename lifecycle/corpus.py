"""Data readers and the seeded, stratified train/validation/test split.

One reader per ``data.format``: csv/tsv/jsonl files with a text and a label column, the published layouts in
../shared/data (MR's .pos/.neg pair, TREC's ``COARSE:fine question`` lines, StackOverflow's parallel title/label
files) and the topic-labelled corpus that the chatterbot-corpus package ships. Every failure is a one-line
``DataError`` naming the file, the config key and the fix.

This module sits on the CLI's fast path, so it imports numpy and yaml only: never tensorflow, mlflow, pandas or
sklearn. Turning texts into token ids and tf.data happens in ``lifecycle.dataset``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lifecycle.config import DataConfig, data_path_candidates, resolve_data_path
from lifecycle.errors import DataError, DependencyError

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

MR_FILES: dict[str, str] = {"negative": "rt-polarity.neg", "positive": "rt-polarity.pos"}
TREC_TRAIN_FILE = "train_5500.label"
TREC_TEST_FILE = "TREC_10.label"
STACKOVERFLOW_TITLES_FILE = "title_StackOverflow.txt"
STACKOVERFLOW_LABELS_FILE = "label_StackOverflow.txt"
# Label ids 1..20 in the order of the upstream README (jacoxu/StackOverflow); the files hold only the ids.
STACKOVERFLOW_LABELS: tuple[str, ...] = (
    "wordpress", "oracle", "svn", "apache", "excel", "matlab", "visual-studio", "cocoa", "osx", "bash",
    "spring", "hibernate", "scala", "sharepoint", "ajax", "qt", "drupal", "linq", "haskell", "magento",
)  # fmt: skip

# Where data.path points when it is unset, relative to data_dir (the folder names of ../shared/data).
DEFAULT_DIRS: dict[str, str] = {"mr": "MR", "trec": "TREC", "stackoverflow": "StackOverflow"}

# MR's files are Windows-1252: latin-1 would turn byte 0x85 ('…') into U+0085, which str.splitlines() splits on.
MR_ENCODING = "cp1252"
_TREC_LINE = re.compile(r"([^\s:]+):(\S+)(?:\s+(.*))?")
# The C loader parses the 21 English chatterbot files several times faster than the pure-Python one.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ENCODING_HINT = "Set data.encoding (e.g. cp1252) to the file's encoding."


@dataclass(frozen=True)
class Examples:
    """Texts and their label names, aligned by position.

    Attributes:
        texts: The texts, stripped and never empty.
        labels: The label name of each text.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        # Accept any sequence but store tuples, so an Examples stays immutable and hashable.
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"Examples needs one label per text; got {len(self.texts)} texts, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Corpus:
    """A labelled data set split into train, validation and test.

    Attributes:
        train: Training examples (every class has at least one).
        validation: Held out from the training data for early stopping and model selection.
        test: The format's official test split, or a seeded stratified hold-out when it has none.
        labels: Sorted label names; a label's id is its index here.
        source: Where the data came from (format and resolved paths), for logs and run records.
        name: The config name the corpus was loaded for.
        location: The one file or directory the data came from (a resolvable dataset source for MLflow).
        cleaning: What reading dropped or found (see :func:`load_corpus`): ``repeats_dropped`` (repeated training
            rows), ``test_in_train`` (test texts also in the training data), ``test_overlap`` (the policy applied:
            drop, keep) and ``test_dropped``.
    """

    train: Examples
    validation: Examples
    test: Examples
    labels: tuple[str, ...]
    source: str
    name: str
    location: str = ""
    cleaning: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """The number of labels."""
        return len(self.labels)

    def label_ids(self, examples: Examples) -> np.ndarray:
        """Label ids of a split, as indexes into ``labels``.

        Args:
            examples: One of this corpus's splits, or other examples labelled with the same names.

        Returns:
            An int32 array with one id per example.

        Raises:
            DataError: If an example has a label this corpus does not know.
        """
        index = {label: i for i, label in enumerate(self.labels)}
        try:
            return np.fromiter((index[label] for label in examples.labels), dtype=np.int32, count=len(examples))
        except KeyError as exc:
            raise DataError(
                f"label {exc.args[0]!r} is not one of the {len(self.labels)} labels of {self.name} "
                f"({_preview(self.labels)}).",
                hint="Use data labelled with those names, or train a new model that includes the label.",
            ) from None

    def class_counts(self, examples: Examples) -> dict[str, int]:
        """Examples per label in a split, in label-id order, zeros included."""
        counts = np.bincount(self.label_ids(examples), minlength=len(self.labels))
        return {label: int(count) for label, count in zip(self.labels, counts, strict=True)}


@dataclass(frozen=True)
class _Read:
    """What a reader found: all labelled data, the official test split if any, and a description of the source."""

    data: Examples
    test: Examples | None
    source: str
    location: str = ""
    validation: Examples | None = None  # data.validation_path, when set


def read_examples(cfg: DataConfig) -> tuple[Examples, Examples | None]:
    """Read a data set as configured, without splitting it.

    Args:
        cfg: The ``data`` section; ``format`` picks the reader and relative paths resolve against ``data_dir``.

    Returns:
        All labelled examples in file order, and the format's official test split (TREC, or csv/tsv/jsonl with
        ``test_path``) or None.

    Raises:
        DataError: If a file is missing, undecodable or malformed, a column/key is unknown, no example has text,
            or the data has fewer than two labels.
        DependencyError: If ``format`` is chatterbot and the chatterbot-corpus package is not installed.
    """
    read = _read(cfg)
    return read.data, read.test


def load_corpus(cfg: DataConfig, name: str, *, report: bool = True) -> Corpus:
    """Read a data set and split it into train, validation and test, deterministically for ``cfg.split.seed``.

    Split rules, per class (so every split keeps the class proportions):

    - test: the format's official test split if it has one; else ``round(n * split.test)`` examples of each class.
    - validation: ``round(n * split.validation)`` of each class's remaining examples.
    - A class always keeps at least one training example, so a tiny class reaches validation/test only by
      rounding (a 9-example class with fractions 0.1 gives 7 train, 1 validation, 1 test; 1 or 2 examples stay in
      train).
    - Repeated (text, label) pairs of the training data are dropped first (``deduplicate``), with a warning naming
      the count. Test texts that also sit in the training data (same text, any label: a test file's rows, or a text
      the data gives two labels) are dropped from the test split, kept, or refused as ``test_overlap`` says, with a
      warning naming the count either way; ``auto`` keeps an official test split of a published set (TREC_10) as
      published, keeps them in the seeded split when ``deduplicate`` is off, and drops them otherwise.
    - Each split is ordered so that every prefix is stratified and starts with one example of each class: the
      ``limit`` (first N of each split) is taken after the split, keeps every class and shrinks splits to subsets
      of the unlimited ones.

    Args:
        cfg: The ``data`` section.
        name: The config name, recorded on the corpus.
        report: Warn about dropped repeats and test texts found in train (False: log them at INFO, for steps that
            re-read a version's data, which its training already reported).

    Returns:
        The split corpus.

    Raises:
        DataError: As ``read_examples``; also if the official test split has labels without training examples,
            ``limit`` is smaller than the number of classes, or test texts also sit in the training data and
            ``test_overlap`` is error (or every test text does and they would be dropped).
        DependencyError: If ``format`` is chatterbot and the chatterbot-corpus package is not installed.
    """
    read = _read(cfg)
    repeats = 0
    if cfg.deduplicate:
        unique = _deduplicate(read.data, read.source, logging.WARNING if report else logging.INFO)
        repeats = len(read.data) - len(unique)
        read = dataclasses.replace(read, data=unique)
    labels = tuple(sorted(set(read.data.labels)))
    index = {label: i for i, label in enumerate(labels)}
    for split_name, given in (("test", read.test), ("validation", read.validation)):
        unseen = sorted(set(given.labels) - set(labels)) if given is not None else []
        if unseen:
            raise DataError(
                f"{read.source}: the {split_name} split has labels with no training example: {_preview(unseen)}.",
                hint=f"Every class needs training data: add examples of them or drop those rows from the "
                f"{split_name} file.",
            )
    if cfg.limit is not None and cfg.limit < len(labels):
        raise DataError(
            f"data.limit={cfg.limit} is smaller than the {len(labels)} classes of {read.source}.",
            hint=f"Raise data.limit to at least {len(labels)} so that every class keeps a training example.",
        )

    # Independent streams, so a change to one step (say, an official test split) does not reshuffle the others.
    test_rng, validation_rng, order_rng = (_rng(cfg.split.seed, stream) for stream in range(3))
    data = read.data
    if read.test is None:
        rest_idx, test_idx = _stratified_split(_ids(data, index), cfg.split.test, test_rng)
        test, data = _take(data, test_idx), _take(data, rest_idx)
    else:
        test = read.test
    test, cleaning = _test_overlap(cfg, read, data, test, logging.WARNING if report else logging.INFO)
    cleaning = {"repeats_dropped": repeats, **cleaning}
    if read.validation is None:
        train_idx, validation_idx = _stratified_split(_ids(data, index), cfg.split.validation, validation_rng)
        splits = [_take(data, train_idx), _take(data, validation_idx), test]
    else:
        splits = [data, read.validation, test]
    splits = [_take(split, _stratified_order(_ids(split, index), order_rng)) for split in splits]
    if cfg.limit is not None:
        splits = [_take(split, np.arange(min(cfg.limit, len(split)))) for split in splits]
    train, validation, test = splits

    for split_name, split in zip(SPLIT_NAMES[1:], (validation, test), strict=True):
        if not split:
            logger.warning(
                "%s: the %s split is empty (too few examples per class for the split fractions)",
                read.source,
                split_name,
            )
    logger.info(
        "%s: %d train, %d validation, %d test examples in %d classes",
        read.source,
        len(train),
        len(validation),
        len(test),
        len(labels),
    )
    return Corpus(train=train, validation=validation, test=test, labels=labels, source=read.source, name=name,
                  location=read.location, cleaning=cleaning)


def _test_overlap(cfg: DataConfig, read: _Read, rest: Examples, test: Examples, level: int
                  ) -> tuple[Examples, dict[str, Any]]:
    """The test split after ``data.test_overlap`` is applied to its texts that also sit in the training data
    (``rest``: what train and validation are drawn from, and the validation file if any), and what was found."""
    seen = set(rest.texts) | set(read.validation.texts if read.validation is not None else ())
    inside = [i for i, text in enumerate(test.texts) if text in seen]
    policy = cfg.test_overlap
    official = read.test is not None and cfg.format not in ("csv", "tsv", "jsonl")
    if policy == "auto":  # keep what was asked for: a published split as published, repeats when not deduplicated
        policy = "keep" if official or (read.test is None and not cfg.deduplicate) else "drop"
    found = {"test_in_train": len(inside), "test_overlap": policy, "test_dropped": 0}
    if not inside:
        return test, found
    count = f"{len(inside):,} of {len(test):,} test texts also sit in the training data"
    if policy == "error":
        raise DataError(
            f"{read.source}: {count} (e.g. {_shorten(test.texts[inside[0]])!r}); data.test_overlap is error.",
            hint="Remove them from the test file (or from the training file), or set data.test_overlap to drop "
            "(score the model on the others) or keep.",
        )
    if policy == "keep":
        why = "data.test_overlap: keep"
        if cfg.test_overlap == "auto":
            why = "an official test split, kept as published" if official else "data.deduplicate: false"
        logger.log(level, "%s: %s; kept (%s), so test accuracy counts texts the model was trained on. "
                       "data.test_overlap: drop leaves them out.", read.source, count, why)
        return test, found
    if len(inside) == len(test):
        raise DataError(
            f"{read.source}: all {len(test):,} test texts also sit in the training data, so no test split is left "
            "once they are dropped (data.test_overlap).",
            hint="Point data.test_path at held-out texts, or set data.test_overlap: keep.",
        )
    logger.log(level, "%s: %s; dropped them from the test split (%s left). data.test_overlap: keep scores them, "
                   "error refuses such data.", read.source, count, f"{len(test) - len(inside):,}")
    drop = set(inside)
    kept = np.asarray([i for i in range(len(test)) if i not in drop], dtype=np.int64)
    return _take(test, kept), {**found, "test_dropped": len(inside)}


def describe(corpus: Corpus) -> dict[str, Any]:
    """A JSON-able summary of a corpus for logs and run records.

    Args:
        corpus: The corpus to summarise.

    Returns:
        name, source, classes, labels, sizes, class_counts and mean_tokens (whitespace tokens) per split, the
        number of validation/test texts that also occur in train (exact duplicates), and a digest of the splits
        that changes whenever any split's content or order does.
    """
    splits = {name: getattr(corpus, name) for name in SPLIT_NAMES}
    train_texts = set(corpus.train.texts)
    digest = hashlib.sha256()
    for name, split in splits.items():
        digest.update(json.dumps([name, split.texts, split.labels]).encode())
    return {
        "name": corpus.name,
        "source": corpus.source,
        "classes": corpus.num_classes,
        "labels": list(corpus.labels),
        "sizes": {name: len(split) for name, split in splits.items()},
        "class_counts": {name: corpus.class_counts(split) for name, split in splits.items()},
        "mean_tokens": {
            name: round(float(np.mean([len(text.split()) for text in split.texts])), 2) if split else 0.0
            for name, split in splits.items()
        },
        "in_train": {name: sum(text in train_texts for text in splits[name].texts) for name in ("validation", "test")},
        "digest": digest.hexdigest()[:12],
    }


# --- reading ---------------------------------------------------------------------------------------------------


def _read(cfg: DataConfig) -> _Read:
    """Dispatch to the format's reader and check the result is trainable."""
    read = _READERS[cfg.format](cfg)
    labels = sorted(set(read.data.labels))
    if len(labels) < 2:
        raise DataError(
            f"{read.source}: needs at least 2 labels to train a classifier, found {len(labels)} ({_preview(labels)}).",
            hint=_single_label_hint(cfg),
        )
    return read


def _single_label_hint(cfg: DataConfig) -> str:
    """The fix for a one-class data set, which depends on where the labels come from."""
    if cfg.format in ("csv", "tsv", "jsonl"):
        return f"Check that data.label_field ({cfg.label_field!r}) holds the class, and add other classes' rows."
    if cfg.format == "chatterbot":
        return "Each topic file is a class: pick a data.language with at least two files."
    return "Restore the data set's files; each class should have examples."


def _read_with_test(cfg: DataConfig, read_file: Callable[[DataConfig, Path], Examples]) -> _Read:
    """data.path and, when set, data.test_path and data.validation_path, each read with one file reader."""
    path, test_path = _table_paths(cfg)
    data = read_file(cfg, path)
    test = read_file(cfg, test_path) if test_path is not None else None
    source = _table_source(cfg, path, test_path)
    validation = None
    if cfg.validation_path:
        validation_path = _existing_file(cfg, cfg.validation_path, "data.validation_path")
        validation = read_file(cfg, validation_path)
        source += f" (validation: {validation_path})"
    return _Read(data, test, source, str(path), validation)


def _read_table(cfg: DataConfig) -> _Read:
    """csv or tsv with a header row; the text and label columns are named by text_field and label_field."""
    return _read_with_test(cfg, _read_table_file)


def _read_table_file(cfg: DataConfig, path: Path) -> Examples:
    """One csv/tsv file: header row, then one example per row."""
    text = _decode(_read_bytes(path), path, cfg.encoding, _ENCODING_HINT)
    # newline="" lets the csv module see quoted line breaks; StringIO splits lines on \n and \r only (never on
    # U+0085, unlike str.splitlines), and the csv module handles \r\n itself.
    dialect = "excel-tab" if cfg.format == "tsv" else "excel"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    texts: list[str] = []
    labels: list[str] = []
    blank = empty_text = 0
    start = 1  # the line the row being read starts on (a quoted field can span lines)
    header: list[str] = []
    # The csv module refuses fields over 131072 characters by default, whatever the data set: the limit is made the
    # documented data.max_text_chars for this read (it is process-wide, hence restored after it).
    previous_limit = csv.field_size_limit(cfg.max_text_chars)
    try:
        header = [column.strip() for column in next(reader, [])]
        if not any(header):
            raise DataError(
                f"{path}: no header row; data.format={cfg.format} expects one naming the columns "
                f"{cfg.text_field!r} and {cfg.label_field!r}.",
                hint="Add the header row, or point data.path at the right file.",
            )
        text_col = _column(header, cfg.text_field, "text_field", path, cfg.format)
        label_col = _column(header, cfg.label_field, "label_field", path, cfg.format)
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not any(cell.strip() for cell in row):
                blank += 1
                continue
            label = row[label_col].strip() if label_col < len(row) else ""
            if not label:
                if reader.line_num > start:
                    raise DataError(
                        f"{path}:{start}: empty label in column {cfg.label_field!r} of the row that runs from line "
                        f"{start} to line {reader.line_num}.",
                        hint=f"Fill in the label; or, if a double quote opened on line {start} is never closed, "
                        'close it (it joins the lines after it into one field), or write a quote inside a quoted '
                        'field as "".',
                    )
                raise DataError(
                    f"{path}:{reader.line_num}: empty label in column {cfg.label_field!r}.",
                    hint="Fill in the label or remove the row.",
                )
            value = row[text_col].strip() if text_col < len(row) else ""
            if not value:
                empty_text += 1
                continue
            texts.append(value)
            labels.append(label)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise _oversized_field(cfg, path, text, dialect, start, header) from None
        raise DataError(
            f"{path}:{reader.line_num}: not valid {cfg.format.upper()} ({exc}).",
            hint="Fix the row (quote fields that contain the delimiter or line breaks).",
        ) from None
    finally:
        csv.field_size_limit(previous_limit)
    _log_skipped(path, blank=blank, empty_text=empty_text)
    return _nonempty(Examples(texts, labels), path, empty_text=empty_text, field=f"column {cfg.text_field!r}")


def _oversized_field(cfg: DataConfig, path: Path, text: str, dialect: str, start: int,
                     header: list[str]) -> DataError:
    """The error for a csv/tsv field over data.max_text_chars: its length, lines and the likely cause."""
    lines = io.StringIO(text, newline="").readlines()
    csv.field_size_limit(2**31 - 1)  # re-read the one row in full to measure it; the caller restores the limit
    reader = csv.reader(io.StringIO("".join(lines[start - 1:]), newline=""), dialect=dialect)
    row = next(reader, [])
    end = start + reader.line_num - 1
    column = max(range(len(row)), key=lambda i: len(row[i]), default=0)
    size = len(row[column]) if row else 0
    name = repr(header[column]) if column < len(header) else f"number {column + 1}"
    raise_it = f"raise data.max_text_chars (e.g. --set data.max_text_chars={size})"
    if end == start:
        return DataError(
            f"{path}:{start}: the field in column {name} has {size:,} characters, more than data.max_text_chars "
            f"({cfg.max_text_chars:,}).",
            hint=f"Shorten the text (the model reads only its first tokenizer.max_len tokens) or {raise_it}.",
        )
    return DataError(
        f"{path}:{start}: the field in column {name} runs from line {start} to line {end} ({size:,} characters), "
        f"more than data.max_text_chars ({cfg.max_text_chars:,}).",
        hint=f"If a double quote opened on line {start} is never closed, it joins the lines after it into one "
        f'field: close it, or write a quote inside a quoted field as "". If the text really is that long, '
        f"{raise_it}.",
    )


def _column(header: list[str], field: str, key: str, path: Path, fmt: str) -> int:
    """The index of a named column, or a DataError listing the columns there are (and, when the one "column" holds
    the other format's delimiter, the format to use)."""
    if field in header:
        return header.index(field)
    other = {"tsv": ("csv", ",", "comma"), "csv": ("tsv", "\t", "tab")}.get(fmt)
    if other is not None and len(header) == 1 and other[1] in header[0]:
        wanted, delimiter, name = other
        columns = [column.strip() for column in header[0].split(delimiter)]
        raise DataError(
            f"{path}: no column {field!r}: data.format={fmt} reads one column, {header[0]!r}, whose name holds "
            f"{name}s; the file looks {name}-separated (columns: {', '.join(columns)}).",
            hint=f"Set data.format: {wanted} (or --set data.format={wanted}).",
        )
    raise DataError(
        f"{path}: no column {field!r} (columns: {', '.join(header)}).",
        hint=f"Set data.{key} to one of them.",
    )


def _read_jsonl(cfg: DataConfig) -> _Read:
    """JSON Lines: one object per line with the text under text_field and the label under label_field."""
    label_types = _LabelTypes()  # shared: data.path and data.test_path must not mix label types either
    return _read_with_test(cfg, lambda data, path: _read_jsonl_file(data, path, label_types))


class _LabelTypes:
    """The JSON type of the first label read, so that a label of another type is refused: labels are compared as
    text, so 0 and "0" (or true and "True") would silently become one class."""

    def __init__(self) -> None:
        self.first: tuple[str, str, str, Path, int] | None = None  # kind, label as written, as text, file, line

    def check(self, raw: object, path: Path, number: int, key: str) -> None:
        """Refuse a label that is not a JSON string, number or boolean, or whose type differs from the first's."""
        kind = _json_kind(raw)
        written = _shorten(json.dumps(raw, ensure_ascii=False))
        if kind is None:
            raise DataError(
                f"{path}:{number}: the label under key {key!r} is a JSON {_JSON_CONTAINERS.get(type(raw), 'value')} "
                f"({written}); "
                "a label is one string or number.",
                hint="Write one label per line, as a string.",
            )
        if self.first is None:
            self.first = (kind, written, _as_text(raw), path, number)
            return
        first_kind, first_written, first_text, first_path, first_line = self.first
        if kind != first_kind:
            where = f"line {first_line}" if first_path == path else f"{first_path}:{first_line}"
            if _as_text(raw) == first_text:
                why = f"{first_written} and {written} would be one class"
            else:
                why = 'mixed types merge classes (0 and "0") or split them (1 and 1.0)'
            raise DataError(
                f"{path}:{number}: label {written} is {kind} but the label on {where} is {first_written}, "
                f"{first_kind}; labels are compared as text, so {why}.",
                hint=f"Write every label under key {key!r} as a string (e.g. {json.dumps(_as_text(raw))}).",
            )


_JSON_CONTAINERS: dict[type, str] = {list: "array", dict: "object"}


def _json_kind(value: object) -> str | None:
    """How a JSON label value is described in errors; None for null, arrays and objects."""
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    return None


def _shorten(text: str, limit: int = 60) -> str:
    """Text cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl_file(cfg: DataConfig, path: Path, label_types: _LabelTypes | None = None) -> Examples:
    """One .jsonl file; ``label_types`` carries the label type across the files of one data set."""
    if label_types is None:
        label_types = _LabelTypes()
    lines = _split_lines(_decode(_read_bytes(path), path, cfg.encoding, _ENCODING_HINT))
    texts: list[str] = []
    labels: list[str] = []
    blank = empty_text = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}).",
                hint="Fix or remove the line; data.format=jsonl expects one JSON object per line.",
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}:{number}: expected a JSON object, got {type(record).__name__}.",
                hint=f"Write one object per line, e.g. {{{json.dumps(cfg.text_field)}: ..., "
                f"{json.dumps(cfg.label_field)}: ...}}.",
            )
        for field, key in ((cfg.text_field, "text_field"), (cfg.label_field, "label_field")):
            if field not in record:
                raise DataError(
                    f"{path}:{number}: no key {field!r} (keys: {', '.join(map(str, record))}).",
                    hint=f"Set data.{key} to one of them.",
                )
        label = _as_text(record[cfg.label_field])
        if not label:
            raise DataError(
                f"{path}:{number}: empty label under key {cfg.label_field!r}.",
                hint="Fill in the label or remove the line.",
            )
        label_types.check(record[cfg.label_field], path, number, cfg.label_field)
        value = _as_text(record[cfg.text_field])
        if not value:
            empty_text += 1
            continue
        if len(value) > cfg.max_text_chars:
            raise DataError(
                f"{path}:{number}: the text under key {cfg.text_field!r} has {len(value):,} characters, more than "
                f"data.max_text_chars ({cfg.max_text_chars:,}).",
                hint="Shorten the text (the model reads only its first tokenizer.max_len tokens) or raise "
                f"data.max_text_chars (e.g. --set data.max_text_chars={len(value)}).",
            )
        texts.append(value)
        labels.append(label)
    _log_skipped(path, blank=blank, empty_text=empty_text)
    return _nonempty(Examples(texts, labels), path, empty_text=empty_text, field=f"key {cfg.text_field!r}")


def _read_mr(cfg: DataConfig) -> _Read:
    """Pang & Lee's sentence polarity files: one snippet per line, the label is the file."""
    folder = _format_dir(cfg, "mr", tuple(MR_FILES.values()))
    texts: list[str] = []
    labels: list[str] = []
    paths = []
    for label, filename in MR_FILES.items():
        path = _member(folder, filename, "mr", tuple(MR_FILES.values()))
        paths.append(path)
        lines = _split_lines(_decode(_read_bytes(path), path, MR_ENCODING, _fixed_encoding_hint("mr")))
        kept = [line.strip() for line in lines if line.strip()]
        _log_skipped(path, blank=len(lines) - len(kept))
        _nonempty(Examples(kept, [label] * len(kept)), path)
        texts.extend(kept)
        labels.extend([label] * len(kept))
    return _Read(Examples(texts, labels), None, f"mr: {', '.join(map(str, paths))}", str(folder))


def _read_trec(cfg: DataConfig) -> _Read:
    """Li & Roth's question files: ``COARSE:fine question`` per line; the label is the coarse class."""
    expected = (TREC_TRAIN_FILE, TREC_TEST_FILE)
    folder = _format_dir(cfg, "trec", expected)
    train_path, test_path = (_member(folder, filename, "trec", expected) for filename in expected)
    source = f"trec: {train_path} (test: {test_path})"
    return _Read(_read_trec_file(train_path), _read_trec_file(test_path), source, str(folder))


def _read_trec_file(path: Path) -> Examples:
    """One TREC .label file."""
    lines = _split_lines(_decode_legacy(_read_bytes(path), path, "trec"))
    texts: list[str] = []
    labels: list[str] = []
    blank = empty_text = 0
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            blank += 1
            continue
        match = _TREC_LINE.fullmatch(line)
        if match is None:
            raise DataError(
                f"{path}:{number}: expected 'COARSE:fine question' (e.g. 'DESC:manner How did serfdom develop "
                f"?'), got {line[:40]!r}.",
                hint="Fix or remove the line; data.format=trec reads Li & Roth's question files.",
            )
        coarse, _fine, question = match.groups()
        if not question:
            empty_text += 1
            continue
        texts.append(question)
        labels.append(coarse)
    _log_skipped(path, blank=blank, empty_text=empty_text)
    return _nonempty(Examples(texts, labels), path, empty_text=empty_text)


def _read_stackoverflow(cfg: DataConfig) -> _Read:
    """jacoxu's StackOverflow titles: a title file and a label-id file aligned line by line."""
    expected = (STACKOVERFLOW_TITLES_FILE, STACKOVERFLOW_LABELS_FILE)
    folder = _format_dir(cfg, "stackoverflow", expected)
    titles_path, labels_path = (_member(folder, filename, "stackoverflow", expected) for filename in expected)
    titles = _split_lines(_decode_legacy(_read_bytes(titles_path), titles_path, "stackoverflow"))
    ids = _split_lines(_decode_legacy(_read_bytes(labels_path), labels_path, "stackoverflow"))
    if len(titles) != len(ids):
        raise DataError(
            f"{titles_path} has {len(titles)} lines but {labels_path} has {len(ids)}; they must align line by line.",
            hint="Restore both files from the same copy of the data set (20000 lines each).",
        )
    texts: list[str] = []
    labels: list[str] = []
    blank = empty_text = 0
    for number, (title, raw_id) in enumerate(zip(titles, ids, strict=True), start=1):
        title, raw_id = title.strip(), raw_id.strip()
        if not title and not raw_id:
            blank += 1
            continue
        if not raw_id.isdigit() or not 1 <= int(raw_id) <= len(STACKOVERFLOW_LABELS):
            raise DataError(
                f"{labels_path}:{number}: label {raw_id!r} is not an id from 1 to {len(STACKOVERFLOW_LABELS)}.",
                hint="Fix the line; each line of the label file holds the id of the title on the same line.",
            )
        if not title:
            empty_text += 1
            continue
        texts.append(title)
        labels.append(STACKOVERFLOW_LABELS[int(raw_id) - 1])
    _log_skipped(titles_path, blank=blank, empty_text=empty_text)
    data = _nonempty(Examples(texts, labels), titles_path, empty_text=empty_text)
    return _Read(data, None, f"stackoverflow: {titles_path}, {labels_path}", str(folder))


def _read_chatterbot(cfg: DataConfig) -> _Read:
    """The chatterbot-corpus package's topic files: every utterance is a text, the file's stem its label."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise DependencyError(
            "data.format=chatterbot needs the chatterbot-corpus package, which is not installed.",
            hint="pip install chatterbot-corpus==1.3.3",
        ) from None
    from importlib.resources import files

    root = files(chatterbot_corpus) / "data"
    languages = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if cfg.language not in languages:
        raise DataError(
            f"chatterbot-corpus has no language {cfg.language!r} (available: {', '.join(languages)}).",
            hint="Set data.language to one of them.",
        )
    folder = root / cfg.language
    topic_files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith((".yml", ".yaml"))), key=lambda e: e.name
    )
    texts: list[str] = []
    labels: list[str] = []
    for entry in topic_files:
        utterances = _chatterbot_utterances(entry)
        texts.extend(utterances)
        labels.extend([entry.name.rsplit(".", 1)[0]] * len(utterances))
    version = getattr(chatterbot_corpus, "__version__", "unknown")
    source = f"chatterbot-corpus {version}: {folder} ({len(topic_files)} topic files)"
    return _Read(_nonempty(Examples(texts, labels), Path(str(folder))), None, source, str(folder))


def _chatterbot_utterances(entry: Traversable) -> list[str]:
    """The non-empty utterances of one chatterbot topic file."""
    try:
        document = yaml.load(entry.read_bytes(), Loader=_YAML_LOADER)  # a safe loader: CSafeLoader or SafeLoader
    except yaml.YAMLError as exc:
        raise DataError(
            f"{entry}: not valid YAML ({getattr(exc, 'problem', exc)}).",
            hint="Reinstall chatterbot-corpus (pip install --force-reinstall chatterbot-corpus==1.3.3).",
        ) from None
    conversations = document.get("conversations") if isinstance(document, dict) else None
    if not isinstance(conversations, list):
        raise DataError(
            f"{entry}: expected a mapping with a 'conversations' list.",
            hint="Reinstall chatterbot-corpus (pip install --force-reinstall chatterbot-corpus==1.3.3).",
        )
    utterances: list[str] = []
    skipped = 0
    for conversation in conversations:
        # A few files (english/trivia.yml, several ukrainian ones) hold a bare string where a list belongs.
        for item in conversation if isinstance(conversation, list) else [conversation]:
            text = _as_text(item)
            if text:
                utterances.append(text)
            else:
                skipped += 1
    if skipped:
        logger.info("%s: skipped %d empty utterances", entry, skipped)
    return utterances


_READERS: dict[str, Callable[[DataConfig], _Read]] = {
    "csv": _read_table,
    "tsv": _read_table,
    "jsonl": _read_jsonl,
    "mr": _read_mr,
    "trec": _read_trec,
    "stackoverflow": _read_stackoverflow,
    "chatterbot": _read_chatterbot,
}


# --- files and decoding ----------------------------------------------------------------------------------------


def _table_paths(cfg: DataConfig) -> tuple[Path, Path | None]:
    """The resolved data.path and data.test_path of a csv/tsv/jsonl data set."""
    if not cfg.path:
        raise DataError(
            f"data.format={cfg.format} needs a file: set data.path to a .{cfg.format} file with the fields "
            f"{cfg.text_field!r} and {cfg.label_field!r}.",
            hint="Or use data.format=chatterbot, which needs no file.",
        )
    path = _existing_file(cfg, cfg.path, "data.path")
    test_path = _existing_file(cfg, cfg.test_path, "data.test_path") if cfg.test_path else None
    return path, test_path


def _existing_file(cfg: DataConfig, raw: str, key: str) -> Path:
    """A configured file path, resolved, or a DataError naming the config key (and, for a relative path that is
    nowhere, every place it was looked for)."""
    path = resolve_data_path(cfg, raw)
    if path.is_dir():
        raise DataError(f"{key}: {path} is a directory, not a file.", hint=f"Set {key} to an existing file.")
    if not path.is_file():
        raise DataError(f"{key}: {_not_found(cfg, raw, path)}.",
                        hint=f"Set {key} to an existing file: an absolute path, or one relative to the config "
                        "file's folder, the working directory or the data directory.")
    return path


def _not_found(cfg: DataConfig, raw: str, path: Path) -> str:
    """``<path> not found``, or for a relative path ``<raw> not found; looked <place> (<path>), ...``."""
    places = data_path_candidates(cfg, raw)
    if len(places) == 1 and not places[0][1]:
        return f"{path} not found"
    return f"{raw} not found; looked in " + ", ".join(f"{place} ({what})" for place, what in places)


def _format_dir(cfg: DataConfig, fmt: str, expected: Sequence[str]) -> Path:
    """The directory of a published layout: data.path, or its usual folder name under data_dir."""
    raw = cfg.path or DEFAULT_DIRS[fmt]
    folder = resolve_data_path(cfg, raw)
    if not folder.is_dir():
        what = f"{folder} is a file, not a directory" if folder.exists() else _not_found(cfg, raw, folder)
        raise DataError(
            f"data.path: {what}; data.format={fmt} reads a directory holding {' and '.join(expected)}.",
            hint="Set data.path to that directory: an absolute path, or one relative to the config file's folder, "
            "the working directory or the data directory.",
        )
    return folder


def _member(folder: Path, filename: str, fmt: str, expected: Sequence[str]) -> Path:
    """A file that a published layout needs inside its directory."""
    path = folder / filename
    if not path.is_file():
        raise DataError(
            f"{folder}: no {filename}; data.format={fmt} needs {' and '.join(expected)} there.",
            hint="Set data.path to the directory that holds them.",
        )
    return path


def _read_bytes(path: Path) -> bytes:
    """A file's bytes; OS errors become DataErrors."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}).", hint="Check the file's permissions.") from None


def _decode(data: bytes, path: Path, encoding: str, hint: str) -> str:
    """Bytes to text, with errors naming the file, byte offset and line; a leading BOM is dropped."""
    try:
        text = data.decode(encoding)
    except LookupError:
        raise DataError(
            f"data.encoding {encoding!r} is not a known text encoding.",
            hint="Use a Python codec name such as utf-8, cp1252 or latin-1.",
        ) from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: byte 0x{data[exc.start]:02X} at offset {exc.start} (line {line}) is not valid {encoding}.",
            hint=hint,
        ) from None
    # Spreadsheet exports often start with a UTF-8 BOM, which would otherwise glue onto the first column name.
    return text.removeprefix("\ufeff")


def _decode_legacy(data: bytes, path: Path, fmt: str) -> str:
    """UTF-8 if the whole file is valid UTF-8, else cp1252 (TREC's train_5500.label has one 0xF0 byte)."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        logger.debug("%s: not UTF-8, decoding as cp1252", path)
        return _decode(data, path, "cp1252", _fixed_encoding_hint(fmt))


def _fixed_encoding_hint(fmt: str) -> str:
    """The fix for an undecodable file of a published layout, whose encoding is not configurable."""
    expected = "cp1252" if fmt == "mr" else "UTF-8 or cp1252"
    return f"data.format={fmt} reads {expected} text (data.encoding is for csv/tsv/jsonl): restore the original file."


def _split_lines(text: str) -> list[str]:
    """Lines split on \\n only: str.splitlines() would also split on U+0085, U+2028 and others inside a text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _as_text(value: object) -> str:
    """A JSON/YAML value as stripped text; None is empty."""
    if value is None:
        return ""
    return (value if isinstance(value, str) else str(value)).strip()


def _log_skipped(path: Path, *, blank: int = 0, empty_text: int = 0) -> None:
    """Report lines that were skipped rather than failing the whole file."""
    if blank:
        logger.warning("%s: skipped %d blank lines", path, blank)
    if empty_text:
        logger.warning("%s: skipped %d examples with empty text", path, empty_text)


def _nonempty(examples: Examples, path: Path, *, empty_text: int = 0, field: str | None = None) -> Examples:
    """The examples, or a DataError when the file yielded none."""
    if examples:
        return examples
    detail = "no examples"
    if empty_text:
        detail += f": all {empty_text} have empty text" + (f" in {field}" if field else "")
    hint = "Point data.path at a file with labelled texts"
    if field:
        hint += ", or set data.text_field to the column (csv/tsv) or key (jsonl) that holds the text"
    raise DataError(f"{path}: {detail}.", hint=hint + ".")


def _table_source(cfg: DataConfig, path: Path, test_path: Path | None) -> str:
    """The human description of a csv/tsv/jsonl source."""
    return f"{cfg.format}: {path}" + (f" (test: {test_path})" if test_path is not None else "")


def _preview(names: Sequence[str], limit: int = 10) -> str:
    """Up to ``limit`` names, comma-separated."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --- splitting -------------------------------------------------------------------------------------------------


def _deduplicate(examples: Examples, source: str, level: int = logging.WARNING) -> Examples:
    """Keep the first of each repeated (text, label) pair, in file order."""
    seen: set[tuple[str, str]] = set()
    keep = [i for i, pair in enumerate(zip(examples.texts, examples.labels, strict=True))
            if not (pair in seen or seen.add(pair))]
    if len(keep) < len(examples):
        logger.log(level, "%s: dropped %s repeated (text, label) rows of %s, kept the first of each (data.deduplicate: "
                       "false keeps them)", source, f"{len(examples) - len(keep):,}", f"{len(examples):,}")
    return _take(examples, np.asarray(keep, dtype=np.int64))


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per split step; negative seeds map into numpy's unsigned seed range."""
    return np.random.default_rng([seed % 2**64, stream])


def _ids(examples: Examples, index: dict[str, int]) -> np.ndarray:
    """Label ids of examples under a label -> id mapping."""
    return np.fromiter((index[label] for label in examples.labels), dtype=np.int64, count=len(examples))


def _take(examples: Examples, indices: np.ndarray) -> Examples:
    """The examples at the given positions, in that order."""
    return Examples(tuple(examples.texts[i] for i in indices), tuple(examples.labels[i] for i in indices))


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(n * fraction) random examples of each class, leaving each class at least one.

    Returns:
        The kept and held-out positions, each sorted.
    """
    held = [np.empty(0, dtype=np.int64)]
    # Classes in id order, so the generator is consumed the same way on every run.
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        # Round half up (not Python's round-half-even) and never take a class's last training example.
        count = min(int(np.floor(len(members) * fraction + 0.5)), len(members) - 1)
        held.append(members[:count])
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded order whose every prefix keeps the class proportions and starts with one example per class."""
    keys = np.empty(len(y))
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        # Evenly spaced slots in [0, 1) with a random phase: the first k of n examples hold about k/n of each class.
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
        # Each class's first example goes in front, so a limit of at least num_classes keeps every class.
        keys[members[0]] = rng.random() - 1.0
    return np.argsort(keys, kind="stable")
