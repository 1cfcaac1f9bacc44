"""Slices to benchmark with: a real series folder, or the demo patient resized to the requested size.

The demo patient is used by default because latency depends on content (postprocessing and overlays
do more work when there are lesions to count and draw); uniform noise would flatter them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np
from pydicom.uid import generate_uid

from scanedge.errors import ConfigError
from scanedge.imaging.files import load_slices
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity

__all__ = ["BENCH_SERIES_UID", "DEFAULT_SIZE", "bench_slices", "parse_size", "role_sets"]

#: slice size of the demo-patient inputs unless one is asked for: a typical MR/CT matrix
DEFAULT_SIZE = "512x512"
#: the demo-patient inputs' Series Instance UID: a valid UI (``--dicom`` writes it into each object), the same every run
BENCH_SERIES_UID = generate_uid(prefix=None, entropy_srcs=["scanedge edge-bench demo-patient series"])


def parse_size(text: str) -> tuple[int, int]:
    """'512x512' -> (512, 512) as (rows, cols); ConfigError for anything else."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} is not ROWSxCOLS, e.g. 512x512") from None
    if rows < 1 or cols < 1:
        raise ConfigError(f"size {text!r} must be positive")
    return rows, cols


def bench_slices(
    size: tuple[int, int] | None = (512, 512),
    series: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Slice]:
    """Slices from ``series`` (any size, as stored), or the demo patient resized to ``size`` as int16."""
    if series is not None:
        slices = [item.slice for item in load_slices([series])]
        if not slices:
            raise ConfigError(f"no slices found under {series}")
        return slices[:limit] if limit else slices
    from scanedge.demo.series import load_demo_patient

    patient = load_demo_patient()
    rows, cols = size or patient.pixels.shape[1:]
    spacing = (
        patient.pixel_spacing[0] * patient.pixels.shape[1] / rows,
        patient.pixel_spacing[1] * patient.pixels.shape[2] / cols,
    )
    out = []
    stack: np.ndarray = patient.pixels[:limit] if limit else patient.pixels
    for i, px in enumerate(stack):
        resized = px if (rows, cols) == px.shape else cv2.resize(px, (cols, rows), interpolation=cv2.INTER_LINEAR)
        out.append(
            Slice.from_array(
                np.ascontiguousarray(resized, np.int16),
                geometry=SliceGeometry(pixel_spacing=spacing, slice_location=float(patient.z_mm[i])),
                identity=SliceIdentity(series_uid=BENCH_SERIES_UID, instance_number=i + 1),
                window_center=float(np.percentile(px, 60)),
                window_width=float(np.percentile(px, 99.5) * 1.2),
            )
        )
    return out


def role_sets(slices: Sequence[Slice], roles: Sequence[str]) -> list[dict[str, Slice]]:
    """One slice per role for each of ``slices``, which are the reference (first role): every other role gets a
    partner on the same grid with other contrast (the reference's intensities mirrored within their range, a
    different mirror per role), so each role's normalisation sees an image of its own, as a T1 beside a FLAIR.
    What a multi-input model is benchmarked with (``edge-bench pipeline``, and ``stream``, which sends each partner
    as its own SEGMENT before the reference's); the partners need no resampling."""
    out = []
    for s in slices:
        px = s.pixels
        low, high = (float(px.min()), float(px.max())) if px.size else (0.0, 0.0)
        item = {roles[0]: s}
        for k, role in enumerate(roles[1:], start=1):
            mirrored = (high + low) - px.astype(np.float32) + (k - 1) * (high - low) * 0.05
            partner = np.clip(mirrored, low, high).astype(px.dtype)
            series = generate_uid(prefix=None, entropy_srcs=[s.identity.series_uid or "", role])  # a valid UI per role
            ident = replace(s.identity, series_uid=series, sop_instance_uid="")
            item[role] = replace(s, pixels=np.ascontiguousarray(partner), identity=ident)
        out.append(item)
    return out
