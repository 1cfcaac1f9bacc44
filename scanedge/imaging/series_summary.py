"""What a segmented series amounts to: lesion load per class and how long its slices took.

A radiologist reads a series, not a slice: how many slices show a finding, how much of it there is
(pixels, area, and a volume from the area times the spacing between slices), and the latency the
console saw. The summary is built from the slices (for series and geometry) and the per-slice
findings the postprocessor produced, so the CLI, the runtime and a DICOM node summarise alike.

Components here are counted per slice (2-D, 8-connected), so a lesion spanning five slices counts five
times, and reports label them so. Lesions as 3-D components, with their volume, come from
:mod:`scanedge.imaging.lesion_load` (the one series implementation, shared with the runtime's live series
state and the DICOM node); a summary carries that :class:`LesionLoad` beside the 2-D figures when the
caller accumulated one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scanedge.imaging.heads import MaskHeadLoad, SeriesScore
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.series import slice_spacing
from scanedge.imaging.slices import Slice

__all__ = ["ClassLoad", "LatencyPercentiles", "SeriesSummary", "summarize_series"]


@dataclass(frozen=True)
class ClassLoad:
    """One foreground class over one series.

    ``area_mm2`` is None when any slice lacks a pixel spacing; ``volume_mm3`` (area x slice spacing,
    rounded to 0.1 mm³) is None when the area or the spacing is unknown.

    Attributes:
        name: the class's name in the manifest.
        slices_with_finding: slices with at least one pixel of the class.
        pixels: the class's pixels summed over the slices.
    """

    name: str
    slices_with_finding: int
    pixels: int
    area_mm2: float | None
    components: int  # 2-D components summed over the slices
    volume_mm3: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready figures (the name is the key they are filed under)."""
        return {
            "slices_with_finding": self.slices_with_finding,
            "pixels": self.pixels,
            "area_mm2": self.area_mm2,
            "components": self.components,
            "volume_mm3": self.volume_mm3,
        }


@dataclass(frozen=True)
class LatencyPercentiles:
    """Exact percentiles of per-slice latencies, milliseconds, with the number of samples.

    Attributes:
        p50: the median.
        p90: the 90th percentile.
        p99: the 99th percentile.
        max: the slowest slice.
        count: how many latencies were summarised.
    """

    p50: float
    p90: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyPercentiles:
        """Percentiles of ``samples_ms``; raises ``ValueError`` when there are none."""
        a = np.asarray(samples_ms, np.float64)
        if a.size == 0:
            raise ValueError("no latencies to summarise")
        p50, p90, p99 = np.percentile(a, (50, 90, 99))
        return cls(float(p50), float(p90), float(p99), float(a.max()), int(a.size))

    def to_dict(self) -> dict[str, float]:
        """p50, p90, p99 and max (the count is left out: it is the series' slice count)."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max}

    def describe(self) -> str:
        """One line for people: ``p50 3.18 ms, p90 3.45 ms, p99 4.46 ms, max 4.67 ms (n=32)``."""
        return (
            f"p50 {self.p50:.2f} ms, p90 {self.p90:.2f} ms, p99 {self.p99:.2f} ms, max {self.max:.2f} ms "
            f"(n={self.count})"
        )


@dataclass(frozen=True)
class SeriesSummary:
    """One series: its slice count, the load of each foreground class, and latency when it was timed.

    Attributes:
        series_uid: the series' Series Instance UID (or the id a raw slice was given).
        slices: how many slices of the series were segmented.
        classes: the load of each foreground class, in the order the findings list them.
        latency_ms: percentiles of the slices' latencies; None when they were not timed.
        series_number: DICOM Series Number, as people name series ("series 3"); None when unknown.
        series_description: DICOM Series Description ("AX FLAIR"); "" when unknown.
        modality: DICOM Modality of the series; "" when unknown.
        lesion_load: the series' 3-D lesions and their volume (:mod:`scanedge.imaging.lesion_load`); None
            when the caller did not accumulate it.
        scores: the model's score heads over the series (:class:`~scanedge.imaging.heads.SeriesScore`);
            empty for a model without score heads.
        mask_heads: the model's further mask heads over the series (:class:`~scanedge.imaging.heads.MaskHeadLoad`);
            empty for a model without them (or when the caller did not accumulate them).
    """

    series_uid: str
    slices: int
    slice_spacing_mm: float | None  # median distance between neighbouring slices; None when unknown
    classes: tuple[ClassLoad, ...]
    latency_ms: LatencyPercentiles | None = None
    series_number: int | None = None
    series_description: str = ""
    modality: str = ""
    lesion_load: LesionLoad | None = None
    scores: tuple[SeriesScore, ...] = ()
    mask_heads: tuple[MaskHeadLoad, ...] = ()

    @property
    def label(self) -> str:
        """How people name the series: ``series 3 "AX FLAIR" (MR)``, falling back to the UID."""
        parts = [f"series {self.series_number}" if self.series_number is not None else "series"]
        if self.series_description:
            parts.append(f'"{self.series_description}"')
        if self.modality:
            parts.append(f"({self.modality})")
        if self.series_number is None and not self.series_description:
            parts.append(self.series_uid or "(no UID)")
        return " ".join(parts)

    def load(self, name: str) -> ClassLoad:
        """The load of the class called ``name``; KeyError when the model has no such class."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no class named {name!r}; classes are {[c.name for c in self.classes]}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary, as ``results.json`` files it under ``series``."""
        out: dict[str, object] = {
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "modality": self.modality,
            "slices": self.slices,
            "classes": {c.name: c.to_dict() for c in self.classes},
        }
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms.to_dict()
        if self.lesion_load is not None:
            out["lesion_load"] = self.lesion_load.to_dict()
        if self.scores:
            out["scores"] = [s.to_dict() for s in self.scores]
        if self.mask_heads:
            out["mask_heads"] = [h.to_dict() for h in self.mask_heads]
        return out


