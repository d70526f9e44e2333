"""Tests of lifecycle.corpus on the real data in ../shared/data (or $LIFECYCLE_DATA_DIR) and on small files."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lifecycle.config import DataConfig, SplitConfig, default_data_dir
from lifecycle.corpus import (
    STACKOVERFLOW_LABELS,
    Corpus,
    Examples,
    describe,
    load_corpus,
    read_examples,
)
from lifecycle.errors import DataError

DATA_DIR = default_data_dir()


def _data_dir(name: str) -> Path:
    """A data set's folder, or a skip naming where it was looked for."""
    folder = DATA_DIR / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: shared data missing (set $LIFECYCLE_DATA_DIR to the data folder)")
    return folder


@pytest.fixture(scope="module")
def mr_dir() -> Path:
    return _data_dir("MR")


@pytest.fixture(scope="module")
def trec_dir() -> Path:
    return _data_dir("TREC")


@pytest.fixture(scope="module")
def so_dir() -> Path:
    return _data_dir("StackOverflow")


def _cfg(fmt: str, path: Path | str | None = None, **kwargs: object) -> DataConfig:
    return DataConfig(format=fmt, path=None if path is None else str(path), **kwargs)


@pytest.fixture(scope="module")
def mr_corpus(mr_dir: Path) -> Corpus:
    return load_corpus(_cfg("mr", mr_dir), "mr")


@pytest.fixture(scope="module")
def so_corpus(so_dir: Path) -> Corpus:
    return load_corpus(_cfg("stackoverflow", so_dir, deduplicate=False), "so")


def _mr_lines_with(mr_dir: Path, byte: bytes) -> list[bytes]:
    """Raw lines of rt-polarity.pos holding a byte, found by scanning (no text hard-coded)."""
    lines = [line for line in (mr_dir / "rt-polarity.pos").read_bytes().split(b"\n") if byte in line]
    assert lines, f"no line with {byte!r} in rt-polarity.pos"
    return lines


def _pairs(examples: Examples) -> Counter[tuple[str, str]]:
    return Counter(zip(examples.texts, examples.labels, strict=True))


# --- the published data sets ------------------------------------------------------------------------------------


def test_mr_counts_and_nel_byte(mr_dir: Path) -> None:
    data, test = read_examples(_cfg("mr", mr_dir))
    assert test is None
    assert Counter(data.labels) == {"positive": 5331, "negative": 5331}
    assert all(text == text.strip() and text for text in data.texts)
    # 0x85 is cp1252 '…'; decoded as latin-1 it is U+0085, on which str.splitlines() would split the line.
    raw = _mr_lines_with(mr_dir, b"\x85")[0]
    expected = raw.decode("cp1252").strip()
    assert "…" in expected and "\x85" not in expected
    assert expected in data.texts
    assert len(raw.decode("latin-1").splitlines()) > 1  # the pitfall this reader avoids


def test_mr_default_path_under_data_dir(mr_dir: Path) -> None:
    data, _ = read_examples(DataConfig(format="mr", data_dir=str(mr_dir.parent)))
    assert len(data) == 10662


def test_trec_counts_and_f0_byte(trec_dir: Path) -> None:
    data, test = read_examples(_cfg("trec", trec_dir))
    assert test is not None
    assert (len(data), len(test)) == (5452, 500)
    assert sorted(set(data.labels)) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert set(test.labels) == set(data.labels)
    assert Counter(data.labels)["ABBR"] == 86 and Counter(test.labels)["NUM"] == 113
    raw_lines = (trec_dir / "train_5500.label").read_bytes().split(b"\n")
    (number, raw), *_ = [(i, line) for i, line in enumerate(raw_lines) if any(b > 0x7F for b in line)]
    question = raw.decode("cp1252").split(" ", 1)[1].strip()
    assert "ð" in question
    assert data.texts[number] == question  # no blank lines before it, so positions line up
    assert data.labels[number] == raw.split(b":", 1)[0].decode()


