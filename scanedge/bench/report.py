"""A benchmark report: what was measured, on what, and the figures - as JSON, a terminal table and a plot.

The JSON schema (``scanedge.bench/1``) is documented in docs/edge-bench.md. Raw samples are stored
(milliseconds, rounded to the microsecond) so that every figure can be recomputed and two reports can
be compared later without rerunning anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.bench.stats import LatencyStats, summarize

__all__ = ["SCHEMA", "BenchReport", "describe_overhead", "machine_info", "speed_ratio", "versions"]

SCHEMA = "scanedge.bench/1"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores (all, and usable by this process), memory, OS, Python."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Versions of scanedge and of the libraries on its hot path (ONNX Runtime, numpy, OpenCV, pyzmq, libzmq)."""
    import cv2
    import zmq

    from scanedge.engines.ort_session import import_onnxruntime
    from scanedge.version import __version__

    return {
        "scanedge": __version__,
        "onnxruntime": import_onnxruntime().__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pyzmq": zmq.__version__,
        "zeromq": zmq.zmq_version(),
    }


def speed_ratio(ratio: float) -> str:
    """A time ratio B/A in words: ``1.85x faster`` below 1, ``1.20x slower`` above, ``same`` within 0.5%."""
    if ratio <= 0 or ratio != ratio:
        return "n/a"
    if abs(ratio - 1.0) < 0.005:
        return "same"
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def describe_overhead(baseline: dict[str, Any]) -> str:
    """One line for a report's ``baseline`` block: what the measured path adds to (or saves over) it."""

    def delta(ms: float) -> str:
        return f"+{ms:.3f} ms" if ms >= 0 else f"{-ms:.3f} ms less"

    o = baseline["overhead_ms"]
    return (
        f"versus the baseline ({baseline.get('what', 'session.run')}): p50 {delta(o['p50'])}, "
        f"p99 {delta(o['p99'])}; median {speed_ratio(baseline['ratio'])}"
    )


