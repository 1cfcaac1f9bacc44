"""Change classes on constructed masks, load change, and tracking ids across two follow-ups."""

from __future__ import annotations

import numpy as np
import pytest

from scanedge.errors import ConfigError, InputError
from scanedge.imaging.lesion_change import ChangeConfig, compare, initial_tracking

SPACING = (1.0, 1.0, 1.0)


def _box(mask: np.ndarray, z: int, y: int, x: int, size: int) -> None:
    mask[z : z + size, y : y + size, x : x + size] = 1


def _classes(report) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {c: report.count(c) for c in ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split")}


def test_each_class_exact() -> None:
    prior = np.zeros((20, 60, 60), np.uint8)
    cur = np.zeros_like(prior)
    _box(prior, 2, 2, 2, 4)  # stable
    _box(cur, 2, 2, 2, 4)
    _box(prior, 2, 2, 20, 4)  # enlarging 64 -> 125
    _box(cur, 2, 2, 20, 5)
    _box(prior, 2, 2, 40, 5)  # shrinking 125 -> 64
    _box(cur, 2, 2, 40, 4)
    _box(prior, 10, 30, 2, 4)  # disappeared
    _box(cur, 10, 30, 20, 4)  # new
    _box(prior, 10, 30, 40, 3)  # two priors merged into one
    _box(prior, 10, 30, 45, 3)
    _box(cur, 10, 30, 40, 3)
    cur[10:13, 30:33, 43:45] = 1
    _box(cur, 10, 30, 45, 3)
    _box(prior, 10, 45, 2, 3)  # one prior split in two
    prior[10:13, 45:48, 5:8] = 1
    _box(prior, 10, 45, 8, 3)
    _box(cur, 10, 45, 2, 3)
    _box(cur, 10, 45, 8, 3)
    tracking, uids = initial_tracking(prior, SPACING, ChangeConfig(min_volume_mm3=1))
    report = compare(tracking, uids, cur, SPACING, ChangeConfig(min_volume_mm3=1))
    assert _classes(report) == {
        "new": 1,
        "enlarging": 1,
        "stable": 1,
        "shrinking": 1,
        "disappeared": 1,
        "merged": 1,
        "split": 2,
    }
    assert report.prior_load_mm3 == float((prior > 0).sum())
    assert report.current_load_mm3 == float((cur > 0).sum())
    assert report.load_change_percent == pytest.approx(100 * ((cur > 0).sum() - (prior > 0).sum()) / (prior > 0).sum())
    split = [lesion for lesion in report.lesions if lesion.change == "split"]
    assert len({lesion.tracking_uid for lesion in split}) == 2 and split[0].prior_uids == split[1].prior_uids
    assert sum(lesion.tracking_uid in split[0].prior_uids for lesion in split) == 1


def test_small_growth_is_stable_and_small_new_lesions_do_not_count() -> None:
    prior = np.zeros((10, 30, 30), np.uint8)
    _box(prior, 1, 1, 1, 5)
    cur = prior.copy()
    cur[1:6, 1:6, 6] = 1  # +20 % of 125 = 25: enlarging at defaults
    cur[8, 20, 20] = 1  # a single voxel: under the minimum volume
    tracking, uids = initial_tracking(prior, SPACING)
    report = compare(tracking, uids, cur, SPACING)
    assert _classes(report)["enlarging"] == 1 and _classes(report)["new"] == 0
    report = compare(tracking, uids, cur, SPACING, ChangeConfig(enlarge_fraction=0.5))
    assert _classes(report)["stable"] == 1


def test_tracking_ids_persist_across_two_followups() -> None:
    first = np.zeros((10, 40, 40), np.uint8)
    _box(first, 1, 1, 1, 4)
    tracking, uids = initial_tracking(first, SPACING)
    (uid,) = uids.values()
    assert uid.startswith("2.25.")
    second = first.copy()
    _box(second, 1, 20, 20, 4)
    report2 = compare(tracking, uids, second, SPACING)
    new_uid = next(lesion.tracking_uid for lesion in report2.lesions if lesion.change == "new")
    third = second.copy()
    third[1:6, 1:6, 1:6] = 1
    report3 = compare(report2.tracking, report2.uids, third, SPACING)
    changes = {lesion.tracking_uid: lesion.change for lesion in report3.lesions}
    assert changes == {uid: "enlarging", new_uid: "stable"}


def test_bad_input_is_typed() -> None:
    with pytest.raises(InputError):
        compare(np.zeros((2, 2, 2), np.int32), {}, np.zeros((2, 2, 3)), SPACING)
    with pytest.raises(InputError):
        compare(np.ones((2, 2, 2), np.int32), {}, np.zeros((2, 2, 2)), SPACING)
    with pytest.raises(ConfigError):
        ChangeConfig(shrink_fraction=1.0)
