"""compare_series, the one comparison every caller uses, on synthetic pairs with a known answer."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from scanedge.demo.followup import make_pair
from scanedge.errors import InputError
from scanedge.imaging.followup import (
    CHANGE_CODES,
    PriorVolume,
    SeriesChange,
    change_image,
    compare_series,
    volume_from_slices,
)
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.imaging.slices import Slice, SliceGeometry


def _prior(pair) -> PriorVolume:
    tracking, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    return PriorVolume("1.2.3", "1.2.3.4", "20250101", pair.prior, pair.geometry, tracking, uids, "test", "rules")


def test_compared_pair_finds_every_planted_class_and_keeps_prior_uids() -> None:
    pair = make_pair(3)
    prior = _prior(pair)
    result = compare_series(pair.current, pair.geometry, pair.current_mask, prior)
    assert result.status == "compared" and result.registration is not None and result.registration.usable
    summary = result.summary()
    assert summary.counts is not None
    planted = sorted(kind for kind, _ in pair.truth)
    found = sorted(lesion.change for lesion in result.report.lesions)
    assert found == planted
    inherited = {lesion.tracking_uid for lesion in result.report.lesions if lesion.change != "new"}
    assert inherited <= set(prior.uids.values())
    # the summary is wire-ready and round-trips
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(summary), type=SeriesChange) == summary
    assert summary.prior_date == "20250101" and summary.load_change_percent is not None


def test_change_image_codes_are_the_lesions_classes() -> None:
    pair = make_pair(5)
    result = compare_series(pair.current, pair.geometry, pair.current_mask, _prior(pair))
    for z in range(result.report.tracking.shape[0]):
        plane = result.report.tracking[z]
        codes = change_image(plane, result.report)
        for lesion in result.report.lesions:
            if lesion.label:
                assert set(np.unique(codes[plane == lesion.label])) <= {CHANGE_CODES[lesion.change]}
        assert not codes[plane == 0].any()


def test_poor_registration_withholds_labels_but_reports_the_load() -> None:
    pair = make_pair(4)
    prior = _prior(pair)
    noise = np.random.default_rng(0).normal(size=pair.prior.shape).astype(np.float32)
    bad = PriorVolume("1.2.3", "1.2.3.4", "20250101", noise, pair.geometry, prior.tracking, prior.uids)
    result = compare_series(pair.current, pair.geometry, pair.current_mask, bad)
    assert result.status == "withheld" and "registration" in result.reason
    assert result.report.lesions == () and result.report.current_load_mm3 > 0
    summary = result.summary(10)
    assert summary.counts is None and summary.slice_counts is None
    assert not change_image(result.report.tracking[10], result.report).any()


def test_no_prior_says_so() -> None:
    pair = make_pair(6)
    result = compare_series(pair.current, pair.geometry, pair.current_mask, None, no_prior_reason="PACS unreachable")
    assert (result.status, result.reason) == ("no_prior", "PACS unreachable")
    assert result.summary().prior_load_mm3 is None and result.report.uids


def _slices(volume: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> list[Slice]:
    return [
        Slice(
            volume[z],
            geometry=SliceGeometry(
                pixel_spacing=(spacing[1], spacing[0]),
                image_position=(0.0, 0.0, z * spacing[2]),
                image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            ),
        )
        for z in range(volume.shape[0])
    ]


def test_volume_from_slices_orders_along_the_normal() -> None:
    volume = np.random.default_rng(1).normal(size=(5, 8, 9)).astype(np.float32)
    slices = _slices(volume)
    shuffled = [slices[i] for i in (3, 0, 4, 1, 2)]
    stacked, geometry, order = volume_from_slices(shuffled)
    assert np.array_equal(stacked, volume) and order == [1, 3, 4, 0, 2]
    assert geometry.spacing == (1.0, 1.0, 3.0)


def test_volume_from_slices_refuses_what_is_not_one_volume() -> None:
    volume = np.zeros((3, 8, 8), dtype=np.float32)
    with pytest.raises(InputError):
        volume_from_slices([])
    twice = _slices(volume)
    with pytest.raises(InputError, match="share one position"):
        volume_from_slices([twice[0], twice[0]])
    with pytest.raises(InputError, match="orientation"):
        volume_from_slices([Slice(volume[0])])