@dataclass
class BenchReport:
    """Figures are named series of samples ("total", "infer", "preprocess", "transport", ...).

    Attributes:
        mode: what was measured: ``engine``, ``pipeline``, ``stream`` or ``echo``.
        settings: the run's settings as reported (shape, threads, count, rate, ...).
        samples: raw latencies in ms per figure; every statistic is computed from these.
        engine: the engine's own description (backend, providers, threads, ...).
        model: which model: path, name, version, sha256.
        counts: outcome counts (``ok``, ``busy``, ``error.CODE``, ...) where outcomes vary.
        throughput_per_s: slices per second over the measured part of the run.
        wall_s: wall-clock seconds of the measured part of the run.
        baseline: the plain ONNX Runtime (or in-process) baseline and the overhead over it; None without one.
        warnings: why the figures may not be trustworthy (high variance, load, throttling).
        machine: :func:`machine_info` of the machine that measured.
        versions: :func:`versions` of the libraries that measured.
        created: when the report was made, ISO 8601 in UTC.
    """

    mode: str
    settings: dict[str, Any]
    samples: dict[str, list[float]]
    engine: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    throughput_per_s: float | None = None
    wall_s: float | None = None
    baseline: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    versions: dict[str, str] = field(default_factory=versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    timeline: list[float] = field(default_factory=list)  # seconds since start of each "total" sample

    def figures(self) -> dict[str, LatencyStats]:
        """Statistics of every figure that has samples."""
        return {name: summarize(values) for name, values in self.samples.items() if len(values)}

    def to_dict(self) -> dict[str, Any]:
        """The ``scanedge.bench/1`` JSON document: settings, figures, warnings and the raw samples."""
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "created": self.created,
            "machine": self.machine,
            "versions": self.versions,
            "engine": self.engine,
            "model": self.model,
            "settings": self.settings,
            "counts": self.counts,
            "throughput_per_s": self.throughput_per_s,
            "wall_s": self.wall_s,
            "figures": {name: s.to_dict() for name, s in self.figures().items()},
            "baseline": self.baseline,
            "warnings": self.warnings,
            "samples": {name: [round(v, 4) for v in values] for name, values in self.samples.items()},
            "timeline": [round(t, 4) for t in self.timeline],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        """The report a :meth:`to_dict` document describes; ValueError when it is not a ``scanedge.bench/1`` one."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a scanedge benchmark report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return cls(
            mode=data["mode"],
            settings=data["settings"],
            samples={k: list(v) for k, v in data["samples"].items()},
            engine=data.get("engine", {}),
            model=data.get("model", {}),
            counts=data.get("counts", {}),
            throughput_per_s=data.get("throughput_per_s"),
            wall_s=data.get("wall_s"),
            baseline=data.get("baseline"),
            warnings=list(data.get("warnings", [])),
            machine=data.get("machine", {}),
            versions=data.get("versions", {}),
            created=data.get("created", ""),
            timeline=list(data.get("timeline", [])),
        )

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> BenchReport:
        """A report written by :meth:`write_json`; ValueError when the file is not JSON or not a report."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc
        return cls.from_dict(data)

    # --- presentation -------------------------------------------------------------------------------

    def render(self, console: Any) -> None:
        """A trtexec-like summary on a rich console: the table whole (never cut numbers), then one line each
        for throughput and counts, the baseline, and the warnings.

        p99.9 is shown only from 1000 samples on (below that it is the maximum in disguise).
        """
        from rich.text import Text

        from scanedge.console import print_table

        title = f"edge-bench {self.mode}"
        if self.model:
            title += f" - {self.model.get('name', '')} {self.model.get('version', '')}".rstrip()
        rows = dict(self.figures())
        if self.baseline:
            for name, values in self.baseline.get("samples", {}).items():
                rows[f"baseline {name}"] = summarize(values)
        columns = ("figure (ms)", "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max", "stdev", "jitter", "tail")
        table = []
        for name, s in rows.items():
            values = (s.min, s.mean, s.median, s.p90, s.p95, s.p99, s.p999, s.max, s.stdev, s.jitter, s.tail)
            cells = [f"{v:.3f}" for v in values]
            if s.count < 1000:
                cells[6] = "-"
            table.append([name, *cells])
        print_table(console, title, columns, table)
        parts = []
        if self.throughput_per_s is not None:
            parts.append(f"throughput {self.throughput_per_s:.1f} slices/s")
        if self.counts:
            counts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if k != "late_ok")
            if self.counts.get("late_ok"):
                counts += f" ({self.counts['late_ok']} of the ok replies arrived after the deadline)"
            parts.append(counts)
        if self.engine:
            backend = self.engine.get("backend", self.engine.get("kind"))  # older reports say "kind"
            parts.append(f"engine {backend} {self.engine.get('providers', '')}".rstrip())
        if parts:
            console.print(Text("; ".join(parts)))
        roles = (self.model or {}).get("roles")
        if roles:  # a multi-input model (manifest inputs)
            how = {
                "engine": "random tensors",
                "stream": "each reference slice sent after a partner SEGMENT per role, made on its grid; latency "
                "from the set's first SEGMENT to the reference's RESULT",
            }.get(self.mode, "each slice with partners made on its grid")
            console.print(Text(f"model takes {len(roles)} input roles ({', '.join(roles)}): every role fed ({how})"))
        series = self.settings.get("series_model")
        if isinstance(series, dict):  # a score head's 3-D series model (edge-bench pipeline)
            size = "x".join(str(d) for d in series.get("input", [])[2:])
            console.print(
                Text(
                    f"series model of head {series.get('head')}: series_model is one run per series of "
                    f"{series.get('slices_per_series')} slice(s) at its completion (a {size} volume, built and run); "
                    "series_plane is each slice's plane, beside its total"
                )
            )
        if self.baseline and "overhead_ms" in self.baseline:
            console.print(Text(describe_overhead(self.baseline)))
        probe = (self.engine.get("threads_auto") or {}).get("probe_ms") or self.engine.get("threads_probe_ms")
        if probe:
            measured = ", ".join(f"{n} thread(s) {ms:.2f} ms" for n, ms in probe.items())
            console.print(
                Text(f"--threads auto chose {self.engine.get('threads')} (start-up probe, median: {measured})")
            )
        for name, o in (self.baseline or {}).get("variants", {}).items():
            console.print(Text(f"  added by the runtime over {name}: p50 {o['p50']:+.3f} ms, p99 {o['p99']:+.3f} ms"))
        for name, added in (self.baseline or {}).get("outside_model_added_p50", {}).items():
            console.print(
                Text(f"  added outside the model ({name}): p50 {added:+.3f} ms (inference left out of both sides)")
            )
        for w in self.warnings:
            line = Text("warning: ", style="yellow")
            line.append(w)
            console.print(line)

    def plot(self, path: str | os.PathLike[str], figure: str = "total") -> None:
        """Latency histogram and latency over time for one figure (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise RuntimeError("--plot needs matplotlib: pip install 'scanedge[bench]'") from exc
        values = np.asarray(self.samples.get(figure) or next(iter(self.samples.values())), np.float64)
        fig, (hist, over) = plt.subplots(1, 2, figsize=(12, 4.2))
        hist.hist(values, bins=min(80, max(10, values.size // 10)), color="#3b7dd8", alpha=0.85, label=figure)
        if self.baseline and self.baseline.get("samples"):
            base = np.asarray(next(iter(self.baseline["samples"].values())), np.float64)
            hist.hist(base, bins=min(80, max(10, base.size // 10)), color="#999999", alpha=0.6, label="baseline")
        for q, style in ((50, "-"), (99, "--")):
            hist.axvline(np.percentile(values, q), color="k", linestyle=style, linewidth=1, label=f"p{q}")
        hist.set_xlabel("latency (ms)")
        hist.set_ylabel("slices")
        hist.legend()
        x = np.asarray(self.timeline, np.float64) if len(self.timeline) == values.size else np.arange(values.size)
        over.plot(x, values, ".", markersize=2, color="#3b7dd8")
        over.set_xlabel("time (s)" if len(self.timeline) == values.size else "sample")
        over.set_ylabel("latency (ms)")
        model = f"{self.model.get('name', '')} " if self.model else ""
        fig.suptitle(f"edge-bench {self.mode}: {model}{figure} latency (n={values.size})")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
