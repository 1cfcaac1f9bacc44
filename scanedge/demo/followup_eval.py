"""Evaluate registration + lesion-change logic on synthetic follow-up pairs (ground-truth masks, no model).

``python -m scanedge.demo.followup_eval [PAIRS]`` (default 20) prints, per pair and overall: the mean
target registration error over the head (mm), new-lesion sensitivity and false positives per pair,
enlarging-lesion accuracy, the accuracy of every true class, and registration time. Because both masks
are the ground truth, it measures the alignment and the change rules alone.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from scanedge.demo.followup import FollowupPair, make_pair
from scanedge.imaging.lesion_change import compare, initial_tracking
from scanedge.imaging.registration import register, resample_labels

__all__ = ["evaluate_pair", "main"]


def _voxel(pair: FollowupPair, point_mm: np.ndarray) -> tuple[int, int, int]:
    g = pair.geometry
    idx = [int(np.rint((point_mm[i] - g.origin[i]) / g.spacing[i])) for i in range(3)]
    shape = pair.current.shape
    return (min(max(idx[2], 0), shape[0] - 1), min(max(idx[1], 0), shape[1] - 1), min(max(idx[0], 0), shape[2] - 1))


def _label_near(labels: np.ndarray, voxel: tuple[int, int, int]) -> int:
    """The most frequent non-zero label within one slice and 3 voxels in-plane of ``voxel``, else 0.

    A lesion's true centre, mapped into the current study and rounded to a voxel, can fall just outside a
    lesion that has shrunk to a slice or two (5 mm slices); the planted lesions are over 30 mm apart, so this
    neighbourhood finds the lesion and never a neighbour."""
    z, y, x = voxel
    near = labels[max(z - 1, 0) : z + 2, max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4]
    found, counts = np.unique(near[near > 0], return_counts=True)
    return int(found[np.argmax(counts)]) if found.size else 0


def evaluate_pair(seed: int) -> dict[str, float]:
    """One pair's figures: tre_mm, seconds, good, new_found, new_true, false_new, enlarging_ok,
    enlarging_true, class_ok, class_true."""
    pair = make_pair(seed)
    result = register(pair.current, pair.geometry, pair.prior, pair.geometry)
    head = np.argwhere(pair.current > 200)[::50]  # (z, y, x) voxels of the head, subsampled
    g = pair.geometry
    pts = np.stack(
        [head[:, 2] * g.spacing[0], head[:, 1] * g.spacing[1], head[:, 0] * g.spacing[2], np.ones(len(head))]
    )
    tre = float(np.linalg.norm(((result.as_array() - pair.matrix) @ pts)[:3], axis=0).mean())
    prior, uids = initial_tracking(pair.prior_mask, g.spacing)
    moved = resample_labels(prior, g, pair.current.shape, g, result)
    report = compare(moved, uids, pair.current_mask, g.spacing, withhold=None if result.usable else result.reason)
    by_label = {lesion.label: lesion for lesion in report.lesions if lesion.label}
    by_uid = {lesion.tracking_uid: lesion for lesion in report.lesions}
    inverse = np.linalg.inv(pair.matrix)
    out: defaultdict[str, float] = defaultdict(float, tre_mm=tre, seconds=result.seconds, good=float(result.usable))
    matched_new: set[int] = set()
    for kind, centre in pair.truth:
        out["class_true"] += 1
        if kind == "disappeared":
            uid = uids.get(_label_near(prior, _voxel(pair, np.asarray(centre))))
            found = by_uid.get(uid) if uid else None
        else:
            at = (inverse @ np.array([*centre, 1.0]))[:3]
            found = by_label.get(_label_near(report.tracking, _voxel(pair, at)))
        ok = found is not None and found.change == kind
        out["class_ok"] += ok
        if kind == "new":
            out["new_true"] += 1
            out["new_found"] += ok
            if ok and found is not None:
                matched_new.add(found.label)
        if kind == "enlarging":
            out["enlarging_true"] += 1
            out["enlarging_ok"] += ok
    out["false_new"] = sum(1 for lesion in report.lesions if lesion.change == "new" and lesion.label not in matched_new)
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    """Evaluate ``argv[0]`` pairs (default 20; ``sys.argv`` when None), print the figures; returns 0."""
    args = sys.argv[1:] if argv is None else argv
    pairs = int(args[0]) if args else 20
    total: defaultdict[str, float] = defaultdict(float)
    tres = []
    for seed in range(pairs):
        figures = evaluate_pair(seed)
        tres.append(figures["tre_mm"])
        for key, value in figures.items():
            total[key] += value
        print(
            f"pair {seed:3d}: TRE {figures['tre_mm']:.2f} mm, {figures['seconds']:.2f} s, "
            f"classes {int(figures['class_ok'])}/{int(figures['class_true'])}, false new {int(figures['false_new'])}"
        )
    print(f"pairs {pairs}; registrations good {int(total['good'])}/{pairs}")
    print(
        f"TRE mean {np.mean(tres):.2f} mm, max {np.max(tres):.2f} mm;",
        f"registration mean {total['seconds'] / pairs:.2f} s",
    )
    print(
        f"new-lesion sensitivity {total['new_found'] / max(total['new_true'], 1):.3f} "
        f"({int(total['new_found'])}/{int(total['new_true'])}); false new per pair {total['false_new'] / pairs:.2f}"
    )
    print(
        f"enlarging accuracy {total['enlarging_ok'] / max(total['enlarging_true'], 1):.3f}; "
        f"all classes {total['class_ok'] / max(total['class_true'], 1):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
