"""The README's main job, end to end in a subprocess, on the embedded chatterbot corpus (no shared data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.workflows.pipeline import PIPELINE_RECIPES, recipe_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_pipeline_cli_on_embedded_corpus(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "LIFECYCLE_VERSIONS_DIR": str(tmp_path / "versions"), "LIFECYCLE_DATA_DIR": str(tmp_path / "no-data")}
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "-q", "pipeline", "configs/default.yaml", "--epochs", "2",
         "--set", "model.filters=16", "--max-trials", "6", "--output", str(tmp_path / "v")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    whole_path = tmp_path / "v" / recipe_dir(PIPELINE_RECIPES[-1])
    # The last version is the budgeted pick, within 1 point of the parent's validation accuracy.
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "v" / "budget")
    assert "is the budgeted pick: the smallest version losing at most 1 points of validation accuracy" in done.stdout
    pick = json.loads((tmp_path / "v" / "budget" / "manifest.json").read_text())
    assert pick["budget"]["budget"] == 1.0 and pick["budget"]["validation"]["loss"] <= 1.0 + 1e-9
    assert pick["budget"]["judged_on"] == "validation split"
    assert "default versions" in done.stdout and "checkpoint" in done.stdout
    manifest = json.loads((tmp_path / "v" / "checkpoint" / "manifest.json").read_text())
    assert manifest["kind"] == "checkpoint" and len(manifest["labels"]) >= 15
    assert manifest["data"]["source"].startswith("chatterbot-corpus")
    frozen = json.loads((tmp_path / "v" / "frozen" / "manifest.json").read_text())
    assert frozen["kind"] == "frozen" and frozen["check"]["max_abs_diff_vs_parent"] <= 1e-5

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("default")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the UI's GenAI mode
    runs = client.search_runs([experiment.experiment_id])
    steps = {r.data.tags["lifecycle.step"]: r for r in runs}
    assert {r.data.tags["lifecycle.step"] for r in runs} == {"pipeline", "train", "freeze", "compress", "budget",
                                                             "budget-trial"}
    budget_run = steps["budget"].info.run_id
    assert steps["budget"].data.tags["mlflow.parentRunId"] == steps["pipeline"].info.run_id
    fixed = [r for r in runs if r.data.tags["lifecycle.step"] == "compress"
             and r.data.tags.get("mlflow.parentRunId") != budget_run]
    assert sorted(r.data.tags.get("lifecycle.recipe", "") for r in fixed) == sorted(
        recipe.replace(",", "+") for recipe in PIPELINE_RECIPES)
    assert steps["train"].data.tags["mlflow.parentRunId"] == steps["pipeline"].info.run_id
    assert steps["freeze"].data.tags["mlflow.parentRunId"] == steps["pipeline"].info.run_id
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not steps["pipeline"].data.metrics  # per-version figures are versions.json, not prefixed metrics
    description = steps["pipeline"].data.tags["mlflow.note.content"]  # the run page shows the versions table
    assert "| # | kind | recipe | deployed | test accuracy | macro-F1 |" in description
    # The header, then checkpoint, frozen, the fixed recipes and the pick.
    assert description.count("\n| ") == 1 + 2 + len(PIPELINE_RECIPES) + 1 and "(budgeted pick)" in description
    parent_files = {a.path for a in client.list_artifacts(steps["pipeline"].info.run_id)}
    assert {"size_vs_accuracy.png", "versions.json"} <= parent_files
    int8 = json.loads((tmp_path / "v" / "int8" / "manifest.json").read_text())
    assert int8["sizes"]["graph_bytes"] < 0.3 * frozen["sizes"]["graph_bytes"]
    full = json.loads((whole_path / "manifest.json").read_text())
    assert [step["name"] for step in full["recipe"]] == ["vocab", "prune", "tune", "int8"]
    assert full["architecture"]["vocab_size"] < frozen["architecture"]["vocab_size"]
    assert full["sizes"]["graph_bytes"] < 0.5 * int8["sizes"]["graph_bytes"]
    assert full["serving"]["quantization"] == "int8-weights"
    # versions.json (and the plot drawn from it) shows each step run's size_bytes metric, lifecycle.sizes' deployed
    table = json.loads(Path(client.download_artifacts(steps["pipeline"].info.run_id, "versions.json",
                                                      str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
    by_run = {r.info.run_id: r for r in runs}
    assert len(rows) == 2 + len(PIPELINE_RECIPES) + 1  # checkpoint, frozen, the fixed recipes, the budgeted pick
    for row in rows:
        assert row["size_bytes"] == by_run[row["run_id"]].data.metrics["size_bytes"], row["kind"]
    # The pipeline moves its aliases: newest at its last version, newest-checkpoint at its checkpoint
    newest = client.get_model_version_by_alias("default", "newest")
    assert newest.run_id == rows[-1]["run_id"] and newest.source.startswith("models:/m-")
    assert client.get_model_version_by_alias("default", "newest-checkpoint").run_id == steps["train"].info.run_id
    shown = subprocess.run([sys.executable, "-m", "lifecycle", "versions", "default"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"@newest$", shown.stdout, re.M) and re.search(r"@newest-checkpoint$", shown.stdout, re.M)


def test_tokenizer_train_cli_reports_coverage(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    out = tmp_path / "tok"
    result = CliRunner().invoke(app, ["tokenizer", "train", "configs/default.yaml", "--no-track", "-o", str(out),
                                      "--set", "tokenizer.kind=bpe", "--set", "tokenizer.bpe.vocab_size=600",
                                      "--set", "model.embedding_init=rand"])
    assert result.exit_code == 0, result.output
    for key in ("tokenizer_vocab_size", "tokenizer_unk_rate", "tokenizer_mean_tokens", "tokenizer_truncation_rate",
                "size_bytes_tokenizer", "tokenizer_train_seconds"):
        assert key in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "tokenizer"
    assert manifest["metrics"]["tokenizer_vocab_size"] == 600
    assert (out / "tokenizer" / "bpe.model").is_file()
