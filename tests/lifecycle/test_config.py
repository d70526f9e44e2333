"""Config loading: defaults < file < --set < flags, strict keys, and one-line errors naming file and key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lifecycle.config import Config, load_config, parse_overrides, resolve_data_path, validate
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
    assert flat["train.epochs"] == "100"
    assert flat["model.kernel_sizes"] == "[3, 4, 5]"
    assert "tokenizer.word.word2vec.dim" in flat


# --- value rules: kernel widths, finite positive floats, strict integers and booleans ----------------------------


def _exact(message: str) -> str:
    """A pytest.raises pattern matching the whole one-line message."""
    return "^" + re.escape(message) + "$"


SET = "defaults with --set "


@pytest.mark.parametrize(("override", "message"), [
    ("model.kernel_sizes=[0]", "model.kernel_sizes: every width must be >= 1 (a filter spans at least one token). "
     "Received: [0]. Use positive widths, e.g. [3, 4, 5]."),
    ("model.kernel_sizes=[3, -1]", "model.kernel_sizes: every width must be >= 1 (a filter spans at least one "
     "token). Received: [3, -1]. Use positive widths, e.g. [3, 4, 5]."),
    ("model.kernel_sizes=[3, 4, 3]", "model.kernel_sizes: each width may appear only once (its layers are named "
     "conv_<width>); repeated: 3. Received: [3, 4, 3]. Drop the repeated widths or raise model.filters instead."),
    ("model.kernel_sizes=[3, 65]", "model.kernel_sizes: the widest filter (65) must be <= tokenizer.max_len (64), "
     "the token ids a filter slides over. Received: [3, 65]. Narrow the kernels or raise tokenizer.max_len to at "
     "least 65."),
    ("model.kernel_sizes=['3']", "model.kernel_sizes.0: Input should be a valid integer. Received: '3'. Write it "
     "without quotes."),
])
def test_kernel_sizes_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=_exact(SET + override + ": " + message)):
        load_config(None, [override])


def test_kernel_width_limit_is_tokenizer_max_len(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("tokenizer: {max_len: 4}\nmodel: {kernel_sizes: [3, 4, 5]}\n")
    with pytest.raises(ConfigError, match=_exact(
            f"{path}: model.kernel_sizes: the widest filter (5) must be <= tokenizer.max_len (4), the token ids a "
            "filter slides over. Received: [3, 4, 5]. Narrow the kernels or raise tokenizer.max_len to at least 5.")):
        load_config(path)
    assert load_config(path, ["tokenizer.max_len=5"]).model.kernel_sizes == (3, 4, 5)  # a width may equal max_len


@pytest.mark.parametrize(("override", "message"), [
    ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number. Received: inf. NaN and "
     "infinities are refused: write a finite number, e.g. 0.001 (the default)."),
    ("train.learning_rate=.nan", "train.learning_rate: Input should be a finite number. Received: nan. NaN and "
     "infinities are refused: write a finite number, e.g. 0.001 (the default)."),
    ("train.learning_rate=-.inf", "train.learning_rate: Input should be a finite number. Received: -inf. NaN and "
     "infinities are refused: write a finite number, e.g. 0.001 (the default)."),
    ("train.learning_rate=0", "train.learning_rate: Input should be greater than 0. Received: 0."),
    ("train.learning_rate=-1e-3", "train.learning_rate: Input should be greater than 0. Received: -0.001."),
    ("train.adam_epsilon=.inf", "train.adam_epsilon: Input should be a finite number. Received: inf. NaN and "
     "infinities are refused: write a finite number, e.g. 1e-07 (the default)."),
    ("train.adam_epsilon=0", "train.adam_epsilon: Input should be greater than 0. Received: 0."),
    ("model.max_norm=.inf", "model.max_norm: Input should be a finite number. Received: inf. NaN and infinities are "
     "refused: write a finite number, e.g. 3.0 (the default)."),
    ("model.dropout=.nan", "model.dropout: Input should be a finite number. Received: nan. NaN and infinities are "
     "refused: write a finite number, e.g. 0.5 (the default)."),
    ("model.dropout=1", "model.dropout: Input should be less than 1. Received: 1."),
    ("data.split.validation=0", "data.split.validation: Input should be greater than 0. Received: 0."),
    ("data.split.test=1.0", "data.split.test: Input should be less than 1. Received: 1.0."),
    ("tokenizer.bpe.coverage=.nan", "tokenizer.bpe.coverage: Input should be a finite number. Received: nan. NaN and "
     "infinities are refused: write a finite number, e.g. 1.0 (the default)."),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0. Received: -1."),
    ("train.seed=4294967296", "train.seed: Input should be less than or equal to 4294967295. Received: 4294967296."),
    ("data.max_text_chars=0", "data.max_text_chars: Input should be greater than or equal to 1. Received: 0."),
])
def test_floats_are_finite_and_in_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=_exact(SET + override + ": " + message)):
        load_config(None, [override])


@pytest.mark.parametrize(("yaml_text", "message"), [
    ('train: {epochs: "3"}', "train.epochs: Input should be a valid integer. Received: '3'. Write it without "
     "quotes: train.epochs: 3."),
    ("train: {epochs: 3.0}", "train.epochs: Input should be a valid integer. Received: 3.0. Write a whole number, "
     "e.g. 100 (the default)."),
    ("train: {epochs: true}", "train.epochs: Input should be a valid integer. Received: True. Write a whole number, "
     "e.g. 100 (the default)."),
    ("data: {limit: '800'}", "data.limit: Input should be a valid integer. Received: '800'. Write it without "
     "quotes: data.limit: 800."),
    ('tracking: {enabled: "false"}', "tracking.enabled: Input should be a valid boolean. Received: 'false'. Write "
     "it without quotes: tracking.enabled: false."),
    ("tracking: {enabled: 1}", "tracking.enabled: Input should be a valid boolean. Received: 1. Write true or "
     "false."),
    ('train: {learning_rate: "1e-3"}', "train.learning_rate: Input should be a valid number. Received: '1e-3'. "
     "Write it without quotes: train.learning_rate: 1e-3."),
    ("train: {learning_rate: fast}", "train.learning_rate: Input should be a valid number. Received: 'fast'. Write "
     "a number without quotes, e.g. 0.001 (the default)."),
    ("model: {dropout: false}", "model.dropout: Input should be a valid number. Received: False. Write a number, "
     "e.g. 0.5 (the default)."),
])
def test_ints_bools_and_floats_are_strict(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=_exact(f"{path}: {message}")):
        load_config(path)


def test_numbers_yaml_produces_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    # PyYAML alone reads 1e-3 and 1E-7 as strings; integers are fine for float keys; yes/no are YAML 1.1 booleans.
    path.write_text("train: {learning_rate: 1e-3, adam_epsilon: 1E-7, epochs: 3}\nmodel: {dropout: 0, max_norm: 3}\n"
                    "tokenizer: {bpe: {coverage: 1}}\ntracking: {enabled: no}\n")
    cfg = load_config(path)
    assert (cfg.train.learning_rate, cfg.train.adam_epsilon, cfg.train.epochs) == (1e-3, 1e-7, 3)
    assert isinstance(cfg.model.dropout, float) and cfg.model.max_norm == 3.0 and cfg.tokenizer.bpe.coverage == 1.0
    assert cfg.tracking.enabled is False
    cfg = load_config(None, ["train.learning_rate=2e-4", "train.adam_epsilon=1.0e-4", "data.split.test=.5e-1",
                             "tracking.enabled=true", "train.epochs=7"])
    assert (cfg.train.learning_rate, cfg.train.adam_epsilon, cfg.data.split.test) == (2e-4, 1e-4, 0.05)
    assert cfg.tracking.enabled is True and cfg.train.epochs == 7
    assert parse_overrides(["data.text_field=1e3x", "name='2e5'"]) == {"data": {"text_field": "1e3x"}, "name": "2e5"}


def test_resolved_config_round_trips_under_strict_types(tmp_path: Path) -> None:
    # What every version stores (config.yaml, manifest.json's config) must validate again to the same config.
    cfg = load_config(REPO / "configs" / "mr-word2vec.yaml", ["train.learning_rate=3e-4", "train.adam_epsilon=1e-8"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert validate(json.loads(json.dumps(cfg.to_dict())), "manifest.json") == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_grids_validate(path: Path) -> None:
    from lifecycle.experiment import expand, load_experiment

    assert expand(load_experiment(path), path)


def test_shipped_serve_config_validates() -> None:
    from lifecycle.serving.config import load_serve_config

    assert load_serve_config(REPO / "configs" / "serve" / "example.yaml").models
