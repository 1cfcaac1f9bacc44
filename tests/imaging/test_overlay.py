import numpy as np
import pytest

from scanedge.imaging.encode import encode_image
from scanedge.imaging.overlay import OverlayOptions, OverlayRenderer, display_image
from scanedge.imaging.slices import Slice
from scanedge.manifest import ClassSpec
from tests.conftest import simple_manifest


def test_display_window_clips_below_and_above_for_every_stored_dtype():
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.uint32):
        px = np.array([[0, 50, 100, 150, 200]], dtype)
        s = Slice.from_array(px, window_center=100, window_width=100)  # shows 50..150
        np.testing.assert_allclose(display_image(s), [[0, 0, 127.5, 255, 255]], atol=0.5, err_msg=str(dtype))


def test_negative_slope_still_windows_correctly():
    px = np.array([[0, 100, 200]], np.int16)  # rescaled: 0, -100, -200
    s = Slice.from_array(px, rescale_slope=-1.0, window_center=-100, window_width=200)
    np.testing.assert_allclose(display_image(s), [[255, 127.5, 0]], atol=0.5)


def test_display_uses_the_dicom_window_on_rescaled_values():
    px = np.array([[0, 1000, 1024, 1224, 3000]], np.int16)  # HU = px - 1024: -1024, -24, 0, 200, 1976
    s = Slice.from_array(px, rescale_intercept=-1024, window_center=0, window_width=400)
    np.testing.assert_array_equal(display_image(s), [[0, 112, 128, 255, 255]])


def test_display_without_window_stretches_min_to_max():
    s = Slice.from_array(np.array([[100, 150, 200]], np.uint16))
    np.testing.assert_allclose(display_image(s), [[0, 127.5, 255]], atol=0.5)  # 127.5 rounds either way


def test_overlay_blends_class_colour_only_where_the_mask_is():
    px = np.full((32, 32), 100, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 1
    r = OverlayRenderer(simple_manifest(), OverlayOptions(alpha=0.5))
    img = r.render(Slice.from_array(px), mask)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(img[10, 10], [178, 50, 50])  # 0.5 * (100,100,100) + 0.5 * (255,0,0)


def test_each_class_gets_its_own_colour():
    m = simple_manifest(classes=(ClassSpec("bg", (0, 0, 0)), ClassSpec("a", (0, 255, 0)), ClassSpec("b", (0, 0, 255))))
    mask = np.array([[0, 1, 2]], np.uint8)
    img = OverlayRenderer(m, OverlayOptions(alpha=1.0)).render(Slice.from_array(np.zeros((1, 3), np.uint8)), mask)
    np.testing.assert_array_equal(img[0], [[0, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_contours_outline_findings_without_fill():
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    img = OverlayRenderer(simple_manifest(), OverlayOptions(fill=False, contours=True)).render(
        Slice.from_array(np.zeros((32, 32), np.uint8)), mask
    )
    assert tuple(img[8, 15]) == (255, 0, 0)  # on the outline
    assert tuple(img[15, 15]) == (0, 0, 0)  # inside, unfilled


def test_heatmap_tints_only_probable_pixels():
    probs = np.zeros((2, 16, 16), np.float32)
    probs[1, :8] = 0.9
    probs[0] = 1 - probs[1]
    img = OverlayRenderer(simple_manifest(), OverlayOptions(fill=False, heatmap=True)).render(
        Slice.from_array(np.zeros((32, 32), np.uint8)), np.zeros((32, 32), np.uint8), probs
    )
    assert img[:14].any() and not img[18:].any()


def test_colour_slices_are_drawn_on_directly():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 2] = 200
    img = OverlayRenderer(simple_manifest()).render(Slice.from_array(rgb), np.zeros((4, 4), np.uint8))
    np.testing.assert_array_equal(img, rgb)
    assert img is not rgb


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_encoding_round_trips(fmt):
    import cv2

    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    data = encode_image(img, fmt)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(back.astype(int) - img).max() <= 3


def test_invalid_overlay_options_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        OverlayOptions(alpha=1.5)
