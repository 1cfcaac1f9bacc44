"""Rigid (or affine) registration of a prior study's volume onto the current one, with a verdict on its quality.

Follow-up comparison is only as good as the alignment: a lesion "appears" wherever the prior was moved
wrongly. So the result never stops at a transform: it says how well the volumes agree after resampling
(:attr:`RegistrationResult.quality`), and a ``poor`` or ``failed`` registration makes the change step
withhold its labels (:func:`scanedge.imaging.lesion_change.compare`).

Method: SimpleITK, Mattes mutual information (32 bins, 20 % random sampling of each level's current-volume
voxels but at most ``max_samples`` = 30 000 (this bounds the time of large volumes), fixed seed: the same
inputs give the same answer; the moving image's gradient by central differences at the samples),
regular-step gradient descent (step relaxation 0.6, affine 0.8) over a 3-D Euler (rigid) or affine
transform, initialised by aligning the volumes' intensity centres of mass, three resolution levels (both
volumes smoothed by a recursive Gaussian of 2, 1, 0 voxels and shrunk 4, 2, 1 times; one optimisation per
level, each starting where the last ended). Bounded: at most ``max_iterations`` per level, and a wall-time
budget checked after every iteration (the optimiser is stopped once it is spent, and no further level is
begun; the result says so). Why this pyramid and gradient, with the figures measured before and after:
BENCHMARKS.md, "Follow-up registration".

Quality: the head masks (voxels above ``head_fraction`` x the volume's 99th percentile) of the current
volume and the resampled prior overlap with a Dice of at least ``min_head_dice`` (default 0.85), and the
final metric is at most ``max_metric`` (Mattes MI is negative, better is lower; default -0.2). Unrelated
volumes, or a registration stuck in a wrong minimum, fail the overlap test.

Volumes are numpy arrays indexed ``[slice, row, column]`` with a :class:`VolumeGeometry` (DICOM LPS mm).
Transforms are 4x4 matrices in patient mm mapping a point of the *current* study to the same anatomy in
the *prior* one (SimpleITK's fixed-to-moving convention).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from scanedge.errors import ConfigError, InputError

__all__ = [
    "RegistrationConfig",
    "RegistrationResult",
    "VolumeGeometry",
    "register",
    "resample_labels",
    "resample_volume",
]

#: a volume larger than this many voxels is refused (bounded work and memory)
MAX_VOXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a volume sits in the patient (DICOM LPS, mm).

    Attributes:
        spacing: (column, row, slice) spacing in mm, SimpleITK's (x, y, z) order.
        origin: the centre of voxel [0, 0, 0].
        direction: 3x3 direction cosines, row-major, columns being the x (column), y (row) and z (slice)
            axes, as SimpleITK's ``GetDirection``.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or not all(np.isfinite(s) and 1e-3 <= s <= 1e4 for s in self.spacing):
            raise InputError(f"volume spacing must be three values in 0.001..10000 mm, got {self.spacing!r}")
        if len(self.origin) != 3 or not all(np.isfinite(o) and abs(o) <= 1e7 for o in self.origin):
            raise InputError("volume origin must be three finite values within 10 km")
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (9,) or not np.allclose(d.reshape(3, 3) @ d.reshape(3, 3).T, np.eye(3), atol=1e-4):
            raise InputError("volume direction must be nine values forming an orthonormal 3x3 matrix")


@dataclass(frozen=True)
class RegistrationConfig:
    """Bounds and thresholds of :func:`register` (see the module docstring for why these values).

    Attributes:
        transform: ``"rigid"`` (3-D Euler: rotation and translation) or ``"affine"``.
        max_iterations: optimiser iterations per resolution level (1..10000).
        time_budget_s: wall-time budget in seconds for the whole registration, checked after every
            iteration; once spent the optimiser is stopped (``stopped_by_budget`` in the result).
        histogram_bins: histogram bins of the Mattes mutual information metric.
        sampling_fraction: fraction (0, 1] of the current volume's voxels randomly sampled by the metric.
        max_samples: cap on the number of sampled voxels (bounds the time of large volumes).
        head_fraction: head-mask threshold as a fraction of the volume's 99th intensity percentile.
        min_head_dice: smallest head-mask Dice (current vs resampled prior) for a ``good`` result.
        max_metric: largest final Mattes MI (negative, lower is better) for a ``good`` result.
        seed: seed of the metric's random sampling (same inputs, same answer).
    """

    transform: Literal["rigid", "affine"] = "rigid"
    max_iterations: int = 60
    time_budget_s: float = 5.0
    histogram_bins: int = 32
    sampling_fraction: float = 0.2
    max_samples: int = 30_000
    head_fraction: float = 0.1
    min_head_dice: float = 0.85
    max_metric: float = -0.2
    seed: int = 20

    def __post_init__(self) -> None:
        if self.transform not in ("rigid", "affine"):
            raise ConfigError("transform must be 'rigid' or 'affine'")
        if not 1_000 <= self.max_samples <= 100_000_000:
            raise ConfigError("max_samples must be 1000..100000000")
        if not 1 <= self.max_iterations <= 10_000 or not 0 < self.time_budget_s <= 3600:
            raise ConfigError("max_iterations must be 1..10000 and time_budget_s in (0, 3600]")
        if not 0 < self.sampling_fraction <= 1 or not 0 < self.head_fraction < 1 or not 0 < self.min_head_dice <= 1:
            raise ConfigError("sampling_fraction, head_fraction and min_head_dice must be fractions")


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register` found.

    Attributes:
        matrix: 4x4 homogeneous transform (rows) mapping current-study points (mm) to prior-study points;
            the identity when the optimiser failed.
        metric: final Mattes mutual information (negative, lower is better); NaN when the optimiser failed.
        iterations: optimiser iterations run, over all resolution levels.
        seconds: wall time of the registration, including the quality check.
        stopped_by_budget: whether the optimiser was stopped because ``time_budget_s`` was spent.
        head_dice: Dice of the head masks of the current volume and the resampled prior (0 when the
            optimiser failed).
        quality: ``"good"`` (usable), ``"poor"`` (head Dice or metric outside the thresholds) or
            ``"failed"`` (optimiser error or non-finite metric).
        reason: human-readable explanation of ``quality`` (figures, or the failure), noting a spent budget.
    """

    matrix: tuple[tuple[float, ...], ...]
    metric: float
    iterations: int
    seconds: float
    stopped_by_budget: bool
    head_dice: float
    quality: Literal["good", "poor", "failed"]
    reason: str

    @property
    def usable(self) -> bool:
        """Whether change labels may be derived from this alignment."""
        return self.quality == "good"

    def as_array(self) -> np.ndarray:
        """``matrix`` as a 4x4 float numpy array."""
        return np.asarray(self.matrix, dtype=float)


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("registration needs SimpleITK: pip install 'scanedge[followup]'") from exc
    return sitk


