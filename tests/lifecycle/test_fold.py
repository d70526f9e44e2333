"""The fold step: Grappler folding on the written graph, with every weight's storage kept and restore still exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts


@pytest.fixture(scope="module")
def folded(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> artifacts.Version:
    from lifecycle.workflows import run_compress

    out = tmp_path_factory.mktemp("fold") / "folded"
    return artifacts.load_version(run_compress(str(frozen["outcome"].version), "fold", out, track=False).version)


def test_fold_removes_the_per_call_kernel_reshapes_of_a_float32_graph(folded: artifacts.Version, frozen: dict
                                                                     ) -> None:
    from lifecycle.freeze import read_graph

    report = folded.manifest.recipe[-1].report
    assert report["nodes_after"] < report["nodes_before"]
    assert "ExpandDims x3" in report["ops_removed"]
    assert report["graph_bytes_after"] <= report["graph_bytes_before"]
    moved = report["moved"]
    assert set(moved) == {f"weights/conv_{w}/kernel" for w in (3, 4, 5)}
    for name, node in moved.items():
        assert folded.manifest.tensors[name].folded_into == node
        assert folded.manifest.tensors[name].nodes == (node,)
    ops = [node.op for node in read_graph(folded.path / "graph.pb").node]
    parent_ops = [node.op for node in read_graph(Path(frozen["outcome"].version) / "graph.pb").node]
    assert ops.count("ExpandDims") == parent_ops.count("ExpandDims") - 3
    assert folded.manifest.check["max_abs_diff_vs_parent"] <= 1e-6


def test_folded_version_restores_exactly(folded: artifacts.Version, data_dir: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import run_restore

    restored = artifacts.load_version(run_restore(str(folded.path), folded.path.parent / "restored", track=False
                                                  ).version)
    texts = [line.decode("cp1252") for line in (data_dir / "MR" / "rt-polarity.neg").read_bytes().split(b"\n")[:40]]
    expected = Predictor(folded, "graph").predict_proba(texts)
    np.testing.assert_allclose(Predictor(restored).predict_proba(texts), expected, atol=1e-5)


def test_fold_keeps_int8_storage(frozen: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_compress

    version = artifacts.load_version(run_compress(str(frozen["outcome"].version), "int8,fold", tmp_path / "f",
                                                  track=False).version)
    report = version.manifest.recipe[-1].report
    # Nothing derived from an int8 weight is folded (that would re-materialise float32 kernels).
    assert report["moved"] == {}
    assert report["graph_bytes_after"] <= report["graph_bytes_before"]
    assert {t.storage for n, t in version.manifest.tensors.items() if not n.endswith("/bias")} == {"int8"}
