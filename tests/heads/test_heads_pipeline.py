"""Every head decoded by Pipeline.run, compared with the raw model's own outputs through ONNX Runtime."""

from __future__ import annotations

import math

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from scanedge.imaging.heads import ClassScore, HeadScore, SeriesScores, aggregate
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.runtime.core.pipeline import Pipeline
from tests.heads.conftest import SIZE, sample_slices


def _raw(path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs for one slice, straight from an InferenceSession (intensity 'none', fixed size:
    the tensor is the slice itself)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": pixels[None, None].astype(np.float32)})))


def _softmax(v: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def test_classifier_scores_decisions_and_saliency_match_the_raw_model(head_models):
    with Pipeline.open(head_models["classifier+manifest"]) as pipe:
        for pixels in sample_slices():
            result = pipe.run(pixels)
            raw = _raw(head_models["classifier"], pixels)
            want = _softmax(raw["class_logits"][0].astype(np.float64))
            (score,) = result.scores
            assert score.head == "class_logits" and score.operating_point == "triage"
            got = np.array([c.probability for c in score.classes])
            np.testing.assert_allclose(got, want, atol=1e-6)
            thresholds = [0.5, 0.3, 0.5]
            assert [c.decision for c in score.classes] == [bool(p >= t) for p, t in zip(want, thresholds)]
            assert score.top == ["normal", "bleed", "mass"][int(np.argmax(want))]
            # a classifier has no mask: an all-background label image, no findings, no probability planes
            assert result.mask.shape == pixels.shape and not result.mask.any() and result.findings == ()
            assert result.probabilities.shape[0] == 0
            # the saliency map is the model's own map of the top class, resized to the slice
            (sal,) = result.saliency
            cam = raw["cam"][0][int(np.argmax(want))]
            assert sal.of == "class_logits" and sal.values.shape == pixels.shape
            np.testing.assert_allclose(
                sal.values, cv2.resize(cam, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), atol=1e-5
            )
            assert result.overlay is not None and result.overlay.shape == (*pixels.shape, 3)
            assert result.to_dict()["scores"][0]["classes"][1]["name"] == "bleed"


def test_mask_and_score_heads_both_decode(head_models):
    with Pipeline.open(head_models["mask_score+manifest"]) as pipe:
        for pixels in sample_slices(3):
            result = pipe.run(pixels, overlay=False)
            raw = _raw(head_models["mask_score"], pixels)
            p_mask = _softmax(raw["logits"][0], axis=0)
            np.testing.assert_allclose(result.probabilities, p_mask, atol=1e-5)
            np.testing.assert_array_equal(result.mask, (p_mask[1] >= 0.5).astype(np.uint8))
            (score,) = result.scores
            p = float(_sigmoid(raw["abnormal_logit"][0, 0].astype(np.float64)))
            assert score.classes[0].probability == pytest.approx(p, abs=1e-6)
            assert score.classes[0].decision == (p >= 0.6)
            assert result.findings[0].name == "lesion"


def test_two_mask_heads_decode_each_with_its_own_classes(head_models):
    with Pipeline.open(head_models["two_masks+manifest"]) as pipe:
        pixels = sample_slices(1)[0]
        result = pipe.run(pixels, overlay=False)
    raw = _raw(head_models["two_masks"], pixels)
    (organs,) = result.mask_heads
    p = _sigmoid(raw["organs"][0])
    np.testing.assert_allclose(organs.probabilities, p, atol=1e-5)
    best = p.argmax(axis=0)
    want = np.where(p.max(axis=0) >= 0.5, best + 1, 0).astype(np.uint8)
    np.testing.assert_array_equal(organs.mask, want)
    assert [f.name for f in organs.findings] == ["liver", "kidney"]
    assert [f.pixels for f in organs.findings] == [int((want == 1).sum()), int((want == 2).sum())]
    assert result.to_dict()["mask_heads"][0]["head"] == "organs"
    np.testing.assert_array_equal(result.mask, (_softmax(raw["logits"][0], axis=0)[1] >= 0.5).astype(np.uint8))


def _score(*probabilities: float, threshold: float = 0.5) -> HeadScore:
    return HeadScore(
        "s", tuple(ClassScore(f"c{i}", p, threshold, p >= threshold) for i, p in enumerate(probabilities)), "c0"
    )


def test_aggregations_are_exact():
    values = [0.1, 0.25, 0.5, 0.05]
    assert aggregate(values, "max") == 0.5
    assert aggregate(values, "mean") == pytest.approx(0.225, abs=1e-15)
    assert aggregate(values, "noisy_or") == pytest.approx(1 - 0.9 * 0.75 * 0.5 * 0.95, abs=1e-15)
    assert aggregate([], "max") == 0.0
    with pytest.raises(ValueError):
        aggregate(values, "median")


@pytest.mark.parametrize(("how", "expected"), [("max", 0.5), ("mean", 1.1 / 3), ("noisy_or", 1 - 0.9 * 0.5 * 0.5)])
def test_series_scores_grow_with_the_series_and_replace_resent_slices(how, expected):
    from scanedge.manifest import ClassSpec, HeadSpec

    head = HeadSpec("s", "score", activation="sigmoid", classes=(ClassSpec("c0", threshold=0.45),), aggregation=how)
    series = SeriesScores([head])

    def at(z: float) -> SliceGeometry:
        return SliceGeometry(image_position=(0.0, 0.0, z), image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))

    first = series.add([_score(0.9)], at(0.0))
    assert first[0].slices == 1 and first[0].classes[0].score == pytest.approx(0.9)
    series.add([_score(0.1)], at(0.0))  # re-sent to the same place: replaces 0.9
    series.add([_score(0.5)], at(1.0))
    (final,) = series.add([_score(0.5)], at(2.0))
    assert final.slices == 3 and final.aggregation == how
    assert final.classes[0].score == pytest.approx(expected, abs=1e-12)
    assert final.classes[0].decision == (expected >= 0.45)
    assert final.classes[0].slices_positive == 2
    assert math.isclose(SeriesScores([head]).add([_score(0.2)])[0].classes[0].score, 0.2)  # no geometry: counted


def test_series_scores_are_bounded():
    from scanedge.manifest import ClassSpec, HeadSpec

    head = HeadSpec("s", "score", activation="sigmoid", classes=(ClassSpec("c0"),))
    series = SeriesScores([head], max_slices=2)
    for n in range(4):
        (out,) = series.add([_score(0.1 * n)], None, n)
    assert out.slices == 2 and out.dropped_slices == 2 and len(series) == 2 and series.nbytes == 16


def test_a_slice_with_non_finite_scores_is_refused(head_models, tmp_path):
    from scanedge.errors import NonFiniteOutputError

    with Pipeline.open(head_models["classifier+manifest"]) as pipe:
        bad = np.full((SIZE, SIZE), np.float32(3e38))
        with pytest.raises(NonFiniteOutputError):
            pipe.run(Slice.from_array(bad))


def test_classifier_overlay_shows_scores_and_only_the_models_own_saliency(head_models):
    from scanedge.imaging.annotate import font_scale, text_size
    from scanedge.imaging.score_overlay import SALIENCY_FLOOR, score_lines

    pixels = cv2.resize(sample_slices(1)[0], (256, 256), interpolation=cv2.INTER_LINEAR)
    with Pipeline.open(head_models["classifier+manifest"]) as pipe:
        with_map = pipe.run(pixels)
        no_map_manifest = pipe.manifest.replace(heads=pipe.manifest.heads[:1])  # the same model, no saliency head
    with Pipeline.open(head_models["classifier"], manifest=no_map_manifest) as pipe:
        without = pipe.run(pixels)
    assert without.saliency == ()
    lines = score_lines(without.scores)
    assert len(lines) == 3
    text_rows = 2 + sum(text_size(t, font_scale(256))[1] for t in lines)
    grey = without.overlay
    colour = (grey[..., 0] != grey[..., 1]) | (grey[..., 1] != grey[..., 2])
    # without a saliency head: the slice in grey, the scores written (in the class colours) in the top-left
    assert colour[:text_rows].any() and not colour[text_rows:].any()
    # with one: the model's map tints the image where it is above the floor, and nowhere else
    below = np.zeros_like(colour)
    below[text_rows:] = True
    tinted = np.any(with_map.overlay != grey, axis=2)
    values = with_map.saliency[0].normalized()
    assert tinted[(values >= SALIENCY_FLOOR + 0.01) & below].mean() > 0.95
    assert not tinted[(values < SALIENCY_FLOOR - 0.01) & below].any()  # 0.01: the map is drawn at 8 bits