def test_trec_keeps_official_test_split(trec_dir: Path) -> None:
    _, official = read_examples(_cfg("trec", trec_dir))
    corpus = load_corpus(_cfg("trec", trec_dir, deduplicate=False), "trec")
    assert official is not None
    assert _pairs(corpus.test) == _pairs(official)  # the same examples, reordered so any prefix is stratified
    assert len(corpus.train) + len(corpus.validation) == 5452
    deduplicated = load_corpus(_cfg("trec", trec_dir), "trec")
    assert _pairs(deduplicated.test) == _pairs(official)  # an official test split is never touched
    train_pairs = list(zip(deduplicated.train.texts + deduplicated.validation.texts,
                           deduplicated.train.labels + deduplicated.validation.labels, strict=True))
    assert len(train_pairs) == len(set(train_pairs)) < 5452


def test_chatterbot_default_has_no_repeated_pairs_and_no_train_test_leak() -> None:
    corpus = load_corpus(DataConfig(), "default")
    splits = (corpus.train, corpus.validation, corpus.test)
    pairs = [pair for split in splits for pair in zip(split.texts, split.labels, strict=True)]
    assert len(pairs) == len(set(pairs))
    assert not set(zip(corpus.test.texts, corpus.test.labels, strict=True)) & set(
        zip(corpus.train.texts, corpus.train.labels, strict=True))
    raw, _ = read_examples(DataConfig())
    assert len(pairs) < len(raw)  # the package's corpus does repeat utterances


def test_stackoverflow_counts(so_corpus: Corpus, so_dir: Path) -> None:
    data, test = read_examples(_cfg("stackoverflow", so_dir))
    assert test is None
    assert len(data) == 20000
    assert Counter(data.labels) == dict.fromkeys(STACKOVERFLOW_LABELS, 1000)
    first_id = int((so_dir / "label_StackOverflow.txt").read_text(encoding="utf-8").split("\n", 1)[0])
    assert data.labels[0] == STACKOVERFLOW_LABELS[first_id - 1]
    assert so_corpus.labels == tuple(sorted(STACKOVERFLOW_LABELS))


def test_chatterbot_default_needs_no_shared_data(tmp_path: Path) -> None:
    cfg = DataConfig(data_dir=str(tmp_path / "nothing-here"))
    data, test = read_examples(cfg)
    assert test is None
    labels = Counter(data.labels)
    assert len(labels) >= 15
    assert {"tech_support", "health", "trivia"} <= set(labels)
    assert all(text and text == text.strip() for text in data.texts)
    corpus = load_corpus(cfg, "default")
    # health has 9 utterances: at least one stays in train, the rest reach validation/test only by rounding.
    counts = {split: corpus.class_counts(getattr(corpus, split))["health"] for split in ("train", "validation", "test")}
    assert counts["train"] >= 1 and sum(counts.values()) == labels["health"]
    assert corpus.source.startswith("chatterbot-corpus")


# --- splits ------------------------------------------------------------------------------------------------------


def test_split_is_complete_and_disjoint(mr_corpus: Corpus, mr_dir: Path) -> None:
    data, _ = read_examples(_cfg("mr", mr_dir))
    splits = [mr_corpus.train, mr_corpus.validation, mr_corpus.test]
    assert sum(map(_pairs, splits), Counter()) == _pairs(data)
    texts = [set(split.texts) for split in splits]  # MR has no duplicate lines, so texts identify examples
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert (len(mr_corpus.train), len(mr_corpus.validation), len(mr_corpus.test)) == (8636, 960, 1066)


def test_split_is_stratified(so_corpus: Corpus) -> None:
    for split in (so_corpus.train, so_corpus.validation, so_corpus.test):
        fractions = np.bincount(so_corpus.label_ids(split), minlength=20) / len(split)
        np.testing.assert_allclose(fractions, 1 / 20, atol=0.005)
    assert set(so_corpus.class_counts(so_corpus.test).values()) == {100}
    assert set(so_corpus.class_counts(so_corpus.validation).values()) == {90}


def test_split_is_deterministic_per_seed(mr_dir: Path, mr_corpus: Corpus) -> None:
    again = load_corpus(_cfg("mr", mr_dir), "mr")
    assert again == mr_corpus
    assert describe(again)["digest"] == describe(mr_corpus)["digest"]
    other = load_corpus(_cfg("mr", mr_dir, split=SplitConfig(seed=14)), "mr")
    assert set(other.test.texts) != set(mr_corpus.test.texts)
    assert len(other.test) == len(mr_corpus.test)


