"""Latency statistics the way trtexec and perf_analyzer report them, plus the warnings they give.

Percentiles use numpy's default (linear interpolation between closest ranks), so any figure here can be
recomputed from the raw samples stored in the JSON report with one numpy call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "PERCENTILES",
    "LatencyStats",
    "RunMonitor",
    "cpu_clock_mhz",
    "cpu_load_warning",
    "drift_warning",
    "stability_warnings",
    "summarize",
    "system_busy_seconds",
    "throttling_warning",
]

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
#: coefficient of variation above which results are flagged as unstable (trtexec warns at 1%
#: for GPU compute; a shared 2-core CPU box needs a looser bar)
HIGH_CV = 0.10


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one series of latency samples, all in milliseconds.

    Attributes:
        count: number of samples.
        min: the fastest sample.
        mean: arithmetic mean.
        median: 50th percentile.
        p90: 90th percentile (numpy's linear interpolation, as every percentile here).
        p95: 95th percentile.
        p99: 99th percentile; needs 100 samples or more to mean anything.
        p999: 99.9th percentile; needs 1000 samples or more.
        max: the slowest sample.
        stdev: sample standard deviation (0 for a single sample).
    """

    count: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    stdev: float
    jitter: float  # p99 - p50
    tail: float  # max - p95
    cv: float  # stdev / mean

    def to_dict(self) -> dict[str, float]:
        """Every field by name, floats rounded to 10 ns for JSON."""
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        """The statistics :meth:`to_dict` wrote (extra keys are ignored; a missing one raises KeyError)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def summarize(samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
    """The statistics of ``samples_ms`` (milliseconds); ValueError when there are none."""
    a = np.asarray(samples_ms, np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    p50, p90, p95, p99, p999 = (float(v) for v in np.percentile(a, PERCENTILES))
    mean = float(a.mean())
    stdev = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return LatencyStats(
        count=int(a.size),
        min=float(a.min()),
        mean=mean,
        median=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        p999=p999,
        max=float(a.max()),
        stdev=stdev,
        jitter=p99 - p50,
        tail=float(a.max()) - p95,
        cv=stdev / mean if mean > 0 else math.inf,
    )


def stability_warnings(name: str, stats: LatencyStats) -> list[str]:
    """trtexec-style warnings about figures that should not be trusted as they are."""
    out = []
    if stats.count < 100:
        out.append(f"{name}: only {stats.count} samples; p99 needs >= 100 (use --count or --duration)")
    # p99.9 from fewer than 1000 samples is not warned about: reports leave it out instead
    if stats.cv > HIGH_CV:
        out.append(
            f"{name}: high variance (coefficient of variation {stats.cv:.0%}); the machine is noisy or "
            "throttling: compare medians, rerun, or pin the process"
        )
    return out


def drift_warning(name: str, samples_ms: Sequence[float]) -> str | None:
    """Latency that grows during a run (thermal throttling, a filling queue, a leak) shows as the last
    tenth of the samples being clearly slower than the first tenth."""
    a = np.asarray(samples_ms, np.float64)
    if a.size < 100:
        return None
    tenth = a.size // 10
    first, last = float(np.median(a[:tenth])), float(np.median(a[-tenth:]))
    if first > 0 and last > first * 1.25:
        return (
            f"{name}: latency drifted up during the run (median {first:.2f} ms in the first tenth, {last:.2f} ms "
            "in the last): throttling, a filling queue, or growing load"
        )
    return None


def cpu_clock_mhz() -> float | None:
    """Mean current CPU clock from /proc/cpuinfo (None where the platform does not report it)."""
    try:
        with open("/proc/cpuinfo") as f:
            values = [float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return None
    return sum(values) / len(values) if values else None


def throttling_warning(before_mhz: float | None, after_mhz: float | None) -> str | None:
    """A warning when the mean CPU clock fell by more than 10% during a run; None otherwise or when unknown."""
    if before_mhz and after_mhz and after_mhz < 0.9 * before_mhz:
        return f"CPU clock fell from {before_mhz:.0f} to {after_mhz:.0f} MHz during the run: throttling"
    return None


def cpu_load_warning(
    before: tuple[float, float], after: tuple[float, float], own_cpu_s: float, wall_s: float
) -> str | None:
    """Flag CPU time used by *other* processes during a run (from /proc/stat busy time)."""
    cores = os.cpu_count() or 1
    busy = (after[0] - before[0]) - own_cpu_s
    if wall_s <= 0:
        return None
    other = busy / (wall_s * cores)
    if other > 0.15:
        return (
            f"other processes used ~{other:.0%} of the CPU during the run; latencies are inflated. "
            "Stop other work, or compare figures measured side by side in one run"
        )
    return None


def system_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds since boot over all cores, from /proc/stat; zeros where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return (total - idle) / tick, total / tick


class RunMonitor:
    """Snapshots the machine at the start of a run; ``warnings`` then says what went wrong meanwhile:
    too few samples, high variance, upward drift, CPU throttling, other processes using the CPU."""

    def __init__(self) -> None:
        import resource
        import time

        self._resource, self._time = resource, time
        self.busy = system_busy_seconds()
        self.cpu = self._own_cpu()
        self.mhz = cpu_clock_mhz()
        self.start = time.perf_counter()

    def _own_cpu(self) -> float:
        r = self._resource.getrusage(self._resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def warnings(self, name: str, samples_ms: Sequence[float], *, check_load: bool = True) -> list[str]:
        """Warnings about figure ``name`` measured since this monitor was made.

        ``check_load=False`` leaves out the other-processes check, for runs where another process (a spawned
        runtime, an echo peer) is expected to use the CPU.
        """
        wall = self._time.perf_counter() - self.start
        out = stability_warnings(name, summarize(samples_ms))
        for warning in (
            drift_warning(name, samples_ms),
            throttling_warning(self.mhz, cpu_clock_mhz()),
            cpu_load_warning(self.busy, system_busy_seconds(), self._own_cpu() - self.cpu, wall)
            if check_load
            else None,
        ):
            if warning:
                out.append(warning)
        return out
