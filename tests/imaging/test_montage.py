import numpy as np
import pytest

from scanedge.imaging.montage import montage


def tile(value, shape=(4, 6)):
    return np.full((*shape, 3), value, np.uint8)


def test_tiles_fill_rows_left_to_right_and_spare_cells_stay_black():
    tiles = [tile(v) for v in (10, 20, 30, 40, 50)]
    sheet = montage(tiles, columns=3)
    assert sheet.shape == (2 * 4, 3 * 6, 3) and sheet.dtype == np.uint8
    for i, v in enumerate((10, 20, 30, 40, 50)):
        r, c = divmod(i, 3)
        assert (sheet[r * 4 : (r + 1) * 4, c * 6 : (c + 1) * 6] == v).all()
    assert not sheet[4:, 12:].any()


def test_colours_are_kept_and_grey_tiles_become_grey_rgb():
    red = np.zeros((4, 6, 3), np.uint8)
    red[..., 0] = 255
    grey = np.full((4, 6), 77, np.uint8)
    sheet = montage([red, grey])
    assert sheet.shape == (4, 12, 3)
    assert (sheet[:, :6] == (255, 0, 0)).all() and (sheet[:, 6:] == 77).all()


def test_every_tile_takes_the_first_ones_size():
    sheet = montage([tile(100, (4, 6)), tile(200, (8, 12))], columns=2)
    assert sheet.shape == (4, 12, 3) and (sheet[:, 6:] == 200).all()


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