def test_split_fractions(mr_dir: Path) -> None:
    corpus = load_corpus(_cfg("mr", mr_dir, split=SplitConfig(validation=0.2, test=0.3)), "mr")
    # Per class: test round(5331 * 0.3) = 1599, validation round(3732 * 0.2) = 746.
    assert corpus.class_counts(corpus.test) == {"negative": 1599, "positive": 1599}
    assert corpus.class_counts(corpus.validation) == {"negative": 746, "positive": 746}
    assert len(corpus.train) == 2 * (5331 - 1599 - 746)


def test_limit_keeps_every_class(trec_dir: Path) -> None:
    full = load_corpus(_cfg("trec", trec_dir), "trec")
    # 6 is the smallest limit allowed; ABBR (1.6% of train) would be lost by a plain shuffle-and-cut.
    for limit in (6, 50):
        corpus = load_corpus(_cfg("trec", trec_dir, limit=limit), "trec")
        assert [len(corpus.train), len(corpus.validation), len(corpus.test)] == [limit] * 3
        assert set(corpus.train.labels) == set(corpus.labels)
        assert corpus.labels == full.labels
        assert corpus.train.texts == full.train.texts[:limit]  # a prefix of the unlimited split
    big = load_corpus(_cfg("trec", trec_dir, limit=500), "trec")
    train_counts = big.class_counts(big.train)
    for label, count in full.class_counts(full.train).items():  # prefixes stay proportional, give or take one
        assert abs(train_counts[label] - 500 * count / len(full.train)) <= 2


def test_label_ids_and_describe(so_corpus: Corpus) -> None:
    ids = so_corpus.label_ids(so_corpus.train)
    assert ids.dtype == np.int32 and ids.shape == (len(so_corpus.train),)
    assert [so_corpus.labels[i] for i in ids[:20]] == list(so_corpus.train.labels[:20])
    with pytest.raises(DataError, match="'cobol' is not one of the 20 labels"):
        so_corpus.label_ids(Examples(("hello world",), ("cobol",)))
    summary = describe(so_corpus)
    assert summary["sizes"] == {"train": 16200, "validation": 1800, "test": 2000}
    assert summary["classes"] == 20
    assert 7 < summary["mean_tokens"]["train"] < 10
    json.dumps(summary)  # JSON-able, ready for a run record


def test_examples_are_tuples() -> None:
    examples = Examples(["a", "b"], ["x", "y"])  # type: ignore[arg-type]
    assert examples.texts == ("a", "b") and len(examples) == 2
    with pytest.raises(ValueError, match="one label per text"):
        Examples(("a",), ())


def test_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, lifecycle.corpus; "
        "print([m for m in ('tensorflow', 'keras', 'mlflow', 'pandas', 'sklearn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- csv / tsv / jsonl ---------------------------------------------------------------------------------------------


def _mr_rows(mr_dir: Path) -> list[tuple[str, str]]:
    """Real MR rows, including ones with cp1252-only bytes, both labels."""
    pos = [line.decode("cp1252").strip() for line in _mr_lines_with(mr_dir, b"\x85")[:3]]
    neg = (mr_dir / "rt-polarity.neg").read_bytes().decode("cp1252").split("\n")[:3]
    return [(text, "positive") for text in pos] + [(text.strip(), "negative") for text in neg]


