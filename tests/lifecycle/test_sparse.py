"""Sparse layout: pruned weights stored as nonzero codes plus a bitmask shrink graph.pb on disk, compute the same
probabilities as the dense pruned graph, are recorded in the manifest, restore, and refuse inconsistent files."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError
from lifecycle.storage import StoredTensor, decode_sparse, encode_sparse, sparse_nbytes

TEXTS = ["an utterly charming and hilarious film", "a boring , lifeless mess", "it is a movie", "not bad at all"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
@pytest.mark.parametrize("shape", [(7, 5, 3), (40, 8), (1,), (0, 4)])
def test_encode_decode_round_trip(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    dense = (rng.normal(size=shape) * 40).astype(dtype)
    dense[rng.random(shape) < 0.8] = 0
    values, mask = encode_sparse(dense)
    assert values.dtype == dense.dtype and mask.dtype == np.uint8
    assert mask.size == (dense.size + 7) // 8 and values.size == np.count_nonzero(dense)
    assert sparse_nbytes(dense) == values.nbytes + mask.nbytes
    back = decode_sparse(values, mask, shape, "x.pb", "w")
    assert back.dtype == dense.dtype and back.shape == dense.shape
    np.testing.assert_array_equal(back, dense)


def test_inconsistent_sparse_arrays_are_refused() -> None:
    dense = np.arange(-10, 10, dtype=np.int8).reshape(4, 5)  # one zero, 19 values, 20 elements (3 mask bytes)
    values, mask = encode_sparse(dense)
    with pytest.raises(ModelError, match=r"g\.pb: sparse tensor 'w' stores 18 values but its mask marks 19"):
        decode_sparse(values[:-1], mask, dense.shape, "g.pb", "w")
    padded = mask.copy()
    padded[-1] |= 0x80  # a bit past the 20th element
    with pytest.raises(ModelError, match="sets mask bits past its 20 elements"):
        decode_sparse(values, padded, dense.shape, "g.pb", "w")
    with pytest.raises(ModelError, match="needs 3 uint8 bytes"):
        decode_sparse(values, mask[:2], dense.shape, "g.pb", "w")


def test_prune_picks_the_smaller_layout_and_storage_steps_carry_it() -> None:
    from lifecycle.compress import apply_recipe, parse_recipe

    rng = np.random.default_rng(1)
    weights = {
        "weights/embedding": StoredTensor("float32", rng.normal(size=(400, 64)).astype(np.float32)),
        "weights/conv_3/kernel": StoredTensor("float32", rng.normal(size=(3, 64, 32)).astype(np.float32)),
        "weights/conv_3/bias": StoredTensor("float32", rng.normal(size=(32,)).astype(np.float32)),
        "weights/output/kernel": StoredTensor("float32", rng.normal(size=(32, 2)).astype(np.float32)),
    }
    for recipe in ("prune:0.8,int8", "int8,prune:0.8", "prune:0.8,fp16"):
        out, reports = apply_recipe(weights, parse_recipe(recipe))
        for name in ("weights/embedding", "weights/conv_3/kernel"):
            stored = out[name]
            assert stored.layout == "sparse", (recipe, name)
            assert stored.value.shape == weights[name].value.shape  # value stays the dense codes
            assert stored.nbytes < replace(stored, layout="dense").nbytes
            assert reports[-1].layouts[name] == "sparse", recipe  # the report records the layout each step left
        assert out["weights/conv_3/bias"].layout == "dense"
        # 256 bytes: pruned, but its decode nodes would cost more than the zeros save.
        assert out["weights/output/kernel"].layout == reports[-1].layouts["weights/output/kernel"] == "dense"
    # 10% zeros: sparse still pays for float32 (1 mask bit per 3.2 saved bits), no longer for int8 (1 per 0.8).
    out, reports = apply_recipe(weights, parse_recipe("prune:0.1,int8"))
    assert reports[0].layouts["weights/embedding"] == "sparse"
    assert out["weights/embedding"].layout == "dense" and reports[1].layouts["weights/embedding"] == "dense"
    emb = out["weights/embedding"]
    assert emb.nbytes == emb.value.nbytes + emb.scale.nbytes


@pytest.fixture(scope="module")
def sparse(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("sparse")
    source = str(frozen["outcome"].version)
    return {recipe: run_compress(source, recipe, root / recipe.replace(":", "-").replace(",", "+"),
                                 track=False).version
            for recipe in ("prune:0.8", "prune:0.8,int8")}


def _dense_twin(version: artifacts.Version) -> tuple[object, object]:
    """The version's graph as loaded, and the same pruned weights emitted in the dense layout."""
    from lifecycle.freeze import emit_graph
    from lifecycle.workflows import load_graph_version

    loaded = load_graph_version(version)
    dense = {name: replace(stored, layout="dense") for name, stored in loaded.weights.items()}
    return loaded, emit_graph(dense, loaded.kernel_sizes, loaded.max_len, loaded.input_dtype)


