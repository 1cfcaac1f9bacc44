"""Does a converted engine give the same segmentations as the original model? Measured, then judged.

As in Polygraphy, measuring (running both on the same preprocessed slices and recording how they differ)
is kept apart from judging (comparing those numbers with thresholds), so a report can be re-judged with
other thresholds without rerunning anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.engines import Engine, EngineConfig, open_engine
from scanedge.errors import ConfigError, ModelFileError
from scanedge.imaging.heads import HeadDecoder, HeadScore, MaskHead
from scanedge.imaging.metrics import Overlap, overlap
from scanedge.imaging.postprocess import Postprocessor
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.role_inputs import RoleAssembler
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import HeadSpec, Manifest, load_manifest

__all__ = [
    "DEFAULT_MIN_DECISION_AGREEMENT",
    "DEFAULT_MIN_DICE",
    "Agreement",
    "Compared",
    "HeadAgreement",
    "SeriesModelAgreement",
    "Thresholds",
    "Verdict",
    "judge",
    "measure_agreement",
    "measure_engine_file",
    "measure_series_model",
]

DEFAULT_MIN_DICE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}
#: the fraction of a score head's (slice, class) decisions a candidate must take as the reference does
DEFAULT_MIN_DECISION_AGREEMENT = {"fp32": 1.0, "fp16": 0.99, "int8": 0.95}


@dataclass(frozen=True)
class HeadAgreement:
    """How a candidate's further head (a manifest ``heads`` entry) differs from the reference's.

    Attributes:
        role: ``score`` or ``mask``.
        max_abs_diff: the largest difference between two probabilities of the head.
        decision_agreement: score heads: the fraction of (slice, class) decisions that are the same; None
            for mask heads.
        dice: mask heads: Dice per foreground class, pooled over slices; empty for score heads.
    """

    role: str
    max_abs_diff: float
    decision_agreement: float | None = None
    dice: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesModelAgreement:
    """How a candidate's 3-D series model (a score head's ``series_model``) differs from the reference's on
    the verification series: every compared slice as one series, its volume built as the runtime builds it.

    Attributes:
        head: the score head it answers for.
        unchanged: the two files are byte for byte the same (``convert`` copies it): nothing was run.
        candidate_sha256: the candidate's file's sha256.
        reference_sha256: the reference's file's sha256.
        slices: planes the volume was built from (0 when unchanged).
        input: the volume (depth, height, width).
        max_abs_diff: the largest difference between the two models' probabilities for the series.
        decision_agreement: the fraction of the head's classes decided alike (None when unchanged).
    """

    head: str
    unchanged: bool
    candidate_sha256: str
    reference_sha256: str
    slices: int = 0
    input: tuple[int, int, int] = (0, 0, 0)
    max_abs_diff: float = 0.0
    decision_agreement: float | None = None


@dataclass(frozen=True)
class Agreement:
    """How a candidate engine's output differs from the reference's on the same inputs.

    Attributes:
        slices: how many slices were compared.
        mean_abs_diff: mean absolute difference over every probability of every slice.
        reference_pixels: per foreground class, the reference's foreground pixels over all slices (a Dice
            over a handful of pixels means little).
        heads: per further head of the manifest (saliency maps are not compared), by name.
        series_model: the score head's 3-D series model, when the manifest declares one.
    """

    slices: int
    dice: dict[str, float]  # per foreground class, pooled over all slices (1.0 when both are empty)
    max_abs_diff: float  # of probabilities
    mean_abs_diff: float
    pixel_agreement: float  # fraction of mask pixels with the same label
    reference_pixels: dict[str, int] = field(default_factory=dict)
    heads: dict[str, HeadAgreement] = field(default_factory=dict)
    series_model: SeriesModelAgreement | None = None

    def to_dict(self) -> dict:
        """Every field by name, for JSON reports."""
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach: ``min_dice`` per class (of every mask head), at most ``max_abs_diff``
    (when given) between any two probabilities (of every head), and ``min_decision_agreement`` of a score
    head's decisions."""

    min_dice: float
    max_abs_diff: float | None = None
    min_decision_agreement: float = 1.0

    @classmethod
    def for_precision(
        cls, precision: str, min_dice: float | None = None, max_abs_diff: float | None = None
    ) -> Thresholds:
        """``min_dice`` if given, else the default for the candidate's ``precision`` (fp32, fp16, int8)."""
        return cls(
            min_dice if min_dice is not None else DEFAULT_MIN_DICE[precision],
            max_abs_diff,
            DEFAULT_MIN_DECISION_AGREEMENT[precision],
        )


