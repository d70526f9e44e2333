"""Lean bpe tokenizers (tokenization.bpe.MergeTable) give youtokentome's ids exactly, without loading it to encode."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tokenization import BPETokenizer, load_tokenizer
from tokenization import bpe as bpe_module
from tokenization.errors import TokenizerError

pytest.importorskip("youtokentome", reason="youtokentome is not installed")

# youtokentome's spaces (C isspace below 256, and U+2581), characters str.split() also splits at but youtokentome
# does not, characters outside any alphabet, runs that merge with themselves, and every code point below 256.
EDGE_TEXTS = [
    "", " ", "\t\n\x0b\x0c\r ", "  leading and trailing  ", "tab\tnew\nline\x0bvt\x0cff\rcr",
    "no\u00a0break", "nel\u0085here", "em\u2003space", "mark\u2581inside", "\u2581", "a\x1cb\x1dc\x1ed\x1ff",
    "日本 movie", "日本語テキスト", "mixed日本text", "x日y本z", "\x00", "eeeeeeeeeeeee", "aaaa bbbb", "ssss sss ss s",
    "!!!!!!!!", "...", "l'homme", "naïve café", "🙂 emoji 🙂🙂", "A" * 300,
    *[chr(code) for code in range(256)], *[f"a{chr(code)}b c{chr(code)}" for code in range(256)],
]


def _lean(tokenizer: BPETokenizer, directory: Path) -> BPETokenizer:
    tokenizer.save(directory)
    lean = load_tokenizer(directory, lean=True)
    assert isinstance(lean, BPETokenizer) and lean.lean
    return lean


def _random_texts(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("abcdeé日 \t\u2581\u00a0'.,!") + [chr(code) for code in range(32, 127)]
    texts = []
    for _ in range(n):
        if rng.random() < 0.5:  # glued and split real words: merges the training data never saw together
            texts.append(" ".join(rng.choice(words) + rng.choice(words)[: rng.randint(0, 4)] for _ in range(6)))
        else:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return texts


@pytest.mark.parametrize("which", ["mr", "chatterbot"])
def test_lean_ids_equal_youtokentome(which: str, mr_bpe, chat_bpe, mr_texts, chatterbot_texts,
                                     tmp_path: Path) -> None:
    tokenizer, texts = (mr_bpe, mr_texts) if which == "mr" else (chat_bpe, chatterbot_texts)
    lean = _lean(tokenizer, tmp_path)
    words = sorted({word for text in texts for word in text.split()})
    every = [*texts, *EDGE_TEXTS, *_random_texts(words, 3000, seed=7)]
    assert lean.tokenize_ids(every) == tokenizer.tokenize_ids(every)
    np.testing.assert_array_equal(lean.encode(every, 40), tokenizer.encode(every, 40))
    # Again, now that the word cache holds most words.
    assert lean.tokenize_ids(every[::-1]) == tokenizer.tokenize_ids(every[::-1])
    assert lean._yttm is None  # encoding never loaded youtokentome


def test_lean_pruned_vocabulary_equals_youtokentome(mr_bpe, mr_texts, tmp_path: Path) -> None:
    kept = np.concatenate([np.arange(4), np.arange(4, mr_bpe.vocab_size, 3)])
    pruned = mr_bpe.keep_ids(kept)
    lean = _lean(pruned, tmp_path)
    assert lean.vocab_size == pruned.vocab_size
    assert lean.tokenize_ids(mr_texts) == pruned.tokenize_ids(mr_texts)
    assert lean.keep_ids(np.arange(20)).lean


def test_lean_loads_youtokentome_only_for_subwords_decoding_and_saving(chat_bpe, chatterbot_texts,
                                                                      tmp_path: Path) -> None:
    lean = _lean(chat_bpe, tmp_path / "a")
    ids = lean.encode(chatterbot_texts[:20], 30)
    assert lean._yttm is None
    assert lean.decode(ids) == chat_bpe.decode(ids)
    assert lean.tokenize(chatterbot_texts[:20]) == chat_bpe.tokenize(chatterbot_texts[:20])
    assert lean.vocab == chat_bpe.vocab
    lean.save(tmp_path / "b")
    for name in ("bpe.model", "tokenizer.json"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


def test_lean_rejects_what_youtokentome_rejects(chat_bpe, tmp_path: Path) -> None:
    lean = _lean(chat_bpe, tmp_path)
    for tokenizer in (lean, chat_bpe):
        with pytest.raises(UnicodeEncodeError):
            tokenizer.tokenize_ids(["lone \ud800 surrogate"])
        with pytest.raises(TypeError):
            tokenizer.tokenize_ids("not a list")


def test_a_model_without_the_word_start_character_is_refused(chat_bpe, tmp_path: Path) -> None:
    chat_bpe.save(tmp_path)
    lines = (tmp_path / "bpe.model").read_text().split("\n")
    n_chars = int(lines[0].split()[0])
    lines[1 : 1 + n_chars] = [line if line.split()[0] != "9601" else "9602 " + line.split()[1]
                              for line in lines[1 : 1 + n_chars]]
    (tmp_path / "bpe.model").write_text("\n".join(lines))
    with pytest.raises(TokenizerError, match=r"bpe\.model: not a valid youtokentome model \(the word-start"):
        load_tokenizer(tmp_path, lean=True)


def test_the_word_cache_stays_bounded(chat_bpe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpe_module, "WORD_CACHE_SIZE", 50)
    lean = _lean(chat_bpe, tmp_path)
    texts = [" ".join(f"word{i}x{j}" for j in range(10)) for i in range(30)]
    assert lean.tokenize_ids(texts) == chat_bpe.tokenize_ids(texts)
    assert 0 < len(lean._table._cache) + len(lean._table._old) <= 50
