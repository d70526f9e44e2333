"""Compression: fp16 and int8 storage shrink the graph within their error bounds, record their storage, and refuse
bad recipes and re-quantization without writing anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.compress import parse_recipe
from lifecycle.errors import ConfigError, ModelError
from lifecycle.storage import quantize_int8_array


def test_int8_per_channel_error_bound() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 32, 16)).astype(np.float32)
    kernel[..., 5] = 0.0  # a channel pruned to zero stays exactly zero
    codes, scale = quantize_int8_array(kernel, axis=-1)
    assert codes.dtype == np.int8 and scale.shape == (16,)
    error = np.abs(codes * scale - kernel)
    assert np.all(error <= scale / 2 + 1e-7)
    assert not (codes[..., 5]).any()
    table = rng.normal(size=(50, 8)).astype(np.float32)
    codes, scale = quantize_int8_array(table, axis=0)
    assert scale.shape == (50, 1)  # one scale per row, broadcast after the gather
    assert np.all(np.abs(codes * scale - table) <= scale / 2 + 1e-7)
    assert np.abs(codes).max() == 127


def test_int8_one_scale_for_the_table() -> None:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    table[7] *= 10  # one row with large values: every other row is quantized against it
    codes, scale = quantize_int8_array(table, axis=None)
    assert scale.shape == () and scale.dtype == np.float32
    assert np.all(np.abs(codes * scale - table) <= scale / 2 + 1e-7)
    assert np.abs(codes).max() == 127
    rows_codes, rows_scale = quantize_int8_array(table, axis=0)
    # Per-row scales are never coarser: the price of the single scale is precision on the small rows.
    assert np.all(rows_scale <= scale + 1e-9)
    assert np.abs(rows_codes * rows_scale - table).mean() < np.abs(codes * scale - table).mean()


def test_int8_embedding_parameter_parses_and_prints_back() -> None:
    from lifecycle.workflows.common import recipe_text

    assert [(s.name, s.params) for s in parse_recipe("int8:embedding=table")] == [("int8", {"embedding": "table"})]
    assert [(s.name, s.params) for s in parse_recipe("int8:embedding=rows")] == [("int8", {})]
    steps = parse_recipe("prune:0.5,int8:embedding=table")
    assert recipe_text([{"name": s.name, "params": s.params} for s in steps]) == "prune:0.5,int8:embedding=table"


@pytest.mark.parametrize("recipe, message", [
    ("int9", "unknown step 'int9'"),
    ("", "names no step"),
    ("fp16,int8", "alternative storages"),
    ("int8:0.5", "takes no parameter"),
    ("int8:embedding=columns", "int8 takes no parameter .* or embedding=table"),
    ("fp16,int8:embedding=table", "alternative storages"),
    ("int8,int4", "int8 and int4 are alternative storages"),
    ("int4:group=32", "step 'int4' takes no parameter"),
])
def test_bad_recipes(recipe: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(recipe)


@pytest.fixture(scope="module")
def compressed(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("compressed")
    source = str(frozen["outcome"].version)
    return {"fp16": run_compress(source, "fp16", root / "fp16"), "int8": run_compress(source, "int8", root / "int8"),
            "root": root}


def test_storage_is_recorded_per_tensor(compressed: dict) -> None:
    for recipe, storage in (("fp16", "float16"), ("int8", "int8")):
        manifest = artifacts.load_version(compressed[recipe].version).manifest
        assert manifest.kind == "compressed"
        assert [step.name for step in manifest.recipe] == [recipe]
        for name, meta in manifest.tensors.items():
            expected = "float32" if recipe == "int8" and name.endswith("/bias") else storage
            assert meta.storage == expected, name
        assert manifest.tensors["weights/embedding"].dtype == "float32"  # the logical dtype is unchanged


def test_sizes_shrink_and_accuracy_stays(compressed: dict, frozen: dict) -> None:
    base = artifacts.load_version(frozen["outcome"].version).manifest.sizes["weights_bytes"]
    fp16 = artifacts.load_version(compressed["fp16"].version).manifest.sizes["weights_bytes"]
    int8 = artifacts.load_version(compressed["int8"].version).manifest.sizes["weights_bytes"]
    assert fp16 == pytest.approx(base / 2, rel=1e-3)
    # 32-d rows carry a 4-byte scale each (12% here; 1.3% at 300-d), so int8 is a bit over a quarter.
    assert int8 < 0.3 * base
    assert abs(compressed["fp16"].metrics["accuracy_delta_vs_parent"]) <= 0.005
    assert abs(compressed["int8"].metrics["accuracy_delta_vs_parent"]) <= 0.02
    assert compressed["fp16"].metrics["max_abs_diff_vs_parent"] < 5e-3
    assert compressed["int8"].metrics["size_bytes"] < compressed["fp16"].metrics["size_bytes"]


def test_stored_weights_round_trip_through_the_graph(compressed: dict, frozen: dict) -> None:
    from lifecycle.workflows import load_graph_version

    parent = load_graph_version(artifacts.load_version(frozen["outcome"].version))
    child = load_graph_version(artifacts.load_version(compressed["int8"].version))
    for name, stored in child.weights.items():
        original = parent.weights[name].dequantize()
        if stored.storage == "int8":
            assert stored.value.dtype == np.int8
            assert np.all(np.abs(stored.dequantize() - original) <= stored.scale / 2 + 1e-7)
        else:
            np.testing.assert_array_equal(stored.dequantize(), original)


def test_compressed_version_predicts_like_its_parent(compressed: dict, frozen: dict) -> None:
    from lifecycle.inference import Predictor

    texts = ["an utterly charming and hilarious film", "a boring , lifeless mess", "it is a movie"]
    parent = Predictor(artifacts.load_version(frozen["outcome"].version)).predict_proba(texts)
    child = Predictor(artifacts.load_version(compressed["int8"].version)).predict_proba(texts)
    assert np.abs(parent - child).max() < 0.05


def test_requantizing_int8_is_refused_and_writes_nothing(compressed: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_compress

    for recipe in ("int8", "fp16"):
        with pytest.raises(ModelError, match="already stored as int8"):
            run_compress(str(compressed["int8"].version), recipe, tmp_path / recipe)
        assert not (tmp_path / recipe).exists()


def test_compressing_a_checkpoint_is_refused(trained: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_compress

    with pytest.raises(ModelError, match="expected a frozen or compressed version; this one is checkpoint"):
        run_compress(str(trained["outcome"].version), "int8", tmp_path / "x")


def test_compress_cli_bad_recipe_exit_code(frozen: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    result = CliRunner().invoke(app, ["compress", str(frozen["outcome"].version), "--recipe", "int2",
                                      "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown step 'int2'" in result.output
    assert not (tmp_path / "x").exists()


def test_bench_measures_versions_side_by_side(compressed: dict, frozen: dict) -> None:
    import json as json_lib

    from typer.testing import CliRunner

    from lifecycle.cli import app

    refs = [str(frozen["outcome"].version), str(compressed["int8"].version)]
    result = CliRunner().invoke(app, ["bench", *refs, "--calls", "20", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json_lib.loads(line) for line in result.stdout.splitlines()]  # one object per line; progress: stderr
    assert [row["recipe"] for row in rows] == ["-", "int8"]
    for row in rows:
        for key in ("load_seconds", "first_call_ms", "latency_p50_ms", "latency_p99_ms", "throughput_per_s"):
            assert row[key] > 0, key
        assert row["latency_p99_ms"] >= row["latency_p50_ms"]
    assert rows[1]["size_bytes"] < rows[0]["size_bytes"]


def test_prune_hits_sparsity_keeps_biases_and_composes_with_int8() -> None:
    from lifecycle.compress import apply_recipe
    from lifecycle.storage import StoredTensor

    rng = np.random.default_rng(1)
    weights = {
        "weights/embedding": StoredTensor("float32", rng.normal(size=(40, 8)).astype(np.float32)),
        "weights/conv_3/kernel": StoredTensor("float32", rng.normal(size=(3, 8, 4)).astype(np.float32)),
        "weights/conv_3/bias": StoredTensor("float32", rng.normal(size=(4,)).astype(np.float32)),
    }
    pruned, reports = apply_recipe(weights, parse_recipe("prune:0.75,int8"))
    assert [r.name for r in reports] == ["prune", "int8"]
    assert reports[0].params == {"sparsity": 0.75}
    for name in ("weights/embedding", "weights/conv_3/kernel"):
        stored = pruned[name]
        assert stored.storage == "int8"
        zeros = 1 - np.count_nonzero(stored.value) / stored.value.size
        assert zeros == pytest.approx(0.75, abs=0.01)
        # The survivors are the largest magnitudes of the original tensor.
        original = np.abs(weights[name].value)
        assert original[stored.value != 0].min() >= original[stored.value == 0].max()
    np.testing.assert_array_equal(pruned["weights/conv_3/bias"].value, weights["weights/conv_3/bias"].value)


@pytest.mark.parametrize("recipe, message", [
    ("prune:1.0", r"sparsity must be in \[0, 1\). Received: 1"),
    ("prune:-0.1", r"sparsity must be in \[0, 1\)"),
    ("prune:abc", "prune needs a sparsity"),
    ("prune", "prune needs a sparsity"),
])
def test_bad_sparsity(recipe: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(recipe)


def test_pruned_version_shrinks_under_gzip(frozen: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_compress

    outcome = run_compress(str(frozen["outcome"].version), "prune:0.8,int8", tmp_path / "p")
    manifest = artifacts.load_version(outcome.version).manifest
    assert [s.name for s in manifest.recipe] == ["prune", "int8"]
    assert manifest.tensors["weights/embedding"].sparsity >= 0.79
    assert outcome.metrics["nonzero_fraction"] < 0.25
    frozen_gzip = artifacts.load_version(frozen["outcome"].version).manifest.sizes["gzip_bytes"]
    assert outcome.metrics["size_gzip_bytes"] < frozen_gzip / 6


def test_int8_with_one_embedding_scale_round_trips_and_serves_smaller(compressed: dict, frozen: dict,
                                                                        tmp_path: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import load_graph_version, run_compress, run_restore

    outcome = run_compress(str(frozen["outcome"].version), "int8:embedding=table", tmp_path / "table", track=False)
    version = artifacts.load_version(outcome.version)
    assert version.manifest.recipe[0].params == {"embedding": "table"}
    parent = load_graph_version(artifacts.load_version(frozen["outcome"].version))
    embedding = load_graph_version(version).weights["weights/embedding"]
    assert embedding.storage == "int8" and np.ndim(embedding.scale) == 0
    original = parent.weights["weights/embedding"].dequantize()
    assert np.all(np.abs(embedding.dequantize() - original) <= embedding.scale / 2 + 1e-7)
    # The graph and the serving form each drop the per-row scales: 4 bytes a row, less one scale.
    rows = embedding.shape[0]
    per_row = artifacts.load_version(compressed["int8"].version).manifest
    saved = 4 * (rows - 1)
    assert per_row.sizes["weights_bytes"] - version.manifest.sizes["weights_bytes"] == saved
    assert per_row.serving.bytes - version.manifest.serving.bytes >= saved - 64
    texts = ["an utterly charming and hilarious film", "a boring , lifeless mess", "it is a movie"]
    graph = Predictor(version, "graph").predict_proba(texts)
    assert np.abs(Predictor(version, "litert").predict_proba(texts) - graph).max() <= 0.05
    restored = run_restore(str(version.path), tmp_path / "restored", track=False)
    assert artifacts.load_version(restored.version).manifest.check["max_abs_diff_vs_parent"] <= 1e-5


def test_tune_keeps_one_embedding_scale(frozen: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import load_graph_version, run_compress

    outcome = run_compress(str(frozen["outcome"].version), "int8:embedding=table,tune:1", tmp_path / "t", track=False)
    weights = load_graph_version(artifacts.load_version(outcome.version)).weights
    assert np.ndim(weights["weights/embedding"].scale) == 0
    assert weights["weights/conv_3/kernel"].scale.shape == (weights["weights/conv_3/kernel"].shape[-1],)
