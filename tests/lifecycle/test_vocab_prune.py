"""Data-aware compression: vocabulary pruning (``vocab:N``, ``vocab:coverage=C``) keeps the training split's most
frequent ids and ships a tokenizer that encodes into the new rows; ``tune:E`` fine-tunes with the pruning mask kept
and stores the weights as they were. Both record a report in the manifest's recipe."""

from __future__ import annotations

import lzma
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.compress import RecipeContext, apply_recipe, parse_recipe, step_text
from lifecycle.errors import ConfigError, DataError, TokenizerError
from tests.helpers import mr_config


def _context(version_path: Path) -> RecipeContext:
    """The context run_compress gives the recipe, for a frozen version on disk."""
    from lifecycle.workflows import load_graph_version
    from tokenization.factory import load_tokenizer

    version = artifacts.load_version(version_path)
    source = load_graph_version(version)
    return RecipeContext(version.config, version.labels, version.max_len, source.kernel_sizes, source.weight_map,
                         load_tokenizer(version.tokenizer_dir), str(version.path))


def _probabilities(path: Path, texts: list[str]) -> np.ndarray:
    """The model's own probabilities (before the version's temperature, which compress fits again for each child)."""
    from lifecycle.inference import Predictor

    return Predictor(artifacts.load_version(path)).predict_proba(texts, calibrated=False)


def _corpus(path: Path) -> Any:
    """The version's data, split as for training (a lifecycle.corpus.Corpus)."""
    from lifecycle.corpus import load_corpus

    cfg = artifacts.load_version(path).config
    return load_corpus(cfg.data, cfg.name)


def _train_word_counts(tokenizer: Any, path: Path) -> Counter[str]:
    """How often each word occurs in the version's training split, counted afresh."""
    return Counter(token for tokens in tokenizer.tokenize(list(_corpus(path).train.texts)) for token in tokens)


# --- recipe text ----------------------------------------------------------------------------------------------------

def test_vocab_and_tune_parse_and_print_back() -> None:
    steps = parse_recipe("prune:0.5, tune:2 ,vocab:300,vocab:coverage=0.95,int8")
    assert [(s.name, s.params) for s in steps] == [("prune", {"sparsity": 0.5}), ("tune", {"epochs": 2}),
                                                   ("vocab", {"keep": 300}), ("vocab", {"coverage": 0.95}),
                                                   ("int8", {})]
    text = ",".join(step_text(s.name, s.params) for s in steps)
    assert text == "prune:0.5,tune:2,vocab:300,vocab:coverage=0.95,int8"
    assert parse_recipe(text) == steps
    assert step_text("vocab", {"keep": 1_000_000}) == "vocab:1000000"  # not 1e+06, which would not parse back