@dataclass(frozen=True)
class Verdict:
    """Pass or fail, with one line per missed threshold.

    Attributes:
        passed: whether every threshold was met.
        failures: one sentence per missed threshold; empty when passed.
    """

    passed: bool
    failures: tuple[str, ...]


#: what is compared: slices of a one-input model, or one slice per role (on the reference grid) of a
#: multi-input model (manifest ``inputs``), as pairing gives them
Compared = Sequence[Slice] | Sequence[Mapping[str, Slice]]


def _feeds(manifest: Manifest, slices: Compared) -> Iterator[tuple[dict[str, np.ndarray], Any, Any]]:
    """(graph feeds, preprocessing info, reference geometry) per compared item, built as the runtime builds them:
    one preprocessed tensor, or every role's (:class:`~scanedge.imaging.role_inputs.RoleAssembler`)."""
    if manifest.inputs is None:
        pre = Preprocessor(manifest)
        k = manifest.input.context_slices
        series = [s for s in slices if isinstance(s, Slice)]
        if len(series) != len(slices):
            raise ConfigError(f"model {manifest.name} takes one input; compare it on slices, not on sets of roles")
        for i, s in enumerate(series):
            tensor, info = pre(s, context_window(series, i, k))
            yield {manifest.input.name: tensor}, info, s.geometry
        return
    assemble = RoleAssembler(manifest)
    reference = manifest.inputs.reference.role
    for item in slices:
        if isinstance(item, Slice) or set(item) != set(manifest.roles):
            raise ConfigError(
                f"model {manifest.name} takes the roles {', '.join(manifest.roles)} together; compare it on one "
                "slice per role (paired onto the reference grid)"
            )
        feeds, info = assemble(item)
        yield feeds, info, item[reference].geometry


def measure_agreement(candidate: Engine, reference: Engine, manifest: Manifest, slices: Compared) -> Agreement:
    """Run both active engines on identical preprocessed tensors and compare masks and probabilities, and
    every further head (:class:`HeadAgreement`). A multi-input model gets every graph input, from one
    slice per role."""
    post = Postprocessor(manifest) if manifest.output is not None else None
    heads = HeadDecoder(manifest)
    classes = [c.name for c in manifest.classes[1:]]
    pooled = dict.fromkeys(classes, Overlap())  # a = reference, b = candidate
    max_diff, sum_diff, n_probs, same, total = 0.0, 0.0, 0, 0, 0
    per_head = {h.name: _HeadTally(h) for h in manifest.heads if h.role != "saliency"}
    for feeds, info, geometry in _feeds(manifest, slices):
        ref_out = {n: v.copy() for n, v in reference.infer(feeds).items()}
        cand_out = {n: v.copy() for n, v in candidate.infer(feeds).items()}
        if post is not None:
            name_out = manifest.mask_output.name
            ref = post(ref_out[name_out], info, geometry)
            cand = post(cand_out[name_out], info, geometry)
            diff = np.abs(ref.probabilities - cand.probabilities)
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.sum(dtype=np.float64))
            n_probs += diff.size
            same += int(np.count_nonzero(ref.mask == cand.mask))
            total += ref.mask.size
            for label, name in enumerate(classes, start=1):
                pooled[name] += overlap(ref.mask == label, cand.mask == label)
        if per_head:
            ref_heads, cand_heads = heads(ref_out, info, geometry), heads(cand_out, info, geometry)
            for a, b in zip(ref_heads.scores, cand_heads.scores):
                per_head[a.head].add_scores(a, b)
            for m, n in zip(ref_heads.masks, cand_heads.masks):
                per_head[m.head].add_masks(m, n)
    dice = {n: o.dice for n, o in pooled.items()}
    ref_px = {n: o.a_pixels for n, o in pooled.items()}
    return Agreement(
        len(slices),
        dice,
        max_diff,
        sum_diff / max(1, n_probs),
        same / max(1, total),
        ref_px,
        {name: t.freeze() for name, t in per_head.items()},
    )


