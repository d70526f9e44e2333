"""Compact tokenizer directories (``save(compact=True)``, what compressed versions ship): the data files xz-compressed,
loaded back to the same ids; plain directories load as before; a damaged compact file is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenization import WordTokenizer, load_tokenizer
from tokenization.base import serving_copy
from tokenization.errors import TokenizerError


@pytest.fixture(scope="module")
def chat_word(chatterbot_texts) -> WordTokenizer:
    """A word vocabulary of the chatterbot texts with random vectors (word2vec's layout, without its training time)."""
    from tokenization.base import SPECIAL_TOKENS

    words = sorted({word for text in chatterbot_texts for word in text.lower().split()})
    vectors = np.random.default_rng(3).uniform(-0.25, 0.25, (len(SPECIAL_TOKENS) + len(words), 16))
    return WordTokenizer([*SPECIAL_TOKENS, *words], lowercase=True, token_pattern=r"\S+",
                         vectors=vectors.astype(np.float32), info={"word2vec": {"dim": 16, "n_pretrained": 0}})


def _names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def test_a_compact_word_tokenizer_loads_the_same_ids_from_fewer_bytes(chat_word, chatterbot_texts, tmp_path: Path,
                                                                      assert_round_trip) -> None:
    plain, compact = tmp_path / "plain", tmp_path / "compact"
    chat_word.save(plain)
    chat_word.save(compact, compact=True)
    served, compact_served = tmp_path / "served", tmp_path / "compact-served"
    serving_copy(chat_word).save(served)
    serving_copy(chat_word).save(compact_served, compact=True)  # as a compressed version ships it
    assert _names(compact) == {"vocab.txt.xz", "vectors.npy.xz", "tokenizer.json"}
    assert json.loads((compact_served / "tokenizer.json").read_text())["files"] == ["vocab.txt.xz"]
    assert _size(compact_served) < 0.6 * _size(served)
    loaded = load_tokenizer(compact)
    np.testing.assert_array_equal(loaded.encode(chatterbot_texts, 40), chat_word.encode(chatterbot_texts, 40))
    np.testing.assert_array_equal(loaded.vectors, chat_word.vectors)
    assert [loaded.id_to_token(i) for i in range(loaded.vocab_size)] == [
        chat_word.id_to_token(i) for i in range(chat_word.vocab_size)]
    # Saving plain into the compact directory leaves one form, not both.
    assert_round_trip(loaded, chatterbot_texts, compact)
    assert _names(compact) == {"vocab.txt", "vectors.npy", "tokenizer.json"}


def test_a_compact_pruned_bpe_tokenizer_loads_the_same_ids_also_lean(chat_bpe, chatterbot_texts,
                                                                     tmp_path: Path) -> None:
    from tokenization import BPETokenizer

    kept = np.concatenate([np.arange(4), np.arange(5, chat_bpe.vocab_size, 3)])
    pruned = chat_bpe.keep_ids(kept)
    pruned.save(tmp_path, compact=True)
    assert _names(tmp_path) == {"bpe.model.xz", "kept_ids.npy.xz", "tokenizer.json"}
    for loaded in (load_tokenizer(tmp_path), BPETokenizer.load(tmp_path, lean=True)):
        assert loaded.vocab_size == pruned.vocab_size
        np.testing.assert_array_equal(loaded.encode(chatterbot_texts, 40), pruned.encode(chatterbot_texts, 40))


def test_damaged_compact_files_are_errors_naming_the_file(chat_bpe, chat_word, tmp_path: Path) -> None:
    word, bpe = tmp_path / "word", tmp_path / "bpe"
    serving_copy(chat_word).save(word, compact=True)
    chat_bpe.save(bpe, compact=True)
    (word / "vocab.txt.xz").write_bytes(b"not xz at all")
    with pytest.raises(TokenizerError, match=r"vocab\.txt\.xz: not valid xz data"):
        load_tokenizer(word)
    import lzma

    (bpe / "bpe.model.xz").write_bytes(lzma.compress(b"garbage here\n"))
    with pytest.raises(TokenizerError, match=r"bpe\.model\.xz: not a valid youtokentome model"):
        load_tokenizer(bpe)
    (bpe / "bpe.model.xz").unlink()
    with pytest.raises(TokenizerError, match=r"bpe\.model\.xz: missing, but tokenizer\.json lists it"):
        load_tokenizer(bpe)
