"""Restore: frozen and compressed constants back into trainable variables, exactly as the graph computes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError
from tests.helpers import reseal

STORAGES = {"frozen": None, "fp16": "fp16", "int8": "int8", "prune+int8": "prune:0.6,int8"}


@pytest.fixture(scope="module")
def versions(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("restore-sources")
    found = {"frozen": frozen["outcome"].version}
    for name, recipe in STORAGES.items():
        if recipe:
            found[name] = run_compress(str(frozen["outcome"].version), recipe, root / name, track=False).version
    return found


@pytest.mark.parametrize("storage", list(STORAGES))
def test_restore_then_freeze_reproduces_the_parent(versions: dict, storage: str, tmp_path: Path,
                                                   data_dir: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import run_freeze, run_restore

    restored = run_restore(str(versions[storage]), tmp_path / "restored", track=False)
    manifest = artifacts.load_version(restored.version).manifest
    assert manifest.kind == "checkpoint"
    assert manifest.check["max_abs_diff_vs_parent"] <= 1e-5
    assert manifest.parent.sha256 == artifacts.load_version(versions[storage]).sha256
    refrozen = run_freeze(str(restored.version), tmp_path / "refrozen", track=False)
    texts = [line.decode("cp1252") for line in (data_dir / "MR" / "rt-polarity.pos").read_bytes().split(b"\n")[:40]]
    # graph.pb is what restore reproduces (an int8 serving form's dynamic-range kernels round activations too).
    original = Predictor(artifacts.load_version(versions[storage]), "graph").predict_proba(texts)
    again = Predictor(artifacts.load_version(refrozen.version)).predict_proba(texts)
    np.testing.assert_allclose(again, original, atol=1e-5)


def test_pruning_mask_survives_restore(versions: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_restore

    restored = run_restore(str(versions["prune+int8"]), tmp_path / "r", track=False)
    manifest = artifacts.load_version(restored.version).manifest
    sparsity = manifest.restored_from["sparsity"]
    embedding = next(v for k, v in sparsity.items() if "embedding" in k)
    assert embedding >= 0.59
    assert manifest.restored_from["storage"]["weights/embedding"] == "int8"


def test_restored_model_trains(versions: dict, data_dir: Path) -> None:
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.restore import restore_model
    from lifecycle.workflows import load_graph_version
    from tokenization.factory import load_tokenizer

    version = artifacts.load_version(versions["int8"])
    frozen = load_graph_version(version)
    restored = restore_model(frozen, version.config, len(version.labels))
    corpus = load_corpus(version.config.data, "mr")
    arrays = encode_examples(corpus.train, load_tokenizer(version.tokenizer_dir), version.labels, version.max_len)
    before = [w.numpy().copy() for w in restored.model.trainable_weights]
    history = restored.model.fit(arrays.x, arrays.y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[1] < losses[0]
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, restored.model.trainable_weights, strict=True))


def test_restoring_a_checkpoint_or_an_unmappable_graph_fails(versions: dict, trained: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_restore

    with pytest.raises(ModelError, match="expected a frozen or compressed version; this one is checkpoint"):
        run_restore(str(trained["outcome"].version), tmp_path / "x", track=False)
    copy = tmp_path / "broken"
    shutil.copytree(versions["frozen"], copy)
    weight_map = json.loads((copy / "weight_map.json").read_text())
    first = next(iter(weight_map))
    weight_map[first] = "weights/nowhere"
    (copy / "weight_map.json").write_text(json.dumps(weight_map))
    reseal(copy)  # weight_map.json's new sha256, and the manifest's digest
    with pytest.raises(ModelError, match="which the graph does not store"):
        run_restore(str(copy), tmp_path / "y", track=False)
    assert not (tmp_path / "y").exists()
