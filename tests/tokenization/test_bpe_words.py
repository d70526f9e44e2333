"""What BPE splits into subwords: the word pattern applied before youtokentome (punctuation apart from the word before
it), the end-of-word mark, and tokenizer files written before either setting existed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lifecycle.config import validate
from lifecycle.errors import ConfigError
from tokenization import load_tokenizer, train_tokenizer
from tokenization.bpe import WORD_END, WORD_START
from tokenization.errors import TokenizerError

pytest.importorskip("youtokentome", reason="youtokentome is not installed")

WORDS = r"[\w']+|[^\w\s]"


@pytest.fixture(scope="module")
def split_bpe(chatterbot_texts, bpe_cfg):
    return train_tokenizer(chatterbot_texts, bpe_cfg(vocab_size=500, token_pattern=WORDS, word_end=True))


def test_pattern_splits_punctuation_before_bpe(chatterbot_texts, bpe_cfg, chat_bpe) -> None:
    plain = train_tokenizer(chatterbot_texts, bpe_cfg(vocab_size=500))
    split = train_tokenizer(chatterbot_texts, bpe_cfg(vocab_size=500, token_pattern=WORDS))
    glued, spaced = "what is ai?", "what is ai ?"
    # with the pattern, "?" is a word of its own whether or not the text spaced it; on whitespace alone it is not
    assert split.tokenize_ids([glued]) == split.tokenize_ids([spaced])
    assert plain.tokenize_ids([glued]) != plain.tokenize_ids([spaced])
    assert split.tokenize([glued])[0][-1] == WORD_START + "?"
    assert not any(token.endswith("?") and len(token) > 2 for token in split.vocab)  # no merge joins "?" to a word
    assert split.token_pattern == WORDS and plain.token_pattern == "" and not split.word_end


def test_word_end_tells_whole_words_from_word_starts(split_bpe) -> None:
    tokens = split_bpe.tokenize(["what is an atom ?"])[0]
    words = [[]]
    for token in tokens:
        words[-1].append(token)
        if token.endswith(WORD_END):
            words.append([])
    # every word's last piece, and only that piece, carries the mark; a word's first piece carries the start mark
    assert len(words) == 6 and words[-1] == []
    assert all(word[0].startswith(WORD_START) for word in words[:-1])
    assert all(not piece.endswith(WORD_END) for word in words[:-1] for piece in word[:-1])
    # the whole word "a" and the "a" that starts a longer word are different ids
    whole = split_bpe.tokenize_ids(["a"])[0]
    start = split_bpe.tokenize_ids(["artificial"])[0][0]
    assert len(whole) == 1 and whole[0] != start
    # the marks never reach decoded text, and a mark typed into the input is ignored
    assert split_bpe.decode(split_bpe.encode(["what is an atom ?"], 20)) == ["what is an atom ?"]
    assert split_bpe.tokenize_ids([f"what{WORD_END} is"]) == split_bpe.tokenize_ids(["what is"])


def test_settings_are_saved_and_lean_agrees(split_bpe, chatterbot_texts, tmp_path: Path, assert_round_trip) -> None:
    loaded = assert_round_trip(split_bpe, chatterbot_texts[:300], tmp_path)
    metadata = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert metadata["token_pattern"] == WORDS and metadata["word_end"] is True
    assert loaded.token_pattern == WORDS and loaded.word_end
    lean = load_tokenizer(tmp_path, lean=True)
    assert lean.tokenize_ids(chatterbot_texts[:300]) == split_bpe.tokenize_ids(chatterbot_texts[:300])
    pruned = split_bpe.keep_ids(np.arange(200))
    assert pruned.word_end and pruned.token_pattern == WORDS


def test_files_from_before_the_settings_load_unchanged(chat_bpe, chatterbot_texts, tmp_path: Path) -> None:
    chat_bpe.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    del metadata["token_pattern"], metadata["word_end"]  # as files were written before the settings existed
    path.write_text(json.dumps(metadata), encoding="utf-8")
    old = load_tokenizer(tmp_path)
    assert old.token_pattern == "" and old.word_end is False
    texts = [*chatterbot_texts[:300], "what is ai?"]
    assert old.tokenize_ids(texts) == chat_bpe.tokenize_ids(texts)
    assert old.tokenize(["what is ai?"])[0][-1].endswith("?")  # still split on whitespace alone


def test_bad_pattern_and_bad_metadata(chatterbot_texts, bpe_cfg, split_bpe, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.bpe\.token_pattern='\[' is not a valid regular"):
        train_tokenizer(chatterbot_texts, bpe_cfg(vocab_size=500, token_pattern="["))
    split_bpe.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**metadata, "word_end": "yes"}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: word_end must be a bool"):
        load_tokenizer(tmp_path)


def test_vocab_size_words_reads_the_training_texts(chatterbot_texts, bpe_cfg, word_cfg, tmp_path: Path) -> None:
    cfg = bpe_cfg(vocab_size="words", token_pattern=WORDS, word_end=True)
    bpe = train_tokenizer(chatterbot_texts, cfg)
    word = train_tokenizer(chatterbot_texts, word_cfg(token_pattern=WORDS))
    # as many ids as the word vocabulary of the same texts, whatever the data: the half of them gives half as many
    assert bpe.vocab_size == word.vocab_size
    half = train_tokenizer(chatterbot_texts[::2], cfg)
    assert half.vocab_size == train_tokenizer(chatterbot_texts[::2], word_cfg(token_pattern=WORDS)).vocab_size
    assert half.vocab_size < bpe.vocab_size
    bpe.save(tmp_path)
    metadata = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert metadata["vocab_size_from"] == "words" and metadata["requested_vocab_size"] == bpe.vocab_size
    with pytest.raises(ConfigError, match=r'tokenizer\.bpe\.vocab_size: must be a whole number >= 8, "words" or "all"'):
        validate({"tokenizer": {"kind": "bpe", "bpe": {"vocab_size": "many"}}}, "test")


def test_drop_unseen_turns_never_trained_ids_into_unk(chatterbot_texts, bpe_cfg, tmp_path: Path) -> None:
    texts = chatterbot_texts
    full = train_tokenizer(texts, bpe_cfg(vocab_size=3000, token_pattern=WORDS, word_end=True))
    dropped = train_tokenizer(texts, bpe_cfg(vocab_size=3000, token_pattern=WORDS, word_end=True, drop_unseen=True))
    used = {i for row in full.tokenize_ids(texts) for i in row}
    # the ids left are the specials and those the training texts encode to; every one of them is used
    assert dropped.vocab_size == len(used | {0, 1, 2, 3}) < full.vocab_size
    assert {i for row in dropped.tokenize_ids(texts) for i in row} | {0, 1, 2, 3} == set(range(dropped.vocab_size))
    assert dropped.tokenize(texts[:50]) == full.tokenize(texts[:50])  # training texts keep their pieces
    # a word never seen (a long training word with its last letter changed): its pieces that training never
    # produced (the merges inside the long word) are unk instead of untrained ids
    long_words = sorted({w for text in texts for w in text.lower().split()
                         if w.isalpha() and len(w) > 7 and not w.endswith("q")})
    unseen = next([f"what is {w[:-1]}q ?"] for w in long_words
                  if any(i not in used for i in full.tokenize_ids([w[:-1] + "q"])[0]))
    pieces = full.tokenize_ids(unseen)[0]
    assert any(i not in used for i in pieces)
    assert dropped.tokenize_ids(unseen)[0].count(1) == sum(i not in used for i in pieces)
    dropped.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    # The kept ids as a bitmask over the model's ids or as their list, whichever file is smaller.
    assert ((tmp_path / "kept_ids.mask").is_file() or (tmp_path / "kept_ids.npy").is_file()) and json.loads(
        (tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["drop_unseen"] is True
    assert loaded.tokenize_ids([*texts[:100], *unseen]) == dropped.tokenize_ids([*texts[:100], *unseen])


def test_vocab_size_all_makes_every_training_word_one_token(chatterbot_texts, bpe_cfg, word_cfg,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    texts = chatterbot_texts
    with caplog.at_level(logging.WARNING, logger="tokenization.bpe"):
        bpe = train_tokenizer(texts, bpe_cfg(vocab_size="all", token_pattern=WORDS, word_end=True, drop_unseen=True))
    assert "is more than these" not in caplog.text  # "all" asks for the bound; stopping under it is the point
    word = train_tokenizer(texts, word_cfg(token_pattern=WORDS))
    # the training texts come out as the word vocabulary cuts them: one token per word, the same ids in all
    assert [len(row) for row in bpe.tokenize_ids(texts)] == [len(row) for row in word.tokenize_ids(texts)]
    assert bpe.vocab_size == word.vocab_size
    # a size that only cuts the vocabulary by half leaves some training words in pieces
    smaller = train_tokenizer(texts, bpe_cfg(vocab_size=word.vocab_size // 2, token_pattern=WORDS, word_end=True))
    assert sum(map(len, smaller.tokenize_ids(texts))) > sum(map(len, word.tokenize_ids(texts)))
    assert bpe._info["vocab_size_from"] == "all"


def test_drop_unseen_with_dropout_keeps_the_pieces_dropout_trains(chatterbot_texts, bpe_cfg) -> None:
    texts = chatterbot_texts
    settings = {"vocab_size": "all", "token_pattern": WORDS, "word_end": True, "drop_unseen": True}
    plain = train_tokenizer(texts, bpe_cfg(**settings))
    dropped = train_tokenizer(texts, bpe_cfg(**settings, dropout=0.1))
    # the deterministic encoding's ids are kept either way; with dropout, pieces of the training words are kept too
    # (compared as strings: two youtokentome trainings may number the same tokens differently)
    assert set(plain.vocab) < set(dropped.vocab)
    assert dropped.tokenize(texts) == plain.tokenize(texts)
    # a word the training split lacks: all its pieces are unk without dropout, fewer of them with it
    unseen = ["what is artificialness and superintelligencey ?"]
    assert plain.tokenize_ids(unseen)[0].count(1) > dropped.tokenize_ids(unseen)[0].count(1)
