"""Synthetic FLAIR-like brain slices with MS-like lesions, built on real anatomy.

The anatomy is the MNI152 template's grey-matter, white-matter and brain-mask maps (nilearn ships them,
so this works offline). In the spirit of SynthSeg, every subject gets random tissue intensities on top of
that anatomy (FLAIR-like ordering: CSF dark, white matter grey, cortex brighter, lesions brightest),
a random affine and elastic deformation, partial-volume blur, a multiplicative bias field, Rician
noise and a gamma curve; a scalp shell surrounds the brain. Lesions are ellipsoids placed where MS
lesions occur: periventricular white matter, juxtacortical white matter and deep white matter, with a
one-millimetre partial-volume rim; a voxel is labelled lesion when at least half of it is lesion.

Needs the ``train`` extra (nilearn, scipy). Slices are 256 x 256 at 1 mm, radiological orientation
(anterior up, patient right on the image left).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Anatomy", "Lesion", "SubjectParams", "load_anatomy", "random_lesions", "random_subject", "synth_slice"]

SIZE = 256


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps as (z, row, col) float32 volumes in [0, 1], plus lesion-site candidates (z, row, col).

    Attributes:
        gm: grey-matter fraction per voxel.
        wm: white-matter fraction per voxel.
        csf: cerebrospinal-fluid fraction per voxel (the brain mask minus grey and white matter).
        periventricular: (n, 3) int16 voxels in white matter next to the ventricles.
        juxtacortical: (n, 3) int16 voxels in white matter just below the cortex.
        deep: (n, 3) int16 voxels deep in white matter, away from ventricles and cortex.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    periventricular: np.ndarray
    juxtacortical: np.ndarray
    deep: np.ndarray

    @property
    def depth(self) -> int:
        """Number of axial slices."""
        return int(self.gm.shape[0])


@dataclass(frozen=True)
class Lesion:
    """One ellipsoidal lesion in the anatomy's voxel grid."""

    center: tuple[float, float, float]  # (z, row, col) voxels
    inverse_axes: np.ndarray  # 3x3: maps an offset to ellipsoid-normalised coordinates
    reach: float  # largest semi-axis, voxels


@dataclass(frozen=True)
class SubjectParams:
    """One synthetic subject's contrast and deformation, shared by all of its slices.

    Attributes:
        mu_csf: intensity of CSF, in the ~[0, 1] image range (FLAIR: dark).
        mu_wm: intensity of white matter.
        mu_gm: intensity of grey matter (above white matter, as in FLAIR).
        mu_lesion: intensity of lesions (the brightest tissue).
        mu_scalp: intensity of the scalp shell around the brain.
        blur_sigma: partial-volume blur, Gaussian sigma in pixels.
        noise_sigma: Rician noise, sigma of each Gaussian component.
        gamma: exponent of the final intensity curve.
        map_y: the row map that goes with ``map_x``.
        flip: mirror the slice left-right.
    """

    mu_csf: float
    mu_wm: float
    mu_gm: float
    mu_lesion: float
    mu_scalp: float
    blur_sigma: float
    noise_sigma: float
    gamma: float
    bias: np.ndarray  # (SIZE, SIZE) multiplicative field
    map_x: np.ndarray  # (SIZE, SIZE) cv2.remap maps: affine + elastic deformation
    map_y: np.ndarray
    flip: bool