@pytest.mark.parametrize("recipe", ["prune:0.8", "prune:0.8,int8"])
def test_sparse_graph_is_smaller_on_disk_and_predicts_like_the_dense_one(sparse: dict, recipe: str) -> None:
    from lifecycle.backend import tf_module
    from lifecycle.freeze import GRAPH_FILE, GraphRunner
    from lifecycle.inference import Predictor
    from lifecycle.storage import densify_sparse

    tf = tf_module()
    version = artifacts.load_version(sparse[recipe])
    loaded, dense_graph = _dense_twin(version)
    on_disk = (version.path / GRAPH_FILE).stat().st_size
    dense_bytes = len(dense_graph.SerializeToString())
    # At 80% zeros the embedding holds 0.2 values + 1/8 mask byte per element (float32: 0.8 + 1/8 of 4 bytes); its
    # 32-d int8 rows carry a 4-byte scale each, and a few small kernels stay dense.
    assert on_disk < {"prune:0.8": 0.3, "prune:0.8,int8": 0.5}[recipe] * dense_bytes, (on_disk, dense_bytes)
    assert version.manifest.sizes["graph_bytes"] == on_disk

    predictor = Predictor(version, runtime="graph")  # graph.pb, not the LiteRT serving form
    ids = predictor.tokenizer.encode(TEXTS, version.max_len)
    got = predictor.predict_ids(ids, calibrated=False)  # the graph's own output, as the dense twin's
    runner = GraphRunner(dense_graph, "dense twin", version.max_len, loaded.input_dtype)
    np.testing.assert_allclose(got, runner.run(ids), atol=1e-6)
    runner.close()

    # Loading decodes once: the densified graph is the dense graph, node for node, so per-call work is the same.
    densified = {node.name: node for node in densify_sparse(loaded.graph_def, "g").node}
    twin = {node.name: node for node in dense_graph.node}
    assert densified.keys() == twin.keys()
    for name, node in twin.items():
        assert densified[name].op == node.op, name
        if node.op == "Const":
            np.testing.assert_array_equal(tf.make_ndarray(densified[name].attr["value"].tensor),
                                          tf.make_ndarray(node.attr["value"].tensor))

    # The file itself stays a self-contained TF graph: a plain import runs its decode and agrees.
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(loaded.graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        plain = session.run("probabilities:0", {"input_ids:0": ids.astype(loaded.input_dtype)})
    np.testing.assert_allclose(plain, got, atol=1e-6)


def test_manifest_records_layout_and_nodes_matching_the_file(sparse: dict) -> None:
    from typer.testing import CliRunner

    from lifecycle.backend import tf_module
    from lifecycle.cli import app
    from lifecycle.freeze import GRAPH_FILE, read_graph

    tf = tf_module()
    version = artifacts.load_version(sparse["prune:0.8,int8"])
    manifest = version.manifest
    assert manifest.recipe[0].layouts["weights/embedding"] == "sparse"
    consts = {n.name: tf.make_ndarray(n.attr["value"].tensor)
              for n in read_graph(version.path / GRAPH_FILE).node if n.op == "Const"}
    for name, meta in manifest.tensor_dicts().items():
        assert sum(consts[node].nbytes for node in meta["nodes"]) == meta["bytes"], name
        codes = name if name.endswith("/bias") else f"{name}/q"
        scale = [] if name.endswith("/bias") else [f"{name}/scale"]
        if meta["layout"] == "dense":
            assert meta["nodes"] == [codes, *scale] and "encoding" not in meta, name
            continue
        assert meta["encoding"] == "bitmask" and meta["nodes"] == [f"{codes}/values", f"{codes}/mask", *scale]
        assert consts[f"{codes}/values"].dtype == np.int8 and consts[f"{codes}/values"].size == meta["nonzero"]
        assert meta["sparsity"] >= 0.79
    assert manifest.tensors["weights/embedding"].layout == "sparse"
    assert manifest.sizes["weights_bytes"] == sum(t.bytes for t in manifest.tensors.values())

    result = CliRunner().invoke(app, ["inspect", str(version.path)])
    assert result.exit_code == 0, result.output
    assert "sparse" in result.output and "Where" in result.output


def test_restore_of_a_sparse_version_reproduces_it(sparse: dict, tmp_path: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import run_freeze, run_restore

    restored = run_restore(str(sparse["prune:0.8"]), tmp_path / "restored", track=False)
    manifest = artifacts.load_version(restored.version).manifest
    assert manifest.check["max_abs_diff_vs_parent"] <= 1e-5
    assert manifest.restored_from["storage"]["weights/embedding"] == "float32"
    assert min(manifest.restored_from["sparsity"].values()) >= 0.79  # the mask a retrain keeps
    refrozen = run_freeze(str(restored.version), tmp_path / "refrozen", track=False)
    original = Predictor(artifacts.load_version(sparse["prune:0.8"]), runtime="graph").predict_proba(TEXTS)
    again = Predictor(artifacts.load_version(refrozen.version)).predict_proba(TEXTS)
    np.testing.assert_allclose(again, original, atol=1e-5)


def test_a_tampered_sparse_tensor_is_a_clear_error(sparse: dict, tmp_path: Path) -> None:
    from lifecycle.backend import tf_module
    from lifecycle.freeze import GRAPH_FILE, read_graph
    from lifecycle.inference import Predictor
    from lifecycle.workflows import load_graph_version

    tf = tf_module()
    copy = tmp_path / "tampered"
    shutil.copytree(sparse["prune:0.8,int8"], copy)
    graph_def = read_graph(copy / GRAPH_FILE)
    node = next(n for n in graph_def.node if n.name == "weights/embedding/q/values")
    values = tf.make_ndarray(node.attr["value"].tensor)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values[:-1]))  # one value dropped, mask unchanged
    (copy / GRAPH_FILE).write_bytes(graph_def.SerializeToString())
    from tests.helpers import reseal

    reseal(copy)  # a consistent forgery: graph.pb's sha256 and bytes, and the manifest's digest
    version = artifacts.load_version(copy)
    message = (rf"{GRAPH_FILE}: sparse tensor '{{}}' stores {values.size - 1} values but its mask marks "
               rf"{values.size} positions")
    with pytest.raises(ModelError, match=message.format("weights/embedding")):
        load_graph_version(version)  # restore and compress read weights this way
    with pytest.raises(ModelError, match=message.format("weights/embedding/q")):
        Predictor(version, runtime="graph")  # the graph loader decodes at load


