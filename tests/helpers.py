"""Helpers shared by test modules (importable as ``tests.helpers``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lifecycle.config import Config, load_config

SMALL = [
    "model.embedding_dim=32",
    "model.filters=16",
    "train.epochs=4",
    "train.patience=4",
    "train.batch_size=32",
]


def mr_config(*extra: str) -> Config:
    return load_config(None, ["name=mr-slice", "data.format=mr", "data.path=MR", "data.limit=800",
                              "tokenizer.kind=word", "tokenizer.max_len=40",
                              "tokenizer.word.word2vec.enabled=false", *SMALL, *extra])


def new_mr_csv(data_dir: Path, path: Path, n: int, extra_rows: Iterable[tuple[str, str]] = ()) -> Path:
    """The last n lines of each MR file as a labelled CSV (new data the slice model was not trained on), then
    ``extra_rows`` (text, label)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for suffix, label in (("pos", "positive"), ("neg", "negative")):
            lines = (data_dir / "MR" / f"rt-polarity.{suffix}").read_bytes().split(b"\n")[-n - 1:-1]
            writer.writerows([line.decode("cp1252").strip(), label] for line in lines)
        writer.writerows(extra_rows)
    return path


def reseal(version_dir: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Rewrite a version's manifest after ``edit`` (in place) with its listed files' sha256 and its digest recomputed,
    as someone who can rewrite the whole directory would (the digest detects edits, not such a forger)."""
    from lifecycle import artifacts

    path = version_dir / artifacts.MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if edit is not None:
        edit(manifest)
    for rel, meta in (manifest.get("files") or {}).items():
        if (version_dir / rel).is_file():
            meta.update(bytes=(version_dir / rel).stat().st_size, sha256=artifacts.sha256_file(version_dir / rel))
    manifest[artifacts.DIGEST_FIELD] = artifacts.manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def check_storage_round_trip(storage: str, layout: str, seed: int = 0) -> None:
    """A storage's contract (keras-hub's run_serialization_test, for one ``lifecycle.storage.STORAGES`` entry in one
    ``LAYOUTS`` entry): encode every weight of a small CNN -> emit the graph -> read the weights back from its
    constants as the manifest says -> the codes, scales and layout read back are the ones encoded, the bytes and
    nodes agree with the manifest, and the float32 values restore computes equal ``dequantize()`` of what was encoded;
    the graph computes what a float32 graph over those values does.
    """
    from dataclasses import replace

    import numpy as np

    from lifecycle.freeze import GraphRunner, emit_graph, tensor_manifest
    from lifecycle.storage import STORAGES, StoredTensor, int8_axis, read_weights

    rng = np.random.default_rng(seed)
    shapes = {"weights/embedding": (50, 8), "weights/conv_3/kernel": (3, 8, 4), "weights/conv_3/bias": (4,),
              "weights/output/kernel": (4, 3), "weights/output/bias": (3,)}
    spec = STORAGES[storage]
    weights = {}
    for name, shape in shapes.items():
        values = rng.normal(size=shape).astype(np.float32)
        values[rng.random(shape) < 0.7] = 0  # zeros, so a sparse layout has something to leave out
        weights[name] = replace(spec.encode(values, int8_axis(name)), layout=layout)
    graph_def = emit_graph(weights, (3,), 6, "uint8")
    manifest = tensor_manifest(weights)
    back = read_weights(graph_def, manifest, f"{storage}/{layout} graph")
    assert set(back) == set(weights)
    for name, stored in weights.items():
        got = back[name]
        assert (got.storage, got.layout, got.axis, got.shape) == (storage, layout, stored.axis, stored.shape), name
        assert got.value.dtype == stored.value.dtype, name
        np.testing.assert_array_equal(got.value, stored.value, err_msg=name)
        if stored.scale is None:
            assert got.scale is None, name
        else:
            np.testing.assert_array_equal(got.scale, stored.scale, err_msg=name)
        assert got.nbytes == stored.nbytes == manifest[name]["bytes"], name
        assert got.nodes(name) == manifest[name]["nodes"], name
        restored = got.dequantize()
        assert restored.dtype == np.float32, name
        np.testing.assert_array_equal(restored, stored.dequantize(), err_msg=name)
    ids = rng.integers(0, shapes["weights/embedding"][0], size=(16, 6))
    floats = {name: StoredTensor("float32", stored.dequantize()) for name, stored in weights.items()}
    runners = [GraphRunner(graph, f"{storage}/{layout}", 6, "uint8")
               for graph in (graph_def, emit_graph(floats, (3,), 6, "uint8"))]
    try:
        stored_probabilities, float_probabilities = (runner.run(ids) for runner in runners)
    finally:
        for runner in runners:
            runner.close()
    np.testing.assert_allclose(stored_probabilities, float_probabilities, rtol=0, atol=1e-6)
