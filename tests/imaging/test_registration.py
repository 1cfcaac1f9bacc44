"""Registration recovers known motion of synthetic follow-up pairs and calls unrelated volumes poor."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from scanedge.demo.followup import make_pair
from scanedge.errors import ConfigError, InputError
from scanedge.imaging.lesion_change import compare, initial_tracking
from scanedge.imaging.registration import (
    RegistrationConfig,
    VolumeGeometry,
    register,
    resample_labels,
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


def test_bad_input_and_config_are_typed_errors() -> None:
    with pytest.raises(InputError):
        VolumeGeometry(spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InputError):
        register(np.zeros((4, 4)), VolumeGeometry(), np.zeros((4, 4, 4)), VolumeGeometry())
    with pytest.raises(ConfigError):
        RegistrationConfig(max_iterations=0)
