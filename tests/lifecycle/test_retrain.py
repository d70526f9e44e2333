"""Retrain: a compressed version fine-tuned on new data comes back compressed the same way, with its lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ConfigError, DataError
from tests.helpers import new_mr_csv


def _mr_csv(data_dir: Path, path: Path, n: int, extra_label: str | None = None) -> Path:
    """The last n lines of each MR file, plus one text labelled ``extra_label`` when given."""
    extra = [("a question about something else entirely", extra_label)] if extra_label else []
    return new_mr_csv(data_dir, path, n, extra)


@pytest.fixture(scope="module")
def pruned_int8(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lifecycle.workflows import run_compress

    out = tmp_path_factory.mktemp("retrain-parent") / "p"
    # Exact serving kernels (not the default): the retrained version must keep the parent's choice.
    return run_compress(str(frozen["outcome"].version), "prune:0.5,int8", out, serving_kernels="exact").version


def test_retrain_compressed_version_keeps_recipe_sparsity_and_lineage(pruned_int8: Path, data_dir: Path,
                                                                       tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.workflows import RetrainOptions, load_graph_version, run_retrain

    new = _mr_csv(data_dir, tmp_path / "new.csv", 300)
    outcomes = run_retrain(str(pruned_int8), new, RetrainOptions(epochs=2, keep_sparsity=True, replay=0.2),
                           tmp_path / "next")
    checkpoint, frozen, compressed = (artifacts.load_version(o.version) for o in outcomes)
    assert [v.kind for v in (checkpoint, frozen, compressed)] == ["checkpoint", "frozen", "compressed"]
    parent = artifacts.load_version(pruned_int8)
    assert checkpoint.manifest.parent.sha256 == parent.sha256
    assert [s.name for s in compressed.manifest.recipe] == ["prune", "int8"]
    assert compressed.manifest.tensors["weights/embedding"].storage == "int8"
    assert compressed.manifest.serving.kernels == parent.manifest.serving.kernels == "exact"
    # The mask was kept through training, and the recipe's pruning lands on the same sparsity again.
    assert frozen.manifest.tensors["weights/embedding"].sparsity >= 0.5 - 1e-3
    assert compressed.manifest.tensors["weights/embedding"].sparsity == pytest.approx(
        parent.manifest.tensors["weights/embedding"].sparsity, abs=1e-3)
    before = load_graph_version(parent).weights["weights/conv_3/kernel"].dequantize()
    after = load_graph_version(frozen).weights["weights/conv_3/kernel"].dequantize()
    assert not np.allclose(before, after)
    assert np.all(after[before == 0] == 0)
    metrics = outcomes[0].metrics
    for key in ("new_test_accuracy_before", "new_test_accuracy", "parent_test_accuracy", "forgetting"):
        assert key in metrics
    assert outcomes[0].facts["replayed"] > 0

    client = mlflow.MlflowClient(tracking_uri)
    retrain_run = client.get_run(outcomes[0].run_id)
    assert retrain_run.data.tags["lifecycle.step"] == "retrain"
    assert retrain_run.data.tags["lifecycle.parent_run"] == parent.manifest.run_id
    assert retrain_run.data.params["parent_sha256"] == parent.sha256
    assert (retrain_run.data.params["kind"], retrain_run.data.params["recipe"]) == ("checkpoint", "-")
    # A confusion matrix and per-class table on the new data's test part and on the parent's test split
    assert {"new_test_confusion_matrix.png", "new_test_per_class.json", "test_confusion_matrix.png",
            "test_per_class.json"} <= {a.path for a in client.list_artifacts(outcomes[0].run_id)}
    for outcome in outcomes[1:]:
        child = client.get_run(outcome.run_id)
        assert child.data.tags["mlflow.parentRunId"] == outcomes[0].run_id
        assert "test_confusion_matrix.png" in {a.path for a in client.list_artifacts(outcome.run_id)}
    assert client.get_run(outcomes[2].run_id).data.params["recipe"] == "prune:0.5+int8"


def test_retrain_refuses_unknown_labels_and_bad_replay(pruned_int8: Path, data_dir: Path, tmp_path: Path) -> None:
    from lifecycle.workflows import RetrainOptions, run_retrain

    extra = _mr_csv(data_dir, tmp_path / "extra.csv", 50, extra_label="neutral")
    with pytest.raises(DataError, match="'neutral' are not among the model's 2 labels"):
        run_retrain(str(pruned_int8), extra, RetrainOptions(epochs=1), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"--replay must be a fraction in \[0, 1\]"):
        run_retrain(str(pruned_int8), extra, RetrainOptions(replay=1.5), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_versions_shows_the_lineage_tree(pruned_int8: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app
    from lifecycle.workflows import run_versions

    rows = run_versions("mr-slice")
    by_run = {r["run_id"]: r for r in rows}
    compressed = next(r for r in rows if r["run_id"] == artifacts.load_version(pruned_int8).manifest.run_id)
    frozen = by_run[compressed["parent_run"]]
    checkpoint = by_run[frozen["parent_run"]]
    assert (checkpoint["kind"], frozen["kind"], compressed["kind"]) == ("checkpoint", "frozen", "compressed")
    assert compressed["recipe"] == "prune:0.5+int8"
    result = CliRunner().invoke(app, ["versions", "mr-slice"])
    assert result.exit_code == 0, result.output
    assert "mr-slice" in result.output and "prune:0.5+int8" in result.output
