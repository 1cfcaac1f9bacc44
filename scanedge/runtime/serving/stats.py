"""Counters and fixed-memory latency histograms for a long-running runtime.

Histograms use log-spaced buckets (10 per decade, 0.05 ms to 100 s): constant memory however long the
runtime runs, and percentiles within ~12% of the true value, which is what dashboards need. Exact
percentiles come from edge-bench, which keeps raw samples. Mutated by the I/O thread only.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["LatencyHistogram", "RuntimeStats"]

_BOUNDS = tuple(float(b) for b in np.round(np.logspace(np.log10(0.05), 5, 64), 4))


class LatencyHistogram:
    """Latencies in milliseconds counted into the fixed log-spaced buckets, plus the count and the maximum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)  # last bucket: above the top bound
        self.count = 0
        self.max = 0.0

    def record(self, ms: float) -> None:
        """Count one latency of ``ms`` milliseconds."""
        self.counts[bisect.bisect_left(_BOUNDS, ms)] += 1
        self.count += 1
        self.max = max(self.max, ms)

    def percentile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-th percentile (the max for the overflow bucket)."""
        if not self.count:
            return None
        rank = q / 100.0 * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return min(_BOUNDS[i], self.max) if i < len(_BOUNDS) else self.max
        return self.max

    def to_dict(self) -> dict[str, Any]:
        """The protocol's Histogram: non-empty buckets only (bound None: above the top), count, p50/p90/p99, max."""
        used = [i for i, c in enumerate(self.counts) if c]
        return {
            "buckets_ms": [(_BOUNDS[i] if i < len(_BOUNDS) else None) for i in used],
            "counts": [self.counts[i] for i in used],
            "count": self.count,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": self.max if self.count else None,
        }


class RuntimeStats:
    """What the runtime has done since it started: counters plus per-model histograms."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.latency: dict[str, LatencyHistogram] = {}
        self.queue: dict[str, LatencyHistogram] = {}

    def record_result(self, model: str, total_ms: float, queue_ms: float) -> None:
        """Count one RESULT of ``model`` with its end-to-end and queue milliseconds."""
        self.counters["ok"] += 1
        self.latency.setdefault(model, LatencyHistogram()).record(total_ms)
        self.queue.setdefault(model, LatencyHistogram()).record(queue_ms)

    def record_error(self, code: str) -> None:
        """Count one reply without a result: ``superseded``, ``expired``, ``busy``, or ``error.CODE``."""
        key = {"SUPERSEDED": "superseded", "EXPIRED": "expired", "BUSY": "busy"}.get(code)
        self.counters[key or f"error.{code}"] += 1

    def histograms(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per model: ``latency_ms`` (received -> reply handed to ZeroMQ) and ``queue_ms`` (received ->
        a worker starts it)."""
        return {
            model: {"latency_ms": self.latency[model].to_dict(), "queue_ms": self.queue[model].to_dict()}
            for model in self.latency
        }

    def to_dict(self) -> dict[str, Any]:
        """Counters (sorted by name) and :meth:`histograms`, as STATS_REPLY carries them."""
        return {"counters": dict(sorted(self.counters.items())), "histograms": self.histograms()}

    def summary_line(self) -> str:
        """One log line: the main counters and each model's p50/p99 latency."""
        c = self.counters
        errors = sum(v for k, v in c.items() if k.startswith("error."))
        parts = [
            f"received {c['received']}",
            f"ok {c['ok']}",
            f"superseded {c['superseded']}",
            f"expired {c['expired']}",
            f"busy {c['busy']}",
            f"errors {errors}",
            f"client gone {c['client_gone']}",
        ]
        for model, h in self.latency.items():
            parts.append(f"{model} p50 {h.percentile(50) or 0:.2f} ms p99 {h.percentile(99) or 0:.2f} ms")
        return ", ".join(parts)
