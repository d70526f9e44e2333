"""Training on real data slices: loss goes down, the version is complete and verified, MLflow holds the run,
an interrupted run resumes, a failing run is FAILED and leaves no version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError, TokenizerError
from tests.helpers import mr_config


def test_loss_goes_down_and_version_is_complete(trained: dict) -> None:
    outcome = trained["outcome"]
    version = artifacts.load_version(outcome.version)
    assert version.kind == "checkpoint"
    files = set(version.manifest.files)
    assert {"config.yaml", "model.keras", "tokenizer/tokenizer.json", "tokenizer/vocab.txt"} <= files
    assert version.labels == ("negative", "positive")
    assert version.manifest.input.to_dict() == {"name": "input_ids", "dtype": "int32", "shape": [None, 40]}
    sizes = version.manifest.sizes
    # Adam keeps two slots per weight: the optimizer state is about twice the weights.
    assert 1.9 * sizes["weights_bytes"] < sizes["optimizer_bytes"] < 2.1 * sizes["weights_bytes"]
    assert sizes["checkpoint_bytes"] > sizes["weights_bytes"] + sizes["optimizer_bytes"] * 0.9
    assert 0.0 <= outcome.metrics["test_accuracy"] <= 1.0
    # The finished run's work folder is gone; only its lock file stays (removing a lock file others may be opening
    # would let two processes hold "the" lock at once).
    work = trained["root"] / "versions" / ".work"
    assert not work.exists() or [p.name for p in work.iterdir() if p.suffix != ".lock"] == []


def test_mlflow_run_holds_params_metrics_artifacts_and_registered_version(trained: dict, tracking_uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    outcome = trained["outcome"]
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "4"
    assert run.data.params["data.format"] == "mr"
    assert run.data.tags["lifecycle.step"] == "train"
    for key in ("test_accuracy", "test_macro_f1", "train_seconds", "size_bytes", "params_total",
                "tokenizer_vocab_size", "tokenizer_unk_rate"):
        assert key in run.data.metrics, key
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "test_confusion_matrix.png", "test_per_class.json", "version"} <= names
    version_files = {a.path for a in client.list_artifacts(run.info.run_id, "version")}
    assert "version/manifest.json" in version_files
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "validation", "test"}
    registered = client.get_model_version("mr-slice", outcome.registered)
    assert registered.run_id == outcome.run_id
    # The registered source is the MLflow model the run logged (its pyfunc), not a bare folder.
    assert registered.source == run.data.tags["lifecycle.pyfunc"] and registered.source.startswith("models:/m-")


def test_predict_from_path_and_registry_agree(trained: dict, tracking_uri: str) -> None:
    from lifecycle.workflows import run_predict

    texts = ["a gorgeous , witty , seductive movie .", "the plot is dull and the acting is worse ."]
    by_path = run_predict(str(trained["outcome"].version), texts, top_k=2)
    by_uri = run_predict(f"models:/mr-slice/{trained['outcome'].registered}", texts, top_k=2)
    assert [p.label for p in by_path] == [p.label for p in by_uri]
    for p, q in zip(by_path, by_uri, strict=True):
        assert p.probability == pytest.approx(q.probability, abs=1e-6)
        assert sum(prob for _, prob in p.top) == pytest.approx(1.0, abs=1e-5)


def test_evaluate_cli_on_a_csv(trained: dict, data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    rows = ["text,label"]
    for suffix, label in (("pos", "positive"), ("neg", "negative")):
        lines = (data_dir / "MR" / f"rt-polarity.{suffix}").read_bytes().split(b"\n")[-21:-1]
        rows += [f'"{line.decode("cp1252").strip()}",{label}' for line in lines]
    csv = tmp_path / "pos.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", str(trained["outcome"].version), "--data", str(csv)])
    assert result.exit_code == 0, result.output
    assert "test_accuracy" in result.output and "40" in result.output


def test_tampered_version_is_refused(trained: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained["outcome"].version, copy)
    with (copy / "model.keras").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match=r"model\.keras: sha256 does not match"):
        artifacts.load_version(copy)


def test_interrupted_training_resumes_from_last_epoch(data_dir: Path, tmp_path: Path) -> None:
    from lifecycle import train as train_lib
    from lifecycle.workflows import run_train

    cfg = mr_config("tracking.enabled=false", "train.epochs=3", "train.patience=3")
    real_fit = train_lib.fit

    def interrupted_fit(*args, **kwargs):  # stop after the second epoch, as Ctrl-C would
        def on_epoch(epoch: int, logs: dict) -> None:
            if epoch == 1:
                raise KeyboardInterrupt
        kwargs["on_epoch"] = on_epoch
        return real_fit(*args, **kwargs)

    train_lib.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    finally:
        train_lib.fit = real_fit
    assert not (tmp_path / "v").exists()
    state = json.loads(next((tmp_path / "versions" / ".work").glob("*/resume/state.json")).read_text())
    assert state["epoch"] == 2
    first_seconds = float(next((tmp_path / "versions" / ".work").glob("*/tokenizer.seconds")).read_text())
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    # the tokenizer was not trained again, and the resumed run reports what training it took, not 0
    assert outcome.metrics["tokenizer_train_seconds"] == pytest.approx(first_seconds) and first_seconds > 0
    manifest = artifacts.load_version(outcome.version).manifest
    assert manifest.training.resumed_from == 2
    assert manifest.training.epochs_run == 3


def test_failing_run_is_marked_failed_and_writes_nothing(data_dir: Path, tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.workflows import run_train

    cfg = mr_config("name=mr-fail", "tokenizer.kind=bpe", "tokenizer.bpe.vocab_size=8", "data.limit=200")
    with pytest.raises(TokenizerError, match="vocab_size"):
        run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    assert not (tmp_path / "v").exists()
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mr-fail")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "float16"])
def test_mixed_precision_trains(data_dir: Path, tmp_path: Path, precision: str) -> None:
    from lifecycle.workflows import run_train

    extra = ["train.adam_epsilon=1e-4"] if precision == "float16" else []
    cfg = mr_config("tracking.enabled=false", "train.epochs=2", f"train.precision={precision}", *extra)
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    assert np.isfinite(outcome.metrics["test_accuracy"])
    # Variables stay float32 under mixed policies, so the checkpoint's tensors are float32.
    tensors = artifacts.load_version(outcome.version).manifest.tensors
    assert {t.dtype for t in tensors.values()} == {"float32"}


def test_word2vec_init_starts_from_vectors_and_keeps_checkpoint_lean(data_dir: Path, tmp_path: Path) -> None:
    import zipfile

    from lifecycle.backend import tf_module
    from lifecycle.model import build_model
    from tokenization.factory import train_tokenizer

    cfg = mr_config("tracking.enabled=false", "model.embedding_init=non-static",
                    "tokenizer.word.word2vec.enabled=true", "tokenizer.word.word2vec.dim=32",
                    "tokenizer.word.word2vec.epochs=2")
    from lifecycle.corpus import load_corpus

    corpus = load_corpus(cfg.data, cfg.name)
    tokenizer = train_tokenizer(list(corpus.train.texts), cfg.tokenizer, seed=cfg.train.seed)
    tf_module()
    model = build_model(cfg.model, cfg.train, vocab_size=tokenizer.vocab_size, num_classes=2, max_len=40,
                        embeddings=tokenizer.vectors)
    np.testing.assert_array_equal(model.get_layer("embedding").get_weights()[0], tokenizer.vectors)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        # The vectors live in the weights file only, not copied into the architecture config.
        assert archive.getinfo("config.json").file_size < 20_000


def test_version_by_registry_alias(trained: dict, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.workflows import open_version

    client = mlflow.MlflowClient(tracking_uri)
    client.set_registered_model_alias("mr-slice", "champion", trained["outcome"].registered)
    version = open_version("models:/mr-slice@champion")
    assert version.manifest.run_id == trained["outcome"].run_id
    with pytest.raises(ModelError, match="models:/mr-slice@nobody: cannot be fetched"):
        open_version("models:/mr-slice@nobody")


# ---------------------------------------------------------------- the schedule (issue 13)


def test_schedule_reads_the_training_set_size() -> None:
    from lifecycle.config import TrainConfig
    from lifecycle.train import plan_schedule

    cfg = TrainConfig()  # patience 2 epochs at least, 500 steps, batch 50
    small, large = plan_schedule(cfg, 600), plan_schedule(cfg, 100_000)
    assert (small.steps_per_epoch, small.patience_epochs, small.reduce_lr_patience) == (12, 42, 21)
    assert (large.steps_per_epoch, large.patience_epochs, large.reduce_lr_patience) == (2000, 2, 1)
    # the same number of steps without improvement, whatever the size (to within an epoch)
    assert small.patience_epochs * small.steps_per_epoch >= 500 <= large.patience_epochs * large.steps_per_epoch
    # an old config's patience is a floor, and patience_steps=0 restores plain epoch patience
    assert plan_schedule(cfg.model_copy(update={"patience": 5, "patience_steps": 0}), 600).patience_epochs == 5
    assert plan_schedule(cfg.model_copy(update={"reduce_lr_patience": 3}), 600).reduce_lr_patience == 3


def _tiny_model(seed: int = 3):
    from lifecycle.backend import tf_module
    from lifecycle.config import ModelConfig, TrainConfig
    from lifecycle.model import build_model

    tf_module()
    train_cfg = TrainConfig(seed=seed, learning_rate=0.01)
    model = build_model(ModelConfig(embedding_dim=8, filters=4, kernel_sizes=(2, 3)), train_cfg, vocab_size=40,
                        num_classes=3, max_len=8)
    return model, train_cfg


def _random_arrays(n: int, seed: int):
    from lifecycle.dataset import Arrays

    rng = np.random.default_rng(seed)
    return Arrays(rng.integers(1, 40, size=(n, 8)).astype(np.int32), rng.integers(0, 3, size=n).astype(np.int32))


def test_fit_stops_on_a_plateau_lowers_the_rate_and_restores_the_best_epoch() -> None:
    from lifecycle.train import STOP_PLATEAU, fit

    # Random labels: the validation accuracy cannot keep improving, so the run must stop on a plateau.
    model, cfg = _tiny_model()
    cfg = cfg.model_copy(update={"epochs": 60, "patience": 4, "patience_steps": 0, "batch_size": 20})
    snapshots: dict[int, list[np.ndarray]] = {}
    result = fit(model, _random_arrays(200, 1), _random_arrays(100, 2), cfg,
                 on_epoch=lambda epoch, logs: snapshots.__setitem__(epoch, [w.numpy().copy() for w in model.weights]))
    assert result.stop_reason == STOP_PLATEAU and result.stopped_early
    assert result.epochs_run == result.best_epoch + 1 + 4 < 60
    assert result.schedule is not None and result.schedule.patience_epochs == 4
    # reduce-on-plateau: after 2 epochs without improvement the rate was halved, and the history shows it
    rates = [logs["learning_rate"] for logs in result.history]
    assert result.lr_reductions >= 1 and result.final_learning_rate == pytest.approx(0.01 * 0.5 ** result.lr_reductions)
    assert rates[result.best_epoch + 3] == pytest.approx(rates[result.best_epoch] / 2)
    # restore-best: the model holds the weights of the peak epoch, not the last one
    for kept, best in zip(model.weights, snapshots[result.best_epoch], strict=True):
        np.testing.assert_array_equal(kept.numpy(), best)
    assert any(not np.array_equal(w.numpy(), last) for w, last in zip(model.weights, snapshots[result.epochs_run - 1],
                                                                        strict=True))
    # the peak is the best validation accuracy, ties going to the lower validation loss
    accuracies = [logs["val_accuracy"] for logs in result.history]
    assert result.best_value == max(accuracies) == accuracies[result.best_epoch]
    tied = [logs["val_loss"] for logs in result.history if logs["val_accuracy"] == max(accuracies)]
    assert result.history[result.best_epoch]["val_loss"] == min(tied)
    summary = result.summary()
    assert summary["stop_reason"] == "plateau" and summary["peak_epoch"] == result.best_epoch + 1


def test_fit_reports_the_epoch_cap_when_it_ends_training() -> None:
    from lifecycle.train import STOP_MAX_EPOCHS, fit

    model, cfg = _tiny_model()
    cfg = cfg.model_copy(update={"epochs": 2, "patience": 10, "monitor": "val_loss"})
    result = fit(model, _random_arrays(60, 1), _random_arrays(30, 2), cfg)
    assert (result.stop_reason, result.stopped_early, result.epochs_run) == (STOP_MAX_EPOCHS, False, 2)
    assert result.lr_reductions == 0 or cfg.reduce_lr_patience is None


def test_fit_with_a_baseline_keeps_the_starting_weights_when_no_epoch_beats_them(tmp_path: Path) -> None:
    """A fine-tune passes the model's own validation scores: an epoch must beat them to be kept."""
    from lifecycle.train import STOP_MAX_EPOCHS, fit

    model, cfg = _tiny_model()
    cfg = cfg.model_copy(update={"epochs": 3, "patience": 10, "patience_steps": 0})
    start = [w.numpy().copy() for w in model.weights]
    # a perfect score on validation: no epoch can beat it
    result = fit(model, _random_arrays(60, 1), _random_arrays(30, 2), cfg,
                 baseline={"val_loss": 0.0, "val_accuracy": 1.0})
    assert result.epochs_run == 3 and result.stop_reason == STOP_MAX_EPOCHS
    assert result.best_epoch == -1 and result.summary()["peak_epoch"] == 0 and result.best_value == 1.0
    for kept, first in zip(model.weights, start, strict=True):
        np.testing.assert_array_equal(kept.numpy(), first)
    # the worst score: the first epoch beats it, and training moves the weights as without a baseline
    result = fit(model, _random_arrays(60, 1), _random_arrays(30, 2), cfg,
                 baseline={"val_loss": float("inf"), "val_accuracy": 0.0})
    assert result.best_epoch >= 0
    assert any(not np.array_equal(w.numpy(), first) for w, first in zip(model.weights, start, strict=True))
    with pytest.raises(ValueError, match="baseline"):
        fit(model, _random_arrays(60, 1), _random_arrays(30, 2), cfg, resume_dir=tmp_path,
            baseline={"val_loss": 0.0, "val_accuracy": 1.0})


