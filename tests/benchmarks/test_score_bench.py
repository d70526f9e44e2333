"""benchmarks/score_bench.py's and score_memory.py's measuring parts: the process-tree memory sampler and the
sample picking (the benchmarks themselves take an hour on two cores; README's bench:score and bench:score-memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GROW = """
import time
held = bytearray(60 << 20)          # 60 MB touched at once
for i in range(0, len(held), 4096):
    held[i] = 1
until = time.process_time() + 0.2   # a fifth of a second of CPU, then a second asleep
while time.process_time() < until:
    pass
time.sleep(1.0)
"""


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


def test_run_measured_reads_the_peak_and_samples_of_a_real_process() -> None:
    from benchmarks.score_bench import run_measured

    trace: list = []
    measured = run_measured([sys.executable, "-c", GROW], trace=trace)
    assert measured["seconds"] >= 1.0
    assert max(measured["peak_rss_mb"]["driver"]) >= 60, measured
    assert 0.15 <= measured["cpu_seconds"] <= measured["seconds"], measured
    rss = [sample[3] for sample in trace if sample[2] == "driver"]
    assert len(rss) >= 2 and max(rss) >= 60e6
    times = [sample[0] for sample in trace]
    assert times == sorted(times) and times[-1] <= measured["seconds"]


def test_rss_at_takes_each_process_nearest_sample_to_each_fraction() -> None:
    from benchmarks.score_memory import rss_at

    trace = [(t, 7, "local worker", int((60 + t) * 1e6)) for t in range(0, 101)]
    trace += [(t, 3, "driver", int(150e6)) for t in range(0, 101, 10)]
    trace += [(t, 9, "multiprocessing resource tracker", int(2e6)) for t in range(0, 101, 10)]
    assert rss_at(trace, 100.0) == {"local worker": [[70.0, 110.0, 150.0]], "driver": [[150.0, 150.0, 150.0]]}


def test_outputs_are_named_in_one_place(tmp_path: Path) -> None:
    from benchmarks.score_bench import output_path

    assert output_path(tmp_path, "v", "predict", 10) == tmp_path / "v" / "predict-10.jsonl"
    assert output_path(tmp_path, "v", "spark", 10) == tmp_path / "v" / "spark-10"