def _image(volume: np.ndarray, geometry: VolumeGeometry, dtype: Any = np.float32) -> Any:
    sitk = _sitk()
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"a volume must be 3-D [slice, row, column], got shape {volume.shape}")
    if volume.size > MAX_VOXELS:
        raise InputError(f"volume of {volume.size} voxels exceeds the limit of {MAX_VOXELS}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=dtype))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(d) for d in geometry.direction))
    return image


def _matrix(transform: Any) -> np.ndarray:
    """The 4x4 homogeneous matrix of a SimpleITK matrix-offset transform (Euler3D, Affine)."""
    m = np.eye(4)
    a = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=float)
    t = np.asarray(transform.GetTranslation(), dtype=float)
    m[:3, :3] = a
    m[:3, 3] = t + centre - a @ centre
    return m


def _affine_from_matrix(matrix: np.ndarray) -> Any:
    sitk = _sitk()
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in matrix[:3, 3]))
    return transform


#: the resolution pyramid: (shrink factor, Gaussian sigma in voxels of the full-resolution grid) per level
_LEVELS = ((4, 2.0), (2, 1.0), (1, 0.0))


def _level(image: Any, shrink: int, sigma: float) -> Any:
    """One pyramid level of an image: smoothed (recursive Gaussian, ``sigma`` voxels) then shrunk.

    The pyramid is made here rather than by ``ImageRegistrationMethod``'s own levels: that one smooths with a
    discrete Gaussian kernel (several times slower on a 256x256x32 series) and keeps the moving image at full
    size on every level, so each level began by computing the moving image's gradient over all its voxels."""
    sitk = _sitk()
    if sigma > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [sigma * s for s in image.GetSpacing()])
    return sitk.Shrink(image, [max(1, min(shrink, n)) for n in image.GetSize()]) if shrink > 1 else image


def _head(volume: np.ndarray, fraction: float) -> np.ndarray:
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    level = float(np.percentile(finite, 99)) * fraction
    return np.asarray(volume > level)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def resample_volume(
    prior: np.ndarray,
    prior_geometry: VolumeGeometry,
    shape: tuple[int, int, int],
    geometry: VolumeGeometry,
    matrix: np.ndarray,
    *,
    nearest: bool = False,
) -> np.ndarray:
    """The prior volume on the current grid (``shape``/``geometry``) through ``matrix`` (current -> prior)."""
    sitk = _sitk()
    labels = nearest
    moving = _image(prior, prior_geometry, np.int32 if labels else np.float32)
    reference = _image(np.zeros(shape, dtype=np.uint8), geometry, np.uint8)
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(moving, reference, _affine_from_matrix(np.asarray(matrix, dtype=float)), interp, 0)
    return np.asarray(sitk.GetArrayFromImage(out))