@pytest.mark.parametrize("recipe, message", [
    ("vocab:0", r"vocab must keep more than the 4 special ids .*Received: 0\."),
    ("vocab:4", r"vocab must keep more than the 4 special ids .*Received: 4\."),
    ("vocab:abc", r"vocab needs the number of ids to keep, e\.g\. vocab:20000.*Received: 'abc'"),
    ("vocab", r"vocab needs the number of ids to keep"),
    ("vocab:2.5", r"vocab needs the number of ids to keep"),
    ("vocab:coverage=1.5", r"vocab coverage must be a fraction in \(0, 1\].*Received: '1\.5'"),
    ("vocab:coverage=0", r"vocab coverage must be a fraction in \(0, 1\]"),
    ("vocab:coverage=nan", r"vocab coverage must be a fraction in \(0, 1\]"),
    ("vocab:size=300", r"vocab takes a size \(vocab:20000\) or a coverage"),
    ("tune", r"tune needs a whole number of epochs >= 1, e\.g\. tune:2\. Received: ''"),
    ("tune:0", r"tune needs a whole number of epochs >= 1"),
    ("tune:1.5", r"tune needs a whole number of epochs >= 1"),
    ("tunes:1", r"unknown step 'tunes'\. Steps available in this build: .*vocab:N, vocab:coverage=C, tune:E"),
])
def test_bad_vocab_and_tune_recipes(recipe: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(recipe)


def test_cli_names_the_bad_vocab_parameter(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    result = CliRunner().invoke(app, ["compress", str(tmp_path), "--recipe", "vocab:coverage=1.5", "--no-track"])
    assert result.exit_code == 2
    assert "vocab coverage must be a fraction in (0, 1]" in result.output


def test_context_steps_need_a_context() -> None:
    from lifecycle.errors import ModelError
    from lifecycle.storage import StoredTensor

    weights = {"weights/embedding": StoredTensor("float32", np.ones((10, 2), dtype=np.float32))}
    with pytest.raises(ModelError, match="vocab needs the version's tokenizer and data"):
        apply_recipe(weights, parse_recipe("vocab:5"))


# --- tokenizers -----------------------------------------------------------------------------------------------------

def test_word_tokenizer_keep_ids_round_trips(tmp_path: Path) -> None:
    from tokenization.base import UNK
    from tokenization.factory import load_tokenizer
    from tokenization.word import WordTokenizer

    vocab = ["<PAD>", "<UNK>", "<BOS>", "<EOS>", "the", "film", "is", "dull", "bright"]
    tokenizer = WordTokenizer(vocab, lowercase=True, token_pattern=r"[\w']+|[^\w\s]")
    pruned = tokenizer.keep_ids(np.array([0, 1, 2, 3, 5, 8]))
    assert pruned.vocab == ["<PAD>", "<UNK>", "<BOS>", "<EOS>", "film", "bright"]
    pruned.save(tmp_path)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == pruned.vocab
    loaded = load_tokenizer(tmp_path)
    assert loaded.tokenize_ids(["The film is bright"]) == [[UNK, 4, UNK, 5]]
    for bad in ([0, 1, 2, 5], [0, 1, 2, 3, 6, 5], [0, 1, 2, 3, 9]):
        with pytest.raises(TokenizerError, match="kept ids"):
            tokenizer.keep_ids(np.array(bad))


# --- word vocabulary pruning through run_compress --------------------------------------------------------------------

@pytest.fixture(scope="module")
def word_pruned(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("vocab")
    parent = frozen["outcome"].version
    return {"parent": parent, "n": run_compress(str(parent), "vocab:256", root / "n", track=False),
            "coverage": run_compress(str(parent), "vocab:coverage=0.8", root / "c", track=False)}


def test_word_vocab_pruning_round_trips(word_pruned: dict) -> None:
    from tokenization.base import N_SPECIAL, UNK
    from tokenization.factory import load_tokenizer

    parent, child = (artifacts.load_version(p) for p in (word_pruned["parent"], word_pruned["n"].version))
    parent_tok, child_tok = load_tokenizer(parent.tokenizer_dir), load_tokenizer(child.tokenizer_dir)
    assert parent_tok.vocab_size > 256 and parent.manifest.input.dtype == "uint16"
    assert child_tok.vocab_size == 256 == child.manifest.architecture.vocab_size
    assert child.manifest.tensors["weights/embedding"].shape == (256, parent.manifest.architecture.embedding_dim)
    assert child.manifest.input.dtype == "uint8"  # 256 ids fit a byte
    test_texts = list(_corpus(child.path).test.texts)
    ids = child_tok.encode(test_texts, child.max_len)
    assert ids.max() < 256

    # The kept words are the 252 most frequent training words: every dropped one is rarer than every kept one.
    counts = _train_word_counts(parent_tok, parent.path)
    kept = set(child_tok.vocab[N_SPECIAL:])
    dropped = set(parent_tok.vocab[N_SPECIAL:]) - kept
    assert len(kept) == 252 and min(counts[w] for w in kept) >= max(counts[w] for w in dropped)

    # Texts made only of kept words predict exactly as before; a dropped word becomes unk.
    texts = [" ".join(t for t in tokens if t in kept) for tokens in parent_tok.tokenize(test_texts[:200])]
    texts = [t for t in texts if t]
    assert all(set(tokens) <= kept for tokens in parent_tok.tokenize(texts))
    difference = np.abs(_probabilities(parent.path, texts) - _probabilities(child.path, texts)).max()
    assert difference <= 1e-5
    rare = sorted(dropped, key=lambda w: counts[w])[0]
    assert child_tok.tokenize_ids([f"the {rare}"])[0][1] == UNK != parent_tok.tokenize_ids([rare])[0][0]


def test_word_vocab_step_report_and_honest_comparison(word_pruned: dict) -> None:
    parent = artifacts.load_version(word_pruned["parent"])
    child = artifacts.load_version(word_pruned["n"].version)
    [step] = child.manifest.recipe
    assert step.name == "vocab" and step.params == {"keep": 256}
    report = step.report
    assert report["rows_before"] == parent.manifest.architecture.vocab_size and report["rows_after"] == 256
    assert report["train_coverage_before"] == pytest.approx(1.0)  # the word vocabulary was built on this split
    assert 0.3 < report["train_coverage_after"] < 1.0
    assert report["test_unk_rate_after"] > report["test_unk_rate_before"]
    assert step.bytes_after < step.bytes_before / 10
    # The recorded accuracy is the child's own, through its own tokenizer (not the parent's ids into fewer rows).
    test = _corpus(child.path).test
    predicted = np.asarray(child.labels)[_probabilities(child.path, list(test.texts)).argmax(axis=1)]
    accuracy = float(np.mean(predicted == np.asarray(test.labels)))
    assert child.manifest.metrics["test_accuracy"] == pytest.approx(accuracy)
    assert word_pruned["n"].metrics["accuracy_delta_vs_parent"] == pytest.approx(
        accuracy - parent.manifest.metrics["test_accuracy"])
    assert child.manifest.sizes["tokenizer_bytes"] < parent.manifest.sizes["tokenizer_bytes"]


def test_coverage_mode_keeps_the_fewest_words_covering_c(word_pruned: dict) -> None:
    from tokenization.base import N_SPECIAL
    from tokenization.factory import load_tokenizer

    parent = artifacts.load_version(word_pruned["parent"])
    child = artifacts.load_version(word_pruned["coverage"].version)
    parent_tok, child_tok = load_tokenizer(parent.tokenizer_dir), load_tokenizer(child.tokenizer_dir)
    counts = _train_word_counts(parent_tok, parent.path)
    total = sum(counts.values())
    kept = child_tok.vocab[N_SPECIAL:]
    covered = sum(counts[w] for w in kept)
    assert covered / total >= 0.8
    assert (covered - min(counts[w] for w in kept)) / total < 0.8  # one word fewer would not do
    [step] = child.manifest.recipe
    assert step.params == {"coverage": 0.8}
    assert step.report["train_coverage_after"] == pytest.approx(covered / total)
    assert step.report["rows_after"] == child_tok.vocab_size < parent_tok.vocab_size


def test_vocab_larger_than_the_vocabulary_keeps_everything(frozen: dict) -> None:
    path = frozen["outcome"].version
    context = _context(path)
    before = context.tokenizer
    weights, [report] = apply_recipe(_source_weights(path), parse_recipe("vocab:100000"), context)
    rows = before.vocab_size
    assert weights["weights/embedding"].shape[0] == rows and context.tokenizer is before
    assert report.tensors == () and report.details["rows_after"] == rows
    assert "not below the" in report.details["note"]


def _source_weights(path: Path) -> dict:
    from lifecycle.workflows import load_graph_version

    return load_graph_version(artifacts.load_version(path)).weights


def test_restore_works_on_a_vocab_pruned_version(word_pruned: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_restore

    outcome = run_restore(str(word_pruned["n"].version), tmp_path / "r", track=False)
    assert outcome.metrics["max_abs_diff_vs_parent"] <= 1e-5
    restored = artifacts.load_version(outcome.version)
    # A compressed version ships vocab.txt.xz (the compact tokenizer); the restored checkpoint carries the same file.
    assert (restored.tokenizer_dir / "vocab.txt.xz").read_bytes() == (
        artifacts.load_version(word_pruned["n"].version).tokenizer_dir / "vocab.txt.xz").read_bytes()
    texts = ["an utterly charming and hilarious film", "a boring , lifeless mess"]
    np.testing.assert_allclose(_probabilities(restored.path, texts), _probabilities(word_pruned["n"].version, texts),
                               atol=1e-5)


def test_retrain_of_a_vocab_pruned_version_keeps_its_vocabulary(word_pruned: dict, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    import csv

    from lifecycle.workflows import RetrainOptions, run_retrain
    from tokenization.factory import load_tokenizer

    new = tmp_path / "new.csv"
    with new.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for suffix, label in (("pos", "positive"), ("neg", "negative")):
            lines = (data_dir / "MR" / f"rt-polarity.{suffix}").read_bytes().split(b"\n")[-101:-1]
            writer.writerows([line.decode("cp1252").strip(), label] for line in lines)
    outcomes = run_retrain(str(word_pruned["n"].version), new, RetrainOptions(epochs=1), tmp_path / "next",
                           track=False)
    checkpoint, frozen, compressed = (artifacts.load_version(o.version) for o in outcomes)
    pruned_vocab = load_tokenizer(artifacts.load_version(word_pruned["n"].version).tokenizer_dir).vocab
    for version in (checkpoint, frozen, compressed):
        assert load_tokenizer(version.tokenizer_dir).vocab == pruned_vocab, version.kind
    assert compressed.manifest.architecture.vocab_size == 256
    [step] = compressed.manifest.recipe
    assert step.params == {"keep": 256} and "all rows kept" in step.report["note"]


@pytest.mark.parametrize("recipe", ["tune:1", "vocab:300"])
def test_missing_data_is_a_data_error_and_writes_nothing(frozen: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, recipe: str) -> None:
    from lifecycle.workflows import run_compress

    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "nowhere"))
    step = recipe.split(":")[0]
    with pytest.raises(DataError, match=rf"recipe step {step} needs the training data of .*drop {step} from the "):
        run_compress(str(frozen["outcome"].version), recipe, tmp_path / "x", track=False)
    assert not (tmp_path / "x").exists()


# --- bpe vocabulary pruning ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe_versions(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.workflows import run_compress, run_freeze, run_train

    root = tmp_path_factory.mktemp("bpe")
    cfg = mr_config("name=mr-bpe-vocab", "tokenizer.kind=bpe", "tokenizer.bpe.vocab_size=400",
                    "tokenizer.bpe.threads=1", "data.limit=300", "train.epochs=1", "tracking.enabled=false")
    trained = run_train(cfg, root / "v", versions_dir=root / "versions")
    frozen = run_freeze(str(trained.version), root / "f", track=False)
    pruned = run_compress(str(frozen.version), "vocab:200", root / "p", track=False)
    return {"parent": frozen.version, "child": pruned.version}


def test_bpe_vocab_pruning_round_trips(bpe_versions: dict, tmp_path: Path) -> None:
    from tokenization.base import N_SPECIAL, UNK
    from tokenization.factory import load_tokenizer
    from tokenization.vocab import count_ids

    parent, child = (artifacts.load_version(bpe_versions[k]) for k in ("parent", "child"))
    parent_tok, child_tok = load_tokenizer(parent.tokenizer_dir), load_tokenizer(child.tokenizer_dir)
    # The youtokentome model is shipped unchanged (xz-compressed in the compressed version's compact tokenizer).
    assert lzma.decompress((child.tokenizer_dir / "bpe.model.xz").read_bytes()) == (
        parent.tokenizer_dir / "bpe.model").read_bytes()
    # 200 of the model's ids kept: as a bitmask over them, the smaller file (tokenization.base.KEPT_MASK_FILE).
    assert {p.name for p in child.tokenizer_dir.iterdir()} == {"bpe.model.xz", "kept_ids.mask.xz", "tokenizer.json"}
    assert child_tok.vocab_size == 200 == child.manifest.architecture.vocab_size
    assert child.manifest.input.dtype == "uint8" and parent.manifest.input.dtype == "uint16"

    # The map: kept = specials + the 196 ids most frequent in the training split; every other id becomes unk.
    train_texts = list(_corpus(parent.path).train.texts)
    counts = count_ids(parent_tok.tokenize_ids(train_texts), parent_tok.vocab_size)
    mask = np.frombuffer(lzma.decompress((child.tokenizer_dir / "kept_ids.mask.xz").read_bytes()), dtype=np.uint8)
    kept = np.flatnonzero(np.unpackbits(mask, count=parent_tok.vocab_size, bitorder="little")).astype(np.int64)
    assert kept.size == 200 and list(kept[:N_SPECIAL]) == list(range(N_SPECIAL)) and np.all(np.diff(kept) > 0)
    others = np.setdiff1d(np.arange(N_SPECIAL, parent_tok.vocab_size), kept)
    assert counts[kept[N_SPECIAL:]].min() >= counts[others].max()
    old_to_new = np.full(parent_tok.vocab_size, UNK)
    old_to_new[kept] = np.arange(kept.size)
    test_texts = list(_corpus(parent.path).test.texts)
    for old, new in zip(parent_tok.tokenize_ids(test_texts), child_tok.tokenize_ids(test_texts), strict=True):
        assert new == old_to_new[np.asarray(old, dtype=np.int64)].tolist()
    assert child_tok.encode(test_texts, child.max_len).max() < 200
    child_tok.save(tmp_path / "again")
    assert load_tokenizer(tmp_path / "again").tokenize_ids(test_texts) == child_tok.tokenize_ids(test_texts)

    # Texts of words that are one kept subword each predict exactly as before.
    kept_set = set(kept[N_SPECIAL:].tolist())
    words = [s[1:] for i, s in enumerate(parent_tok.vocab) if i in kept_set and s.startswith("▁") and len(s) > 2]
    words = [w for w in words if parent_tok.tokenize_ids([w])[0] == [int(kept[child_tok.vocab.index("▁" + w)])]]
    assert len(words) >= 10
    texts = [" ".join(words[i:i + 5]) for i in range(0, len(words), 3)]
    assert all(np.isin(row, kept).all() for row in parent_tok.tokenize_ids(texts))
    difference = np.abs(_probabilities(parent.path, texts) - _probabilities(child.path, texts)).max()
    assert difference <= 1e-5


def test_bpe_pruning_twice_composes_from_the_model(bpe_versions: dict) -> None:
    from tokenization.factory import load_tokenizer
    from tokenization.vocab import prune_vocab

    parent = load_tokenizer(artifacts.load_version(bpe_versions["parent"]).tokenizer_dir)
    once = load_tokenizer(artifacts.load_version(bpe_versions["child"]).tokenizer_dir)
    texts = list(_corpus(bpe_versions["parent"]).test.texts)[:50]
    counts = np.arange(once.vocab_size)[::-1]  # any counts: keeps the lowest ids
    kept, old_to_new = prune_vocab(counts, 50)
    twice = once.keep_ids(kept)
    assert twice.vocab_size == 50 and twice.model_vocab_size == parent.vocab_size
    for a, b in zip(once.tokenize_ids(texts), twice.tokenize_ids(texts), strict=True):
        assert b == old_to_new[np.asarray(a, dtype=np.int64)].tolist()
    assert twice.vocab == [once.vocab[i] for i in kept]


# --- tune ----------------------------------------------------------------------------------------------------------

def test_tune_lowers_training_loss_keeps_zeros_and_requantizes(frozen: dict) -> None:
    from lifecycle.freeze import GraphRunner, emit_graph

    path = frozen["outcome"].version
    pruned, _ = apply_recipe(_source_weights(path), parse_recipe("prune:0.8,int8"))
    context = _context(path)
    tuned, reports = apply_recipe(pruned, parse_recipe("tune:2"), context)
    [report] = reports
    assert report.name == "tune" and report.params == {"epochs": 2} and report.details["epochs_run"] == 2
    for name, stored in tuned.items():
        before = pruned[name]
        assert stored.storage == before.storage and stored.axis == before.axis, name
        if before.storage == "int8":
            assert stored.value.dtype == np.int8 and stored.scale.shape == before.scale.shape
            assert not stored.value[before.value == 0].any(), name  # pruned stays pruned
            assert stored.layout == before.layout, name  # tune keeps the layout prune chose
    changed = sum(int(np.count_nonzero(tuned[n].value != pruned[n].value)) for n in tuned)
    assert changed > 0

    # Training loss measured on the stored weights themselves, through the graph, before and after tuning.
    train = context.arrays("train", "test")

    def loss(weights: dict) -> float:
        graph = emit_graph(weights, context.kernel_sizes, context.max_len, "int32")
        runner = GraphRunner(graph, "test graph", context.max_len, "int32")
        try:
            p = runner.run(train.x)
        finally:
            runner.close()
        return float(-np.mean(np.log(p[np.arange(len(train)), train.y] + 1e-12)))

    assert loss(tuned) < loss(pruned)
    assert report.details["train_loss_after"] < report.details["train_loss_before"]


def test_tune_stops_on_a_plateau_and_reports_what_it_ran(frozen: dict) -> None:
    """``tune:E`` runs the training schedule: with a patience of one epoch (the parent's train.patience_steps set
    low), a model that has already converged stops long before E, keeps its best epoch and says why it stopped."""
    import dataclasses

    from lifecycle.compress import step_summary

    path = frozen["outcome"].version
    context = _context(path)
    cfg = context.config
    quick = cfg.model_copy(update={"train": cfg.train.model_copy(update={"patience": 1, "patience_steps": 1})})
    context = dataclasses.replace(context, config=quick)
    _, [report] = apply_recipe(_source_weights(path), parse_recipe("tune:40"), context)
    details = report.details
    assert details["stop_reason"] == "plateau" and details["patience_epochs"] == 1
    assert details["epochs_run"] == details["peak_epoch"] + 1 < 40
    assert details["seconds_per_epoch"] > 0
    summary = step_summary(report.as_dict())
    # a converged model may not beat its own start: then the start is kept, and the summary says so
    peak = "start kept" if details["peak_epoch"] == 0 else f"peak {details['peak_epoch']}"
    assert details["kept_start"] == (details["peak_epoch"] == 0)
    assert summary == f"tune:40 ({details['epochs_run']} epochs, {peak}, plateau)"
