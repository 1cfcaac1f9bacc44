import numpy as np
import pytest

from scanedge.imaging.encode import encode_image
from scanedge.imaging.overlay import OverlayConfig, OverlayRenderer, display_image
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
    r = OverlayRenderer(simple_manifest(), OverlayConfig(alpha=0.5))
    img = r.render(Slice.from_array(px), mask)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(img[10, 10], [178, 50, 50])  # 0.5 * (100,100,100) + 0.5 * (255,0,0)


def test_each_class_gets_its_own_colour():
    m = simple_manifest(classes=(ClassSpec("bg", (0, 0, 0)), ClassSpec("a", (0, 255, 0)), ClassSpec("b", (0, 0, 255))))
    mask = np.array([[0, 1, 2]], np.uint8)
    options = OverlayConfig(alpha=1.0, contours=False)
    img = OverlayRenderer(m, options).render(Slice.from_array(np.zeros((1, 3), np.uint8)), mask)
    np.testing.assert_array_equal(img[0], [[0, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_contours_outline_findings_without_fill():
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    img = OverlayRenderer(simple_manifest(), OverlayConfig(fill=False, halo=False)).render(
        Slice.from_array(np.zeros((32, 32), np.uint8)), mask
    )
    assert tuple(img[8, 15]) == (255, 0, 0)  # on the outline
    assert tuple(img[15, 15]) == (0, 0, 0)  # inside, unfilled


def test_heatmap_tints_only_probable_pixels_and_carries_its_colour_bar():
    probs = np.zeros((2, 32, 32), np.float32)
    probs[1, :16] = 0.9
    probs[0] = 1 - probs[1]
    renderer = OverlayRenderer(simple_manifest(), OverlayConfig(heatmap=True))
    black = Slice.from_array(np.zeros((128, 128), np.uint8))
    img = renderer.render(black, np.zeros((128, 128), np.uint8), probs)
    # where the colour bar and its labels are drawn comes from the font renderer: find it, never assume it
    # (drawn onto a black and a white image with nothing probable, as annotate.draw_patch does)
    nothing = np.stack([np.ones((32, 32), np.float32), np.zeros((32, 32), np.float32)])
    white = Slice.from_array(np.full((128, 128, 3), 255, np.uint8))
    on_black = renderer.render(black, np.zeros((128, 128), np.uint8), nothing)
    on_white = renderer.render(white, np.zeros((128, 128), np.uint8), nothing)
    annotation = ((on_black != 0) | (on_white != 255)).any(axis=-1)
    assert annotation[:, :96].sum() < annotation.sum()  # the bar stands at the right edge
    image = ~annotation
    assert img[:56][image[:56]].all()  # every probable pixel is tinted (no channel left black)...
    assert not img[72:][image[72:]].any()  # ...and nothing below them is
    bar = img[40:87, 122:124]  # viridis from yellow (p=1) at the top to violet at the bottom
    assert bar[0, 0, 0] > 200 and bar[0, 0, 2] < 80 and bar[-1, 0, 2] > bar[-1, 0, 1]


def test_default_rendering_outlines_findings_lightly_filled_with_a_halo_outside_only():
    px = np.full((32, 32), 100, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    img = OverlayRenderer(simple_manifest()).render(Slice.from_array(px), mask)
    assert tuple(img[8, 15]) == (255, 0, 0)  # the outline, on the finding's edge, in the class colour
    assert tuple(img[7, 15]) == (0, 0, 0) and tuple(img[6, 15]) == (0, 0, 0)  # the halo, outside
    assert tuple(img[5, 15]) == (100, 100, 100)  # the image, beyond the halo
    inside = img[12, 15].astype(int)  # light fill: the image still shows through (alpha 0.25)
    assert tuple(inside) == (139, 75, 75)


def test_outlines_read_on_colour_images_that_share_the_class_colour():
    """A red finding on red Doppler flow: the black halo is what makes its edge visible."""
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 230
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 1
    img = OverlayRenderer(simple_manifest()).render(Slice.from_array(red), mask)
    ring = np.r_[img[8, 10:20], img[21, 10:20], img[10:20, 8], img[10:20, 21]]
    assert (ring == 0).all()


def test_heatmap_and_mask_renderings_differ_where_the_finding_is():
    probs = np.zeros((2, 32, 32), np.float32)
    probs[1, 8:24, 8:24] = np.linspace(0.5, 1.0, 16)[None, :]
    probs[0] = 1 - probs[1]
    mask = (probs[1] >= 0.5).astype(np.uint8)
    r = OverlayRenderer(simple_manifest())
    s = Slice.from_array(np.full((32, 32), 100, np.uint8))
    plain, heat = r.render(s, mask, probs), r.render(s, mask, probs, OverlayConfig(heatmap=True))
    inside_plain, inside_heat = plain[12:20, 12:20].reshape(-1, 3), heat[12:20, 12:20].reshape(-1, 3)
    assert len({tuple(p) for p in inside_plain}) == 1  # one fill colour
    assert len({tuple(p) for p in inside_heat}) > 4  # a gradient of probabilities


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
        OverlayConfig(alpha=1.5)


def test_jpeg_files_keep_outlines_legible():
    """Outlines two pixels wide, encoded without chroma subsampling, come back red and dark-edged."""
    import cv2

    px = np.full((64, 64), 120, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    img = OverlayRenderer(simple_manifest(), OverlayConfig(contour_thickness=2)).render(Slice.from_array(px), mask)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(encode_image(img, "jpeg"), np.uint8), 1), cv2.COLOR_BGR2RGB)
    edge = back[20, 24:36].astype(int)  # the outline along the finding's top edge
    assert (edge[:, 0] > 200).all() and (edge[:, 1:] < 80).all(), edge
    assert (back[17, 24:36] < 60).all()  # its halo, outside
