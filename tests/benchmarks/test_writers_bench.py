"""benchmarks/writers_bench.py's load as a test: 16 processes (trains, compress + promote chains, experiment cells)
writing to one ``mlflow server`` on PostgreSQL lose, duplicate and cross nothing, and every alias lands on its own
version. Minutes on two cores, so slow; the default suite's server tests are tests/lifecycle/test_tracking_server.py
and test_reliability.py's two trains at once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "writers_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("writers_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_plan_adds_up(bench: ModuleType) -> None:
    assert bench.plan(16) == (8, 4, 4)
    assert bench.plan(4) == (2, 1, 1)
    assert sum(bench.plan(7)) == 7


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_sixteen_writers_at_once_lose_and_duplicate_nothing(bench: ModuleType, store: str) -> None:
    outcome = bench.run_store(store, 16)
    assert outcome.errors == [] and outcome.exit_0 == 13  # 8 trains, 4 compress chains, 1 experiment (4 cells)
    assert outcome.runs == {"FINISHED": outcome.runs_expected}, outcome.runs
    assert outcome.versions == outcome.versions_expected and outcome.crossed == 0
    assert outcome.aliases_right == outcome.aliases_expected == 4