def test_nibble_layout_round_trips_and_refuses_damage() -> None:
    from lifecycle.storage import decode_nibbles, encode_nibbles, nibbles_nbytes, pack_int4

    rng = np.random.default_rng(5)
    codes = (rng.integers(-7, 8, size=(9, 13)) * (rng.random((9, 13)) < 0.4)).astype(np.int8)
    packed = pack_int4(codes)
    values, mask = encode_nibbles(packed)
    assert values.nbytes + mask.nbytes == nibbles_nbytes(packed)
    np.testing.assert_array_equal(decode_nibbles(values, mask, packed.shape, "g.pb", "w"), packed)
    # A byte with one zero nibble still costs the byte layout a whole byte; here only its nonzero nibble is kept.
    assert nibbles_nbytes(packed) < sparse_nbytes(packed)
    with pytest.raises(ModelError, match="mask marks") as caught:
        decode_nibbles(values[:-1], mask, packed.shape, "g.pb", "w")
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="a bit per nibble"):
        decode_nibbles(values, mask[:-1], packed.shape, "g.pb", "w")


def test_int4_pruned_picks_nibbles_only_when_smaller_counting_its_decode() -> None:
    from lifecycle.compress import apply_recipe, parse_recipe
    from lifecycle.storage import graph_bytes

    rng = np.random.default_rng(6)
    # Its decode writes about 3.7 KB of nodes (measured; the byte bitmask's about 1.7 KB): on a 400 x 64 table the
    # nibbles' 2.4 KB saving does not pay for it, and the choice said so; on 2000 x 64 it does.
    weights = {
        "weights/embedding": StoredTensor("float32", rng.normal(size=(2000, 64)).astype(np.float32)),
        "weights/conv_3/kernel": StoredTensor("float32", rng.normal(size=(3, 64, 32)).astype(np.float32)),
        "weights/output/kernel": StoredTensor("float32", rng.normal(size=(32, 2)).astype(np.float32)),
    }
    out, reports = apply_recipe(weights, parse_recipe("prune:0.5,int4"))
    emb = out["weights/embedding"]
    assert emb.layout == "sparse-nibbles" and reports[-1].layouts["weights/embedding"] == "sparse"
    sizes = {layout: graph_bytes(replace(emb, layout=layout), "weights/embedding")
             for layout in ("dense", "sparse", "sparse-nibbles")}
    assert sizes["sparse-nibbles"] < min(sizes["dense"], sizes["sparse"])
    # The manifest says so: an older lifecycle refuses the encoding instead of misreading it.
    from lifecycle.storage import tensor_entry

    entry = tensor_entry("weights/embedding", emb)
    assert (entry["layout"], entry["encoding"]) == ("sparse", "bitmask-nibbles")
    assert entry["nodes"] == ["weights/embedding/q4/values", "weights/embedding/q4/mask", "weights/embedding/scale"]
    # 64 codes (32 bytes) pruned: its decode nodes would cost more than the zeros save, so it stays dense.
    assert out["weights/output/kernel"].layout == "dense"
    # Its decode costs more nodes than the byte bitmask's: the choice counts them, so a tensor where the two
    # constants' sizes are within that difference gets the byte layout (or dense).
    small = replace(out["weights/conv_3/kernel"], layout="dense")
    assert graph_bytes(replace(small, layout="sparse-nibbles"), "k") - replace(
        small, layout="sparse-nibbles").nbytes > graph_bytes(replace(small, layout="sparse"), "k") - replace(
        small, layout="sparse").nbytes


def test_unknown_sparse_encoding_asks_for_an_upgrade_and_nibbles_on_int8_is_refused() -> None:
    from lifecycle.storage import layout_for

    assert layout_for({"storage": "int4", "layout": "sparse", "encoding": "bitmask-nibbles"}, "w", "m") == \
        "sparse-nibbles"
    assert layout_for({"storage": "int8", "layout": "sparse"}, "w", "m") == "sparse"  # before encodings: bitmask
    with pytest.raises(ModelError, match="sparse encoding 'runs'; this lifecycle reads 'bitmask', "
                                         "'bitmask-nibbles'. Upgrade lifecycle") as caught:
        layout_for({"storage": "int4", "layout": "sparse", "encoding": "runs"}, "w", "m")
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="only int4 tensors use"):
        layout_for({"storage": "int8", "layout": "sparse", "encoding": "bitmask-nibbles"}, "w", "m")