class _HeadTally:
    """One head's differences accumulated over slices."""

    def __init__(self, head: HeadSpec) -> None:
        self.head = head
        self.max_diff = 0.0
        self.decisions = self.same_decisions = 0
        self.pooled = {c.name: Overlap() for c in head.classes[1:]} if head.role == "mask" else {}

    def add_scores(self, ref: HeadScore, cand: HeadScore) -> None:
        for a, b in zip(ref.classes, cand.classes):
            self.max_diff = max(self.max_diff, abs(a.probability - b.probability))
            self.decisions += 1
            self.same_decisions += a.decision == b.decision

    def add_masks(self, ref: MaskHead, cand: MaskHead) -> None:
        self.max_diff = max(self.max_diff, float(np.abs(ref.probabilities - cand.probabilities).max()))
        for label, name in enumerate(self.pooled, start=1):
            self.pooled[name] += overlap(ref.mask == label, cand.mask == label)

    def freeze(self) -> HeadAgreement:
        agreement = self.same_decisions / self.decisions if self.decisions else None
        dice = {n: o.dice for n, o in self.pooled.items()}
        return HeadAgreement(self.head.role, self.max_diff, agreement, dice)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure_series_model(
    candidate: Manifest,
    candidate_folder: Path,
    reference: Manifest,
    reference_folder: Path,
    slices: Compared,
    options: EngineConfig = EngineConfig(),
) -> SeriesModelAgreement | None:
    """Compare the candidate's series model (its path relative to ``candidate_folder``) with the reference's
    on ``slices`` taken as one series (planes made by the reference manifest's preprocessing, ordered and
    resampled as :class:`~scanedge.imaging.series_model.SeriesVolume` does); None without a series model.
    Identical files are reported unchanged and not run. Both are opened as the runtime opens them (their
    declarations checked, a missing file a ModelFileError)."""
    from scanedge.imaging.heads import SeriesModelRun
    from scanedge.imaging.series_model import SeriesModel, series_model_score

    ref_head, cand_head = reference.series_model_head, candidate.series_model_head
    if ref_head is None or ref_head.series_model is None or cand_head is None or cand_head.series_model is None:
        return None
    ref_path = reference_folder / ref_head.series_model.path
    cand_path = candidate_folder / cand_head.series_model.path
    for path, whose in ((ref_path, "reference"), (cand_path, "candidate")):
        if not path.is_file():
            raise ModelFileError(f"the {whose}'s series model {path.name} of head {ref_head.name!r} was not found")
    ref_sha, cand_sha = _file_sha256(ref_path), _file_sha256(cand_path)
    if ref_sha == cand_sha:
        return SeriesModelAgreement(ref_head.name, True, cand_sha, ref_sha)
    series = [s for s in slices if isinstance(s, Slice)]
    if not series:
        raise ConfigError("the series model is compared on a series of slices, and none were given")
    spec = ref_head.series_model
    ref_model = SeriesModel(reference, ref_path, options)
    try:
        cand_model = SeriesModel(candidate, cand_path, options)
        try:
            volume = ref_model.volume()
            for s in series:
                volume.add(s, s.identity.instance_number)
            tensor = volume.volume()
            run = SeriesModelRun("done", slices=len(volume), input=(spec.depth, spec.height, spec.width))
            a = series_model_score(ref_head, ref_model.run(tensor), len(volume), 0, run)
            b = series_model_score(cand_head, cand_model.run(tensor), len(volume), 0, run)
        finally:
            cand_model.close()
    finally:
        ref_model.close()
    diff = max(abs(x.score - y.score) for x, y in zip(a.classes, b.classes))
    same = sum(x.decision == y.decision for x, y in zip(a.classes, b.classes)) / len(a.classes)
    return SeriesModelAgreement(ref_head.name, False, cand_sha, ref_sha, len(volume), run.input, diff, same)


