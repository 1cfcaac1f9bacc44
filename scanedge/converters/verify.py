"""Does a converted engine give the same segmentations as the original model? Measured, then judged.

As in Polygraphy, measuring (running both on the same preprocessed slices and recording how they differ)
is kept apart from judging (comparing those numbers with thresholds), so a report can be re-judged with
other thresholds without rerunning anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from scanedge.engines import Engine, EngineConfig, open_engine
from scanedge.errors import ConfigError
from scanedge.imaging.metrics import Overlap, overlap
from scanedge.imaging.postprocess import Postprocessor
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest, load_manifest

__all__ = [
    "DEFAULT_MIN_DICE",
    "Agreement",
    "Thresholds",
    "Verdict",
    "judge",
    "measure_agreement",
    "measure_engine_file",
]

DEFAULT_MIN_DICE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}


@dataclass(frozen=True)
class Agreement:
    """How a candidate engine's output differs from the reference's on the same inputs.

    Attributes:
        slices: how many slices were compared.
        mean_abs_diff: mean absolute difference over every probability of every slice.
        reference_pixels: per foreground class, the reference's foreground pixels over all slices (a Dice
            over a handful of pixels means little).
    """

    slices: int
    dice: dict[str, float]  # per foreground class, pooled over all slices (1.0 when both are empty)
    max_abs_diff: float  # of probabilities
    mean_abs_diff: float
    pixel_agreement: float  # fraction of mask pixels with the same label
    reference_pixels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Every field by name, for JSON reports."""
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach: ``min_dice`` per class, and at most ``max_abs_diff`` (when given)
    between any two probabilities."""

    min_dice: float
    max_abs_diff: float | None = None

    @classmethod
    def for_precision(
        cls, precision: str, min_dice: float | None = None, max_abs_diff: float | None = None
    ) -> Thresholds:
        """``min_dice`` if given, else the default for the candidate's ``precision`` (fp32, fp16, int8)."""
        return cls(min_dice if min_dice is not None else DEFAULT_MIN_DICE[precision], max_abs_diff)


@dataclass(frozen=True)
class Verdict:
    """Pass or fail, with one line per missed threshold.

    Attributes:
        passed: whether every threshold was met.
        failures: one sentence per missed threshold; empty when passed.
    """

    passed: bool
    failures: tuple[str, ...]


def measure_agreement(candidate: Engine, reference: Engine, manifest: Manifest, slices: Sequence[Slice]) -> Agreement:
    """Run both active engines on identical preprocessed tensors and compare masks and probabilities."""
    pre, post = Preprocessor(manifest), Postprocessor(manifest)
    name_in, name_out = manifest.input.name, manifest.output.name
    classes = [c.name for c in manifest.classes[1:]]
    pooled = dict.fromkeys(classes, Overlap())  # a = reference, b = candidate
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
            pooled[name] += overlap(ref.mask == label, cand.mask == label)
    dice = {n: o.dice for n, o in pooled.items()}
    ref_px = {n: o.a_pixels for n, o in pooled.items()}
    return Agreement(len(slices), dice, max_diff, sum_diff / max(1, n_probs), same / max(1, total), ref_px)


def measure_engine_file(
    engine_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    slices: Sequence[Slice],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    options: EngineConfig = EngineConfig(),
) -> tuple[Manifest, Agreement]:
    """Open a converted engine file and its reference ONNX model and measure their agreement on ``slices``.

    ``manifest_path`` overrides the engine's own manifest; the reference always runs on ONNX Runtime
    (with ``options``' threads).
    Returns the engine's manifest (its ``precision`` picks the default thresholds) and the agreement.
    Raises ConfigError when the two models do not segment the same classes.
    """
    manifest, _ = load_manifest(engine_path, manifest_path)
    ref_manifest, _ = load_manifest(reference_path)
    if [c.name for c in manifest.classes] != [c.name for c in ref_manifest.classes]:
        raise ConfigError("the engine and the reference model have different classes; they cannot be compared")
    with (
        open_engine(engine_path, options, onnx_sha256=manifest.onnx_sha256, name=manifest.name) as cand,
        open_engine(reference_path, EngineConfig(backend="ort", threads=options.threads)) as ref,
    ):
        return manifest, measure_agreement(cand, ref, ref_manifest, slices)


def judge(agreement: Agreement, thresholds: Thresholds) -> Verdict:
    """Compare measured agreement with thresholds; the verdict lists every threshold that was missed."""
    failures = [
        f"{name}: Dice {d:.4f} < {thresholds.min_dice}" for name, d in agreement.dice.items() if d < thresholds.min_dice
    ]
    if thresholds.max_abs_diff is not None and agreement.max_abs_diff > thresholds.max_abs_diff:
        failures.append(f"max |probability difference| {agreement.max_abs_diff:.4f} > {thresholds.max_abs_diff}")
    if agreement.slices == 0:
        failures.append("no slices were compared")
    return Verdict(not failures, tuple(failures))
