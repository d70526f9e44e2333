"""Experiments lifecycle makes or writes to open in the MLflow UI's model-development mode, not its GenAI mode."""

from __future__ import annotations

from pathlib import Path


def test_experiments_are_tagged_for_model_development(tmp_path: Path) -> None:
    import mlflow

    from lifecycle.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    made = client.get_experiment(ensure_experiment(client, "fresh", uri))
    assert made.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert "fresh" in made.tags["mlflow.note.content"]
    # An experiment someone else made without the tag gets it the first time lifecycle writes there.
    other = client.create_experiment("other", artifact_location=str(tmp_path / "elsewhere"))
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(other).tags
    assert ensure_experiment(client, "other", uri) == other
    assert client.get_experiment(other).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
