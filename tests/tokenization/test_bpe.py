"""BPETokenizer over youtokentome: encoding, coverage, lowercasing, training limits and model-file checks."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from tokenization import PAD, UNK, BPETokenizer, coverage_stats, load_tokenizer, train_tokenizer
from tokenization.errors import DependencyError, TokenizerError

pytest.importorskip("youtokentome", reason="youtokentome is not installed")

TOY = ["low lower lowest", "new newer newest", "wide wider widest"] * 5


def test_round_trip_chatterbot(chat_bpe, chatterbot_texts, tmp_path: Path, assert_round_trip) -> None:
    assert_round_trip(chat_bpe, chatterbot_texts, tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == {"bpe.model", "tokenizer.json"}


def test_round_trip_mr(mr_bpe, mr_texts, tmp_path: Path, assert_round_trip) -> None:
    assert_round_trip(mr_bpe, mr_texts, tmp_path, max_len=64)


def test_padding_and_truncation(chat_bpe) -> None:
    text = "What is artificial intelligence and who invented it?"
    full = chat_bpe.tokenize_ids([text])[0]
    assert len(full) > 6
    ids = chat_bpe.encode([text, "hi", ""], max_len=6)
    assert ids.dtype == np.int32 and ids.shape == (3, 6)
    np.testing.assert_array_equal(ids[0], full[:6])
    short = chat_bpe.tokenize_ids(["hi"])[0]
    np.testing.assert_array_equal(ids[1], short + [PAD] * (6 - len(short)))
    assert not ids[2].any()
    wide = chat_bpe.encode([text], max_len=len(full) + 3)
    np.testing.assert_array_equal(wide[0], full + [PAD] * 3)


def test_lowercase(chatterbot_texts, bpe_cfg) -> None:
    lower = train_tokenizer(chatterbot_texts, bpe_cfg(vocab_size=300, lowercase=True))
    assert lower.tokenize_ids(["WHAT Is AI"]) == lower.tokenize_ids(["what is ai"])
    assert not any(token != token.lower() for token in lower.vocab[4:])


def test_case_kept_without_lowercase(chat_bpe) -> None:
    assert chat_bpe.lowercase is False
    assert chat_bpe.tokenize_ids(["What"]) != chat_bpe.tokenize_ids(["what"])


def test_unk_rate_zero_with_full_coverage(mr_bpe, mr_texts) -> None:
    stats = coverage_stats(mr_bpe, mr_texts, max_len=64)
    assert stats.unk_rate == 0.0 and stats.mean_tokens > 10
    unseen = mr_bpe.tokenize_ids(["日本 movie"])[0]
    assert UNK in unseen


def test_coverage_below_one_makes_rare_characters_unk(mr_texts, bpe_cfg) -> None:
    tokenizer = train_tokenizer(mr_texts, bpe_cfg(vocab_size=300, coverage=0.999))
    assert coverage_stats(tokenizer, mr_texts, max_len=64).unk_rate > 0.0


def test_vocab_size_too_small(bpe_cfg) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.bpe\.vocab_size=8 is too small.*at least \d+.*Raise") as info:
        train_tokenizer(TOY, bpe_cfg(vocab_size=8))
    assert "\n" not in str(info.value)


def test_vocab_size_above_what_the_data_supports(bpe_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # youtokentome 1.0.6 does not fail here: it stops merging early and returns a smaller vocabulary.
    with caplog.at_level(logging.WARNING, logger="tokenization.bpe"):
        tokenizer = train_tokenizer(TOY, bpe_cfg(vocab_size=5000))
    assert 8 < tokenizer.vocab_size < 5000
    assert "tokenizer.bpe.vocab_size=5000 is more than these 15 texts support" in caplog.text
    assert f"Lower tokenizer.bpe.vocab_size to {tokenizer.vocab_size}" in caplog.text
    tokenizer.save(tmp_path)
    metadata = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert (metadata["vocab_size"], metadata["requested_vocab_size"]) == (tokenizer.vocab_size, 5000)
    assert coverage_stats(tokenizer, TOY, max_len=8).unk_rate == 0.0


def test_whitespace_only_texts(bpe_cfg) -> None:
    with pytest.raises(TokenizerError, match="empty or whitespace"):
        train_tokenizer(["  ", "\n", ""], bpe_cfg(vocab_size=100))


def test_workdir_keeps_training_files_and_output_is_captured(
    bpe_cfg, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    train_tokenizer(TOY, bpe_cfg(vocab_size=30), workdir=tmp_path / "work")
    assert {"bpe_train.txt", "bpe.model", "bpe_train.log"} <= {path.name for path in (tmp_path / "work").iterdir()}
    assert "learning bpe" in (tmp_path / "work" / "bpe_train.log").read_text(encoding="utf-8")
    # youtokentome prints from C++; none of it may reach the real stderr.
    assert "learning bpe" not in capfd.readouterr().err


def test_multiline_texts_train_as_one_line(bpe_cfg, tmp_path: Path) -> None:
    train_tokenizer(["first line\nsecond line", "third"], bpe_cfg(vocab_size=30), workdir=tmp_path)
    assert (tmp_path / "bpe_train.txt").read_text(encoding="utf-8") == "first line second line\nthird\n"


def test_all_threads_setting(bpe_cfg) -> None:
    tokenizer = train_tokenizer(TOY, bpe_cfg(vocab_size=30, threads=-1))
    assert tokenizer.vocab_size == 30


def test_missing_youtokentome_is_a_dependency_error(bpe_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "youtokentome", None)
    with pytest.raises(DependencyError, match="pip install --no-build-isolation youtokentome"):
        train_tokenizer(TOY, bpe_cfg(vocab_size=30))


@pytest.fixture
def saved(bpe_cfg, tmp_path: Path) -> Path:
    train_tokenizer(TOY, bpe_cfg(vocab_size=30)).save(tmp_path)
    return tmp_path


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_merge(data: bytes) -> bytes:
    lines = data.split(b"\n")
    n_chars = int(lines[0].split()[0])
    lines[1 + n_chars] = b"9999 4 " + lines[1 + n_chars].split()[2]
    return b"\n".join(lines)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda data: b"", "the first line must hold"),
        (lambda data: b"garbage here\n", "expected lines of integers"),
        (lambda data: b"\x00\xff\x10" * 50, "expected lines of integers"),
        (_truncate, "line count disagrees"),
        (_bad_merge, "bad merge line"),
        (lambda data: data.replace(b"\n1 0 2 3\n", b"\n0 1 2 3\n"), "special ids must be"),
    ],
    ids=["empty", "text", "binary", "truncated", "bad-merge", "specials"],
)
def test_corrupt_model_file(saved: Path, corrupt, reason: str) -> None:
    # Without the check youtokentome loads most of these and then aborts the interpreter on encode.
    path = saved / "bpe.model"
    path.write_bytes(corrupt(path.read_bytes()))
    expected = rf"bpe\.model: not a valid youtokentome model \(.*{reason}.*lifecycle tokenize"
    with pytest.raises(TokenizerError, match=expected):
        load_tokenizer(saved)


def test_model_file_that_does_not_match_metadata(saved: Path, chat_bpe) -> None:
    chat_bpe.save(saved / "other")
    (saved / "other" / "bpe.model").replace(saved / "bpe.model")
    with pytest.raises(TokenizerError, match=r"bpe\.model: holds 500 tokens but tokenizer\.json says vocab_size=30"):
        load_tokenizer(saved)


def test_missing_model_file(saved: Path) -> None:
    (saved / "bpe.model").unlink()
    with pytest.raises(TokenizerError, match=r"bpe\.model: missing"):
        BPETokenizer.load(saved)


def test_decode_rejects_unknown_ids(chat_bpe) -> None:
    with pytest.raises(TokenizerError, match="Token id must be in"):
        chat_bpe.decode([[5, chat_bpe.vocab_size]])
    assert chat_bpe.decode([[PAD, PAD]]) == [""]


def test_bpe_dropout_changes_training_encodings_only(mr_bpe, mr_texts) -> None:
    from lifecycle.corpus import Examples
    from lifecycle.dataset import encode_examples, training_encoder

    texts = mr_texts[:200]
    plain = mr_bpe.encode(texts, 40)
    first, second = (mr_bpe.encode_with_dropout(texts, 40, 0.3) for _ in range(2))
    assert not np.array_equal(first, plain) and not np.array_equal(first, second)  # a new segmentation each call
    # dropped merges leave smaller pieces: more tokens per text, never fewer, and the same characters
    assert (first != 0).sum() > (plain != 0).sum()
    assert mr_bpe.decode(mr_bpe.encode_with_dropout(texts[:50], 200, 0.3)) == mr_bpe.decode(
        mr_bpe.encode(texts[:50], 200))
    np.testing.assert_array_equal(mr_bpe.encode_with_dropout(texts, 40, 0.0), plain)
    # evaluation and serving encodings are untouched by having sampled with dropout
    np.testing.assert_array_equal(mr_bpe.encode(texts, 40), plain)
    with pytest.raises(TokenizerError, match="dropout"):
        mr_bpe.encode_with_dropout(texts, 40, 1.0)

    examples = Examples(tuple(texts), tuple("pos" if i % 2 else "neg" for i in range(len(texts))))
    for_epoch = training_encoder(examples, mr_bpe, ("neg", "pos"), 40, dropout=0.3)
    assert for_epoch is not None
    epoch0, epoch1 = for_epoch(0), for_epoch(1)
    assert not np.array_equal(epoch0.x, epoch1.x) and not np.array_equal(epoch0.x, plain)
    np.testing.assert_array_equal(epoch0.y, encode_examples(examples, mr_bpe, ("neg", "pos"), 40).y)
    assert training_encoder(examples, mr_bpe, ("neg", "pos"), 40, dropout=0.0) is None
