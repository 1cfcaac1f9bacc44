"""``threads="auto"``: ONNX Runtime's intra-op thread count chosen by measuring, once per model and settings.

How many threads a model should get depends on the model as much as on the machine: on two cores the
fp32 demo model runs 1.6x faster on two threads than on one, while its int8 version gains a tenth (its
quantized convolutions at these channel counts parallelise poorly) and on one thread still beats fp32 on
two, leaving the other core to the runtime's I/O thread and the console. So ``auto`` measures instead of
guessing: at start-up it opens a session per candidate count (1, 2, ..., the usable cores), times them in
interleaved rounds on inputs of the model's own shape, and goes to more threads only where they run at
least :data:`THREADS_TOLERANCE` faster (a thread more must buy a real speed-up: the core it takes is the
one everything else on a console needs). The choice is remembered per model file and settings for
the life of the process, so a runtime's second worker, or a benchmark's baseline session, gets the same
count without probing again.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PROBE_BUDGET_S",
    "PROBE_ROUNDS",
    "PROBE_RUNS",
    "THREADS_TOLERANCE",
    "ThreadChoice",
    "candidates",
    "choose",
    "pick",
    "usable_cores",
]

#: a count with more threads is taken only when its median is this much (relatively) below the fewer one's
THREADS_TOLERANCE = 0.15
#: interleaved rounds, and timed runs per candidate in each round (after two untimed warm-up runs)
PROBE_ROUNDS = 6
PROBE_RUNS = 4
#: rounds stop early once the timed runs have taken this long (and at least two rounds are done)
PROBE_BUDGET_S = 2.0


@dataclass(frozen=True)
class ThreadChoice:
    """What ``threads="auto"`` chose and why.

    Attributes:
        threads: the intra-op thread count the model runs with.
        probe_ms: median milliseconds per inference of each candidate count measured (empty when there
            was nothing to compare: one usable core, or inputs without a fixed shape).
        reason: ``probed``, ``one core``, or ``dynamic input`` (no shape to measure on: one per core).
    """

    threads: int
    probe_ms: dict[int, float] = field(default_factory=dict)
    reason: str = "probed"

    def to_dict(self) -> dict[str, Any]:
        """For reports: ``{"threads", "probe_ms": {"1": ms, ...}, "reason"}``."""
        return {
            "threads": self.threads,
            "probe_ms": {str(k): round(v, 3) for k, v in self.probe_ms.items()},
            "reason": self.reason,
        }


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def candidates(cores: int) -> tuple[int, ...]:
    """The thread counts worth measuring on ``cores`` cores: 1, 2, 4, ... up to all of them, and all of them."""
    counts = {1, cores}
    n = 2
    while n < cores:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))


_choices: dict[Any, ThreadChoice] = {}
_lock = threading.Lock()


def choose(key: Any, make_session: Callable[[int], Any], cores: int | None = None) -> tuple[ThreadChoice, Any]:
    """The thread count for the model ``key`` identifies, and a session made with it.

    ``make_session(threads)`` creates a session (an ``onnxruntime.InferenceSession``) with that many intra-op
    threads. A choice made before for the same ``key`` is reused without measuring.
    """
    with _lock:
        known = _choices.get(key)
        if known is not None:
            return known, make_session(known.threads)
        cores = usable_cores() if cores is None else cores
        if cores == 1:
            choice, session = ThreadChoice(1, reason="one core"), make_session(1)
        else:
            choice, session = _probe(make_session, candidates(cores))
        _choices[key] = choice
        return choice, session


def _feeds(session: Any) -> dict[str, np.ndarray] | None:
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    feeds = {}
    rng = np.random.default_rng(0)
    for node in session.get_inputs():
        shape = node.shape or []
        if not all(isinstance(d, int) and d > 0 for d in shape) or node.type not in types:
            return None
        feeds[node.name] = rng.standard_normal(shape).astype(types[node.type])
    return feeds


def _probe(make_session: Callable[[int], Any], counts: tuple[int, ...]) -> tuple[ThreadChoice, Any]:
    sessions = {counts[0]: make_session(counts[0])}
    feeds = _feeds(sessions[counts[0]])
    if feeds is None:  # nothing to measure on: ONNX Runtime's own default, one thread per core
        return ThreadChoice(max(counts), reason="dynamic input"), make_session(max(counts))
    for n in counts[1:]:
        sessions[n] = make_session(n)
    samples: dict[int, list[float]] = {n: [] for n in counts}
    for session in sessions.values():
        for _ in range(2):
            session.run(None, feeds)
    start = time.perf_counter()
    for round_ in range(PROBE_ROUNDS):  # interleaved, so that every count sees the same machine noise
        if round_ >= 2 and time.perf_counter() - start > PROBE_BUDGET_S:
            break  # a slow model (or a busy machine): enough samples to choose
        for n, session in sessions.items():
            for _ in range(PROBE_RUNS):
                t0 = time.perf_counter()
                session.run(None, feeds)
                samples[n].append((time.perf_counter() - t0) * 1e3)
    medians = {n: statistics.median(v) for n, v in samples.items()}
    chosen = pick(medians)
    return ThreadChoice(chosen, medians), sessions[chosen]


def pick(medians_ms: dict[int, float]) -> int:
    """The thread count to run with, from each count's median ms: start with the fewest threads, and move to
    more only where they are more than :data:`THREADS_TOLERANCE` faster than the count chosen so far."""
    counts = sorted(medians_ms)
    chosen = counts[0]
    for n in counts[1:]:
        if medians_ms[n] < medians_ms[chosen] * (1 - THREADS_TOLERANCE):
            chosen = n
    return chosen
