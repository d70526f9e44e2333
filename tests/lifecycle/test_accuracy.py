"""Full-size training on the published sets, with accuracy budgets near Kim (2014).

TREC runs in the default suite, so CI checks one full-size accuracy on real data. The default schedule trains it
about 20 epochs to a plateau (peak near epoch 15); the default suite caps it at 6 epochs (79 s on an idle 2-core
machine, 90.0% test accuracy, measured 2026-12-02: within a point of the plateau's figure in benchmarks/train_bench.py
and two over the budget), and --run-slow runs it with the shipped schedule. MR and
StackOverflow (several minutes each) are marked slow: run them with --run-slow (make test-slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.config import load_config

REPO = Path(__file__).resolve().parents[2]

# Budgets sit two to three points under what benchmarks/train_bench.py measured (MR word 76.1, TREC word 90.7,
# StackOverflow BPE 88.3): one seed moves these test sets by about a point, and a broken model lands far below.
BUDGETS = {"trec-word.yaml": 0.88, "mr-word.yaml": 0.74, "stackoverflow-bpe.yaml": 0.85}
SLOW = pytest.mark.slow


CASES = [pytest.param("trec-word.yaml", ["train.epochs=6"], id="trec-word-6-epochs"),
         *(pytest.param(c, [], id=c.removesuffix(".yaml"), marks=SLOW) for c in BUDGETS)]


@pytest.mark.parametrize(("config", "overrides"), CASES)
def test_full_training_reaches_budget(config: str, overrides: list[str], data_dir: Path, tmp_path: Path) -> None:
    from lifecycle.workflows import run_train

    cfg = load_config(REPO / "configs" / config, ["tracking.enabled=false", *overrides])
    outcome = run_train(cfg, tmp_path / "v", versions_dir=tmp_path / "versions")
    assert outcome.metrics["test_accuracy"] >= BUDGETS[config]
