"""Registered versions are MLflow models, and every screen shows the same sizes (lifecycle.sizes).

One tiny 1-epoch model on the embedded default corpus, tracked in the session's SQLite store, frozen and compressed
to int8: three registered versions, each loaded with mlflow.pyfunc by ``models:/NAME/N`` and ``@alias``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifecycle.artifacts import load_version
from lifecycle.cli import app
from lifecycle.config import load_config
from lifecycle.inference import Predictor
from lifecycle.render import mb, pct
from lifecycle.sizes import DEPLOYED, deployed_files, model_paths, version_sizes

REPO = Path(__file__).resolve().parents[2]
NAME = "registered-tiny"
TINY = ["train.epochs=1", "model.filters=8", "model.embedding_dim=16", "model.embedding_init=rand",
        "tokenizer.word.word2vec.enabled=false"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, tracking_uri: str) -> dict:
    """checkpoint -> frozen -> int8, each registered under NAME; the int8 version under the alias ``newest``."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from lifecycle.tracking import set_alias
    from lifecycle.workflows import run_compress, run_freeze, run_train

    root = tmp_path_factory.mktemp("registered")
    cfg = load_config(REPO / "configs" / "default.yaml", [f"name={NAME}", *TINY])
    trained = run_train(cfg, root / "checkpoint", versions_dir=root / "versions")
    frozen = run_freeze(str(trained.version), root / "frozen")
    int8 = run_compress(str(frozen.version), "int8", root / "int8")
    set_alias(f"models:/{NAME}/{int8.registered}", "newest", tracking_uri)
    return {"checkpoint": trained, "frozen": frozen, "int8": int8, "cfg": cfg}


