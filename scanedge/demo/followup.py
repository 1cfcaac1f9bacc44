"""Synthetic follow-up pairs with ground truth: one synthetic head imaged twice, moved and with lesions changed.

The prior is a textured ellipsoidal head (skull shell, brain, ventricles) with spherical lesions; the
current study is the same head moved by a known rigid transform (a few mm, a few degrees) and resampled,
with lesions added (new), grown (enlarging), shrunk and removed (disappeared). The ground truth gives the
transform (current -> prior, 4x4 mm) and each lesion's true class, so registration and change logic can be
measured without a model (:mod:`scanedge.demo.followup_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanedge.imaging.registration import VolumeGeometry, resample_volume

__all__ = ["FollowupPair", "make_pair", "rigid_matrix"]


@dataclass(frozen=True)
class FollowupPair:
    """A synthetic prior/current pair, on one shared grid.

    Attributes:
        prior: the prior study's volume (float32, ``[slice, row, column]``), with noise.
        prior_mask: the prior's lesion mask (uint8, 1 = lesion).
        current: the current study's volume (float32): the head moved by ``matrix``, lesions changed, noise.
        current_mask: the current's true lesion mask (uint8, 1 = lesion), on the current grid.
        geometry: the grid of both volumes (same spacing and origin).
        matrix: the true 4x4 transform mapping current-study points (mm) to prior-study points.
        truth: each planted lesion's true class and its centre in prior-study mm (x, y, z).
    """

    prior: np.ndarray
    prior_mask: np.ndarray
    current: np.ndarray
    current_mask: np.ndarray
    geometry: VolumeGeometry
    matrix: np.ndarray  # current -> prior, mm
    truth: tuple[tuple[str, tuple[float, float, float]], ...]  # (class, centre in prior mm)


def rigid_matrix(
    angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float], centre: np.ndarray
) -> np.ndarray:
    """A 4x4 rigid transform rotating about ``centre`` (x, y, z angles in degrees) then shifting."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + np.asarray(shift_mm)
    return m


def _points(shape: tuple[int, int, int], g: VolumeGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return (x * g.spacing[0] + g.origin[0], y * g.spacing[1] + g.origin[1], z * g.spacing[2] + g.origin[2])


def _head(shape: tuple[int, int, int], g: VolumeGeometry, rng: np.random.Generator) -> np.ndarray:
    x, y, z = _points(shape, g)
    cx, cy, cz = (n * s / 2 for n, s in zip(shape[::-1], g.spacing, strict=True))
    r = np.sqrt(((x - cx) / 90) ** 2 + ((y - cy) / 110) ** 2 + ((z - cz) / 80) ** 2)
    vol = np.zeros(shape, dtype=np.float32)
    vol[r < 1.0] = 300.0  # skull
    vol[r < 0.92] = 600.0  # brain
    vent = np.sqrt(((x - cx - 8) / 10) ** 2 + ((y - cy) / 30) ** 2 + ((z - cz) / 25) ** 2) < 1
    vent |= np.sqrt(((x - cx + 8) / 10) ** 2 + ((y - cy) / 30) ** 2 + ((z - cz) / 25) ** 2) < 1
    vol[vent] = 150.0
    # smooth texture so mutual information has structure to lock on
    for _ in range(6):
        c = rng.uniform([cx - 60, cy - 70, cz - 40], [cx + 60, cy + 70, cz + 40])
        blob = np.exp(-(((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 20.0**2)))
        vol += (100.0 * blob * (r < 0.92)).astype(np.float32)
    return vol


def _ball(shape: tuple[int, int, int], g: VolumeGeometry, centre: np.ndarray, radius: float) -> np.ndarray:
    x, y, z = _points(shape, g)
    return np.asarray((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2)


def make_pair(
    seed: int, shape: tuple[int, int, int] = (32, 128, 128), spacing: tuple[float, float, float] = (1.8, 1.8, 5.0)
) -> FollowupPair:
    """One pair: 2-4 degrees and 2-5 mm of motion, lesions of each class (stable, enlarging, shrinking,
    disappeared, new), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    g = VolumeGeometry(spacing=spacing)
    prior = _head(shape, g, rng)
    centre = np.array([n * s / 2 for n, s in zip(shape[::-1], spacing, strict=True)])
    angles = tuple(float(a) for a in rng.uniform(-4, 4, 3))
    direction = rng.normal(size=3)
    shift = tuple(float(v) for v in direction / np.linalg.norm(direction) * rng.uniform(2, 5))
    matrix = rigid_matrix(angles, shift, centre)  # type: ignore[arg-type]
    plan = ["stable", "enlarging", "shrinking", "disappeared", "new", "new"]
    prior_mask = np.zeros(shape, dtype=np.uint8)
    truth_prior = np.zeros(shape, dtype=np.uint8)  # lesions as they are at the time of the current study
    truth: list[tuple[str, tuple[float, float, float]]] = []
    placed: list[np.ndarray] = []
    for kind in plan:
        while True:
            c = centre + rng.uniform([-50, -60, -35], [50, 60, 35])
            if all(np.linalg.norm(c - q) > 30 for q in placed):
                break
        placed.append(c)
        r0 = float(rng.uniform(4.0, 6.0))
        before = {"new": 0.0}.get(kind, r0)
        after = {"enlarging": r0 * 1.35, "shrinking": r0 * 0.7, "disappeared": 0.0}.get(kind, r0)
        if before:
            prior_mask |= _ball(shape, g, c, before).astype(np.uint8)
        if after:
            truth_prior |= _ball(shape, g, c, after).astype(np.uint8)
        truth.append((kind, (float(c[0]), float(c[1]), float(c[2]))))
    prior = prior + 250.0 * prior_mask
    lesioned = _head(shape, g, np.random.default_rng(seed)) + 250.0 * truth_prior
    current = resample_volume(lesioned, g, shape, g, matrix)
    current = current + rng.normal(0, 10, shape).astype(np.float32)
    prior = prior + rng.normal(0, 10, shape).astype(np.float32)
    current_mask = resample_volume(truth_prior, g, shape, g, matrix, nearest=True).astype(np.uint8)
    return FollowupPair(
        prior.astype(np.float32), prior_mask, current.astype(np.float32), current_mask, g, matrix, tuple(truth)
    )
