import cv2
import numpy as np
import pytest

from scanedge.errors import InvalidSliceError
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.slices import Slice, SliceIdentity
from scanedge.manifest import InputSpec, IntensityPolicy, SizePolicy
from tests.conftest import simple_manifest

rng = np.random.default_rng(0)


def mr(h=512, w=512):
    return (rng.random((h, w)) * 1500).astype(np.int16)


def test_zscore_after_area_resize_matches_a_plain_numpy_reference():
    px = mr()
    tensor, info = Preprocessor(simple_manifest())(Slice.from_array(px))
    ref = cv2.resize(px.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
    ref = (ref - ref.mean()) / ref.std()
    assert tensor.shape == (1, 1, 256, 256) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, 0], ref, atol=1e-4)
    assert info.slice_shape == (512, 512) and info.model_shape == info.valid_shape == (256, 256)


def test_window_uses_rescaled_values_and_the_slices_own_dicom_window():
    px = (rng.random((256, 256)) * 3000).astype(np.int16)
    s = Slice.from_array(px, rescale_slope=1.0, rescale_intercept=-1024, window_center=40, window_width=400)
    tensor, _ = Preprocessor(simple_manifest(intensity=IntensityPolicy(mode="window")))(s)
    hu = px.astype(np.float32) - 1024
    np.testing.assert_allclose(tensor[0, 0], np.clip((hu - (40 - 200)) / 400, 0, 1), atol=1e-5)


def test_manifest_window_overrides_the_slices_window():
    px = (rng.random((256, 256)) * 3000).astype(np.int16)
    s = Slice.from_array(px, rescale_intercept=-1024, window_center=40, window_width=400)
    policy = IntensityPolicy(mode="window", window_center=-600, window_width=1500)
    tensor, _ = Preprocessor(simple_manifest(intensity=policy))(s)
    hu = px.astype(np.float32) - 1024
    np.testing.assert_allclose(tensor[0, 0], np.clip((hu + 1350) / 1500, 0, 1), atol=1e-5)


def test_percentile_clip_is_exact_on_model_sized_images():
    px = mr(256, 256)
    policy = IntensityPolicy(mode="percentile", percentile_low=1, percentile_high=99)
    tensor, _ = Preprocessor(simple_manifest(intensity=policy))(Slice.from_array(px))
    lo, hi = np.percentile(px.astype(np.float32), (1, 99))
    np.testing.assert_allclose(tensor[0, 0], np.clip((px - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_scale_with_per_channel_mean_std_for_rgb_models():
    px = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m = simple_manifest(
        input=InputSpec(name="image", channels=3, color="bgr"),
        size=SizePolicy(mode="fixed", height=128, width=128),
        intensity=IntensityPolicy(mode="scale", scale=1 / 255, mean=mean, std=std),
    )
    tensor, _ = Preprocessor(m)(Slice.from_array(px))
    bgr = px[:, :, ::-1].astype(np.float32) / 255
    for c in range(3):
        np.testing.assert_allclose(tensor[0, c], (bgr[:, :, c] - mean[c]) / std[c], atol=1e-5)


def test_grey_model_receives_luminance_of_colour_slices_and_colour_model_replicates_grey():
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    m = simple_manifest(size=SizePolicy(mode="fixed", height=64, width=64), intensity=IntensityPolicy(mode="none"))
    tensor, _ = Preprocessor(m)(Slice.from_array(rgb))
    np.testing.assert_allclose(tensor[0, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32))
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    colour = m.replace(input=InputSpec(name="image", channels=3, color="rgb"))
    tensor, _ = Preprocessor(colour)(Slice.from_array(grey))
    for c in range(3):
        np.testing.assert_array_equal(tensor[0, c], grey.astype(np.float32))


def test_pad_policy_keeps_the_pixel_grid_and_zero_pads():
    px = mr(100, 70)
    m = simple_manifest(
        size=SizePolicy(mode="pad", height=None, width=None, multiple=32), intensity=IntensityPolicy(mode="none")
    )
    tensor, info = Preprocessor(m)(Slice.from_array(px))
    assert tensor.shape == (1, 1, 128, 96) and info.valid_shape == (100, 70)
    np.testing.assert_array_equal(tensor[0, 0, :100, :70], px.astype(np.float32))
    assert not tensor[0, 0, 100:].any() and not tensor[0, 0, :, 70:].any()


def test_zscore_statistics_ignore_padding():
    px = mr(100, 70)
    m = simple_manifest(size=SizePolicy(mode="pad", height=None, width=None, multiple=32))
    tensor, _ = Preprocessor(m)(Slice.from_array(px))
    valid = tensor[0, 0, :100, :70]
    assert abs(valid.mean()) < 1e-4 and abs(valid.std() - 1) < 1e-4


def test_multiple_policy_resizes_to_nearest_multiple():
    m = simple_manifest(size=SizePolicy(mode="multiple", height=None, width=None, multiple=32))
    tensor, info = Preprocessor(m)(Slice.from_array(mr(500, 330)))
    assert tensor.shape == (1, 1, 512, 320) and info.valid_shape == (512, 320)


def test_nhwc_layout():
    px = mr(64, 64)
    m = simple_manifest(
        input=InputSpec(name="image", layout="NHWC", channels=1),
        size=SizePolicy(mode="fixed", height=64, width=64),
        intensity=IntensityPolicy(mode="none"),
    )
    tensor, _ = Preprocessor(m)(Slice.from_array(px))
    assert tensor.shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(tensor[0, :, :, 0], px.astype(np.float32))


def test_context_slices_are_stacked_in_position_order_with_edges_replicated():
    planes = [np.full((32, 32), v, np.int16) for v in (10, 20, 30)]
    slices = [Slice.from_array(p, identity=SliceIdentity("s", frame_index=i)) for i, p in enumerate(planes)]
    m = simple_manifest(
        input=InputSpec(name="image", channels=3, context_slices=1),
        size=SizePolicy(mode="fixed", height=32, width=32),
        intensity=IntensityPolicy(mode="none"),
    )
    pre = Preprocessor(m)
    tensor, _ = pre(slices[1], context=[slices[0], slices[2]])
    assert [float(tensor[0, c, 0, 0]) for c in range(3)] == [10, 20, 30]
    tensor, _ = pre(slices[0], context=[slices[1]])  # first slice of the series: no caudal neighbour
    assert [float(tensor[0, c, 0, 0]) for c in range(3)] == [10, 10, 20]


def test_context_slices_must_match_in_size():
    m = simple_manifest(input=InputSpec(name="image", channels=3, context_slices=1))
    with pytest.raises(InvalidSliceError, match="context slice"):
        Preprocessor(m)(Slice.from_array(mr(64, 64)), context=[Slice.from_array(mr(32, 32))] * 2)


def test_buffers_are_reused_for_same_shape_calls():
    pre = Preprocessor(simple_manifest())
    a, _ = pre(Slice.from_array(mr()))
    b, _ = pre(Slice.from_array(mr()))
    assert a is b


def test_constant_image_does_not_divide_by_zero():
    tensor, _ = Preprocessor(simple_manifest())(Slice.from_array(np.full((64, 64), 7, np.uint16)))
    assert np.isfinite(tensor).all() and not tensor.any()
