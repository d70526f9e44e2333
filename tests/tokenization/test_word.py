"""WordTokenizer: vocabulary rules, encoding, word2vec alignment, determinism, saved files and their errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle.config import Word2VecConfig
from tokenization import PAD, UNK, WordTokenizer, coverage_stats, load_tokenizer, train_tokenizer
from tokenization.base import N_SPECIAL, SPECIAL_TOKENS
from tokenization.errors import DependencyError, TokenizerError
from tokenization.vocab import count_tokens
from tokenization.word import align_vectors, train_word2vec

TOY = ["the cat sat", "the dog sat", "The cat ran", "a bird"]


def test_round_trip_chatterbot(chat_word, chatterbot_texts, tmp_path: Path, assert_round_trip) -> None:
    loaded = assert_round_trip(chat_word, chatterbot_texts, tmp_path)
    assert loaded.n_pretrained == chat_word.n_pretrained > 0


def test_round_trip_mr(mr_word, mr_texts, tmp_path: Path, assert_round_trip) -> None:
    assert_round_trip(mr_word, mr_texts, tmp_path, max_len=64)


def test_vocabulary_order_is_count_then_alphabetical(word_cfg) -> None:
    tokenizer = train_tokenizer(TOY, word_cfg())
    # the:3, cat:2, sat:2, then the count-1 words alphabetically.
    assert tokenizer.vocab == [*SPECIAL_TOKENS, "the", "cat", "sat", "a", "bird", "dog", "ran"]


def test_vocabulary_ignores_text_order(chatterbot_texts, word_cfg) -> None:
    cfg = word_cfg(min_count=2)
    forward = train_tokenizer(chatterbot_texts, cfg)
    backward = train_tokenizer(chatterbot_texts[::-1], cfg)
    assert forward.vocab == backward.vocab


def test_padding_and_truncation(word_cfg) -> None:
    tokenizer = train_tokenizer(TOY, word_cfg())
    ids = tokenizer.encode(["the cat sat the dog", "bird", ""], max_len=3)
    assert ids.dtype == np.int32 and ids.shape == (3, 3)
    the, cat, sat, bird = 4, 5, 6, 8
    np.testing.assert_array_equal(ids, [[the, cat, sat], [bird, PAD, PAD], [PAD, PAD, PAD]])
    assert tokenizer.tokenize_ids(["the cat sat the dog"]) == [[the, cat, sat, the, 9]]


def test_lowercase(word_cfg) -> None:
    lower = train_tokenizer(TOY, word_cfg())
    assert lower.tokenize_ids(["THE Cat"]) == lower.tokenize_ids(["the cat"])
    cased = train_tokenizer(TOY, word_cfg(lowercase=False))
    assert "The" in cased.vocab and "the" in cased.vocab
    assert cased.tokenize_ids(["CAT"]) == [[UNK]]


def test_min_count_and_max_size(mr_texts, word_cfg) -> None:
    frequent = train_tokenizer(mr_texts, word_cfg(min_count=3))
    counts = count_tokens(frequent.tokenize(mr_texts))
    assert set(frequent.vocab[N_SPECIAL:]) == {token for token, count in counts.items() if count >= 3}
    capped = train_tokenizer(mr_texts, word_cfg(max_size=50))
    assert capped.vocab_size == 50
    kept_counts = [counts[token] for token in capped.vocab[N_SPECIAL:]]
    assert kept_counts == sorted(kept_counts, reverse=True)
    assert min(kept_counts) >= max(count for token, count in counts.items() if token not in capped.vocab)


def test_unk_rate(mr_word, mr_texts) -> None:
    assert coverage_stats(mr_word, mr_texts, max_len=64).unk_rate == 0.0
    unseen = coverage_stats(mr_word, ["the flibbertigibbet snorkelled"], max_len=64)
    assert unseen.unk_rate == pytest.approx(2 / 3)


def test_text_never_encodes_to_specials() -> None:
    tokenizer = WordTokenizer([*SPECIAL_TOKENS, "x"], lowercase=False, token_pattern=r"\S+")
    assert tokenizer.tokenize_ids(["<PAD> <BOS> <EOS> <UNK> x"]) == [[UNK, UNK, UNK, UNK, 4]]


def test_vectors_shape_and_alignment(chatterbot_texts, chat_word) -> None:
    vectors = chat_word.vectors
    dim = 16
    assert vectors.dtype == np.float32 and vectors.shape == (chat_word.vocab_size, dim)
    assert not vectors[PAD].any()
    # The same settings and seed (one worker) give gensim's vectors, which must sit at each word's id.
    cfg = Word2VecConfig(dim=dim, epochs=2, workers=1, window=3)
    trained = train_word2vec(chat_word.tokenize(chatterbot_texts), cfg, seed=7)
    assert chat_word.n_pretrained == len(trained) == chat_word.vocab_size - N_SPECIAL
    for word in ("what", "robot", "?"):
        np.testing.assert_array_equal(vectors[chat_word.vocab.index(word)], trained[word])


def test_untrained_rows_are_kim_uniform() -> None:
    vocab = [*SPECIAL_TOKENS, "known", "rare"]
    known = np.full(8, 0.9, dtype=np.float32)
    matrix, n_pretrained = align_vectors(vocab, {"known": known}, 8, seed=1)
    assert n_pretrained == 1
    np.testing.assert_array_equal(matrix[4], known)
    assert not matrix[PAD].any()
    random_rows = matrix[[1, 2, 3, 5]]
    assert np.all(np.abs(random_rows) <= 0.25) and np.all(random_rows != 0)
    again, _ = align_vectors(vocab, {"known": known}, 8, seed=1)
    np.testing.assert_array_equal(matrix, again)


def test_word2vec_min_count_leaves_rare_words_random(word_cfg) -> None:
    texts = ["alpha beta", "alpha gamma", "alpha beta"]
    w2v = {"enabled": True, "dim": 4, "min_count": 2, "epochs": 1, "workers": 1}
    tokenizer = train_tokenizer(texts, word_cfg(word2vec=w2v))
    assert tokenizer.vocab_size == N_SPECIAL + 3
    assert tokenizer.n_pretrained == 2  # alpha, beta; gamma is seen once


def test_word2vec_without_frequent_words_warns(word_cfg, caplog: pytest.LogCaptureFixture) -> None:
    cfg = word_cfg(word2vec={"enabled": True, "dim": 4, "min_count": 5, "epochs": 1, "workers": 1})
    with caplog.at_level(logging.WARNING, logger="tokenization.word"):
        tokenizer = train_tokenizer(TOY, cfg)
    assert tokenizer.n_pretrained == 0 and tokenizer.vectors.shape == (tokenizer.vocab_size, 4)
    assert "word2vec.min_count=5" in caplog.text


def test_same_seed_same_result(chatterbot_texts, word_cfg) -> None:
    cfg = word_cfg(min_count=2, word2vec={"enabled": True, "dim": 8, "epochs": 1, "workers": 1})
    first = train_tokenizer(chatterbot_texts, cfg, seed=3)
    second = train_tokenizer(chatterbot_texts, cfg, seed=3)
    assert first.vocab == second.vocab
    np.testing.assert_array_equal(first.vectors, second.vectors)
    other = train_tokenizer(chatterbot_texts, cfg, seed=4)
    assert other.vocab == first.vocab
    assert not np.array_equal(other.vectors, first.vectors)


def test_empty_vocabulary_errors(word_cfg) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.word\.min_count=5 .*most frequent occurs 3 times"):
        train_tokenizer(TOY, word_cfg(min_count=5))
    with pytest.raises(TokenizerError, match="no token matching tokenizer.word.token_pattern"):
        train_tokenizer(["   ", "\t"], word_cfg())


def test_bad_token_patterns(word_cfg) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.word\.token_pattern='\[' is not a valid regular expression"):
        train_tokenizer(TOY, word_cfg(token_pattern="["))
    with pytest.raises(TokenizerError, match="line break"):
        train_tokenizer(["one\ntwo"], word_cfg(token_pattern=r"[\s\S]+"))


def test_patterns_with_groups_yield_whole_matches(word_cfg) -> None:
    tokenizer = train_tokenizer(["ab-cd ef"], word_cfg(token_pattern=r"(\w)\w*"))
    assert tokenizer.tokenize(["ab-cd ef"]) == [["ab", "cd", "ef"]]


def test_missing_gensim_is_a_dependency_error(word_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gensim", None)
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    with pytest.raises(DependencyError, match="pip install gensim"):
        train_tokenizer(TOY, word_cfg(word2vec={"enabled": True, "dim": 4}))


@pytest.fixture
def saved(word_cfg, tmp_path: Path) -> Path:
    tokenizer = train_tokenizer(TOY, word_cfg(word2vec={"enabled": True, "dim": 4, "epochs": 1, "workers": 1}))
    tokenizer.save(tmp_path)
    return tmp_path


def test_metadata_records_settings(saved: Path) -> None:
    metadata = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))
    assert metadata["vocab_size"] == 11 and metadata["lowercase"] is True
    assert metadata["token_pattern"] == r"[\w']+|[^\w\s]"
    assert metadata["word2vec"]["n_pretrained"] == 7 and metadata["word2vec"]["seed"] == 13
    assert (saved / "vocab.txt").read_text(encoding="utf-8").split("\n")[:5] == [*SPECIAL_TOKENS, "the"]


def test_vocab_file_that_does_not_match_metadata(saved: Path) -> None:
    path = saved / "vocab.txt"
    path.write_text("\n".join(path.read_text(encoding="utf-8").split("\n")[:-2]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"vocab\.txt: has 10 tokens but tokenizer\.json says vocab_size=11"):
        load_tokenizer(saved)


def test_vocab_file_with_a_repeated_token(saved: Path) -> None:
    path = saved / "vocab.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[5] = lines[4]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match="empty or repeated token"):
        load_tokenizer(saved)


def test_missing_vocab_file(saved: Path) -> None:
    (saved / "vocab.txt").unlink()
    with pytest.raises(TokenizerError, match=r"vocab\.txt: missing.*lifecycle tokenize"):
        load_tokenizer(saved)


def test_vectors_that_do_not_match(saved: Path) -> None:
    np.save(saved / "vectors.npy", np.zeros((3, 4), dtype=np.float32), allow_pickle=False)
    with pytest.raises(TokenizerError, match=r"vectors\.npy: expected float32 of shape \(11, 4\)"):
        load_tokenizer(saved)
    (saved / "vectors.npy").write_bytes(b"not numpy")
    with pytest.raises(TokenizerError, match=r"vectors\.npy: not a readable \.npy array"):
        load_tokenizer(saved)
    (saved / "vectors.npy").unlink()
    with pytest.raises(TokenizerError, match=r"vectors\.npy: missing"):
        load_tokenizer(saved)
