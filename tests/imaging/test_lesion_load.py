"""3-D lesion load against a synthetic volume whose lesions are known, and scipy's 3-D labelling."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import ndimage

from scanedge.imaging.lesion_load import SeriesLesionLoad, accumulate, slice_key
from scanedge.imaging.slices import SliceGeometry

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PIXEL = (0.8, 0.8)
STEP = 2.0  # mm between slices
VOXEL_MM3 = PIXEL[0] * PIXEL[1] * STEP
CLASSES = ("background", "lesion")
# (centre z, y, x in voxels; semi-axes in mm along z, y, x)
ELLIPSOIDS = [
    (10.0, 20.0, 20.0, 7.0, 6.0, 5.0),
    (12.0, 60.0, 70.0, 9.0, 8.0, 8.0),
    (25.0, 30.0, 65.0, 5.0, 4.0, 6.0),
    (30.0, 75.0, 25.0, 11.0, 5.0, 5.0),
    (5.0, 80.0, 80.0, 1.0, 3.0, 3.0),  # thinner than a slice spacing: one slice
]


def ellipsoid_volume(shape=(40, 96, 96)) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    labels = np.zeros(shape, np.uint8)
    for cz, cy, cx, rz, ry, rx in ELLIPSOIDS:
        inside = ((z - cz) * STEP / rz) ** 2 + ((y - cy) * PIXEL[0] / ry) ** 2 + ((x - cx) * PIXEL[1] / rx) ** 2 <= 1
        labels[inside] = 1
    return labels


def geometry(z_index: int, position_offset: float = 0.0) -> SliceGeometry:
    return SliceGeometry(
        pixel_spacing=PIXEL,
        slice_thickness=STEP,
        image_position=(-40.0, -40.0, z_index * STEP + position_offset),
        image_orientation=AXIAL,
    )


def reference(volume: np.ndarray) -> tuple[int, list[int]]:
    """Count and voxel sizes of the 26-connected components, by scipy."""
    labelled, count = ndimage.label(volume, structure=np.ones((3, 3, 3)))
    return count, sorted(np.bincount(labelled.ravel())[1:].tolist())


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return ellipsoid_volume()


def feed(volume: np.ndarray, order, load: SeriesLesionLoad | None = None) -> SeriesLesionLoad:
    load = SeriesLesionLoad(CLASSES) if load is None else load
    for z in order:
        load.add(volume[z], geometry(z), instance_number=z + 1)
    return load


def test_counts_every_ellipsoid_once_and_its_volume_within_voxel_rounding(volume):
    load = feed(volume, range(len(volume))).load()
    lesion = load.load("lesion")
    assert lesion.lesions == len(ELLIPSOIDS)
    assert lesion.voxels == int(volume.sum())
    assert lesion.volume_mm3 == pytest.approx(volume.sum() * VOXEL_MM3)
    assert (load.spacing_mm, load.spacing_source, load.slices) == (STEP, "positions", len(volume))
    # each lesion's voxelised volume is its true volume up to the voxels its surface cuts
    true_total = sum(4 / 3 * math.pi * rz * ry * rx for *_, rz, ry, rx in ELLIPSOIDS[:4])
    biggest = 4 / 3 * math.pi * 9.0 * 8.0 * 8.0
    assert lesion.largest_mm3 == pytest.approx(biggest, rel=0.1)
    assert lesion.volume_mm3 == pytest.approx(true_total + 4 / 3 * math.pi * 3 * 3 * STEP / 2, rel=0.1)
    assert lesion.largest_slices == 9  # 18 mm tall at 2 mm spacing
    count, sizes = reference(volume)
    assert (lesion.lesions, lesion.largest_voxels) == (count, sizes[-1])
    assert lesion.slices_with_finding == int((volume.reshape(len(volume), -1).max(axis=1) > 0).sum())


def test_shuffled_order_gives_the_same_load(volume):
    in_order = feed(volume, range(len(volume))).load()
    for seed in range(3):
        order = list(range(len(volume)))
        random.Random(seed).shuffle(order)
        assert feed(volume, order).load() == in_order


def test_a_resent_slice_replaces_its_earlier_result(volume):
    load = feed(volume, range(len(volume)))
    before = load.load()
    for z in (10, 12, 30):  # sent again, identical
        load.add(volume[z], geometry(z), z + 1)
    assert load.load() == before and len(load) == len(volume)
    wrong = volume[10].copy()
    wrong[:] = 0
    load.add(wrong, geometry(10), 11)  # replaced by an empty mask: the lesion through it splits
    assert load.load().load("lesion").voxels == before.load("lesion").voxels - int(volume[10].sum())
    load.add(volume[10], geometry(10, position_offset=0.0002), 11)  # same place within a micrometre
    assert load.load() == before


def test_a_missing_slice_splits_what_crosses_it_until_it_arrives(volume):
    missing = {12, 25}  # through the middle of three ellipsoids
    present = [z for z in range(len(volume)) if z not in missing]
    random.Random(7).shuffle(present)
    load = feed(volume, present)
    gapped = volume.copy()
    gapped[sorted(missing)] = 0
    count, sizes = reference(gapped)
    lesion = load.load().load("lesion")
    assert count == len(ELLIPSOIDS) + 3  # the reference agrees the gaps split them
    assert (lesion.lesions, lesion.voxels) == (count, sum(sizes))
    assert load.load().spacing_mm == STEP  # two missing slices do not change the measured spacing
    assert lesion.volume_mm3 == pytest.approx(sum(sizes) * VOXEL_MM3)
    for z in missing:  # the superseded slices are sent again and fill the gaps
        load.add(volume[z], geometry(z), z + 1)
    assert load.load() == feed(volume, range(len(volume))).load()


def test_slices_only_diagonally_touching_are_one_lesion_26_connected():
    a = np.zeros((8, 8), np.uint8)
    b = np.zeros((8, 8), np.uint8)
    a[2, 2] = 1
    b[3, 3] = 1  # diagonal neighbour on the next slice
    c = np.zeros((8, 8), np.uint8)
    c[5, 5] = 1  # two pixels away on the slice after: not touching
    load = accumulate(CLASSES, [(a, geometry(0), 1), (b, geometry(1), 2), (c, geometry(2), 3)])
    assert load.load("lesion").lesions == 2
    assert load.load("lesion").largest_voxels == 2 and load.load("lesion").largest_slices == 2


def test_in_plane_components_are_8_connected_like_the_findings():
    m = np.zeros((6, 6), np.uint8)
    m[1, 1] = m[2, 2] = 1  # diagonal: one component
    m[4, 4] = 1
    lesion = accumulate(CLASSES, [(m, geometry(0), 1)]).load("lesion")
    assert lesion.lesions == 2 and lesion.voxels == 3


def test_volume_uses_thickness_when_the_spacing_is_unknown():
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 1:4] = 1
    load = accumulate(CLASSES, [(m, geometry(0), 1)])  # one slice: no spacing from positions
    assert (load.spacing_mm, load.spacing_source) == (None, "thickness")
    assert load.load("lesion").volume_mm3 == pytest.approx(6 * PIXEL[0] * PIXEL[1] * STEP)
    bare = accumulate(CLASSES, [(m, SliceGeometry(pixel_spacing=PIXEL), 1)])
    assert bare.load("lesion").volume_mm3 is None and bare.load("lesion").voxels == 6
    assert bare.spacing_source == "none"


def test_a_given_spacing_wins_over_positions(volume):
    load = SeriesLesionLoad(CLASSES, spacing_mm=3.0)
    feed(volume, range(len(volume)), load)
    assert load.load().spacing_source == "given"
    assert load.load().load("lesion").volume_mm3 == pytest.approx(volume.sum() * PIXEL[0] * PIXEL[1] * 3.0)


def test_without_geometry_slices_are_placed_by_instance_number(volume):
    load = SeriesLesionLoad(CLASSES)
    order = list(range(len(volume)))
    random.Random(3).shuffle(order)
    for z in order:
        load.add(volume[z], SliceGeometry(pixel_spacing=PIXEL, slice_thickness=STEP), instance_number=z + 1)
    lesion = load.load().load("lesion")
    assert lesion.lesions == len(ELLIPSOIDS)
    assert lesion.volume_mm3 == pytest.approx(volume.sum() * VOXEL_MM3)  # thickness stands in for spacing
    assert load.keys[0] == ("idx", 1) and slice_key(None, None) is None


def test_classes_are_counted_separately():
    m = np.zeros((2, 10, 10), np.uint8)
    m[0, 1:3, 1:3] = 1
    m[1, 1:3, 1:3] = 2  # on top of class 1, another class: not the same lesion
    m[1, 6:8, 6:8] = 2
    load = accumulate(("background", "a", "b"), [(m[0], geometry(0), 1), (m[1], geometry(1), 2)])
    assert [(c.name, c.lesions, c.voxels) for c in load.classes] == [("a", 1, 4), ("b", 2, 8)]
    assert load.lesions == 3
    d = load.to_dict()
    assert d["classes"][1]["lesions"] == 2 and d["slices"] == 2 and d["spacing_mm"] == STEP


def test_memory_is_compact_and_capped(volume):
    load = feed(volume, range(len(volume)))
    mask_bytes = volume[0].nbytes * len(volume)
    assert load.nbytes < mask_bytes / 8  # bit-packed bounding boxes, not masks
    capped = SeriesLesionLoad(CLASSES, max_slices=5)
    feed(volume, range(10), capped)
    assert len(capped) == 5 and capped.load().dropped_slices == 5
    capped.add(volume[2], geometry(2), 3)  # a slice already held can still be replaced
    assert capped.load().dropped_slices == 5
    assert capped.discard(("pos", 4.0)) and not capped.discard(("pos", 4.0)) and len(capped) == 4


def test_empty_series_and_bad_arguments():
    load = SeriesLesionLoad(CLASSES)
    assert load.load().lesions == 0 and load.load().volume_mm3 is None
    nothing = np.zeros((4, 4), np.uint8)
    empty = accumulate(CLASSES, [(nothing, geometry(0), 1), (nothing, geometry(1), 2)])
    assert empty.load("lesion").volume_mm3 == 0.0 and empty.load("lesion").largest_mm3 is None
    with pytest.raises(ValueError):
        SeriesLesionLoad(("background",))
    with pytest.raises(ValueError):
        load.add(np.zeros((2, 2, 2), np.uint8))


def test_a_slice_landing_between_two_adjacent_ones_cuts_their_link():
    lesion = np.zeros((6, 6), np.uint8)
    lesion[2:4, 2:4] = 1
    nothing = np.zeros((6, 6), np.uint8)
    load = SeriesLesionLoad(CLASSES, spacing_mm=2.0)  # a given spacing: 2.5 mm apart is adjacent
    load.add(lesion, key=("pos", 0.0))
    assert load.add(lesion, key=("pos", 2.5)).load("lesion").lesions == 1
    assert load.add(nothing, key=("pos", 1.25)).load("lesion").lesions == 2  # an empty slice between them now


def test_the_cost_of_a_slice_does_not_grow_with_the_series(volume):
    """Slices arriving in order are linked to their neighbours only: no pass over the whole series."""
    load = SeriesLesionLoad(CLASSES)
    calls = []
    original = load._rebuild
    load._rebuild = lambda spacing: (calls.append(spacing), original(spacing))  # type: ignore[method-assign]
    for z in range(len(volume)):
        load.add(volume[z], geometry(z), z + 1)
    assert len(calls) <= 2  # the first slice, and the second (the spacing becomes known)
    assert load.load() == feed(volume, reversed(range(len(volume)))).load()
