import numpy as np
import pytest

from scanedge.imaging.montage import MAX_TILE, MIN_TILE, TileLabel, montage, orientation_markers, tile_label
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity

H, W = 200, 240  # within MIN_TILE..MAX_TILE: tiles keep this size


def tile(value, shape=(H, W)):
    return np.full((*shape, 3), value, np.uint8)


def test_tiles_fill_rows_left_to_right_and_spare_cells_stay_black():
    tiles = [tile(v) for v in (10, 20, 30, 40, 50)]
    sheet = montage(tiles, columns=3)
    assert sheet.shape == (2 * H, 3 * W, 3) and sheet.dtype == np.uint8
    for i, v in enumerate((10, 20, 30, 40, 50)):
        r, c = divmod(i, 3)
        assert (sheet[r * H : (r + 1) * H, c * W : (c + 1) * W] == v).all()
    assert not sheet[H:, 2 * W :].any()


def test_colours_are_kept_and_grey_tiles_become_grey_rgb():
    red = tile(0)
    red[..., 0] = 255
    grey = np.full((H, W), 77, np.uint8)
    sheet = montage([red, grey])
    assert sheet.shape == (H, 2 * W, 3)
    assert (sheet[:, :W] == (255, 0, 0)).all() and (sheet[:, W:] == 77).all()


def test_every_tile_takes_the_first_ones_size():
    sheet = montage([tile(100), tile(200, (2 * H, 2 * W))], columns=2)
    assert sheet.shape == (H, 2 * W, 3) and (sheet[:, W:] == 200).all()


@pytest.mark.parametrize(("shape", "side"), [((64, 64), MIN_TILE), ((512, 512), MAX_TILE), ((1024, 512), MAX_TILE)])
def test_small_slices_are_enlarged_and_large_ones_reduced_for_legible_tiles(shape, side):
    sheet = montage([np.zeros(shape, np.uint8)])
    assert max(sheet.shape[:2]) == side


def test_labels_legend_and_the_clinical_use_banner_are_burned_in():
    plain = montage([tile(90), tile(90)], columns=2)
    marked = montage(
        [tile(90), tile(90)],
        columns=2,
        labels=[TileLabel("#1  +4.0 mm", ("A", "L", "P", "R")), TileLabel()],
        legend=[("lesion", (255, 40, 40))],
        not_for_clinical_use=True,
    )
    banner = int((marked[:, 1] == (150, 20, 20)).all(axis=-1).sum())  # the red banner on top
    legend = marked.shape[0] - banner - plain.shape[0]  # and the legend strip below the tiles
    assert banner > 10 and legend > 10 and marked.shape[1] == plain.shape[1]
    body = marked[banner : banner + plain.shape[0]]
    first, second = body[:, :W], body[:, W:]
    assert (first != 90).any(axis=-1).sum() > 200  # title and markers written on the first tile
    assert (second != 90).any(axis=-1).sum() <= 2 * (H + W)  # the second: only its thin frame
    strip = marked[banner + plain.shape[0] :]
    assert (strip == (255, 40, 40)).all(axis=-1).sum() > 20  # the class colour swatch


def axial(orientation):
    return Slice.from_array(
        np.zeros((8, 8), np.uint8),
        geometry=SliceGeometry(image_orientation=orientation, image_position=(0.0, 0.0, 12.5)),
        identity=SliceIdentity(instance_number=7),
    )


@pytest.mark.parametrize(
    ("orientation", "markers"),
    [
        ((1, 0, 0, 0, 1, 0), ("A", "L", "P", "R")),  # axial, radiological view
        ((0, 1, 0, 0, 0, -1), ("H", "P", "F", "A")),  # sagittal
        ((1, 0, 0, 0, 0, -1), ("H", "L", "F", "R")),  # coronal
        ((0.8, 0.6, 0, -0.6, 0.8, 0), ("AL", "LP", "PR", "RA")),  # oblique: the two axes it leans along
    ],
)
def test_orientation_markers_follow_image_orientation_patient(orientation, markers):
    assert orientation_markers(axial(orientation)) == markers


def test_tile_labels_name_the_slice_and_its_position():
    label = tile_label(axial((1, 0, 0, 0, 1, 0)))
    assert label.title == "#7  +12.5 mm" and label.orientation == ("A", "L", "P", "R")
    assert tile_label(Slice.from_array(np.zeros((4, 4), np.uint8))) == TileLabel("", None)


@pytest.mark.parametrize(
    ("images", "columns", "message"),
    [
        ([], 8, "at least one"),
        ([tile(1)], 0, "columns"),
        ([np.zeros((4, 4), np.float32)], 8, "uint8"),
        ([np.zeros((4, 4, 4), np.uint8)], 8, "uint8"),
    ],
)
def test_unusable_input_is_refused(images, columns, message):
    with pytest.raises(ValueError, match=message):
        montage(images, columns)
