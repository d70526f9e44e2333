"""Fixtures for the tokenizer tests: real texts (MR from the shared data, chatterbot from its package) and
session-scoped trained tokenizers, kept small so the whole module runs in seconds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifecycle.config import TokenizerConfig
from tokenization.base import Tokenizer
from tokenization.factory import load_tokenizer, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
# Enough of MR to have a realistic vocabulary while keeping training fast.
MR_LINES_PER_CLASS = 2000
SMALL_W2V = {"dim": 16, "epochs": 2, "workers": 1, "window": 3}


def shared_data_dir() -> Path:
    """$LIFECYCLE_DATA_DIR, else ../shared/data beside the repository (the project's documented default)."""
    env = os.environ.get("LIFECYCLE_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def word_config(**word: object) -> TokenizerConfig:
    """A word-tokenizer config; word2vec is off unless ``word`` turns it on."""
    word.setdefault("word2vec", {"enabled": False})
    return TokenizerConfig.model_validate({"kind": "word", "word": word})


def bpe_config(**bpe: object) -> TokenizerConfig:
    """A bpe-tokenizer config with small defaults (single-threaded, so runs repeat)."""
    bpe.setdefault("threads", 1)
    return TokenizerConfig.model_validate({"kind": "bpe", "bpe": bpe})


@pytest.fixture(name="word_cfg", scope="session")
def _word_cfg() -> Callable[..., TokenizerConfig]:
    """Factory for word configs (see :func:`word_config`)."""
    return word_config


@pytest.fixture(name="bpe_cfg", scope="session")
def _bpe_cfg() -> Callable[..., TokenizerConfig]:
    """Factory for bpe configs (see :func:`bpe_config`)."""
    return bpe_config


@pytest.fixture(scope="session")
def mr_texts() -> list[str]:
    """The first lines of MR's positive and negative files (cp1252, split on b'\\n' only)."""
    folder = shared_data_dir() / "MR"
    files = [folder / "rt-polarity.pos", folder / "rt-polarity.neg"]
    if not all(path.is_file() for path in files):
        pytest.skip(f"MR data not found in {folder}; set LIFECYCLE_DATA_DIR to the shared data directory")
    texts: list[str] = []
    for path in files:
        # splitlines() would also break at the NEL that 0x85 becomes, so split on the newline byte only.
        lines = path.read_bytes().split(b"\n")[:MR_LINES_PER_CLASS]
        texts.extend(line.decode("cp1252") for line in lines if line.strip())
    return texts


@pytest.fixture(scope="session")
def chatterbot_texts() -> list[str]:
    """Every utterance of the English chatterbot corpus (mixed case, punctuation; needs no shared data)."""
    corpus = pytest.importorskip("chatterbot_corpus", reason="chatterbot-corpus is not installed")
    folder = Path(corpus.__file__).parent / "data" / "english"
    texts: list[str] = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            texts.extend(str(item) for item in conversation if str(item).strip())
    if not texts:
        pytest.skip(f"no conversations found under {folder}")
    return texts


@pytest.fixture(scope="session")
def chat_word(chatterbot_texts: list[str]) -> Tokenizer:
    return train_tokenizer(chatterbot_texts, word_config(word2vec={"enabled": True, **SMALL_W2V}), seed=7)


@pytest.fixture(scope="session")
def chat_bpe(chatterbot_texts: list[str]) -> Tokenizer:
    return train_tokenizer(chatterbot_texts, bpe_config(vocab_size=500, lowercase=False))


@pytest.fixture(scope="session")
def mr_word(mr_texts: list[str]) -> Tokenizer:
    return train_tokenizer(mr_texts, word_config(word2vec={"enabled": True, **SMALL_W2V}))


@pytest.fixture(scope="session")
def mr_bpe(mr_texts: list[str]) -> Tokenizer:
    return train_tokenizer(mr_texts, bpe_config(vocab_size=1000))


def _assert_round_trip(tokenizer: Tokenizer, texts: Sequence[str], directory: Path, max_len: int = 40) -> Tokenizer:
    tokenizer.save(directory)
    loaded = load_tokenizer(directory)
    assert type(loaded) is type(tokenizer)
    assert loaded.kind == tokenizer.kind
    assert loaded.vocab_size == tokenizer.vocab_size
    np.testing.assert_array_equal(loaded.encode(texts, max_len), tokenizer.encode(texts, max_len))
    assert loaded.tokenize_ids(texts) == tokenizer.tokenize_ids(texts)
    assert [loaded.id_to_token(i) for i in range(loaded.vocab_size)] == [
        tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)
    ]
    if tokenizer.vectors is None:
        assert loaded.vectors is None
    else:
        assert loaded.vectors is not None
        np.testing.assert_array_equal(loaded.vectors, tokenizer.vectors)
    return loaded


@pytest.fixture
def assert_round_trip() -> Callable[..., Tokenizer]:
    """The save/load contract: the loaded tokenizer encodes (and embeds) exactly like the original."""
    return _assert_round_trip