class _ClassTotals:
    def __init__(self) -> None:
        self.slices_with_finding = 0
        self.pixels = 0
        self.area_mm2: float | None = 0.0
        self.components = 0

    def add(self, f: ClassFindings) -> None:
        self.slices_with_finding += int(f.pixels > 0)
        self.pixels += f.pixels
        self.area_mm2 = None if f.area_mm2 is None or self.area_mm2 is None else self.area_mm2 + f.area_mm2
        self.components += f.components

    def freeze(self, name: str, spacing: float | None) -> ClassLoad:
        volume = None if spacing is None or self.area_mm2 is None else round(self.area_mm2 * spacing, 1)
        return ClassLoad(name, self.slices_with_finding, self.pixels, self.area_mm2, self.components, volume)


def summarize_series(
    slices: Sequence[Slice],
    findings: Sequence[Sequence[ClassFindings]],
    latencies_ms: Sequence[float] | None = None,
    lesion_loads: Mapping[str, LesionLoad] | None = None,
) -> tuple[SeriesSummary, ...]:
    """One summary per series UID, in the order the series first appear in ``slices``.

    ``lesion_loads``, by series UID, are the 3-D loads the caller accumulated (e.g. with a
    :class:`~scanedge.imaging.lesion_load.SeriesLesionLoad` per series as results came in).

    ``findings[i]`` are the per-class findings of ``slices[i]`` (``SliceResult.findings``);
    ``latencies_ms[i]``, when given, is the time ``slices[i]`` took. The slices' order does not matter
    for the figures; their geometry gives the spacing that turns area into volume.
    """
    if len(findings) != len(slices) or (latencies_ms is not None and len(latencies_ms) != len(slices)):
        raise ValueError("slices, findings and latencies_ms must be parallel sequences of the same length")
    spacing = slice_spacing(slices)
    rows: dict[str, list[int]] = {}
    for i, s in enumerate(slices):
        rows.setdefault(s.identity.series_uid, []).append(i)
    summaries = []
    for uid, indices in rows.items():
        totals: dict[str, _ClassTotals] = {}
        for i in indices:
            for f in findings[i]:
                totals.setdefault(f.name, _ClassTotals()).add(f)
        step = spacing.get(uid)
        latency = None if latencies_ms is None else LatencyPercentiles.of([latencies_ms[i] for i in indices])
        classes = tuple(t.freeze(name, step) for name, t in totals.items())
        first = slices[indices[0]]
        summaries.append(
            SeriesSummary(
                uid,
                len(indices),
                step,
                classes,
                latency,
                first.acquisition.series_number,
                first.acquisition.series_description,
                first.identity.modality,
                None if lesion_loads is None else lesion_loads.get(uid),
            )
        )
    return tuple(summaries)
