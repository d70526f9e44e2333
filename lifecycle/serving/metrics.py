"""Request counts, latency histograms and memory in the Prometheus text format (version 0.0.4).

Written out here rather than through prometheus-client: a dozen series, no global registry, no extra dependency.
Label values are only configured model names (a request for an unknown name counts under ``_unknown``), so a client
cannot grow the series without bound.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from lifecycle.procstat import rss_bytes

if TYPE_CHECKING:
    from lifecycle.serving.registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_MODEL = "_unknown"
# Seconds; batch-1 requests on an int8 model take well under a millisecond of inference, so the low end is fine.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters and histograms updated by the request handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.texts: dict[str, int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)

    def observe(self, model: str, code: int, seconds: float, texts: int) -> None:
        """One finished predict request."""
        with self._lock:
            self.requests[(model, code)] += 1
            if code == 200:
                self.texts[model] += texts
                counts = self.buckets[model]
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        counts[i] += 1
                self.latency_sum[model] += seconds
                self.latency_count[model] += 1

    def render(self, registry: Registry, in_flight: int) -> str:
        """The exposition text."""
        lines: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("lifecycle_requests_total", "counter", "Predict requests by model and HTTP status.")
            for (model, code), count in sorted(self.requests.items()):
                lines.append(f'lifecycle_requests_total{{model="{_escape(model)}",code="{code}"}} {count}')
            family("lifecycle_texts_total", "counter", "Texts classified by model.")
            for model, count in sorted(self.texts.items()):
                lines.append(f'lifecycle_texts_total{{model="{_escape(model)}"}} {count}')
            family("lifecycle_request_seconds", "histogram", "Latency of successful predict requests, seconds.")
            for model in sorted(self.latency_count):
                label = _escape(model)
                for bound, count in zip(BUCKETS, self.buckets[model], strict=True):
                    lines.append(f'lifecycle_request_seconds_bucket{{model="{label}",le="{bound}"}} {count}')
                lines.append(f'lifecycle_request_seconds_bucket{{model="{label}",le="+Inf"}} '
                             f"{self.latency_count[model]}")
                lines.append(f'lifecycle_request_seconds_sum{{model="{label}"}} {self.latency_sum[model]:.6f}')
                lines.append(f'lifecycle_request_seconds_count{{model="{label}"}} {self.latency_count[model]}')
        family("lifecycle_in_flight_requests", "gauge", "Predict requests being served now.")
        lines.append(f"lifecycle_in_flight_requests {in_flight}")
        family("lifecycle_model_info", "gauge", "The version each model name serves (value 1).")
        for slot in registry.slots.values():
            model = slot.current
            lines.append(f'lifecycle_model_info{{model="{_escape(slot.name)}",version="{_escape(model.label)}"}} 1')
        family("lifecycle_model_switches_total", "counter", "Versions switched in after an alias moved.")
        for slot in registry.slots.values():
            lines.append(f'lifecycle_model_switches_total{{model="{_escape(slot.name)}"}} {slot.switches}')
        family("lifecycle_model_refusing", "gauge", "1 while the alias points at a version the server refused.")
        for slot in registry.slots.values():
            lines.append(f'lifecycle_model_refusing{{model="{_escape(slot.name)}"}} {int(slot.refusing)}')
        family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
        lines.append(f"process_resident_memory_bytes {rss_bytes()}")
        family("process_start_time_seconds", "gauge", "Start time of the process since the epoch, seconds.")
        lines.append(f"process_start_time_seconds {registry.started:.3f}")
        return "\n".join(lines) + "\n"
