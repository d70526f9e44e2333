"""Config loading: defaults < file < --set < flags, strict keys, and one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.config import Config, load_config, parse_overrides, resolve_data_path
from lifecycle.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_precedence_defaults_file_set_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 4, batch_size: 32}\nmodel: {filters: 8}\n")
    cfg = load_config(path, ["train.epochs=6", "model.kernel_sizes=[2, 3]"], {"train.epochs": 9, "train.seed": None})
    assert cfg.train.epochs == 9  # flag beats --set beats file
    assert cfg.train.batch_size == 32  # file beats default
    assert cfg.model.kernel_sizes == (2, 3)  # --set parses YAML values
    assert cfg.model.filters == 8
    assert cfg.train.seed == Config().train.seed  # a None flag changes nothing
    assert cfg.name == "c"


def test_typo_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("train: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'train\.epochz'") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_wrong_value_names_key_value_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer: {kind: bpe, bpe: {vocab_size: 2}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: tokenizer\.bpe\.vocab_size: .*8.*Received: 2"):
        load_config(path)


@pytest.mark.parametrize("pair", ["train.epochs", "=3", "train..epochs=3", "train.epochs=[1,"])
def test_malformed_set_is_a_config_error(pair: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([pair])


def test_set_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"with --set model\.filterz=3: unknown key 'model\.filterz'"):
        load_config(None, ["model.filterz=3"])


def test_cross_field_rule_word2vec_needs_word_tokenizer() -> None:
    with pytest.raises(ConfigError, match="embedding_init=non-static needs word2vec vectors"):
        load_config(None, ["tokenizer.kind=bpe", "model.embedding_init=non-static"])


def test_word2vec_dim_must_match_embedding() -> None:
    with pytest.raises(ConfigError, match=r"word2vec\.dim \(64\) must equal model\.embedding_dim \(300\)"):
        load_config(None, ["model.embedding_init=static", "tokenizer.word.word2vec.enabled=true",
                           "tokenizer.word.word2vec.dim=64"])


def test_missing_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+ is not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing)


def test_digest_is_stable_and_sensitive() -> None:
    a, b = load_config(None), load_config(None)
    assert a.digest() == b.digest()
    assert load_config(None, ["train.seed=1"]).digest() != a.digest()
    assert load_config(None, ["train.seed=1"]).digest(["model"]) == a.digest(["model"])


def test_relative_data_path_uses_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path))
    cfg = load_config(None, ["data.format=mr", "data.path=MR"])
    assert resolve_data_path(cfg.data, "MR") == tmp_path / "MR"
    cfg = load_config(None, [f"data.data_dir={tmp_path / 'other'}"])
    assert resolve_data_path(cfg.data, "x.csv") == tmp_path / "other" / "x.csv"
    assert resolve_data_path(cfg.data, "/abs/x.csv") == Path("/abs/x.csv")


def test_flat_params_cover_every_key() -> None:
    flat = load_config(None).flat()
    assert flat["train.epochs"] == "10"
    assert flat["model.kernel_sizes"] == "[3, 4, 5]"
    assert "tokenizer.word.word2vec.dim" in flat
