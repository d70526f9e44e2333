"""The LiteRT serving form: exported beside graph.pb, equal to it, in the version's storage, served without TF."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError


@pytest.fixture(scope="module")
def int8(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> artifacts.Version:
    from lifecycle.workflows import run_compress

    out = tmp_path_factory.mktemp("litert") / "int8"
    return artifacts.load_version(run_compress(str(frozen["outcome"].version), "int8", out, track=False).version)


def _texts(data_dir: Path, n: int = 60) -> list[str]:
    lines = (data_dir / "MR" / "rt-polarity.pos").read_bytes().split(b"\n")[:n]
    return [line.decode("cp1252") for line in lines]


def test_frozen_version_carries_a_checked_serving_form(frozen: dict) -> None:
    version = artifacts.load_version(frozen["outcome"].version)
    serving = version.manifest.serving
    assert serving.file == "model.tflite" and serving.runtime == "litert"
    assert serving.quantization == "float32"
    assert serving.max_abs_diff_vs_graph <= 1e-5
    assert version.manifest.files["model.tflite"].bytes == serving.bytes
    # The flatbuffer holds the same float32 weights as graph.pb: within a few percent of its size.
    assert serving.bytes == pytest.approx(version.manifest.sizes["graph_bytes"], rel=0.05)


@pytest.fixture(scope="module")
def int8_exact(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> artifacts.Version:
    from lifecycle.workflows import run_compress

    out = tmp_path_factory.mktemp("litert") / "int8-exact"
    outcome = run_compress(str(frozen["outcome"].version), "int8", out, track=False, serving_kernels="exact")
    return artifacts.load_version(outcome.version)


@pytest.mark.parametrize("which", ["frozen", "int8", "int8-exact"])
def test_serving_form_predicts_like_the_graph(which: str, frozen: dict, int8: artifacts.Version,
                                              int8_exact: artifacts.Version, data_dir: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.litert import HYBRID_BOUND

    version = {"int8": int8, "int8-exact": int8_exact}.get(which) or artifacts.load_version(frozen["outcome"].version)
    texts = _texts(data_dir)
    lite = Predictor(version)
    assert lite.runtime == "litert"
    graph = Predictor(version, "graph")
    got, expected = lite.predict_proba(texts), graph.predict_proba(texts)
    if which == "int8":  # hybrid kernels: activations rounded to int8 on every call, so close, not equal
        assert version.manifest.serving.kernels == "hybrid"
        difference = float(np.max(np.abs(got - expected)))
        assert 0 < difference <= HYBRID_BOUND
        assert version.manifest.serving.max_abs_diff_vs_graph <= HYBRID_BOUND
        assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.95
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def _serving_ops(version: artifacts.Version) -> list[tuple[str, list[str]]]:
    """(op name, input tensor types) of each op in the version's serving flatbuffer."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(version.path / "model.tflite"))
    types = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return [(op["op_name"], [types[i] for i in op["inputs"] if i >= 0]) for op in interpreter._get_ops_details()]


def test_hybrid_and_exact_int8_kernels(int8: artifacts.Version, int8_exact: artifacts.Version) -> None:
    hybrid = _serving_ops(int8)
    assert not [op for op, _ in hybrid if op == "DEQUANTIZE"]
    assert all("int8" in inputs for op, inputs in hybrid if op in ("CONV_2D", "FULLY_CONNECTED"))
    exact = _serving_ops(int8_exact)
    kernels = len([op for op, _ in exact if op in ("CONV_2D", "FULLY_CONNECTED")])
    assert len([op for op, _ in exact if op == "DEQUANTIZE"]) == kernels
    assert all("int8" not in inputs for op, inputs in exact if op in ("CONV_2D", "FULLY_CONNECTED"))
    assert int8_exact.manifest.serving.kernels == "exact"
    assert int8_exact.manifest.serving.max_abs_diff_vs_graph <= 1e-5
    # The same int8 bytes either way: only a few ops differ.
    assert abs(int8.manifest.serving.bytes - int8_exact.manifest.serving.bytes) < 2048


def test_compress_keeps_the_parents_serving_kernels(int8_exact: artifacts.Version, tmp_path: Path) -> None:
    from lifecycle.workflows import run_compress

    child = run_compress(str(int8_exact.path), "prune:0.5", tmp_path / "child", track=False)
    assert artifacts.load_version(child.version).manifest.serving.kernels == "exact"


def test_unknown_serving_kernels_are_refused(int8: artifacts.Version, tmp_path: Path) -> None:
    from lifecycle.errors import ConfigError
    from lifecycle.workflows import run_compress

    with pytest.raises(ConfigError, match="--serving-kernels 'fast' is unknown; use one of hybrid, exact"):
        run_compress(str(int8.path), "prune:0.5", tmp_path / "x", track=False, serving_kernels="fast")
    assert not (tmp_path / "x").exists()