def _write_table(path: Path, rows: list[tuple[str, str]], *, encoding: str, delimiter: str = ",") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(("fmt", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_table_reader_with_encoding(tmp_path: Path, mr_dir: Path, fmt: str, delimiter: str) -> None:
    rows = _mr_rows(mr_dir)
    path = _write_table(tmp_path / f"mr.{fmt}", rows, encoding="cp1252", delimiter=delimiter)
    data, test = read_examples(_cfg(fmt, path, encoding="cp1252"))
    assert test is None
    assert list(zip(data.texts, data.labels, strict=True)) == rows
    assert any("…" in text for text in data.texts)
    with pytest.raises(DataError, match=r"byte 0x85 at offset \d+ \(line 2\).*Set data\.encoding \(e\.g\. cp1252\)"):
        read_examples(_cfg(fmt, path))


def test_csv_columns_test_path_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = 'id,sentence,y\n1,good film,pos\n\n2,   ,neg\n3,"bad, ""awful""\nfilm",neg\n4,fine,pos\n'
    (tmp_path / "train.csv").write_text(text, encoding="utf-8")
    (tmp_path / "test.csv").write_text("\ufeffsentence,y\nok,pos\nmeh,neg\n", encoding="utf-8")
    cfg = DataConfig(
        format="csv",
        path="train.csv",
        test_path="test.csv",
        data_dir=str(tmp_path),
        text_field="sentence",
        label_field="y",
    )
    with caplog.at_level(logging.WARNING, logger="lifecycle.corpus"):
        data, test = read_examples(cfg)
    assert data.texts == ("good film", 'bad, "awful"\nfilm', "fine")
    assert data.labels == ("pos", "neg", "pos")
    assert test is not None and test.texts == ("ok", "meh")  # the BOM does not hide the first column
    assert "skipped 1 blank lines" in caplog.text and "skipped 1 examples with empty text" in caplog.text
    corpus = load_corpus(cfg, "tiny")
    assert corpus.test == test and corpus.labels == ("neg", "pos")
    assert "test.csv" in corpus.source


def test_jsonl_reader(tmp_path: Path, mr_dir: Path) -> None:
    rows = _mr_rows(mr_dir)
    lines = [
        json.dumps({"label": label, "body": text, "n": i}, ensure_ascii=False) for i, (text, label) in enumerate(rows)
    ]
    path = tmp_path / "mr.jsonl"
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]), encoding="cp1252")
    data, _ = read_examples(_cfg("jsonl", path, encoding="cp1252", text_field="body"))
    assert list(zip(data.texts, data.labels, strict=True)) == rows
    (tmp_path / "num.jsonl").write_text('{"text": "a", "label": 1}\n{"text": 2, "label": 0}\n', encoding="utf-8")
    data, _ = read_examples(_cfg("jsonl", tmp_path / "num.jsonl"))
    assert data.texts == ("a", "2") and data.labels == ("1", "0")


def test_u0085_in_utf8_text_stays_in_one_example(tmp_path: Path) -> None:
    path = tmp_path / "nel.jsonl"
    path.write_text('{"text": "one\u0085two", "label": "a"}\n{"text": "three", "label": "b"}\n', encoding="utf-8")
    data, _ = read_examples(_cfg("jsonl", path))
    assert data.texts == ("one\u0085two", "three")


