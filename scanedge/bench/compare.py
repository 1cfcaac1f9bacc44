"""Comparing two benchmark reports: ratios per figure, and a verdict usable as a CI regression gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scanedge.bench.report import BenchReport
from scanedge.errors import ConfigError

__all__ = ["Comparison", "ComparisonRow", "compare_reports"]

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
    """

    rows: tuple[ComparisonRow, ...]
    throughput_ratio: float | None  # b / a: below 1 means B is slower

    @property
    def failed(self) -> bool:
        """Whether any row exceeded its limit: the regression gate's verdict."""
        return any(r.exceeded for r in self.rows)


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
    return Comparison(tuple(rows), thr)
