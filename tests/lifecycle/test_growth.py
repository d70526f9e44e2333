"""Growth on retrain: new labels widen the output layer, new words lengthen a word vocabulary; old ids keep their
weights exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import DataError
from tests.helpers import new_mr_csv


def _questions(data_dir: Path, n: int, skip: int = 0) -> list[str]:
    lines = (data_dir / "TREC" / "train_5500.label").read_bytes().decode("latin-1").split("\n")
    return [line.split(" ", 1)[1].strip() for line in lines[skip:skip + n] if " " in line]


def _new_data(data_dir: Path, path: Path, reviews: int, questions: int = 0) -> Path:
    """MR lines the slice model never saw (the last ``reviews`` per class), plus TREC questions labelled 'question'."""
    return new_mr_csv(data_dir, path, reviews, ((text, "question") for text in _questions(data_dir, questions)))


def test_mean_init_keeps_old_columns_and_the_parents_predictions(frozen: dict, data_dir: Path) -> None:
    from lifecycle import growth
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.restore import restore_model
    from lifecycle.workflows import load_graph_version
    from tokenization.factory import load_tokenizer

    version = artifacts.load_version(frozen["outcome"].version)
    model = restore_model(load_graph_version(version), version.config, 2).model
    kernel, bias = model.get_layer("output").kernel.numpy(), model.get_layer("output").bias.numpy()
    columns = growth.new_output_columns(kernel, bias, 3, "mean")
    grown = growth.grow_model(model, version.config, version.max_len, columns=columns)
    assert grown.get_layer("output").kernel.shape == (kernel.shape[0], 5)
    np.testing.assert_array_equal(grown.get_layer("output").kernel.numpy()[:, :2], kernel)
    np.testing.assert_array_equal(grown.get_layer("output").bias.numpy()[:2], bias)
    test = load_corpus(version.config.data, "mr").test
    ids = encode_examples(test, load_tokenizer(version.tokenizer_dir), version.labels, version.max_len).x
    # A new class's logit is the mean of the old ones, never above their maximum: predictions do not move.
    np.testing.assert_array_equal(np.asarray(grown(ids)).argmax(1), np.asarray(model(ids)).argmax(1))
    rows = growth.random_rows(model.get_layer("embedding").embeddings.numpy(), 10, seed=1)
    old = model.get_layer("embedding").embeddings.numpy()[4:]
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), np.linalg.norm(old, axis=1).mean(), rtol=1e-5)


def test_grow_labels_widens_the_output_and_learns_the_new_label(frozen: dict, data_dir: Path,
                                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app
    from lifecycle.freeze import GRAPH_FILE
    from lifecycle.inference import Predictor
    from lifecycle.workflows import RetrainOptions, load_graph_version, run_retrain

    parent = artifacts.load_version(frozen["outcome"].version)
    new = _new_data(data_dir, tmp_path / "new.csv", 250, questions=250)
    with pytest.raises(DataError, match=r"labels 'question' are not among the model's 2 labels\. Pass "
                                        r"--grow-labels"):
        run_retrain(str(parent.path), new, RetrainOptions(epochs=1), tmp_path / "refused", track=False)
    result = CliRunner().invoke(app, ["retrain", str(parent.path), "--data", str(new), "--output",
                                      str(tmp_path / "refused"), "--no-track"])
    assert result.exit_code == 3 and "Pass --grow-labels" in result.output
    assert not (tmp_path / "refused").exists()

    outcomes = run_retrain(str(parent.path), new, RetrainOptions(epochs=2, grow_labels=True, replay=0.2),
                           tmp_path / "next", track=False)
    checkpoint, child = (artifacts.load_version(o.version) for o in outcomes)
    assert checkpoint.labels == child.labels == ("negative", "positive", "question")
    assert checkpoint.manifest.retrain["growth"]["labels"] == {"added": ["question"], "init": "glorot",
                                                                  "labels_before": 2, "labels_after": 3}
    assert child.manifest.architecture.num_classes == 3
    assert (child.path / GRAPH_FILE).is_file()
    metrics = outcomes[0].metrics
    assert metrics["new_labels_accuracy"] >= 0.8
    assert metrics["new_test_accuracy"] > metrics["new_test_accuracy_before"]
    assert "old_labels_accuracy" in metrics and "forgetting" in metrics
    unseen = _questions(data_dir, 40, skip=3000)
    labels = [child.labels[i] for i in Predictor(child).predict_proba(unseen).argmax(1)]
    assert labels.count("question") >= 30
    assert load_graph_version(child).weights["weights/output/kernel"].shape[1] == 3


def test_grow_vocab_on_a_vocab_pruned_parent_keeps_old_ids_and_widens_input(frozen: dict, data_dir: Path,
                                                                           tmp_path: Path) -> None:
    from lifecycle.workflows import RetrainOptions, load_graph_version, run_compress, run_retrain
    from tokenization.factory import load_tokenizer

    pruned = run_compress(str(frozen["outcome"].version), "vocab:250", tmp_path / "pruned", track=False).version
    parent = artifacts.load_version(pruned)
    assert parent.manifest.input.dtype == "uint8"
    old_vocab = load_tokenizer(parent.tokenizer_dir).vocab
    old_rows = load_graph_version(parent).weights["weights/embedding"].dequantize()

    new = _new_data(data_dir, tmp_path / "new.csv", 250)
    outcomes = run_retrain(str(pruned), new, RetrainOptions(epochs=1, grow_vocab=True, freeze_embedding=True,
                                                            min_count=2),
                           tmp_path / "next", track=False)
    checkpoint, child_frozen, child = (artifacts.load_version(o.version) for o in outcomes)
    vocab = load_tokenizer(checkpoint.tokenizer_dir).vocab
    assert vocab[:250] == old_vocab and len(vocab) > 256
    report = checkpoint.manifest.retrain["growth"]["vocab"]
    assert report["words_added"] == len(vocab) - 250 and report["shared_words"] >= 64
    # A rand-init embedding is barely predictable from word2vec: below MIN_R2 the rows are random, and it says so.
    assert report["init"] == ("word2vec" if report["heldout_r2"] >= 0.05 else "random")
    if report["init"] == "random":
        assert "every new row is random" in report["note"]
    rows = load_graph_version(child_frozen).weights["weights/embedding"].dequantize()
    np.testing.assert_array_equal(rows[:250], old_rows)  # --freeze-embedding: old rows exactly as they were
    assert np.all(np.linalg.norm(rows[250:], axis=1) > 0)
    assert child_frozen.manifest.input.dtype == "uint16"
    # The parent's vocab step is re-applied without dropping the new words.
    assert child.manifest.recipe[0].name == "vocab"
    assert child.manifest.recipe[0].report["rows_after"] == len(vocab)
    assert child.manifest.architecture.vocab_size == len(vocab)


def test_grow_vocab_leaves_a_bpe_vocabulary_as_it_is(data_dir: Path) -> None:
    from lifecycle.config import BPEConfig, load_config
    from lifecycle.corpus import Examples
    from lifecycle.workflows.retraining import RetrainOptions, _grow
    from tokenization.bpe import BPETokenizer

    texts = _questions(data_dir, 300)
    tokenizer = BPETokenizer.train(texts, BPEConfig(vocab_size=300))

    class Split:
        train = Examples(texts, ["q"] * len(texts))

    same, grown = _grow(None, tokenizer, load_config(None), 40, Split, [], RetrainOptions(grow_vocab=True), 1)
    assert same is tokenizer and grown["words_added"] == 0 and grown["model"] is None
    assert "a bpe vocabulary stays as it is" in grown["report"]["note"]