def _comparable(heads: Sequence[HeadSpec]) -> tuple[HeadSpec, ...]:
    """Heads as two models must share them to be compared: a series model's file may differ (a converted
    one, named and hashed by its own manifest; :func:`measure_series_model` compares what it answers)."""
    return tuple(
        replace(h, series_model=replace(h.series_model, path="series.onnx", onnx_sha256=None))
        if h.series_model is not None
        else h
        for h in heads
    )


def measure_engine_file(
    engine_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    slices: Compared,
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
    if _comparable(manifest.heads) != _comparable(ref_manifest.heads):
        raise ConfigError("the engine and the reference model declare different heads; they cannot be compared")
    if manifest.roles != ref_manifest.roles:
        raise ConfigError("the engine and the reference model take different input roles; they cannot be compared")
    with (
        open_engine(engine_path, options, onnx_sha256=manifest.onnx_sha256, name=manifest.name) as cand,
        open_engine(reference_path, EngineConfig(backend="ort", threads=options.threads)) as ref,
    ):
        agreement = measure_agreement(cand, ref, ref_manifest, slices)
    series = measure_series_model(
        manifest,
        Path(manifest_path if manifest_path is not None else engine_path).parent,
        ref_manifest,
        Path(reference_path).parent,
        slices,
        EngineConfig(backend="ort", threads=options.threads),
    )
    return manifest, replace(agreement, series_model=series)


def judge(agreement: Agreement, thresholds: Thresholds) -> Verdict:
    """Compare measured agreement with thresholds; the verdict lists every threshold that was missed."""
    failures = [
        f"{name}: Dice {d:.4f} < {thresholds.min_dice}" for name, d in agreement.dice.items() if d < thresholds.min_dice
    ]
    if thresholds.max_abs_diff is not None and agreement.max_abs_diff > thresholds.max_abs_diff:
        failures.append(f"max |probability difference| {agreement.max_abs_diff:.4f} > {thresholds.max_abs_diff}")
    for name, head in agreement.heads.items():
        failures += [
            f"{name}: {cls} Dice {d:.4f} < {thresholds.min_dice}"
            for cls, d in head.dice.items()
            if d < thresholds.min_dice
        ]
        if head.decision_agreement is not None and head.decision_agreement < thresholds.min_decision_agreement:
            failures.append(
                f"{name}: decisions agree on {head.decision_agreement:.4f} < {thresholds.min_decision_agreement}"
            )
        if thresholds.max_abs_diff is not None and head.max_abs_diff > thresholds.max_abs_diff:
            failures.append(f"{name}: max |probability difference| {head.max_abs_diff:.4f} > {thresholds.max_abs_diff}")
    series = agreement.series_model
    if series is not None and not series.unchanged:
        name = f"series model of {series.head}"
        if series.decision_agreement is not None and series.decision_agreement < thresholds.min_decision_agreement:
            failures.append(
                f"{name}: decisions agree on {series.decision_agreement:.4f} < {thresholds.min_decision_agreement}"
            )
        if thresholds.max_abs_diff is not None and series.max_abs_diff > thresholds.max_abs_diff:
            failures.append(
                f"{name}: max |probability difference| {series.max_abs_diff:.4f} > {thresholds.max_abs_diff}"
            )
    if agreement.slices == 0:
        failures.append("no slices were compared")
    return Verdict(not failures, tuple(failures))
