"""Comparing two benchmark reports: ratios per figure, and a verdict usable as a CI regression gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanedge.bench.report import BenchReport
from scanedge.errors import ConfigError

__all__ = ["Comparison", "ComparisonRow", "compare_reports", "report_mismatches"]

COMPARED_STATS = ("median", "p99")


@dataclass(frozen=True)
class ComparisonRow:
    """One statistic of one figure in both reports.

    Attributes:
        figure: the figure's name in both reports (``infer``, ``total``, ...).
        stat: which statistic of it (``median``, ``p99``, ...).
        a: its value in report A, in ms.
        b: its value in report B, in ms.
        limit: the ratio above which the row fails the comparison; None: informational only.
    """

    figure: str
    stat: str
    a: float
    b: float
    ratio: float  # b / a: above 1 means B is slower
    limit: float | None

    @property
    def exceeded(self) -> bool:
        """Whether B is slower than A by more than the limit allows."""
        return self.limit is not None and self.ratio > self.limit


@dataclass(frozen=True)
class Comparison:
    """Report B against report A, statistic by statistic.

    Attributes:
        rows: one row per compared figure and statistic, in the order of the figures.
        mismatches: how the two runs differ besides the change under test (threads, engine, sizes, input,
            machine, ...): ratios between such runs measure the difference, not the change.
    """

    rows: tuple[ComparisonRow, ...]
    throughput_ratio: float | None  # b / a: below 1 means B is slower
    mismatches: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: rows (figure, stat, a_ms, b_ms, ratio, exceeded), throughput ratio, mismatches, verdict."""
        return {
            "rows": [
                {"figure": r.figure, "stat": r.stat, "a_ms": r.a, "b_ms": r.b, "ratio": r.ratio, "exceeded": r.exceeded}
                for r in self.rows
            ],
            "throughput_ratio": self.throughput_ratio,
            "mismatches": list(self.mismatches),
            "failed": self.failed,
        }

    @property
    def failed(self) -> bool:
        """Whether any row exceeded its limit: the regression gate's verdict."""
        return any(r.exceeded for r in self.rows)


def _setting(report: BenchReport, *keys: str) -> object:
    for key in keys:
        if report.settings.get(key) is not None:
            return report.settings[key]
    return None


def report_mismatches(a: BenchReport, b: BenchReport) -> list[str]:
    """What differs between the two runs' conditions: mode, threads, engine, input sizes and kind, outputs,
    overlay, model and machine. Each difference is one line ``threads: 1 vs 2``."""
    checks: list[tuple[str, object, object]] = [
        ("mode", a.mode, b.mode),
        (
            "threads",
            _setting(a, "threads") or a.engine.get("threads"),
            _setting(b, "threads") or b.engine.get("threads"),
        ),
        ("engine", a.engine.get("backend", a.engine.get("kind")), b.engine.get("backend", b.engine.get("kind"))),
        ("providers", a.engine.get("providers"), b.engine.get("providers")),
        ("input shape", _setting(a, "shape", "slice_shapes"), _setting(b, "shape", "slice_shapes")),
        ("input kind", _setting(a, "input"), _setting(b, "input")),
        ("outputs", _setting(a, "outputs"), _setting(b, "outputs")),
        ("overlay", _setting(a, "overlay", "overlay_encoding"), _setting(b, "overlay", "overlay_encoding")),
        ("consoles", _setting(a, "consoles"), _setting(b, "consoles")),
        ("rate per console", _setting(a, "rate_per_console"), _setting(b, "rate_per_console")),
        ("workers", _setting(a, "workers"), _setting(b, "workers")),
        ("machine", a.machine.get("cpu_model"), b.machine.get("cpu_model")),
    ]
    return [f"{what}: {va} vs {vb}" for what, va, vb in checks if va != vb]


def compare_reports(
    a: BenchReport,
    b: BenchReport,
    *,
    max_ratio: float | None = None,
    figures: Sequence[str] | None = None,
    stats: Sequence[str] = COMPARED_STATS,
) -> Comparison:
    """Ratios B/A of the chosen statistics for every figure both reports have (or those named).

    ConfigError when a named figure is missing from either report, or the reports share none.
    """
    fa, fb = a.figures(), b.figures()
    names = [n for n in (figures or fa) if n in fa and n in fb]
    if figures:
        missing = [n for n in figures if n not in fa or n not in fb]
        if missing:
            raise ConfigError(f"figure(s) {missing} are not in both reports; A has {sorted(fa)}, B has {sorted(fb)}")
    if not names:
        raise ConfigError(f"the reports share no figures (A: {sorted(fa)}, B: {sorted(fb)})")
    rows = []
    for name in names:
        for stat in stats:
            va, vb = getattr(fa[name], stat), getattr(fb[name], stat)
            ratio = vb / va if va > 0 else float("inf")
            rows.append(ComparisonRow(name, stat, va, vb, ratio, max_ratio))
    thr = None
    if a.throughput_per_s and b.throughput_per_s:
        thr = b.throughput_per_s / a.throughput_per_s
    return Comparison(tuple(rows), thr, tuple(report_mismatches(a, b)))
