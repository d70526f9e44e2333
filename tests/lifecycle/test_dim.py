"""dim:R: a narrower embedding with the projection folded into the conv kernels; the result is the same CNN, so it
serves, restores and retrains like any version, and a short fine-tune wins back what the projection lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts
from lifecycle.budget import Budget, Measurement, SearchSpace, dims_for, search
from lifecycle.errors import ConfigError, ModelError
from tests.helpers import new_mr_csv

EXACT = 1e-5  # restored model vs graph: the same float32 values


def test_the_projection_keeps_conv_inputs_in_the_kept_subspace() -> None:
    from lifecycle.compress import reduce_dim
    from lifecycle.storage import StoredTensor

    rng = np.random.default_rng(0)
    # An embedding of rank 6 in 16 columns: a width of 6 keeps every conv pre-activation.
    table = (rng.normal(size=(50, 6)) @ rng.normal(size=(6, 16))).astype(np.float32)
    kernel = rng.normal(size=(3, 16, 5)).astype(np.float32)
    weights = {"weights/embedding": StoredTensor("float32", table),
               "weights/conv_3/kernel": StoredTensor("float32", kernel),
               "weights/conv_3/bias": StoredTensor("float32", np.zeros(5, np.float32))}
    out, changed = reduce_dim(weights, 6)
    assert set(changed) == {"weights/embedding", "weights/conv_3/kernel"}
    assert out["weights/embedding"].shape == (50, 6) and out["weights/conv_3/kernel"].shape == (3, 6, 5)
    before = np.einsum("vd,wdf->vwf", table, kernel)
    after = np.einsum("vd,wdf->vwf", out["weights/embedding"].value, out["weights/conv_3/kernel"].value)
    np.testing.assert_allclose(after, before, atol=1e-3 * np.abs(before).max())
    assert reduce_dim(weights, 16) == (weights, ())  # not narrower: nothing to do


def test_the_factorization_keeps_pre_activations_closer_than_projecting_the_embedding_alone() -> None:
    from lifecycle.compress import reduce_dim
    from lifecycle.storage import StoredTensor

    rng = np.random.default_rng(1)
    # Full rank, with kernels that read some directions of the embedding far more than others.
    table = rng.normal(size=(200, 16)).astype(np.float32)
    reads = np.diag(np.linspace(3.0, 0.05, 16))
    kernels = {f"weights/conv_{w}/kernel": np.einsum("de,wef->wdf", reads, rng.normal(size=(w, 16, 4)))
               .astype(np.float32) for w in (2, 3)}
    weights = {"weights/embedding": StoredTensor("float32", table),
               **{name: StoredTensor("float32", kernel) for name, kernel in kernels.items()}}
    out, _ = reduce_dim(weights, 5)

    def activations(embedding: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return np.einsum("vd,wdf->vwf", embedding, kernel)

    _, _, right = np.linalg.svd(table.astype(np.float64), full_matrices=False)
    projection = right[:5].T  # E alone: E P and P^T W
    ours = alone = 0.0
    for name, kernel in kernels.items():
        before = activations(table, kernel)
        ours += float(((activations(out["weights/embedding"].value, out[name].value) - before) ** 2).sum())
        alone += float(((activations(table @ projection, np.einsum("dr,wdf->wrf", projection, kernel))
                         - before) ** 2).sum())
    assert ours < 0.5 * alone  # the optimum over rank-5 factorizations: here 0.41 of the other's error


def test_row_weights_spend_the_width_on_the_heavy_rows_and_equal_weights_change_nothing() -> None:
    from lifecycle.compress import reduce_dim
    from lifecycle.storage import StoredTensor

    rng = np.random.default_rng(2)
    table = rng.normal(size=(120, 12)).astype(np.float32)
    table[0] = 0.0  # the pad row
    table[1:21] = rng.normal(size=(20, 4)) @ rng.normal(size=(4, 12))  # the frequent rows: 4 directions between them
    kernel = rng.normal(size=(3, 12, 6)).astype(np.float32)
    weights = {"weights/embedding": StoredTensor("float32", table),
               "weights/conv_3/kernel": StoredTensor("float32", kernel)}
    counts = np.ones(120)
    counts[1:21] = 1000.0  # 20 frequent tokens, the rest seen about once

    def row_errors(out: dict) -> np.ndarray:
        before = np.einsum("vd,wdf->vwf", table, kernel)
        after = np.einsum("vd,wdf->vwf", out["weights/embedding"].value, out["weights/conv_3/kernel"].value)
        return ((after - before) ** 2).sum(axis=(1, 2))

    plain, _ = reduce_dim(weights, 4)
    weighted, _ = reduce_dim(weights, 4, counts)
    plain_errors, weighted_errors = row_errors(plain), row_errors(weighted)
    # The frequent rows come out (almost) exact, the weighted total is the smaller, and the pad row stays zero.
    assert weighted_errors[1:21].sum() < 0.05 * plain_errors[1:21].sum()
    assert (counts * weighted_errors).sum() < (counts * plain_errors).sum()
    assert not weighted["weights/embedding"].value[0].any()
    same, _ = reduce_dim(weights, 4, np.full(120, 7.0))  # equal weights: the unweighted factorization's product
    np.testing.assert_allclose(row_errors(same), plain_errors, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def narrowed(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("dim")
    source = str(frozen["outcome"].version)
    return {recipe: run_compress(source, recipe, root / recipe.replace(":", "-").replace(",", "+"), track=False)
            for recipe in ("int8", "dim:16,tune:1,int8")}


def test_a_narrower_embedding_is_a_smaller_cnn_that_serves(narrowed: dict, frozen: dict) -> None:
    from lifecycle.inference import Predictor

    parent = artifacts.load_version(frozen["outcome"].version)
    plain, narrow = (artifacts.load_version(narrowed[r].version) for r in ("int8", "dim:16,tune:1,int8"))
    width = parent.manifest.tensors["weights/embedding"].shape[1]
    assert width == 32 and narrow.manifest.tensors["weights/embedding"].shape[1] == 16
    assert narrow.manifest.tensors["weights/conv_3/kernel"].shape[1] == 16
    assert narrow.manifest.architecture.embedding_dim == 16
    assert narrow.manifest.serving.bytes < 0.6 * plain.manifest.serving.bytes
    # Measured on the tests' 800-example MR slice: int8 55.0%, dim:16,tune:1,int8 within a few points of it.
    accuracy = {r: narrowed[r].metrics["test_accuracy"] for r in narrowed}
    assert accuracy["dim:16,tune:1,int8"] >= accuracy["int8"] - 0.05
    texts = ["an utterly charming and hilarious film", "a boring , lifeless mess"]
    graph = Predictor(narrow, "graph").predict_proba(texts)
    assert np.abs(Predictor(narrow, "litert").predict_proba(texts) - graph).max() <= 0.05


def test_a_narrowed_version_restores_and_retrains(narrowed: dict, data_dir: Path, tmp_path: Path) -> None:
    from lifecycle.backend import configure
    from lifecycle.restore import restore_model, restored_difference
    from lifecycle.workflows import RetrainOptions, load_graph_version, run_retrain

    version = artifacts.load_version(narrowed["dim:16,tune:1,int8"].version)
    graph = load_graph_version(version)
    configure(0)
    restored = restore_model(graph, version.config, len(version.labels))
    ids = np.random.default_rng(0).integers(0, version.manifest.architecture.vocab_size, (8, version.max_len))
    assert restored_difference(restored, graph, ids) <= EXACT
    new = new_mr_csv(data_dir, tmp_path / "new.csv", 150)
    outcomes = run_retrain(str(version.path), new, RetrainOptions(epochs=1), tmp_path / "next", track=False)
    again = artifacts.load_version(outcomes[-1].version)
    assert [s.name for s in again.manifest.recipe] == ["dim", "tune", "int8"]
    assert again.manifest.tensors["weights/embedding"].shape[1] == 16


def test_dim_refuses_quantized_weights_and_bad_widths(narrowed: dict) -> None:
    from lifecycle.workflows import run_compress

    with pytest.raises(ModelError, match="dim:8: tensor .* is int8 .* put it before prune and the storage step"):
        run_compress(str(narrowed["int8"].version), "dim:8,int4", track=False)
    with pytest.raises(ConfigError, match="dim needs the embedding width to keep"):
        run_compress(str(narrowed["int8"].version), "dim:0", track=False)


def test_the_search_narrows_the_embedding_with_a_fine_tune() -> None:
    assert dims_for(300) == tuple(range(40, 153, 8)) and dims_for(32) == (8, 16) and dims_for(16) == (8,)

    def evaluate(recipe: tuple[str, ...]) -> Measurement:
        size, accuracy = 1000.0, 0.80
        for step in recipe:
            if step.startswith("dim:"):
                width = int(step[4:])
                size *= width / 300
                accuracy -= (0.004 if "tune:2" in recipe else 0.03) * 300 / width / 2
            elif step == "int8":
                size *= 0.25
        return Measurement(int(size), int(size), accuracy)

    space = SearchSpace(storages=("int8",), coverages=(), sparsities=(), tune_epochs=2, dims=dims_for(300))
    result = search(evaluate, 0.80, Budget(1.0), space)
    # A tuned width R loses 60 / R points: within budget from 64 (of 40, 48, ..., 152). Bisected: the widest (152),
    # then the middle of the 15 widths (96), of 40..96 (64), of 40..64 (48, over), of 56..64 (56, over): 5 trials
    # where walking from the narrowest would take 4 and walking a grid this fine from the widest 12.
    widths = [int(t.recipe[0][4:]) for t in result.trials[1:]]
    assert widths == [152, 96, 64, 48, 56]
    assert result.chosen is not None and result.chosen.recipe == ("dim:64", "tune:2", "int8")
    assert all(t.within == (int(t.recipe[0][4:]) >= 64) for t in result.trials[1:])


def test_bisection_finds_the_first_within_in_logarithmic_trials() -> None:
    from lifecycle.budget import _narrowest_within

    recipes = [(f"dim:{w}",) for w in range(8, 129, 8)]  # 16 widths
    for first in range(len(recipes)):
        asked: list[tuple[str, ...]] = []

        def within(recipe: tuple[str, ...], first: int = first, asked: list = asked) -> bool:
            asked.append(recipe)
            return recipes.index(recipe) >= first

        assert _narrowest_within(recipes, within) == recipes[first]
        assert len(asked) <= 5 and len(set(asked)) == len(asked)
    assert _narrowest_within(recipes, lambda recipe: False) is None
    assert _narrowest_within([], lambda recipe: True) is None
