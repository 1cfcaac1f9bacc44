import numpy as np
import pytest

from scanedge.imaging.postprocess import Postprocessor
from scanedge.imaging.preprocess import PreprocessInfo
from scanedge.imaging.slices import SliceGeometry
from scanedge.manifest import ClassSpec, OutputSpec
from tests.conftest import simple_manifest

rng = np.random.default_rng(1)


def softmax(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def info(model=(64, 64), slice_=(64, 64), valid=None):
    return PreprocessInfo(slice_, model, valid or model)


def test_two_class_fast_path_equals_full_softmax_and_argmax():
    logits = rng.normal(0, 4, (1, 2, 64, 64)).astype(np.float32)
    out = Postprocessor(simple_manifest())(logits, info(), SliceGeometry())
    np.testing.assert_allclose(out.probabilities, softmax(logits[0]), atol=1e-6)
    np.testing.assert_array_equal(out.mask, softmax(logits[0]).argmax(0))


def test_extreme_logits_stay_finite():
    logits = np.zeros((1, 2, 8, 8), np.float32)
    logits[0, 1, :4] = 1e4
    logits[0, 0, 4:] = 1e4
    out = Postprocessor(simple_manifest())(logits, info((8, 8), (8, 8)), SliceGeometry())
    assert np.isfinite(out.probabilities).all()
    assert out.mask[:4].all() and not out.mask[4:].any()


def test_threshold_of_the_foreground_class_is_honoured():
    m = simple_manifest(classes=(ClassSpec("bg"), ClassSpec("lesion", threshold=0.9)))
    logits = np.zeros((1, 2, 4, 4), np.float32)
    logits[0, 1] = np.log(np.array([0.5, 0.85, 0.95, 0.99]) / (1 - np.array([0.5, 0.85, 0.95, 0.99])))[None, :]
    out = Postprocessor(m)(logits, info((4, 4), (4, 4)), SliceGeometry())
    np.testing.assert_array_equal(out.mask[0], [0, 0, 1, 1])


def test_multiclass_softmax_argmax():
    m = simple_manifest(classes=(ClassSpec("bg"), ClassSpec("a"), ClassSpec("b")))
    logits = rng.normal(0, 2, (1, 3, 32, 32)).astype(np.float32)
    out = Postprocessor(m)(logits, info((32, 32), (32, 32)), SliceGeometry())
    np.testing.assert_allclose(out.probabilities, softmax(logits[0]), atol=1e-6)
    np.testing.assert_array_equal(out.mask, softmax(logits[0]).argmax(0))


def test_multilabel_sigmoid_takes_the_most_probable_class_over_its_threshold():
    m = simple_manifest(
        classes=(ClassSpec("bg"), ClassSpec("a", threshold=0.5), ClassSpec("b", threshold=0.8)),
        output=OutputSpec(name="logits", activation="sigmoid"),
    )
    p = np.array([[0.9, 0.2], [0.7, 0.75], [0.3, 0.85], [0.1, 0.6]], np.float32)  # (pixels, classes a, b)
    logits = np.log(p / (1 - p)).T.reshape(1, 2, 1, 4)
    out = Postprocessor(m)(logits, info((1, 4), (1, 4)), SliceGeometry())
    np.testing.assert_allclose(out.probabilities[:, 0, :], p.T, atol=1e-6)
    # pixel 1: b is most probable but under its 0.8 threshold -> background, not a fallback to a
    np.testing.assert_array_equal(out.mask[0], [1, 0, 2, 0])


def test_probability_outputs_are_used_as_they_are():
    m = simple_manifest(output=OutputSpec(name="probs", kind="probabilities"))
    probs = softmax(rng.normal(0, 1, (2, 16, 16))).astype(np.float32)[None]
    out = Postprocessor(m)(probs, info((16, 16), (16, 16)), SliceGeometry())
    np.testing.assert_array_equal(out.probabilities, probs[0])


def test_mask_is_resized_nearest_to_the_slice_and_findings_are_measured_there():
    logits = np.full((1, 2, 64, 64), -5, np.float32)
    logits[0, 0] = 5
    logits[0, 1, 10:20, 10:20] = 10  # one 10x10 blob
    logits[0, 1, 40:44, 40:50] = 10  # one 4x10 blob
    geometry = SliceGeometry(pixel_spacing=(0.5, 0.25))
    out = Postprocessor(simple_manifest())(logits, info((64, 64), (128, 128)), geometry)
    assert out.mask.shape == (128, 128) and out.mask.dtype == np.uint8
    (lesion,) = out.findings
    assert lesion.pixels == (100 + 40) * 4
    assert lesion.area_mm2 == pytest.approx(lesion.pixels * 0.125)
    assert lesion.components == 2
    assert lesion.max_probability == pytest.approx(1 / (1 + np.exp(-5)), abs=1e-6)  # logits 10 vs 5
    assert lesion.mean_probability == pytest.approx(lesion.max_probability, abs=1e-6)


def test_padding_is_cropped_back_to_the_slice_grid():
    logits = np.full((1, 2, 64, 64), -5, np.float32)
    logits[0, 0] = 5
    logits[0, 1, 50:] = 10  # "finding" only inside the padding
    out = Postprocessor(simple_manifest())(logits, info((64, 64), (50, 40), (50, 40)), SliceGeometry())
    assert out.mask.shape == (50, 40) and not out.mask.any()
    assert out.probabilities.shape == (2, 50, 40)


def test_empty_slice_reports_zero_findings_without_spacing():
    logits = np.zeros((1, 2, 8, 8), np.float32)
    logits[0, 0] = 3
    (f,) = Postprocessor(simple_manifest())(logits, info((8, 8), (8, 8)), SliceGeometry()).findings
    assert (f.pixels, f.components, f.mean_probability, f.area_mm2) == (0, 0, 0.0, None)
