"""Does a converted engine give the same segmentations as the original model? Measured, then judged.

As in Polygraphy, measuring (running both on the same preprocessed slices and recording how they differ)
is kept apart from judging (comparing those numbers with thresholds), so a report can be re-judged with
other thresholds without rerunning anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from scanedge.engines import Engine
from scanedge.imaging.postprocess import Postprocessor
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["DEFAULT_MIN_DICE", "Agreement", "Thresholds", "Verdict", "judge", "measure_agreement"]

DEFAULT_MIN_DICE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}


@dataclass(frozen=True)
class Agreement:
    """How a candidate engine's output differs from the reference's on the same inputs."""

    slices: int
    dice: dict[str, float]  # per foreground class, pooled over all slices (1.0 when both are empty)
    max_abs_diff: float  # of probabilities
    mean_abs_diff: float
    pixel_agreement: float  # fraction of mask pixels with the same label
    reference_pixels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    min_dice: float
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: tuple[str, ...]


def measure_agreement(candidate: Engine, reference: Engine, manifest: Manifest, slices: Sequence[Slice]) -> Agreement:
    """Run both active engines on identical preprocessed tensors and compare masks and probabilities."""
    pre, post = Preprocessor(manifest), Postprocessor(manifest)
    name_in, name_out = manifest.input.name, manifest.output.name
    classes = [c.name for c in manifest.classes[1:]]
    inter = dict.fromkeys(classes, 0)
    ref_px = dict.fromkeys(classes, 0)
    cand_px = dict.fromkeys(classes, 0)
    max_diff, sum_diff, n_probs, same, total = 0.0, 0.0, 0, 0, 0
    k = manifest.input.context_slices
    for i, s in enumerate(slices):
        tensor, info = pre(s, context_window(slices, i, k))
        ref = post(reference.infer({name_in: tensor})[name_out].copy(), info, s.geometry)
        cand = post(candidate.infer({name_in: tensor})[name_out].copy(), info, s.geometry)
        diff = np.abs(ref.probabilities - cand.probabilities)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum(dtype=np.float64))
        n_probs += diff.size
        same += int(np.count_nonzero(ref.mask == cand.mask))
        total += ref.mask.size
        for label, name in enumerate(classes, start=1):
            r, c = ref.mask == label, cand.mask == label
            inter[name] += int(np.count_nonzero(r & c))
            ref_px[name] += int(np.count_nonzero(r))
            cand_px[name] += int(np.count_nonzero(c))
    dice = {n: (2 * inter[n] / (ref_px[n] + cand_px[n]) if ref_px[n] + cand_px[n] else 1.0) for n in classes}
    return Agreement(len(slices), dice, max_diff, sum_diff / max(1, n_probs), same / max(1, total), ref_px)


def judge(agreement: Agreement, thresholds: Thresholds) -> Verdict:
    failures = [
        f"{name}: Dice {d:.4f} < {thresholds.min_dice}" for name, d in agreement.dice.items() if d < thresholds.min_dice
    ]
    if thresholds.max_abs_diff is not None and agreement.max_abs_diff > thresholds.max_abs_diff:
        failures.append(f"max |probability difference| {agreement.max_abs_diff:.4f} > {thresholds.max_abs_diff}")
    if agreement.slices == 0:
        failures.append("no slices were compared")
    return Verdict(not failures, tuple(failures))
