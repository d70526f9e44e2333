"""`lifecycle experiment tokenizers`: grid expansion and hashing, the Pareto front, and a real grid on the embedded
chatterbot corpus (tiny CNNs, real training, freezing and int8) tracked in a real SQLite MLflow store: parallel
cells in worker processes, a failing cell that does not stop the grid, the parent run's table and plots, and a rerun
that skips finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lifecycle.cli import app
from lifecycle.errors import ConfigError
from lifecycle.experiment import cell_hash, expand, load_experiment, pareto_front

TINY = ("set: {train.epochs: 1, model.embedding_dim: 8, model.filters: 4, model.kernel_sizes: [2, 3], "
        "tokenizer.max_len: 16}\n")


def _write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_grid_expands_axes_in_file_order_with_labels_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: base\ntokenizer: {max_len: 30}\ntrain: {epochs: 7}\n")
    path = _write(tmp_path, "name: g\nbase: base.yaml\nset: {train.epochs: 2}\ngrid:\n"
                  "  - {label: 'bpe-{vocab_size}-d{embedding_dim}', tokenizer.kind: bpe,\n"
                  "     tokenizer.bpe.vocab_size: [100, 200], model.embedding_dim: [8, 16]}\n"
                  "  - {tokenizer.kind: word, tokenizer.word.min_count: 2}\n")
    cells = expand(load_experiment(path), path)
    assert [c.label for c in cells] == ["bpe-100-d8", "bpe-100-d16", "bpe-200-d8", "bpe-200-d16",
                                        "word min_count=2"]
    first = cells[0].config
    assert (first.tokenizer.kind, first.tokenizer.bpe.vocab_size, first.model.embedding_dim) == ("bpe", 100, 8)
    assert first.tokenizer.max_len == 30  # from the base file
    assert first.train.epochs == 2  # `set` wins over the base
    assert first.tracking.experiment == "g" and first.tracking.register_model is False
    assert first.name == "g-bpe-100-d8"
    assert cells[4].config.tokenizer.word.min_count == 2
    assert cells[4].params()["cell.kind"] == "word"
    assert len({c.hash for c in cells}) == 5


def test_cell_hash_follows_what_is_computed_not_threads(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: g\ngrid:\n  - {tokenizer.kind: bpe}\n")
    cfg = expand(load_experiment(path), path)[0].config
    stages = {"freeze": True, "compress": "int8"}
    same = cell_hash(cfg, stages)
    assert cell_hash(cfg, stages) == same and len(same) == 12
    threaded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": 1})})
    assert cell_hash(threaded, stages) == same
    assert cell_hash(cfg, {"freeze": True, "compress": "fp16"}) != same
    seeded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 99})})
    assert cell_hash(seeded, stages) != same


@pytest.mark.parametrize(("grid", "message"), [
    ("  - {tokenizer.bpe.vocab_sise: [100]}\n", "unknown key 'tokenizer.bpe.vocab_sise'"),
    ("  - {tokenizer.bpe.vocab_size: []}\n", "tokenizer.bpe.vocab_size is an empty list"),
    ("  - {tokenizer.bpe.vocab_size: [2]}\n", "tokenizer.bpe.vocab_size: Input should be greater than or equal to 8"),
    ("  - {tokenizer.kind: bpe}\n  - {tokenizer.kind: bpe}\n", "computes the same as cell"),
    ("  - {label: 'x-{size}', tokenizer.bpe.vocab_size: [100]}\n", "label 'x-{size}' names 'size'"),
])
def test_bad_grids_name_the_file_the_cell_and_the_key(tmp_path: Path, grid: str, message: str) -> None:
    path = _write(tmp_path, "name: g\ngrid:\n" + grid)
    with pytest.raises(ConfigError) as error:
        expand(load_experiment(path), path)
    assert str(path) in str(error.value) and "grid[" in str(error.value)
    assert message in str(error.value)


def test_bad_experiment_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'workerz'"):
        load_experiment(_write(tmp_path, "name: g\nworkerz: 2\ngrid: [{tokenizer.kind: bpe}]\n"))
    with pytest.raises(ConfigError, match=r"grid: List should have at least 1 item"):
        load_experiment(_write(tmp_path, "name: g\ngrid: []\n"))


def test_pareto_front_keeps_the_undominated_cells_sorted_by_size() -> None:
    rows = [{"s": 10, "a": 0.80}, {"s": 5, "a": 0.80}, {"s": 20, "a": 0.90}, {"s": 30, "a": 0.85},
            {"s": 2, "a": 0.60}, {"s": None, "a": 0.99}, {"s": 5, "a": 0.80}]
    # (10, .80) and (30, .85) are beaten; the two equal (5, .80) points do not beat each other, so both stay
    assert pareto_front(rows, "s", "a") == [4, 1, 6, 2]


def _runs(tracking_uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_grid_runs_in_parallel_survives_a_failing_cell_logs_the_table_and_resumes(
        tmp_path: Path, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.workflows.experiment import FAILED, FINISHED, SKIPPED, run_experiment

    path = _write(tmp_path, "name: exp-grid\n" + TINY + "grid:\n"
                  "  - {label: 'bpe-{vocab_size}', tokenizer.kind: bpe, tokenizer.bpe.vocab_size: [200, 400]}\n"
                  f"  - {{label: no-data, data.format: csv, data.path: {tmp_path / 'missing.csv'}}}\n")
    outcome = run_experiment(path, workers=2, versions_dir=tmp_path / "versions")

    by_label = {r.label: r for r in outcome.results}
    assert by_label["bpe-200"].status == FINISHED and by_label["bpe-400"].status == FINISHED
    assert by_label["no-data"].status == FAILED and "missing.csv" in by_label["no-data"].error
    for label in ("bpe-200", "bpe-400"):
        metrics = by_label[label].metrics
        assert 0 < metrics["vocab_size"] <= int(label.split("-")[1])
        assert 0 <= metrics["test_accuracy"] <= 1 and metrics["encode_texts_per_s"] > 0
        assert metrics["deployed_embedding_bytes"] < metrics["embedding_bytes"]  # int8 rows + scales < float32
        assert Path(by_label[label].versions["int8"], "manifest.json").is_file()
    assert by_label["bpe-400"].metrics["mean_tokens"] < by_label["bpe-200"].metrics["mean_tokens"]

    runs = _runs(tracking_uri, "exp-grid")
    parent = next(r for r in runs if r.data.tags.get("lifecycle.step") == "experiment")
    assert parent.info.run_id == outcome.run_id and parent.info.status == "FINISHED"
    cells = {r.info.run_name: r for r in runs if r.data.tags.get("lifecycle.step") == "cell"}
    assert set(cells) == {"bpe-200", "bpe-400", "no-data"}
    assert {r.data.tags["mlflow.parentRunId"] for r in cells.values()} == {outcome.run_id}
    assert cells["no-data"].info.status == "FAILED" and cells["bpe-200"].info.status == "FINISHED"
    assert cells["bpe-200"].data.params["cell.kind"] == "bpe"
    # The step runs' common params of the cell's final version (the compare view lines cells up with steps)
    assert {key: cells["bpe-200"].data.params[key] for key in ("kind", "recipe", "tokenizer")} == {
        "kind": "compressed", "recipe": "int8", "tokenizer": "bpe"}
    assert cells["bpe-200"].data.params["vocab_size"] == str(int(by_label["bpe-200"].metrics["vocab_size"]))
    # The parent's description: the cells as a markdown table, the failed one included
    description = parent.data.tags["mlflow.note.content"]
    assert "| cell | tokenizer | vocab | dim | deployed | test accuracy | status |" in description
    assert description.count("\n| `") == 3 and "| failed |" in description
    assert cells["bpe-200"].data.metrics["test_accuracy"] == pytest.approx(by_label["bpe-200"].metrics[
        "test_accuracy"])
    steps = sorted(r.data.tags["lifecycle.step"] for r in runs
                   if r.data.tags.get("mlflow.parentRunId") == cells["bpe-200"].info.run_id)
    assert steps == ["compress", "freeze", "train"]

    client = mlflow.MlflowClient(tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"cells.json", "pareto.json", "accuracy_vs_size.png", "oov_vs_vocab.png"} <= artifacts
    table = json.loads(Path(client.download_artifacts(outcome.run_id, "cells.json", str(tmp_path))).read_text())
    assert sorted(table["columns"]) == sorted(outcome.rows[0])
    assert len(table["data"]) == 3
    pareto = json.loads(Path(client.download_artifacts(outcome.run_id, "pareto.json", str(tmp_path))).read_text())
    assert pareto["pareto"] == [outcome.rows[i]["cell"] for i in outcome.pareto] and pareto["pareto"]
    assert parent.data.metrics["cells_failed"] == 1 and parent.data.metrics["cells_finished"] == 2

    # Rerun through the CLI: finished cells are skipped (no new training), the failed one is tried again.
    trains_before = sum(r.data.tags.get("lifecycle.step") == "train" for r in runs)
    result = CliRunner().invoke(app, ["experiment", "tokenizers", str(path), "--workers", "1"],
                                env={"LIFECYCLE_VERSIONS_DIR": str(tmp_path / "versions")})
    assert result.exit_code == 1, result.output
    assert "skipped  bpe-200" in result.output and "failed  no-data" in result.output
    assert "1 of 3 cells failed (no-data)" in result.output
    runs_after = _runs(tracking_uri, "exp-grid")
    assert sum(r.data.tags.get("lifecycle.step") == "train" for r in runs_after) == trains_before
    assert sum(r.data.tags.get("lifecycle.step") == "cell" for r in runs_after) == 4  # only no-data ran again
    assert sum(r.data.tags.get("lifecycle.step") == "experiment" for r in runs_after) == 1  # same parent run

    again = run_experiment(path, workers=1, versions_dir=tmp_path / "versions")
    assert {r.label: r.status for r in again.results} == {"bpe-200": SKIPPED, "bpe-400": SKIPPED, "no-data": FAILED}
    assert again.rows[0]["test_accuracy"] == pytest.approx(by_label["bpe-200"].metrics["test_accuracy"])
