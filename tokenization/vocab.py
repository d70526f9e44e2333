"""numpy-only vocabulary helpers: counting, building, pruning and the old-id to new-id remap.

Pruning keeps the special ids and the most frequent other ids, in their original order, so an embedding matrix shrinks
with ``matrix[kept_ids]`` and token ids follow with :func:`remap_ids`; dropped ids become unk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tokenization.base import N_SPECIAL, UNK


def count_tokens(token_lists: Iterable[Iterable[str]]) -> Counter[str]:
    """How often each token occurs over all token lists."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return counts


def count_ids(id_lists: Iterable[Sequence[int] | np.ndarray], vocab_size: int) -> np.ndarray:
    """How often each id occurs: int64 ``(vocab_size,)``, the input of :func:`prune_vocab`.

    Raises:
        ValueError: an id is outside ``range(vocab_size)``.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in id_lists:
        row = np.asarray(ids, dtype=np.int64)
        if row.size == 0:
            continue
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(f"ids must lie in [0, {vocab_size}). Received: min {row.min()}, max {row.max()}.")
        counts += np.bincount(row, minlength=vocab_size)
    return counts


def build_vocab(
    counts: Mapping[str, int],
    min_count: int,
    max_size: int | None,
    specials: Sequence[str],
) -> list[str]:
    """The id-ordered token list: ``specials`` first, then tokens by descending count, ties alphabetical.

    Args:
        counts: token -> occurrences in the training texts.
        min_count: tokens seen fewer times are left out (they will encode as unk).
        max_size: at most this many entries, specials included; None for no limit.
        specials: reserved tokens, in id order; a counted token equal to one of them is not added again.

    Returns:
        The vocabulary; a token's position is its id.

    Raises:
        ValueError: ``max_size`` leaves no room beyond the specials, or ``min_count`` < 1.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1. Received: {min_count}.")
    if max_size is not None and max_size <= len(specials):
        raise ValueError(f"max_size must exceed the {len(specials)} special tokens. Received: {max_size}.")
    reserved = set(specials)
    # Sorting on (-count, token) makes ids independent of the order texts arrive in.
    words = sorted(
        (token for token, count in counts.items() if count >= min_count and token not in reserved),
        key=lambda token: (-counts[token], token),
    )
    if max_size is not None:
        words = words[: max_size - len(specials)]
    return [*specials, *words]


def prune_vocab(counts_by_id: np.ndarray, keep: int, n_special: int = N_SPECIAL) -> tuple[np.ndarray, np.ndarray]:
    """Choose the ids to keep when shrinking a vocabulary to ``keep`` entries.

    Args:
        counts_by_id: occurrences of each id, shape ``(vocab_size,)`` (see :func:`count_ids`).
        keep: size of the new vocabulary, specials included; at least ``n_special + 1``.
        n_special: leading ids that are always kept in place (pad, unk, bos, eos).

    Returns:
        ``(kept_ids, old_to_new)``: the kept old ids in ascending order (so ``new_id = position``), int64; and the
        int32 map of every old id to its new id, dropped ids mapping to :data:`UNK`.

    Raises:
        ValueError: ``counts_by_id`` is not 1-D or ``keep`` is too small.
    """
    counts = np.asarray(counts_by_id)
    if counts.ndim != 1:
        raise ValueError(f"counts_by_id must be 1-D. Received shape {counts.shape}.")
    vocab_size = counts.shape[0]
    if vocab_size < n_special or keep <= n_special:
        raise ValueError(
            f"keep must exceed the {n_special} special ids and counts_by_id must cover them. "
            f"Received: keep={keep}, {vocab_size} counts."
        )
    keep = min(keep, vocab_size)
    candidates = np.arange(n_special, vocab_size)
    # lexsort's last key is primary: most frequent first, then the lower (older) id wins a tie, deterministically.
    order = np.lexsort((candidates, -counts[n_special:].astype(np.float64)))
    chosen = candidates[order[: keep - n_special]]
    kept_ids = np.concatenate([np.arange(n_special), np.sort(chosen)]).astype(np.int64)
    old_to_new = np.full(vocab_size, UNK, dtype=np.int32)
    old_to_new[kept_ids] = np.arange(kept_ids.size, dtype=np.int32)
    return kept_ids, old_to_new


def remap_ids(old_to_new: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Translate ids of any shape through ``old_to_new`` (from :func:`prune_vocab`); the dtype of ``ids`` is kept.

    Raises:
        ValueError: an id has no entry in ``old_to_new``.
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= old_to_new.shape[0]):
        raise ValueError(
            f"ids must lie in [0, {old_to_new.shape[0]}) to be remapped. Received: min {ids.min()}, max {ids.max()}."
        )
    return old_to_new[ids].astype(ids.dtype, copy=False)