def _to_slices(volume: np.ndarray) -> np.ndarray:
    """MNI (x: left->right, y: posterior->anterior, z) -> (z, row, col) radiological, padded to SIZE."""
    v = np.transpose(volume[::-1, ::-1, :], (2, 1, 0)).astype(np.float32)
    z, r, c = v.shape
    out = np.zeros((z, SIZE, SIZE), np.float32)
    r0, c0 = (SIZE - r) // 2, (SIZE - c) // 2
    out[:, r0 : r0 + r, c0 : c0 + c] = v
    return out


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """MNI152 tissue maps and the places lesions are drawn from (computed once per process)."""
    from nilearn import datasets
    from scipy import ndimage

    gm = _to_slices(np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj))
    wm = _to_slices(np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj))
    brain = _to_slices(np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj))
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    inside = ndimage.distance_transform_edt(brain > 0.5)
    ventricles = (csf > 0.5) & (inside > 18)
    to_ventricle = ndimage.distance_transform_edt(~ventricles)
    to_cortex = ndimage.distance_transform_edt(~(gm > 0.5))
    white = wm > 0.6
    peri = white & (to_ventricle >= 1) & (to_ventricle <= 7)
    juxta = white & (to_cortex >= 1) & (to_cortex <= 3) & (to_ventricle > 12)
    deep = (wm > 0.9) & (to_ventricle > 8) & (to_cortex > 4)
    return Anatomy(
        gm=gm,
        wm=wm,
        csf=csf,
        periventricular=np.argwhere(peri).astype(np.int16),
        juxtacortical=np.argwhere(juxta).astype(np.int16),
        deep=np.argwhere(deep).astype(np.int16),
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def random_lesions(
    anatomy: Anatomy,
    rng: np.random.Generator,
    count: int,
    *,
    z_range: tuple[int, int] | None = None,
) -> list[Lesion]:
    """``count`` ellipsoidal lesions: 55% periventricular, 25% juxtacortical, 20% deep white matter."""
    lesions = []
    sites = (anatomy.periventricular, anatomy.juxtacortical, anatomy.deep)
    for _ in range(count):
        pool = sites[rng.choice(3, p=(0.55, 0.25, 0.20))]
        if z_range is not None:
            pool = pool[(pool[:, 0] >= z_range[0]) & (pool[:, 0] < z_range[1])]
            if len(pool) == 0:
                continue
        center = pool[rng.integers(len(pool))].astype(np.float64) + rng.uniform(-0.5, 0.5, 3)
        major = rng.uniform(1.8, 7.0)
        semi = np.array([major, major * rng.uniform(0.45, 1.0), major * rng.uniform(0.45, 0.9)])
        rot = _random_rotation(rng)
        lesions.append(Lesion(tuple(center), (rot / semi).T, float(semi.max())))
    return lesions


def lesion_fraction(lesions: list[Lesion], z: float, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """How much of each pixel of slice ``z`` is lesion, in [0, 1] (1 mm partial-volume rim)."""
    frac = np.zeros(shape, np.float32)
    for les in lesions:
        cz, cr, cc = les.center
        if abs(z - cz) > les.reach + 1:
            continue
        r0, r1 = int(max(0, cr - les.reach - 2)), int(min(shape[0], cr + les.reach + 3))
        c0, c1 = int(max(0, cc - les.reach - 2)), int(min(shape[1], cc + les.reach + 3))
        rr, cc_ = np.mgrid[r0:r1, c0:c1]
        offsets = np.stack([np.full(rr.shape, z - cz), rr - cr, cc_ - cc], axis=-1)
        q = np.linalg.norm(offsets @ les.inverse_axes, axis=-1)
        # (1 - q) * semi-axis approximates the distance inside the surface in voxels
        inside = np.clip(0.5 + (1.0 - q) * les.reach * 0.6, 0.0, 1.0).astype(np.float32)
        np.maximum(frac[r0:r1, c0:c1], inside, out=frac[r0:r1, c0:c1])
    return frac


def _smooth_field(rng: np.random.Generator, grid: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0.0, amplitude, (grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def random_subject(rng: np.random.Generator, *, deform: float = 1.0) -> SubjectParams:
    """Random FLAIR-like contrast and deformation. ``deform`` scales the geometric augmentation."""
    angle = rng.uniform(-12, 12) * deform
    scale = 1.0 + rng.uniform(-0.1, 0.1) * deform
    shift = rng.uniform(-8, 8, 2) * deform
    affine: np.ndarray = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, scale)
    affine[:, 2] += shift
    inverse = cv2.invertAffineTransform(affine)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    map_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    map_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    map_x += _smooth_field(rng, 6, 2.0 * deform)
    map_y += _smooth_field(rng, 6, 2.0 * deform)
    mu_wm = rng.uniform(0.30, 0.45)
    mu_gm = mu_wm + rng.uniform(0.08, 0.22)
    return SubjectParams(
        mu_csf=rng.uniform(0.02, 0.15),
        mu_wm=mu_wm,
        mu_gm=mu_gm,
        mu_lesion=min(1.0, mu_gm + rng.uniform(0.15, 0.45)),
        mu_scalp=rng.uniform(0.25, 0.9),
        blur_sigma=rng.uniform(0.3, 1.0),
        noise_sigma=rng.uniform(0.005, 0.04),
        gamma=rng.uniform(0.8, 1.25),
        bias=np.exp(_smooth_field(rng, 4, 0.15)).astype(np.float32),
        map_x=map_x.astype(np.float32),
        map_y=map_y.astype(np.float32),
        flip=bool(rng.random() < 0.5) and deform > 0,
    )


def synth_slice(
    anatomy: Anatomy,
    subject: SubjectParams,
    lesions: list[Lesion],
    z: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One FLAIR-like slice (float32, ~[0, 1]) and its lesion label (uint8 0/1)."""
    maps = np.stack([anatomy.gm[z], anatomy.wm[z], anatomy.csf[z], lesion_fraction(lesions, z)], axis=-1)
    if subject.flip:
        maps = maps[:, ::-1]
    warped = cv2.remap(np.ascontiguousarray(maps), subject.map_x, subject.map_y, cv2.INTER_LINEAR)
    gm, wm, csf, frac = (warped[..., i] for i in range(4))
    parenchyma = np.clip(gm + wm, 0.0, 1.0)
    frac = frac * np.clip((parenchyma - 0.3) / 0.4, 0.0, 1.0)
    label = (frac >= 0.5).astype(np.uint8)

    brain = ((gm + wm + csf) > 0.5).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    skull = cv2.dilate(brain, kernel, iterations=1)
    scalp = cv2.dilate(skull, kernel, iterations=1) - skull
    image = csf * subject.mu_csf + gm * subject.mu_gm + wm * subject.mu_wm
    image += scalp.astype(np.float32) * subject.mu_scalp
    texture = 1.0 + 0.06 * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    lesion_level = subject.mu_lesion * cv2.GaussianBlur(texture, (0, 0), 1.5)
    image = image * (1.0 - frac) + frac * lesion_level
    image = cv2.GaussianBlur(image, (0, 0), subject.blur_sigma)
    image *= subject.bias
    n1 = rng.normal(0.0, subject.noise_sigma, image.shape).astype(np.float32)
    n2 = rng.normal(0.0, subject.noise_sigma, image.shape).astype(np.float32)
    image = np.sqrt((image + n1) ** 2 + n2**2)
    image = np.power(np.clip(image, 0.0, None), subject.gamma, dtype=np.float32)
    return image.astype(np.float32), label
