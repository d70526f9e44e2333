"""Freeze: one GraphDef of named constants, equal to the checkpoint, refused when altered or carrying foreign ops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError


def test_frozen_version_layout_and_names(frozen: dict) -> None:
    version = artifacts.load_version(frozen["outcome"].version)
    assert version.kind == "frozen"
    assert set(version.manifest.files) == {"config.yaml", "graph.pb", "model.tflite", "weight_map.json",
                                              "tokenizer/tokenizer.json", "tokenizer/vocab.txt"}
    assert version.manifest.input.dtype == "uint16"  # a few thousand words fit 16 bits
    names = set(version.manifest.tensors)
    assert names == {"weights/embedding", "weights/output/kernel", "weights/output/bias",
                     *(f"weights/conv_{w}/{part}" for w in (3, 4, 5) for part in ("kernel", "bias"))}
    weight_map = json.loads((version.path / "weight_map.json").read_text())
    assert sorted(weight_map.values()) == sorted(names)
    parent = artifacts.load_version(frozen["parent"].version)
    assert version.manifest.parent.sha256 == parent.sha256
    assert version.manifest.params_total == parent.manifest.params_total


def test_frozen_predictions_equal_checkpoint(frozen: dict, data_dir: Path) -> None:
    from lifecycle.inference import Predictor

    manifest = artifacts.load_version(frozen["outcome"].version).manifest
    assert manifest.check["compared_on"] == "test split"
    assert manifest.check["max_abs_diff_vs_parent"] <= 1e-5
    texts = [line.decode("cp1252") for line in (data_dir / "MR" / "rt-polarity.neg").read_bytes().split(b"\n")[:50]]
    checkpoint = Predictor(artifacts.load_version(frozen["parent"].version)).predict_proba(texts)
    graph = Predictor(artifacts.load_version(frozen["outcome"].version), "graph").predict_proba(texts)
    np.testing.assert_allclose(graph, checkpoint, atol=1e-5)
    assert frozen["outcome"].metrics["accuracy_delta_vs_parent"] == pytest.approx(0.0, abs=1e-9)


def test_frozen_is_smaller_than_checkpoint_with_optimizer(frozen: dict) -> None:
    parent = artifacts.load_version(frozen["parent"].version).manifest.sizes
    sizes = artifacts.load_version(frozen["outcome"].version).manifest.sizes
    assert sizes["graph_bytes"] < parent["checkpoint_bytes"] / 2.5
    assert frozen["outcome"].metrics["size_ratio_vs_checkpoint"] < 0.45
    assert 0 < sizes["gzip_bytes"] < sizes["graph_bytes"] + sizes["tokenizer_bytes"]


def test_freeze_run_is_tracked_with_parent_and_registered(frozen: dict, tracking_uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(frozen["outcome"].run_id)
    assert run.data.tags["lifecycle.step"] == "freeze"
    assert run.data.tags["lifecycle.parent_run"] == frozen["parent"].run_id
    for key in ("size_bytes", "size_gzip_bytes", "size_ratio_vs_checkpoint", "params_total", "params_nonzero",
                "test_accuracy", "accuracy_delta_vs_parent", "max_abs_diff_vs_parent", "load_seconds", "first_call_ms",
                "latency_p50_ms", "latency_p99_ms", "throughput_per_s", "rss_mb"):
        assert key in run.data.metrics, key
    model_version = client.get_model_version("mr-slice", frozen["outcome"].registered)
    assert model_version.tags["lifecycle.kind"] == "frozen"


def _rehash(version_dir: Path) -> None:
    """Make the manifest agree with altered files, as an attacker who can write the whole directory would."""
    from tests.helpers import reseal

    reseal(version_dir)


def test_graph_with_a_forbidden_op_is_refused(frozen: dict, tmp_path: Path) -> None:
    from lifecycle.backend import tf_module
    from lifecycle.freeze import read_graph
    from lifecycle.inference import Predictor

    tf = tf_module()
    copy = tmp_path / "evil"
    shutil.copytree(frozen["outcome"].version, copy)
    graph_def = read_graph(copy / "graph.pb")
    with tf.Graph().as_default() as graph:
        tf.io.read_file(tf.constant("/etc/passwd"), name="leak")
    graph_def.node.extend(n for n in graph.as_graph_def().node)
    (copy / "graph.pb").write_bytes(graph_def.SerializeToString())
    _rehash(copy)
    with pytest.raises(ModelError, match="outside the allow-list: ReadFile"):
        Predictor(artifacts.load_version(copy), "graph")


def test_truncated_graph_is_refused(frozen: dict, tmp_path: Path) -> None:
    copy = tmp_path / "cut"
    shutil.copytree(frozen["outcome"].version, copy)
    data = (copy / "graph.pb").read_bytes()
    (copy / "graph.pb").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"graph\.pb: sha256 does not match"):
        artifacts.load_version(copy)
    _rehash(copy)
    from lifecycle.inference import Predictor

    with pytest.raises(ModelError, match=r"graph\.pb: not a GraphDef|no 'probabilities' node"):
        Predictor(artifacts.load_version(copy), "graph")


def test_freezing_a_frozen_version_is_an_error(frozen: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_freeze

    with pytest.raises(ModelError, match="freeze takes a checkpoint version; this one is frozen"):
        run_freeze(str(frozen["outcome"].version), tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_inspect_lists_every_tensor(frozen: dict) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    result = CliRunner().invoke(app, ["inspect", str(frozen["outcome"].version)])
    assert result.exit_code == 0, result.output
    for name in ("weights/embedding", "weights/conv_3/kernel", "weights/output/bias", "GatherV2", "graph.pb"):
        assert name in result.output
