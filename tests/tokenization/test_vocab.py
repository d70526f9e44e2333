"""numpy vocabulary helpers: counting, building, pruning and remapping."""

from __future__ import annotations

import numpy as np
import pytest

from tokenization.base import SPECIAL_TOKENS, UNK
from tokenization.vocab import build_vocab, count_ids, count_tokens, prune_vocab, remap_ids


def test_count_tokens() -> None:
    counts = count_tokens([["a", "b", "a"], [], ["b", "c"]])
    assert counts == {"a": 2, "b": 2, "c": 1}


def test_build_vocab_orders_by_count_then_token() -> None:
    counts = {"b": 2, "a": 2, "c": 5, "d": 1, "<UNK>": 9}
    assert build_vocab(counts, 1, None, SPECIAL_TOKENS) == [*SPECIAL_TOKENS, "c", "a", "b", "d"]
    assert build_vocab(counts, 2, None, SPECIAL_TOKENS) == [*SPECIAL_TOKENS, "c", "a", "b"]
    assert build_vocab(counts, 1, 6, SPECIAL_TOKENS) == [*SPECIAL_TOKENS, "c", "a"]


def test_build_vocab_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_size must exceed the 4 special tokens"):
        build_vocab({"a": 1}, 1, 4, SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        build_vocab({"a": 1}, 0, None, SPECIAL_TOKENS)


def test_count_ids() -> None:
    counts = count_ids([np.array([4, 4, 5]), [0, 0], []], vocab_size=6)
    np.testing.assert_array_equal(counts, [2, 0, 0, 0, 2, 1])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 6\)"):
        count_ids([[6]], vocab_size=6)


def test_prune_vocab_keeps_specials_and_the_most_frequent() -> None:
    #                  pad unk bos eos  4  5  6  7  8
    counts = np.array([0, 0, 0, 0, 5, 1, 7, 1, 3])
    kept, old_to_new = prune_vocab(counts, keep=6)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(old_to_new, [0, 1, 2, 3, 4, UNK, 5, UNK, UNK])
    assert old_to_new.dtype == np.int32


def test_prune_vocab_breaks_ties_by_lower_id() -> None:
    kept, _ = prune_vocab(np.array([0, 0, 0, 0, 2, 3, 2, 3]), keep=6)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 5, 7])
    kept, _ = prune_vocab(np.array([0, 0, 0, 0, 2, 2, 2], dtype=np.uint32), keep=5)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4])


def test_prune_vocab_limits() -> None:
    counts = np.arange(8)
    kept, old_to_new = prune_vocab(counts, keep=100)
    np.testing.assert_array_equal(kept, np.arange(8))
    np.testing.assert_array_equal(old_to_new, np.arange(8))
    with pytest.raises(ValueError, match="keep must exceed the 4 special ids"):
        prune_vocab(counts, keep=4)
    with pytest.raises(ValueError, match="must be 1-D"):
        prune_vocab(counts.reshape(2, 4), keep=5)


def test_remap_ids_follows_the_pruned_embedding() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=30)
    embedding = rng.normal(size=(30, 3))
    kept, old_to_new = prune_vocab(counts, keep=12)
    small = embedding[kept]
    ids = rng.integers(0, 30, size=(5, 7)).astype(np.int32)
    new_ids = remap_ids(old_to_new, ids)
    assert new_ids.shape == ids.shape and new_ids.dtype == np.int32
    survivors = np.isin(ids, kept)
    np.testing.assert_array_equal(small[new_ids[survivors]], embedding[ids[survivors]])
    assert np.all(new_ids[~survivors] == UNK)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 30\)"):
        remap_ids(old_to_new, np.array([30]))