def test_registered_versions_load_and_predict_with_mlflow_pyfunc(versions: dict, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.corpus import load_corpus

    mlflow.set_tracking_uri(tracking_uri)
    test_texts = load_corpus(versions["cfg"].data, NAME, report=False).test.texts
    texts = ["what is your name", "tell me a joke about computers"]
    for kind, ref in (("checkpoint", f"models:/{NAME}/{versions['checkpoint'].registered}"),
                      ("int8", f"models:/{NAME}@newest")):
        outcome = versions[kind]
        model = mlflow.pyfunc.load_model(ref)
        assert model.metadata.get_input_schema().inputs[0].type.name == "string"
        rows = model.predict(texts)
        predictor = Predictor(load_version(outcome.version))
        expected = predictor.predict_proba(texts)
        got = np.array([[row.probabilities[label] for label in predictor.labels] for row in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # The logged model is named after the version, and its input example is the version's own test texts.
        info = mlflow.models.get_model_info(ref)
        logged = mlflow.get_logged_model(info.model_id)
        assert logged.name == outcome.version.name  # checkpoint, int8: no character MLflow refuses
        local = Path(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/input_example.json"))
        example = _strings(json.loads(local.read_text(encoding="utf-8")))
        assert example and set(example) <= set(test_texts)


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return []


def test_registration_carries_lineage_size_and_accuracy(versions: dict, tracking_uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    numbers = {kind: versions[kind].registered for kind in ("checkpoint", "frozen", "int8")}
    for kind, parent in (("checkpoint", None), ("frozen", "checkpoint"), ("int8", "frozen")):
        mv = client.get_model_version(NAME, numbers[kind])
        version = load_version(versions[kind].version)
        assert mv.source.startswith("models:/m-")
        assert mv.tags["lifecycle.kind"] == version.kind
        assert mv.tags["lifecycle.parent_version"] == (f"models:/{NAME}/{numbers[parent]}" if parent else "")
        assert int(mv.tags["lifecycle.size_bytes"]) == version_sizes(version).deployed
        assert float(mv.tags["lifecycle.test_accuracy"]) == pytest.approx(version.manifest.metrics["test_accuracy"])
        assert mb(version_sizes(version).deployed) in mv.description
    assert client.get_model_version(NAME, numbers["int8"]).tags["lifecycle.recipe"] == "int8"


def test_every_screen_shows_the_same_sizes(versions: dict, tracking_uri: str) -> None:
    import mlflow

    from lifecycle.workflows import run_bench, run_versions
    from lifecycle.workflows.pipeline import version_row

    client = mlflow.MlflowClient(tracking_uri)
    paths = [versions[kind].version for kind in ("checkpoint", "frozen", "int8")]
    sizes = {Path(path).resolve(): version_sizes(load_version(path)) for path in paths}
    for kind in ("checkpoint", "frozen", "int8"):
        outcome = versions[kind]
        version = load_version(outcome.version)
        expected = sizes[Path(outcome.version).resolve()]
        # deployed = the model form a server loads (the serving form, not graph.pb) + the tokenizer, as listed
        model = "model.keras" if kind == "checkpoint" else version.manifest.serving.file
        assert model_paths(version.manifest) == (model,)
        assert set(deployed_files(version.manifest)) == {
            rel for rel in version.manifest.files if rel == model or rel.startswith("tokenizer/")}
        assert expected.deployed == sum(version.manifest.files[rel].bytes for rel in deployed_files(version.manifest))
        metrics = client.get_run(outcome.run_id).data.metrics
        for key, value in expected.metrics().items():
            assert metrics[key] == value, (kind, key)
        assert outcome.metrics[DEPLOYED] == expected.deployed  # the train/freeze/compress summary
        row = version_row(outcome)  # versions.json and the size-vs-accuracy plot
        assert row["size_bytes"] == expected.deployed and row["size_gzip_bytes"] == expected.deployed_gzip
    checkpoint = sizes[Path(paths[0]).resolve()]
    assert checkpoint.checkpoint_weights < checkpoint.checkpoint <= checkpoint.deployed  # Adam's slots; + tokenizer
    registered = {row["version"]: row for row in run_versions(NAME, tracking_uri)}
    for kind in ("checkpoint", "frozen", "int8"):
        row = registered[int(versions[kind].registered)]
        assert row["size_bytes"] == sizes[Path(versions[kind].version).resolve()].deployed
    bench = run_bench([str(p) for p in paths], calls=10)
    for row in bench:
        assert row["size_bytes"] == sizes[Path(row["version"]).resolve()].deployed
        assert row["test_accuracy"] == load_version(Path(row["version"])).manifest.metrics["test_accuracy"]
    # `lifecycle versions` prints the same figures and the alias
    result = CliRunner().invoke(app, ["versions", NAME])
    assert result.exit_code == 0, result.output
    for kind in ("checkpoint", "frozen", "int8"):
        number = versions[kind].registered
        line = next(x for x in result.stdout.splitlines() if f"v{number} {load_version(versions[kind].version).kind}"
                    in x)
        assert mb(sizes[Path(versions[kind].version).resolve()].deployed) in line
        assert pct(registered[int(number)]["test_accuracy"]) in line
    assert "@newest" in result.stdout


def test_step_runs_share_params_and_log_a_confusion_matrix_per_version(versions: dict, tracking_uri: str,
                                                                       tmp_path: Path) -> None:
    """The MLflow UI at a glance: train, freeze and compress runs carry the same five params (the compare view lines
    them up) and each evaluated version its confusion matrix and per-class table."""
    import mlflow

    from lifecycle.corpus import load_corpus

    client = mlflow.MlflowClient(tracking_uri)
    test_count = len(load_corpus(versions["cfg"].data, NAME, report=False).test)
    tokenizer = Path(versions["checkpoint"].version) / "tokenizer" / "tokenizer.json"
    vocab = json.loads(tokenizer.read_text())["vocab_size"]
    for kind, recipe, version_kind in (("checkpoint", "-", "checkpoint"), ("frozen", "-", "frozen"),
                                       ("int8", "int8", "compressed")):
        run = client.get_run(versions[kind].run_id)
        assert {key: run.data.params[key] for key in ("kind", "recipe", "tokenizer", "vocab_size", "embedding_dim")
                } == {"kind": version_kind, "recipe": recipe, "tokenizer": "word", "vocab_size": str(vocab),
                      "embedding_dim": "16"}, kind
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"test_confusion_matrix.png", "test_per_class.json"} <= files, kind
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "test_per_class.json", str(tmp_path / kind))
                                ).read_text())
        rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
        assert {"label", "precision", "recall", "f1", "support"} <= set(table["columns"])
        assert sum(row["support"] for row in rows) == test_count, kind
        assert len(rows) == len(load_version(versions[kind].version).labels)


def test_descriptions_are_markdown_versions_tables() -> None:
    from lifecycle.workflows.experiment import cells_markdown
    from lifecycle.workflows.pipeline import versions_markdown

    rows = [{"kind": "checkpoint", "recipe": "-", "size_bytes": 2_500_000, "test_accuracy": 0.8125,
             "test_macro_f1": 0.75, "budget": None},
            {"kind": "compressed", "recipe": "prune:0.5+int8", "size_bytes": 410_000, "test_accuracy": 0.8,
             "test_macro_f1": None, "budget": {"budget": 1.0}}]
    text = versions_markdown("default", rows)
    lines = text.splitlines()
    assert lines[2] == "| # | kind | recipe | deployed | test accuracy | macro-F1 |"
    assert lines[3] == "|---|---|---|---|---|---|"
    assert lines[4] == "| 1 | checkpoint | `-` | 2.500 MB | 81.2% | 75.0% |"
    assert lines[5] == "| 2 | compressed | `prune:0.5+int8` (budgeted pick) | 0.410 MB | 80.0% | - |"
    cells = [{"cell": "bpe-200", "kind": "bpe", "vocab_size": 187.0, "vocab_size_requested": "200", "dim": 16,
              "status": "FINISHED", "deployed_bytes": 61_000, "test_accuracy": 0.5, "pareto": True},
             {"cell": "no-data", "kind": "word", "vocab_size_requested": "-", "dim": 16, "status": "FAILED",
              "pareto": False}]
    lines = cells_markdown("exp", cells).splitlines()
    assert lines[2] == "| cell | tokenizer | vocab | dim | deployed | test accuracy | status |"
    assert lines[4] == "| `bpe-200` (Pareto) | bpe | 187 | 16 | 0.061 MB | 50.0% | finished |"
    assert lines[5] == "| `no-data` | word | - | 16 | - | - | failed |"


def test_versions_without_a_store_says_so_and_creates_none(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI")
    done = subprocess.run([sys.executable, "-m", "lifecycle", "versions"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    assert f"no MLflow store at {tmp_path / 'mlruns' / 'mlflow.db'}" in done.stderr
    assert not (tmp_path / "mlruns").exists()


def test_logged_model_names_keep_the_version_folder_readable() -> None:
    from lifecycle.tracking import _model_name

    # MLflow refuses / : . % " ' in a logged model's name; the pipeline's folders have dots (prune-0.5+int8).
    assert _model_name("prune-0.5+int8") == "prune-0_5+int8"
    assert _model_name("default-compressed-20261201-233000-2") == "default-compressed-20261201-233000-2"


@pytest.mark.slow
def test_mlflow_models_serve_answers_for_a_registered_alias(versions: dict, tracking_uri: str, tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # mlflow starts uvicorn from PATH: the venv's, where `mlflow` is.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the model brings its own lifecycle code (code paths)
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@newest", "--env-manager",
                               "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as ping:
                    if ping.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        texts = ["what is your name", "tell me a joke"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": texts}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = answer["predictions"]
    expected = Predictor(load_version(versions["int8"].version)).predict(texts)
    assert [row["label"] for row in rows] == [p.label for p in expected]
    assert [row["probability"] for row in rows] == pytest.approx([p.probability for p in expected], abs=1e-5)