def test_stop_reason_and_peak_epoch_reach_the_manifest_and_mlflow(trained: dict, tracking_uri: str) -> None:
    import mlflow

    outcome = trained["outcome"]
    training = artifacts.load_version(outcome.version).manifest.training
    assert training is not None
    # the fixture's 4-epoch cap ends it: on an 800-text slice (25 steps of 32) 500 steps of patience are 20 epochs
    assert training.stop_reason == "max_epochs" and training.epochs_run == 4
    assert training.steps_per_epoch == 25 and training.patience_epochs == 20
    assert training.peak_epoch == training.best_epoch + 1 and training.monitor == "val_accuracy"
    run = mlflow.MlflowClient(tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["lifecycle.stop_reason"] == "max_epochs"
    assert run.data.tags["lifecycle.peak_epoch"] == str(training.peak_epoch)
    assert run.data.metrics["peak_epoch"] == training.peak_epoch
    assert "learning_rate" in run.data.metrics
    assert outcome.facts["stop_reason"] == "max_epochs"


def test_validation_path_is_read_instead_of_a_held_out_split(tmp_path: Path) -> None:
    from lifecycle.config import load_config
    from lifecycle.corpus import load_corpus
    from lifecycle.errors import DataError

    def write(name: str, rows: list[tuple[str, str]]) -> str:
        path = tmp_path / name
        path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
        return str(path)

    train = [(f"good film number {i}", "pos") for i in range(30)] + [(f"bad film number {i}", "neg") for i in range(30)]
    validation = [("a good one", "pos"), ("a bad one", "neg"), ("so good", "pos")]
    keys = [f"data.path={write('train.csv', train)}", f"data.validation_path={write('val.csv', validation)}",
            f"data.test_path={write('test.csv', [('good', 'pos'), ('bad', 'neg')])}", "data.format=csv"]
    corpus = load_corpus(load_config(None, keys).data, "own-validation")
    assert sorted(corpus.validation.texts) == sorted(t for t, _ in validation)
    assert len(corpus.train) == 60  # nothing held out of data.path
    assert "validation: " in corpus.source
    unseen = [*keys[:1], f"data.validation_path={write('v2.csv', [('meh', 'neutral')])}", *keys[2:]]
    with pytest.raises(DataError, match="validation split has labels with no training example"):
        load_corpus(load_config(None, unseen).data, "own-validation")
    missing = [*keys[:1], f"data.validation_path={tmp_path / 'nope.csv'}", *keys[2:]]
    with pytest.raises(DataError, match="data.validation_path"):
        load_corpus(load_config(None, missing).data, "own-validation")


def test_fit_takes_a_fresh_training_encoding_each_epoch() -> None:
    from lifecycle.train import fit

    model, cfg = _tiny_model()
    cfg = cfg.model_copy(update={"epochs": 3, "patience": 10, "patience_steps": 0})
    asked: list[int] = []

    def for_epoch(epoch: int):
        asked.append(epoch)
        return _random_arrays(60, 100 + epoch)

    result = fit(model, _random_arrays(60, 1), _random_arrays(30, 2), cfg, train_for_epoch=for_epoch)
    assert asked == [0, 1, 2] and result.epochs_run == 3


def test_run_train_applies_bpe_dropout_to_the_training_split_only(data_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle import train as train_lib
    from lifecycle.workflows import run_train
    from tokenization.bpe import BPETokenizer

    seen: dict[str, object] = {}
    real_fit, real_dropout = train_lib.fit, BPETokenizer.encode_with_dropout

    def spy_fit(model, train, validation, cfg, **kwargs):
        seen["validation"], seen["train"] = validation.x.copy(), train.x.copy()
        seen["epoch0"] = kwargs["train_for_epoch"](0).x
        return real_fit(model, train, validation, cfg, **kwargs)

    def spy_dropout(self, texts, max_len, dropout):
        seen.setdefault("dropout", []).append((len(texts), dropout))  # type: ignore[union-attr]
        return real_dropout(self, texts, max_len, dropout)

    monkeypatch.setattr(train_lib, "fit", spy_fit)
    monkeypatch.setattr(BPETokenizer, "encode_with_dropout", spy_dropout)
    cfg = mr_config("tracking.enabled=false", "tokenizer.kind=bpe", "tokenizer.bpe.vocab_size=500",
                    "tokenizer.bpe.threads=1", "tokenizer.bpe.dropout=0.2", "train.epochs=2", "data.limit=300")
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    # the training texts (300 of them) were re-encoded with dropout, once per epoch plus the spy's call; nothing else
    assert seen["dropout"] == [(300, 0.2)] * 3
    assert not np.array_equal(seen["epoch0"], seen["train"])
    # validation (like test and serving) was encoded deterministically, by the version's own tokenizer
    from lifecycle.corpus import load_corpus
    from tokenization.factory import load_tokenizer

    tokenizer = load_tokenizer(outcome.version / "tokenizer")
    validation_texts = list(load_corpus(cfg.data, cfg.name).validation.texts)
    np.testing.assert_array_equal(seen["validation"], tokenizer.encode(validation_texts, cfg.tokenizer.max_len))
    assert np.isfinite(outcome.metrics["test_accuracy"])


def test_run_train_with_the_word_bpe_settings(data_dir: Path, tmp_path: Path) -> None:
    """The opt-in BPE settings (vocab_size words, the word pattern, word_end, drop_unseen) train, save
    what they were made with, and the checkpoint predicts a text whose word training never saw."""
    from lifecycle.inference import Predictor
    from lifecycle.workflows import run_train
    from tokenization.factory import load_tokenizer

    cfg = mr_config("tracking.enabled=false", "tokenizer.kind=bpe", "tokenizer.bpe.vocab_size=words",
                    "tokenizer.bpe.token_pattern='[\\w'']+|[^\\w\\s]'", "tokenizer.bpe.word_end=true",
                    "tokenizer.bpe.drop_unseen=true", "tokenizer.bpe.threads=1", "train.epochs=1", "data.limit=300")
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    tokenizer = load_tokenizer(outcome.version / "tokenizer")
    metadata = json.loads((outcome.version / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    assert metadata["vocab_size_from"] == "words" and metadata["word_end"] and metadata["drop_unseen"]
    assert tokenizer.vocab_size < tokenizer.model_vocab_size == metadata["requested_vocab_size"]
    version = artifacts.load_version(outcome.version)
    assert version.manifest.tensors["embedding/embeddings"].shape[0] == tokenizer.vocab_size  # no dropped-id rows
    predictions = Predictor(version).predict(["an utterly zxqvwk film ."])
    assert predictions[0].label in version.manifest.labels
    # The tokenizer ships its model and metadata only: youtokentome's training text and log stay in a scratch folder.
    assert {p.name for p in (outcome.version / "tokenizer").iterdir()} == set(metadata["files"]) | {"tokenizer.json"}


def test_word_dropout_reads_training_tokens_as_unk_anew_each_epoch() -> None:
    from lifecycle.dataset import Arrays, word_dropout_encoder

    rng = np.random.default_rng(0)
    x = np.zeros((400, 30), dtype=np.int32)
    x[:, :20] = rng.integers(4, 900, size=(400, 20))  # 20 tokens then pads
    x[:, 0] = 2  # a bos
    base = Arrays(x, np.zeros(400, dtype=np.int32))
    assert word_dropout_encoder(base, None, 0.0, 13) is None
    encode = word_dropout_encoder(base, None, 0.25, 13)
    first, second = encode(0), encode(1)
    changed = first.x != x
    # only tokens past the specials change, and only to unk; about the asked share of them
    assert set(first.x[changed].tolist()) == {1} and not changed[:, 20:].any() and not changed[:, 0].any()
    assert 0.23 < changed[:, 1:20].mean() < 0.27
    assert not np.array_equal(first.x, second.x)  # drawn anew every epoch ...
    np.testing.assert_array_equal(first.x, word_dropout_encoder(base, None, 0.25, 13)(0).x)  # ... from the seed
    assert not np.array_equal(first.x, word_dropout_encoder(base, None, 0.25, 14)(0).x)
    np.testing.assert_array_equal(base.x, x)  # the split itself is left as it was
    # on top of a per-epoch encoder (BPE-dropout), its arrays are the ones dropped
    shifted = word_dropout_encoder(base, lambda epoch: Arrays(x + 1, base.y), 0.25, 13)(0).x
    assert ((shifted == x + 1) | (shifted == 1)).all()


def test_run_train_applies_word_dropout_to_the_training_split_only(data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle import train as train_lib
    from lifecycle.workflows import run_train

    seen: dict[str, object] = {}
    real_fit = train_lib.fit

    def spy_fit(model, train, validation, cfg, **kwargs):
        seen["train"], seen["validation"] = train.x.copy(), validation.x
        seen["epoch0"] = kwargs["train_for_epoch"](0).x
        return real_fit(model, train, validation, cfg, **kwargs)

    monkeypatch.setattr(train_lib, "fit", spy_fit)
    cfg = mr_config("tracking.enabled=false", "train.word_dropout=0.2", "train.epochs=1", "data.limit=300")
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    train, epoch0 = seen["train"], seen["epoch0"]
    tokens = train >= 4
    assert ((epoch0 == train) | (epoch0 == 1)).all() and 0.1 < (epoch0[tokens] == 1).mean() < 0.3
    # validation (like test and serving) keeps the version's own tokenizer's ids, no unk added
    from lifecycle.corpus import load_corpus
    from tokenization.factory import load_tokenizer

    tokenizer = load_tokenizer(outcome.version / "tokenizer")
    validation_texts = list(load_corpus(cfg.data, cfg.name).validation.texts)
    np.testing.assert_array_equal(seen["validation"], tokenizer.encode(validation_texts, cfg.tokenizer.max_len))
    assert np.isfinite(outcome.metrics["test_accuracy"])
