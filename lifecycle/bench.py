"""Serving measurements of a version in this process: load time, first call, batch-1 latency, throughput, memory.

The stable metric names of DESIGN.md: ``load_seconds``, ``first_call_ms`` (the user's first call after load; the
loader warms up, so this is not TensorFlow's one-off graph preparation), ``latency_p50_ms``/``latency_p99_ms``
(batch 1), ``throughput_per_s`` (batch 256), ``rss_mb`` (resident memory added by loading and using the model).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lifecycle.artifacts import Version
from lifecycle.procstat import rss_bytes


@dataclass(frozen=True)
class ServingStats:
    """One version's serving figures."""

    load_seconds: float
    first_call_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    rss_mb: float
    runtime: str = ""

    def metrics(self) -> dict[str, float]:
        return {
            "load_seconds": self.load_seconds,
            "first_call_ms": self.first_call_ms,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "throughput_per_s": self.throughput_per_s,
            "rss_mb": self.rss_mb,
        }


def measure(version: Version, texts: Sequence[str], calls: int = 200, batch: int = 256, runtime: str = "auto"
            ) -> ServingStats:
    """Load ``version`` with the Predictor and time it on ``texts`` (tokenization included, as a user sees it).

    Args:
        version: a checkpoint, frozen or compressed version.
        texts: sample texts (the first is the first call; ``batch`` of them, cycled, make the throughput batch).
        calls: batch-1 calls for the latency percentiles.
        batch: batch size for throughput.
        runtime: the Predictor's runtime (auto, litert, graph).
    """
    from lifecycle.inference import Predictor

    if not texts:
        raise ValueError("measure() needs at least one text")
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    predictor = Predictor(version, runtime)
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    predictor.predict_proba([texts[0]])
    first_call_ms = 1e3 * (time.perf_counter() - started)

    latencies = np.empty(calls)
    for i in range(calls):
        text = texts[i % len(texts)]
        started = time.perf_counter()
        predictor.predict_proba([text])
        latencies[i] = 1e3 * (time.perf_counter() - started)

    big = [texts[i % len(texts)] for i in range(batch)]
    predictor.predict_proba(big)
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        predictor.predict_proba(big)
    throughput = rounds * batch / (time.perf_counter() - started)
    rss_mb = (rss_bytes() - before) / 2**20
    return ServingStats(
        load_seconds=load_seconds,
        first_call_ms=first_call_ms,
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p99_ms=float(np.percentile(latencies, 99)),
        throughput_per_s=throughput,
        rss_mb=rss_mb,
        runtime=predictor.runtime,
    )