def test_int8_serving_form_keeps_int8_kernels_and_is_a_quarter(frozen: dict, int8: artifacts.Version) -> None:
    serving = int8.manifest.serving
    assert serving.quantization == "int8-weights"
    kernels = {name for name in int8.manifest.tensors if not name.endswith("/bias") and name != "weights/embedding"}
    assert set(serving.int8_kernels) == kernels  # none left float32 by the converter
    float_bytes = artifacts.load_version(frozen["outcome"].version).manifest.serving.bytes
    assert serving.bytes <= 0.3 * float_bytes


def test_serving_never_imports_tensorflow(int8: artifacts.Version, data_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(_texts(data_dir, 5)), encoding="utf-8")
    script = (
        "import json, sys\n"
        "from lifecycle.workflows import run_predict\n"
        f"results = run_predict({str(int8.path)!r}, open({str(texts)!r}).read().splitlines())\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules)\n"
        "print(json.dumps({'n': len(results), 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"n": 5, "heavy": []}


def test_tampered_serving_form_is_refused(int8: artifacts.Version, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(int8.path, copy)
    data = bytearray((copy / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.tflite"):
        artifacts.load_version(copy)


def test_serving_form_with_a_foreign_op_is_refused(tmp_path: Path) -> None:
    from lifecycle.backend import tf_module
    from lifecycle.litert import LiteRunner

    tf = tf_module()

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="input_ids")])
    def odd(ids: object) -> object:
        return tf.math.tanh(tf.cast(ids, tf.float32))

    content = tf.lite.TFLiteConverter.from_concrete_functions([odd.get_concrete_function()], odd).convert()
    with pytest.raises(ModelError, match="TANH"):
        LiteRunner(content, 4, "int32")


def test_litert_runtime_needs_a_serving_form(frozen: dict) -> None:
    from lifecycle.inference import Predictor

    with pytest.raises(ModelError, match="no serving form"):
        Predictor(artifacts.load_version(frozen["parent"].version), "litert")


def test_int8_act_gives_a_full_integer_serving_form_measured_against_the_graph(int8: artifacts.Version,
                                                                              tmp_path: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import run_compress

    outcome = run_compress(str(int8.path), "int8-act", tmp_path / "act", track=False)
    version = artifacts.load_version(outcome.version)
    serving = version.manifest.serving
    assert serving.quantization == "int8-full"
    assert serving.calibration_samples > 0
    # graph.pb, the retrainable master, is the parent's: same weights, same predictions.
    assert version.manifest.check["max_abs_diff_vs_parent"] == 0.0
    assert version.manifest.tensors["weights/conv_3/kernel"].storage == "int8"
    # Activations in int8 move the probabilities, but the labels mostly agree with graph.pb.
    assert 0.0 < serving.max_abs_diff_vs_graph < 0.5
    assert serving.agreement_with_graph >= 0.85
    assert abs(serving.test_accuracy - version.manifest.metrics["test_accuracy"]) <= 0.05
    assert outcome.metrics["serving_test_accuracy"] == serving.test_accuracy
    assert Predictor(version).runtime == "litert"

    def int8_tensors(v: artifacts.Version) -> int:
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_path=str(v.path / "model.tflite")).get_tensor_details()
        return sum(np.dtype(d["dtype"]) == np.int8 for d in details)

    # Weight-only: the int8 weights; full integer: the activations between the ops too.
    assert int8_tensors(version) > int8_tensors(int8) + 5


def test_inspect_lists_the_serving_forms_constants(int8: artifacts.Version) -> None:
    from lifecycle.workflows import run_inspect

    report = run_inspect(str(int8.path))
    rows = {row["name"]: row for row in report["serving_tensors"]}
    assert rows["weights/embedding/q"]["dtype"] == "int8"
    assert rows["weights/embedding/scale"]["shape"] == [int8.manifest.tensors["weights/embedding"].shape[0], 1]
    kernels = [row for name, row in rows.items() if name.startswith("weights/conv_")]
    assert kernels and all(row["dtype"] == "int8" and row["scales"] == row["shape"][0] for row in kernels)
    big_floats = [name for name, row in rows.items() if row["dtype"] == "float32" and row["bytes"] > 4096]
    assert big_floats == ["weights/embedding/scale"]  # no float32 kernel left behind
    # The constants are the file, less the flatbuffer's own tables (a few KB: 3% of this small test model).
    total = sum(row["bytes"] for row in report["serving_tensors"])
    assert 0.9 * int8.manifest.serving.bytes <= total <= int8.manifest.serving.bytes
