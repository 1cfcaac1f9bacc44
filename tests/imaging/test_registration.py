"""Registration recovers known motion of synthetic follow-up pairs and calls unrelated volumes poor."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from scanedge.demo.followup import make_pair, rigid_matrix
from scanedge.errors import ConfigError, InputError
from scanedge.imaging.lesion_change import compare, initial_tracking
from scanedge.imaging.registration import (
    RegistrationConfig,
    VolumeGeometry,
    register,
    resample_labels,
    resample_volume,
)


def _mean_error_mm(found: np.ndarray, truth: np.ndarray) -> float:
    x, y, z = np.meshgrid(np.arange(40, 190, 15), np.arange(30, 200, 15), np.arange(30, 130, 15), indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)])
    return float(np.linalg.norm(((found - truth) @ points)[:3], axis=0).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_rigid_motion_within_1mm(seed: int) -> None:
    pair = make_pair(seed)
    result = register(pair.current, pair.geometry, pair.prior, pair.geometry)
    assert result.quality == "good", result.reason
    assert _mean_error_mm(result.as_array(), pair.matrix) < 1.0
    assert 0 < result.iterations and result.seconds > 0


def test_unrelated_volumes_are_poor_and_change_is_withheld() -> None:
    pair = make_pair(3)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 900, pair.current.shape).astype(np.float32)
    noise[:, :, :40] = 0  # unrelated content: a noise slab, not a head
    result = register(pair.current, pair.geometry, noise, pair.geometry)
    assert result.quality != "good" and not result.usable
    prior, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    moved = resample_labels(prior, pair.geometry, pair.current.shape, pair.geometry, result)
    report = compare(
        moved, uids, pair.current_mask, pair.geometry.spacing, withhold=None if result.usable else result.reason
    )
    assert report.withheld and report.lesions == () and report.current_load_mm3 > 0


def test_resampled_prior_mask_lands_on_current_lesions() -> None:
    pair = make_pair(4)
    result = register(pair.current, pair.geometry, pair.prior, pair.geometry)
    prior, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    moved = resample_labels(prior, pair.geometry, pair.current.shape, pair.geometry, result)
    report = compare(moved, uids, pair.current_mask, pair.geometry.spacing)
    assert report.count("stable") == 1 and report.count("new") == 2 and report.count("disappeared") == 1
    assert report.count("enlarging") == 1 and report.count("shrinking") == 1


def test_affine_recovers_known_scaling_and_shear_where_rigid_cannot() -> None:
    """The current study is the prior head through a known affine: scaling 1.05 / 0.96 / 1.0, shears 0.03 and
    0.02, then a rotation of a few degrees and a shift. Affine registration recovers it (measured: mean error
    over the head 0.07 mm, worst point 0.13 mm); rigid cannot represent it (mean 3.6 mm, worst point 9.6 mm),
    though its head-mask Dice (0.97) still passes the quality check."""
    pair = make_pair(2)
    g, shape = pair.geometry, pair.prior.shape
    centre = np.array([n * s / 2 for n, s in zip(shape[::-1], g.spacing, strict=True)])
    linear = np.array([[1.05, 0.03, 0.0], [0.0, 0.96, 0.02], [0.0, 0.0, 1.0]])
    scale_shear = np.eye(4)
    scale_shear[:3, :3] = linear
    scale_shear[:3, 3] = centre - linear @ centre
    truth = rigid_matrix((2.0, -1.5, 3.0), (2.0, -3.0, 1.5), centre) @ scale_shear  # current -> prior
    current = resample_volume(pair.prior, g, shape, g, truth)
    current = current + np.random.default_rng(1).normal(0, 10, shape).astype(np.float32)
    head = np.argwhere(current > 200)[::50]
    points = np.stack(
        [head[:, 2] * g.spacing[0], head[:, 1] * g.spacing[1], head[:, 0] * g.spacing[2], np.ones(len(head))]
    )

    def errors(transform: str) -> np.ndarray:
        result = register(current, g, pair.prior, g, RegistrationConfig(transform=transform))  # type: ignore[arg-type]
        assert result.quality == "good", result.reason
        return np.asarray(np.linalg.norm(((result.as_array() - truth) @ points)[:3], axis=0))

    affine, rigid = errors("affine"), errors("rigid")
    assert affine.mean() < 1.0 and affine.max() < 1.0
    assert rigid.mean() > 2.0 and rigid.mean() > 5 * affine.mean()


def test_spent_budget_stops_the_optimiser_and_skips_the_later_levels() -> None:
    pair = make_pair(1)
    result = register(pair.current, pair.geometry, pair.prior, pair.geometry, RegistrationConfig(time_budget_s=0.001))
    assert result.stopped_by_budget and "budget" in result.reason
    assert result.iterations == 1  # stopped at the first iteration of the first level; no later level begun


def test_bad_input_and_config_are_typed_errors() -> None:
    with pytest.raises(InputError):
        VolumeGeometry(spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InputError):
        register(np.zeros((4, 4)), VolumeGeometry(), np.zeros((4, 4, 4)), VolumeGeometry())
    with pytest.raises(ConfigError):
        RegistrationConfig(max_iterations=0)
