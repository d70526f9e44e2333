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
    # A third of 500 ids kept: the bitmask over the model's ids is the smaller file.
    assert _names(tmp_path) == {"bpe.model.xz", "kept_ids.mask.xz", "tokenizer.json"}
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


@pytest.mark.parametrize("compact", [False, True])
def test_pruned_bpe_ids_are_saved_as_a_bitmask_when_smaller_and_old_id_lists_still_load(
        chat_bpe, chatterbot_texts, tmp_path: Path, compact: bool) -> None:
    import io
    import lzma

    suffix = ".xz" if compact else ""
    many = chat_bpe.keep_ids(np.concatenate([np.arange(4), np.arange(5, chat_bpe.vocab_size, 2)]))
    many.save(tmp_path / "many", compact=compact)
    # Half of the ids kept: a mask of one bit per model id against a .npy of a 128-byte header + 2 bytes an id.
    assert _names(tmp_path / "many") == {f"bpe.model{suffix}", f"kept_ids.mask{suffix}", "tokenizer.json"}
    mask_bytes = (tmp_path / "many" / f"kept_ids.mask{suffix}").read_bytes()
    mask = np.frombuffer(lzma.decompress(mask_bytes) if compact else mask_bytes, dtype=np.uint8)
    np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(mask, bitorder="little")), many.kept_ids)
    loaded = load_tokenizer(tmp_path / "many")
    np.testing.assert_array_equal(loaded.kept_ids, many.kept_ids)
    np.testing.assert_array_equal(loaded.encode(chatterbot_texts, 40), many.encode(chatterbot_texts, 40))
    # A directory written before the mask: kept_ids.npy(.xz) holding the ids, listed in tokenizer.json.
    old = tmp_path / "many"
    buffer = io.BytesIO()
    np.save(buffer, many.kept_ids.astype(np.uint16), allow_pickle=False)
    (old / f"kept_ids.mask{suffix}").unlink()
    (old / f"kept_ids.npy{suffix}").write_bytes(lzma.compress(buffer.getvalue()) if compact else buffer.getvalue())
    meta = json.loads((old / "tokenizer.json").read_text(encoding="utf-8"))
    meta["files"] = [f"kept_ids.npy{suffix}" if name == f"kept_ids.mask{suffix}" else name for name in meta["files"]]
    (old / "tokenizer.json").write_text(json.dumps(meta), encoding="utf-8")
    np.testing.assert_array_equal(load_tokenizer(old).encode(chatterbot_texts, 40), many.encode(chatterbot_texts, 40))


def test_a_damaged_kept_ids_mask_is_a_one_line_error(chat_bpe, tmp_path: Path) -> None:
    pruned = chat_bpe.keep_ids(np.concatenate([np.arange(4), np.arange(5, chat_bpe.vocab_size, 2)]))
    pruned.save(tmp_path)
    path = tmp_path / "kept_ids.mask"
    data = path.read_bytes()
    for damaged, match in ((data[:-1], "does not fit the model's [0-9]+ ids"),
                           (data[:-1] + bytes([0xF0]), "does not fit the model's [0-9]+ ids"),  # bits past id 499
                           (bytes([0]) + data[1:], "kept_ids.mask")):  # the specials dropped
        path.write_bytes(damaged)
        with pytest.raises(TokenizerError, match=match) as caught:
            load_tokenizer(tmp_path)
        assert "\n" not in str(caught.value)
