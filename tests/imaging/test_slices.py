import numpy as np
import pytest

from scanedge.errors import ImageTooLargeError, InputError, InvalidSliceError
from scanedge.imaging.slices import Slice, SliceGeometry, SliceLimits


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 10), np.int16), "empty"),
        (np.zeros((10, 0), np.float32), "empty"),
        (np.zeros(100, np.int16), "2-D"),
        (np.zeros((4, 4, 4, 4), np.int16), "2-D"),
        (np.zeros((8, 8, 2), np.uint8), "2-D"),
        (np.zeros((8, 8), np.bool_), "dtype bool"),
        (np.zeros((8, 8), np.complex64), "dtype complex64"),
        (np.zeros((8, 8), np.float16), "dtype float16"),
        (np.zeros((8, 8), object), "dtype object"),
    ],
)
def test_unusable_arrays_are_refused(array, message):
    with pytest.raises(InvalidSliceError, match=message):
        Slice.from_array(array)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_pixels_are_refused(bad, dtype):
    a = np.ones((64, 64), dtype)
    a[10, 20] = bad
    with pytest.raises(InvalidSliceError, match="NaN/Inf"):
        Slice.from_array(a)


def test_huge_but_finite_float64_values_are_accepted():
    a = np.full((64, 64), 1e306, np.float64)  # the float64 sum overflows; the values are fine
    assert Slice.from_array(a).shape == (64, 64)


def test_size_limit_is_configurable():
    a = np.zeros((600, 600), np.uint8)
    with pytest.raises(ImageTooLargeError, match="limit"):
        Slice.from_array(a, limits=SliceLimits(max_pixels=512 * 512))
    assert Slice.from_array(a, limits=SliceLimits(max_pixels=600 * 600)).shape == (600, 600)


def test_not_an_array_is_an_input_error():
    with pytest.raises(InputError):
        Slice.from_array([[1, 2], [3, 4]])  # type: ignore[arg-type]


def test_slice_keeps_stored_values_and_rescale():
    a = np.arange(16, dtype=np.int16).reshape(4, 4)
    s = Slice.from_array(a, rescale_slope=2.0, rescale_intercept=-1024, window_center=40, window_width=400)
    assert s.pixels is a
    assert (s.rescale_slope, s.rescale_intercept, s.window_center, s.window_width) == (2.0, -1024.0, 40.0, 400.0)
    assert s.has_rescale and not s.is_color


def test_half_a_window_is_dropped_not_fatal():
    s = Slice.from_array(np.zeros((4, 4), np.uint8), window_center=10, window_width=None)
    assert s.window_center is None and s.window_width is None


def test_zero_slope_is_refused():
    with pytest.raises(InvalidSliceError, match="rescale_slope"):
        Slice.from_array(np.zeros((4, 4), np.uint8), rescale_slope=0)


def test_position_along_normal_orders_axial_slices_by_z():
    g = SliceGeometry(image_position=(-100, -100, 42.5), image_orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.5, 2))
    assert g.position_along_normal == pytest.approx(42.5)
    assert g.pixel_area_mm2 == 1.0
