"""The kind-independent API: protocol, dispatch, coverage stats, metadata checks, sizes and import hygiene."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tokenization import (
    BOS,
    EOS,
    PAD,
    UNK,
    BPETokenizer,
    CoverageStats,
    Tokenizer,
    WordTokenizer,
    coverage_stats,
    load_tokenizer,
    tokenizer_bytes,
    tokenizer_vectors,
    train_tokenizer,
)
from tokenization.base import SPECIAL_TOKENS
from tokenization.errors import TokenizerError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_pulls_in_no_heavy_module() -> None:
    code = (
        "import sys, tokenization, tokenization.bpe, tokenization.word, tokenization.vocab\n"
        "heavy = ('tensorflow', 'keras', 'mlflow', 'gensim', 'youtokentome')\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_package_stands_alone_without_an_import_circle() -> None:
    # Nothing of lifecycle, even lazily or for type checking; base.py never imports the kinds it describes.
    for path in (REPO_ROOT / "tokenization").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in modules if m.split(".")[0] == "lifecycle"}, path.name
        if path.name in ("base.py", "errors.py", "settings.py", "vocab.py"):
            assert not modules & {"tokenization.bpe", "tokenization.word", "tokenization.factory"}, path.name
    code = (
        "import sys, tokenization.errors\n"
        "print(','.join(name for name in ('numpy', 'tokenization.base') if name in sys.modules))\n"
        "import tokenization.base\n"
        "kinds = ('tokenization.bpe', 'tokenization.word', 'tokenization.factory')\n"
        "print(','.join(name for name in kinds if name in sys.modules))\n"
        "import tokenization.factory, tokenization.vocab\n"
        "print(','.join(name for name in sys.modules if name.split('.')[0] == 'lifecycle'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:3] == ["", "", ""]


def test_plain_settings_objects_train_a_tokenizer() -> None:
    # Any object with the attributes tokenization.settings names will do; lifecycle's pydantic config is one.
    w2v = SimpleNamespace(enabled=False, dim=8, window=2, min_count=1, epochs=1, sg=True, workers=1)
    word = SimpleNamespace(lowercase=True, token_pattern=r"[\w']+", min_count=1, max_size=None, word2vec=w2v)
    settings = SimpleNamespace(kind="word", bpe=None, word=word)
    tokenizer = train_tokenizer(["A film", "a dull film"], settings)
    assert sorted(tokenizer.vocab[4:]) == ["a", "dull", "film"]
    with pytest.raises(TokenizerError, match="tokenizer.kind must be one of bpe, word. Received: 'char'"):
        train_tokenizer(["a film"], SimpleNamespace(kind="char", bpe=None, word=word))


def test_special_ids_equal_youtokentome_defaults() -> None:
    yttm = pytest.importorskip("youtokentome")
    defaults = inspect.signature(yttm.BPE.train).parameters
    assert (PAD, UNK, BOS, EOS) == tuple(defaults[f"{name}_id"].default for name in ("pad", "unk", "bos", "eos"))


def test_both_kinds_satisfy_the_protocol(chat_word: Tokenizer, chat_bpe: Tokenizer) -> None:
    assert isinstance(chat_word, WordTokenizer) and chat_word.kind == "word"
    assert isinstance(chat_bpe, BPETokenizer) and chat_bpe.kind == "bpe"
    for tokenizer in (chat_word, chat_bpe):
        assert isinstance(tokenizer, Tokenizer)
        assert [tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)


def test_tokenizer_vectors(chat_word: Tokenizer, chat_bpe: Tokenizer) -> None:
    assert tokenizer_vectors(chat_bpe) is None
    vectors = tokenizer_vectors(chat_word)
    assert vectors is not None and vectors.shape[0] == chat_word.vocab_size


def test_coverage_stats_counts_exactly() -> None:
    tokenizer = WordTokenizer([*SPECIAL_TOKENS, "a", "b"], lowercase=True, token_pattern=r"\w+")
    stats = coverage_stats(tokenizer, ["a b c", "A", ""], max_len=2)
    # ids: [4, 5, 1], [4], [] -> 1 unk of 4 ids; one text of three exceeds 2 ids.
    assert stats == CoverageStats(unk_rate=0.25, mean_tokens=4 / 3, truncation_rate=1 / 3, n_texts=3)
    assert coverage_stats(tokenizer, [], max_len=2) == CoverageStats(0.0, 0.0, 0.0, 0)


def test_coverage_stats_on_unseen_text(chat_word: Tokenizer) -> None:
    stats = coverage_stats(chat_word, ["zyzzyva quokkas befuddle xylophonists"], max_len=8)
    assert stats.unk_rate > 0.5
    assert stats.truncation_rate == 0.0


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_no_texts_is_an_error(kind: str, word_cfg, bpe_cfg) -> None:
    cfg = word_cfg() if kind == "word" else bpe_cfg(vocab_size=100)
    with pytest.raises(TokenizerError, match=f"Cannot train a {kind} tokenizer on 0 texts"):
        train_tokenizer([], cfg)


@pytest.mark.parametrize("tokenizer_fixture", ["chat_word", "chat_bpe"])
def test_encode_rejects_bad_max_len_and_bare_strings(tokenizer_fixture: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    with pytest.raises(TokenizerError, match="tokenizer.max_len"):
        tokenizer.encode(["hello"], 0)
    with pytest.raises(TypeError, match="wrap it in a list"):
        tokenizer.encode("hello", 4)
    assert tokenizer.encode([], 5).shape == (0, 5)


@pytest.mark.parametrize("tokenizer_fixture", ["chat_word", "chat_bpe"])
def test_decode_skips_padding(tokenizer_fixture: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    ids = tokenizer.encode(["what is ai"], 12)
    assert ids[0, -1] == PAD
    assert tokenizer.decode(ids)[0].lower() == "what is ai"
    with pytest.raises(TokenizerError, match="Token id must be in"):
        tokenizer.id_to_token(tokenizer.vocab_size)


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "nope")


def test_load_without_metadata(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("<PAD>\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: missing.*lifecycle tokenize"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"format_version": 99, "kind": "word", "vocab_size": 10}), "format_version 99 is not supported"),
        (json.dumps({"format_version": 1, "kind": "sentencepiece", "vocab_size": 10}), "kind must be one of bpe, word"),
        (json.dumps({"format_version": 1, "kind": "word", "vocab_size": "10"}), "vocab_size must be an integer"),
    ],
)
def test_load_bad_metadata(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "tokenizer.json").write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(tmp_path)
    assert "tokenizer.json" in str(info.value)


def test_loading_with_the_wrong_class_names_the_kind(chat_bpe: Tokenizer, tmp_path: Path) -> None:
    chat_bpe.save(tmp_path)
    with pytest.raises(TokenizerError, match="holds a bpe tokenizer, not word"):
        WordTokenizer.load(tmp_path)


def test_tokenizer_bytes_and_reusing_a_directory(chat_word: Tokenizer, chat_bpe: Tokenizer, tmp_path: Path) -> None:
    chat_word.save(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert names == {"tokenizer.json", "vocab.txt", "vectors.npy"}
    assert tokenizer_bytes(tmp_path) == sum(path.stat().st_size for path in tmp_path.iterdir())
    # Saving another kind into the same directory leaves no stale files to inflate the size.
    chat_bpe.save(tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == {"tokenizer.json", "bpe.model"}
    assert isinstance(load_tokenizer(tmp_path), BPETokenizer)
    assert tokenizer_bytes(tmp_path) == sum(path.stat().st_size for path in tmp_path.iterdir())


def test_nothing_is_pickled(chat_word: Tokenizer, tmp_path: Path) -> None:
    chat_word.save(tmp_path)
    vectors = np.load(tmp_path / "vectors.npy", allow_pickle=False)
    assert vectors.dtype == np.float32
    metadata = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert metadata["format_version"] == 1 and metadata["kind"] == "word"
