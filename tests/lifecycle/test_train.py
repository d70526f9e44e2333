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
    files = set(version.manifest["files"])
    assert {"config.yaml", "model.keras", "tokenizer/tokenizer.json", "tokenizer/vocab.txt"} <= files
    assert version.labels == ("negative", "positive")
    assert version.manifest["input"] == {"name": "input_ids", "dtype": "int32", "shape": [None, 40]}
    sizes = version.manifest["sizes"]
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
    assert registered.source.endswith("/version")


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
    assert manifest["training"]["resumed_from"] == 2
    assert manifest["training"]["epochs_run"] == 3


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
    tensors = artifacts.load_version(outcome.version).manifest["tensors"]
    assert {t["dtype"] for t in tensors.values()} == {"float32"}


def test_word2vec_init_starts_from_vectors_and_keeps_checkpoint_lean(data_dir: Path, tmp_path: Path) -> None:
    import zipfile

    from lifecycle.backend import tf_module
    from lifecycle.model import build_model
    from tokenization.base import train_tokenizer

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
    assert version.manifest["run_id"] == trained["outcome"].run_id
    with pytest.raises(ModelError, match="models:/mr-slice@nobody: cannot be fetched"):
        open_version("models:/mr-slice@nobody")