# --- errors ------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_error_path_not_set(fmt: str) -> None:
    with pytest.raises(DataError, match=rf"data\.format={fmt} needs a file: set data\.path"):
        read_examples(DataConfig(format=fmt))


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: nope\.csv not found; looked in .*nope\.csv \(the working "
                                        r"directory\), .*nope\.csv \(the data directory"):
        read_examples(DataConfig(format="csv", path="nope.csv", data_dir=str(tmp_path)))
    train = _write(tmp_path / "t.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"data\.test_path: .*missing\.csv not found"):
        read_examples(_cfg("csv", train, test_path=str(tmp_path / "missing.csv")))


@pytest.mark.parametrize("fmt", ["mr", "trec", "stackoverflow"])
def test_error_missing_directory(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(DataError, match=rf"data\.path: .* not found; looked in .*; data\.format={fmt} reads a "
                                        r"directory"):
        read_examples(DataConfig(format=fmt, data_dir=str(tmp_path)))


def test_error_missing_member_file(tmp_path: Path) -> None:
    _write(tmp_path / "rt-polarity.pos", "good\n")
    with pytest.raises(DataError, match=r"no rt-polarity\.neg; data\.format=mr needs"):
        read_examples(_cfg("mr", tmp_path))


def test_error_unknown_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.csv", "text,label\na,x\n")
    with pytest.raises(DataError, match=r"data\.csv: no column 'txt' \(columns: text, label\)\. Set data\.text_field"):
        read_examples(_cfg("csv", path, text_field="txt"))
    with pytest.raises(DataError, match=r"no column 'y' .*Set data\.label_field to one of them"):
        read_examples(_cfg("csv", path, label_field="y"))


def test_error_unknown_json_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: no key 'text' \(keys: txt, label\).*data\.text_field"):
        read_examples(_cfg("jsonl", path))


def test_error_malformed_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": }\n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid JSON"):
        read_examples(_cfg("jsonl", path))
    _write(path, '["a", "x"]\n')
    with pytest.raises(DataError, match=r"data\.jsonl:1: expected a JSON object, got list"):
        read_examples(_cfg("jsonl", path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"no header row"),
        ("text,label\n", r"data\.csv: no examples\."),
        ("text,label\n ,x\n,y\n", r"data\.csv: no examples: all 2 have empty text in column 'text'.*data\.text_field"),
    ],
)
def test_error_empty_table(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_examples(_cfg("csv", _write(tmp_path / "data.csv", content)))


def test_error_empty_text_files(tmp_path: Path) -> None:
    _write(tmp_path / "rt-polarity.pos", "\n\n")
    _write(tmp_path / "rt-polarity.neg", "bad\n")
    with pytest.raises(DataError, match=r"rt-polarity\.pos: no examples"):
        read_examples(_cfg("mr", tmp_path))
    with pytest.raises(DataError, match=r"empty\.jsonl: no examples"):
        read_examples(_cfg("jsonl", _write(tmp_path / "empty.jsonl", "\n")))


def test_error_single_class(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.csv", "text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match=r"needs at least 2 labels.*found 1 \('x'\).*data\.label_field"):
        load_corpus(_cfg("csv", path), "one")
    with pytest.raises(DataError, match=r"needs at least 2 labels.*data\.language"):
        read_examples(DataConfig(format="chatterbot", language="hinglish"))  # one topic file


def test_error_empty_label(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.csv", "text,label\na,x\nb,\nc,y\n")
    with pytest.raises(DataError, match=r"data\.csv:3: empty label in column 'label'"):
        read_examples(_cfg("csv", path))
    path = _write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: empty label under key 'label'"):
        read_examples(_cfg("jsonl", path))


def test_error_undecodable_and_unknown_encoding(tmp_path: Path) -> None:
    raw = b'{"text": "a", "label": "x"}\n{"text": "caf\xe9", "label": "y"}\n'
    path = _write(tmp_path / "data.jsonl", raw)
    message = rf"data\.jsonl: byte 0xE9 at offset {raw.index(0xE9)} \(line 2\) is not valid utf-8\. Set data\.encoding"
    with pytest.raises(DataError, match=message + r" \(e\.g\. cp1252\) to the file's encoding\."):
        read_examples(_cfg("jsonl", path))
    assert read_examples(_cfg("jsonl", path, encoding="cp1252"))[0].texts == ("a", "café")
    with pytest.raises(DataError, match=r"data\.encoding 'klingon' is not a known text encoding"):
        read_examples(_cfg("jsonl", path, encoding="klingon"))


def test_error_mr_undecodable(tmp_path: Path) -> None:
    _write(tmp_path / "rt-polarity.pos", b"good\n")
    _write(tmp_path / "rt-polarity.neg", b"ok\nbad \x81\n")  # 0x81 is undefined in cp1252
    with pytest.raises(DataError, match=r"rt-polarity\.neg: byte 0x81 at offset 7 \(line 2\) is not valid cp1252"):
        read_examples(_cfg("mr", tmp_path))


def test_mr_blank_lines_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "rt-polarity.pos", b"good \x85 really\n\n  \ngreat\n")
    _write(tmp_path / "rt-polarity.neg", b"bad\r\n")
    with caplog.at_level(logging.WARNING, logger="lifecycle.corpus"):
        data, _ = read_examples(_cfg("mr", tmp_path))
    assert data.texts == ("bad", "good … really", "great")
    assert "rt-polarity.pos: skipped 2 blank lines" in caplog.text


def _write_so(folder: Path, titles: list[str], ids: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    _write(folder / "title_StackOverflow.txt", "".join(f"{title}\n" for title in titles))
    _write(folder / "label_StackOverflow.txt", "".join(f"{label}\n" for label in ids))
    return folder


def test_error_stackoverflow_misaligned(tmp_path: Path) -> None:
    folder = _write_so(tmp_path / "so", ["a", "b", "c"], ["1", "2"])
    with pytest.raises(DataError, match=r"title_StackOverflow\.txt has 3 lines but .*label_StackOverflow\.txt has 2"):
        read_examples(_cfg("stackoverflow", folder))
    _write_so(folder, ["a", "b", "c"], ["1", "21", "2"])
    with pytest.raises(DataError, match=r"label_StackOverflow\.txt:2: label '21' is not an id from 1 to 20"):
        read_examples(_cfg("stackoverflow", folder))
    _write_so(folder, ["a", "", "c"], ["1", "3", "20"])  # an empty title is skipped, keeping the alignment
    assert read_examples(_cfg("stackoverflow", folder))[0].labels == ("wordpress", "magento")


def test_error_trec_line_without_label(tmp_path: Path) -> None:
    _write(tmp_path / "train_5500.label", "DESC:manner How did serfdom develop ?\nWhat is this ?\n")
    _write(tmp_path / "TREC_10.label", "HUM:ind Who ?\n")
    with pytest.raises(DataError, match=r"train_5500\.label:2: expected 'COARSE:fine question'"):
        read_examples(_cfg("trec", tmp_path))


def test_error_test_labels_unseen_in_training(tmp_path: Path) -> None:
    _write(tmp_path / "train_5500.label", "DESC:manner How ?\nHUM:ind Who ?\n")
    _write(tmp_path / "TREC_10.label", "LOC:city Where ?\n")
    with pytest.raises(DataError, match=r"test split has labels with no training example: 'LOC'"):
        load_corpus(_cfg("trec", tmp_path), "trec")


def test_error_unknown_chatterbot_language() -> None:
    with pytest.raises(DataError, match=r"no language 'klingon' \(available: .*english.*\)\. Set data\.language"):
        read_examples(DataConfig(format="chatterbot", language="klingon"))


def test_error_limit_below_class_count() -> None:
    with pytest.raises(DataError, match=r"data\.limit=3 is smaller than the \d+ classes"):
        load_corpus(DataConfig(limit=3), "default")


def test_tiny_classes_stay_in_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [(f"a{i}", "a") for i in range(30)] + [("b0", "b"), ("c0", "c"), ("c1", "c")]
    path = _write_table(tmp_path / "data.csv", rows, encoding="utf-8")
    corpus = load_corpus(_cfg("csv", path), "tiny")
    assert corpus.class_counts(corpus.train) == {"a": 24, "b": 1, "c": 2}  # a: 3 test, then 3 validation
    assert corpus.class_counts(corpus.test) == {"a": 3, "b": 0, "c": 0}
    with caplog.at_level(logging.WARNING, logger="lifecycle.corpus"):
        load_corpus(_cfg("csv", _write_table(path, rows[-3:] + [("a0", "a")], encoding="utf-8")), "tiny")
    assert "the validation split is empty" in caplog.text


# --- label types and long texts ----------------------------------------------------------------------------------


def _exact(message: str) -> str:
    """A pytest.raises pattern matching the whole one-line message."""
    return "^" + re.escape(message) + "$"


def test_error_jsonl_labels_of_mixed_types(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'
                                            '{"text": "c", "label": "0"}\n')
    with pytest.raises(DataError, match=_exact(
            f'{path}:3: label "0" is a string but the label on line 1 is 0, an integer; labels are compared as text, '
            """so 0 and "0" would be one class. Write every label under key 'label' as a string (e.g. "0").""")):
        read_examples(_cfg("jsonl", path))
    path = _write(tmp_path / "floats.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n')
    with pytest.raises(DataError, match=_exact(
            f"{path}:2: label 1.0 is a decimal number but the label on line 1 is 1, an integer; labels are compared "
            """as text, so mixed types merge classes (0 and "0") or split them (1 and 1.0). Write every label under """
            """key 'label' as a string (e.g. "1.0").""")):
        read_examples(_cfg("jsonl", path))
    path = _write(tmp_path / "bools.jsonl", '{"text": "a", "y": "True"}\n{"text": "b", "y": "x"}\n'
                                            '{"text": "c", "y": true}\n')
    with pytest.raises(DataError, match=_exact(
            f'{path}:3: label true is a boolean but the label on line 1 is "True", a string; labels are compared as '
            """text, so "True" and true would be one class. Write every label under key 'y' as a string """
            '(e.g. "True").')):
        read_examples(_cfg("jsonl", path, label_field="y"))


def test_error_jsonl_label_types_differ_between_train_and_test(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    test = _write(tmp_path / "test.jsonl", '{"text": "c", "label": "1"}\n')
    with pytest.raises(DataError, match=_exact(
            f'{test}:1: label "1" is a string but the label on {train}:1 is 0, an integer; labels are compared as '
            """text, so mixed types merge classes (0 and "0") or split them (1 and 1.0). Write every label under """
            """key 'label' as a string (e.g. "1").""")):
        read_examples(_cfg("jsonl", train, test_path=str(test)))


def test_error_jsonl_label_is_not_a_scalar(tmp_path: Path) -> None:
    path = _write(tmp_path / "multi.jsonl", '{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": "z"}\n')
    with pytest.raises(DataError, match=_exact(
            f"""{path}:1: the label under key 'label' is a JSON array (["x", "y"]); a label is one string or """
            "number. Write one label per line, as a string.")):
        read_examples(_cfg("jsonl", path))


def test_jsonl_labels_of_one_type_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "ints.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n'
                                           '{"text": "c", "label": 1}\n')
    data, _ = read_examples(_cfg("jsonl", path))
    assert data.labels == ("1", "0", "1")


def test_csv_text_longer_than_the_csv_module_default_loads(tmp_path: Path) -> None:
    # Python's csv module refuses fields over 131072 characters unless told otherwise; JSONL never had that limit.
    long = "word " * 200_000
    path = _write(tmp_path / "long.csv", f"text,label\nshort,a\n{long},b\n")
    data, _ = read_examples(_cfg("csv", path))
    assert data.texts == ("short", long.strip()) and data.labels == ("a", "b")
    assert csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_error_csv_text_over_max_text_chars(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.csv", "text,label\nshort,a\n" + "x" * 5000 + ",b\n")
    with pytest.raises(DataError, match=_exact(
            f"{path}:3: the field in column 'text' has 5,000 characters, more than data.max_text_chars (4,096). "
            "Shorten the text (the model reads only its first tokenizer.max_len tokens) or raise "
            "data.max_text_chars (e.g. --set data.max_text_chars=5000).")):
        read_examples(_cfg("csv", path, max_text_chars=4096))
    assert csv.field_size_limit() == 131072


def test_error_csv_unclosed_quote_names_the_line_it_opens(tmp_path: Path) -> None:
    rows = "".join(f"row {i},b\n" for i in range(500))
    path = _write(tmp_path / "quote.csv", f'text,label\nfine,a\n"he said hi,a\n{rows}')
    size = len(f"he said hi,a\n{rows}")  # the quote swallows the rest of the file
    with pytest.raises(DataError, match=_exact(
            f"{path}:3: the field in column 'text' runs from line 3 to line 503 ({size:,} characters), more than "
            "data.max_text_chars (1,000). If a double quote opened on line 3 is never closed, it joins the lines "
            'after it into one field: close it, or write a quote inside a quoted field as "". If the text really is '
            f"that long, raise data.max_text_chars (e.g. --set data.max_text_chars={size}).")):
        read_examples(_cfg("csv", path, max_text_chars=1000))
    with pytest.raises(DataError, match=_exact(
            f"{path}:3: empty label in column 'label' of the row that runs from line 3 to line 503. Fill in the "
            "label; or, if a double quote opened on line 3 is never closed, close it (it joins the lines after it "
            'into one field), or write a quote inside a quoted field as "".')):
        read_examples(_cfg("csv", path))


def test_error_jsonl_text_over_max_text_chars(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.jsonl", '{"text": "a", "label": "x"}\n' + json.dumps({"text": "y" * 2000,
                                                                                          "label": "z"}) + "\n")
    with pytest.raises(DataError, match=_exact(
            f"{path}:2: the text under key 'text' has 2,000 characters, more than data.max_text_chars (1,000). "
            "Shorten the text (the model reads only its first tokenizer.max_len tokens) or raise data.max_text_chars "
            "(e.g. --set data.max_text_chars=2000).")):
        read_examples(_cfg("jsonl", path, max_text_chars=1000))
    data, _ = read_examples(_cfg("jsonl", path, max_text_chars=2000))  # the limit itself is allowed
    assert len(data.texts[1]) == 2000