def resample_labels(
    prior_labels: np.ndarray,
    prior_geometry: VolumeGeometry,
    shape: tuple[int, int, int],
    geometry: VolumeGeometry,
    result: RegistrationResult,
) -> np.ndarray:
    """The prior's label mask on the current grid, nearest neighbour (labels are never blended)."""
    out = resample_volume(prior_labels, prior_geometry, shape, geometry, result.as_array(), nearest=True)
    return out.astype(prior_labels.dtype, copy=False)


def register(
    current: np.ndarray,
    current_geometry: VolumeGeometry,
    prior: np.ndarray,
    prior_geometry: VolumeGeometry,
    config: RegistrationConfig | None = None,
) -> RegistrationResult:
    """Align ``prior`` onto ``current``; never raises on a registration that does not converge (the result's
    quality says ``failed``), only on bad input (:class:`InputError`)."""
    sitk = _sitk()
    cfg = config or RegistrationConfig()
    fixed = _image(current, current_geometry)
    moving = _image(prior, prior_geometry)
    started = time.monotonic()
    base = sitk.AffineTransform(3) if cfg.transform == "affine" else sitk.Euler3DTransform()
    try:
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, base, sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    except RuntimeError:
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, base, sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    transform = initial  # optimised in place, level after level
    # the step shrinks by this factor at each change of direction; the affine's 12 parameters need the slower
    # decay: with 0.6 it stopped 0.56 mm off a known affine (worst point 1.08 mm), with 0.8 0.07 mm
    # (tests/imaging/test_registration.py, BENCHMARKS.md "Affine")
    relaxation = 0.8 if cfg.transform == "affine" else 0.6
    counter = {"iterations": 0, "budget": False}
    metric = float("nan")
    try:
        for shrink, sigma in _LEVELS:
            if counter["budget"]:
                break
            level_fixed, level_moving = _level(fixed, shrink, sigma), _level(moving, shrink, sigma)
            method = sitk.ImageRegistrationMethod()
            method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
            method.SetMetricSamplingStrategy(method.RANDOM)
            voxels = int(np.prod(level_fixed.GetSize()))
            method.SetMetricSamplingPercentage(min(cfg.sampling_fraction, cfg.max_samples / voxels), cfg.seed)
            method.SetInterpolator(sitk.sitkLinear)
            # the moving image's gradient by central differences at the sampled points, not a Gaussian gradient
            # image of every voxel made before each level: faster for sparse samples, and more accurate
            method.SetMetricUseMovingImageGradientFilter(False)
            method.SetMetricUseFixedImageGradientFilter(False)
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=2.0, minStep=1e-4, numberOfIterations=cfg.max_iterations, relaxationFactor=relaxation
            )
            method.SetOptimizerScalesFromPhysicalShift()
            method.SetInitialTransform(transform, inPlace=True)

            def _tick(method: Any = method) -> None:
                counter["iterations"] += 1
                if time.monotonic() - started > cfg.time_budget_s:
                    counter["budget"] = True
                    method.StopRegistration()

            method.AddCommand(sitk.sitkIterationEvent, _tick)
            method.Execute(level_fixed, level_moving)
            metric = float(method.GetMetricValue())
    except RuntimeError as exc:
        return RegistrationResult(
            matrix=tuple(tuple(r) for r in np.eye(4).tolist()),
            metric=float("nan"),
            iterations=int(counter["iterations"]),
            seconds=time.monotonic() - started,
            stopped_by_budget=bool(counter["budget"]),
            head_dice=0.0,
            quality="failed",
            reason=f"optimiser failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
        )
    matrix = _matrix(transform)
    resampled = resample_volume(prior, prior_geometry, current.shape, current_geometry, matrix)
    dice = _dice(_head(np.asarray(current, dtype=float), cfg.head_fraction), _head(resampled, cfg.head_fraction))
    seconds = time.monotonic() - started
    quality: Literal["good", "poor", "failed"]
    if not np.isfinite(metric):
        quality, reason = "failed", "metric is not finite"
    elif dice < cfg.min_head_dice:
        quality, reason = "poor", f"head-mask Dice {dice:.3f} < {cfg.min_head_dice}"
    elif metric > cfg.max_metric:
        quality, reason = "poor", f"Mattes MI {metric:.3f} > {cfg.max_metric}"
    else:
        quality, reason = "good", f"head-mask Dice {dice:.3f}, Mattes MI {metric:.3f}"
    if counter["budget"]:
        reason += f"; stopped by the {cfg.time_budget_s:g} s budget"
    return RegistrationResult(
        matrix=tuple(tuple(float(v) for v in row) for row in matrix),
        metric=metric,
        iterations=int(counter["iterations"]),
        seconds=seconds,
        stopped_by_budget=bool(counter["budget"]),
        head_dice=dice,
        quality=quality,
        reason=reason,
    )
