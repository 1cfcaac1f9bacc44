"""Classification models none of us wrote, described with ``manifest init`` and checked against ONNX Runtime.

- ShuffleNet from the ONNX model zoo (Caffe2 export), as the ``onnx`` package ships it in its backend test
  data (``light_shufflenet.onnx``: the real graph, with constant weights so that it stays small): always run.
- PaddleOCR's text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``, Apache-2.0) as the
  ``rapidocr-onnxruntime`` wheel ships it: real weights, two classes (0° and 180°). Run where the file is at
  hand: ``SCANEDGE_THIRD_PARTY_CLS=/path/to/ch_ppocr_mobile_v2.0_cls_infer.onnx`` or the package installed
  (``pip download rapidocr-onnxruntime==1.4.4 --no-deps`` and unzip the model from the wheel).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from scanedge.imaging.heads import WIRE_SCORE_CLASSES, for_wire
from scanedge.imaging.slices import Slice
from scanedge.manifest import IntensityPolicy
from scanedge.manifest_init import ManifestInitConfig, draft_manifest_with_notes, write_manifest
from scanedge.runtime.core.pipeline import Pipeline

IMAGENET = IntensityPolicy(mode="scale", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _shufflenet() -> Path:
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_shufflenet.onnx"
    if not path.is_file():
        pytest.skip(f"this onnx package does not ship {path.name}")
    return path


def test_zoo_shufflenet_is_described_and_matches_onnxruntime(tmp_path: Path):
    path = tmp_path / "shufflenet.onnx"
    shutil.copy(_shufflenet(), path)
    model = onnx.load(str(path))
    options = ManifestInitConfig(name="shufflenet", color="rgb", intensity=IMAGENET, interpolation="linear")
    manifest, notes = draft_manifest_with_notes(model, options)
    (score,) = manifest.heads
    assert (score.name, score.kind, score.activation) == ("gpu_0/softmax_1", "probabilities", "softmax")
    assert len(score.classes) == 1000 and (manifest.size.height, manifest.size.width) == (224, 224)
    assert "read from the graph: the output comes from a Softmax node" in "\n".join(notes)
    write_manifest(model, manifest, path, sidecar=True)

    rgb = np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    with Pipeline.open(path) as pipe:
        result = pipe.run(Slice.from_array(rgb))
    mean, std = np.array(IMAGENET.mean, np.float32), np.array(IMAGENET.std, np.float32)
    tensor = ((rgb.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(_shufflenet()), providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {session.get_inputs()[0].name: tensor})
    got = np.array([c.probability for c in result.scores[0].classes])
    np.testing.assert_allclose(got, raw[0], atol=1e-6)
    assert [c.decision for c in result.scores[0].classes] == list(raw[0] >= 0.5)
    wire, _ = for_wire(result.scores, ())
    assert len(wire[0].classes) == WIRE_SCORE_CLASSES and wire[0].omitted == 1000 - WIRE_SCORE_CLASSES


def _ocr_direction_model() -> Path:
    given = os.environ.get("SCANEDGE_THIRD_PARTY_CLS")
    if given:
        return Path(given)
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # located, not imported
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        if path.is_file():
            return path
    reason = "PaddleOCR's direction classifier is not at hand (set SCANEDGE_THIRD_PARTY_CLS; see the module doc)"
    if os.environ.get("CI"):
        pytest.fail(f"the third-party classifier check must run in CI (.ci/run fetches the model): {reason}")
    pytest.skip(reason)


def _text_image() -> np.ndarray:
    img = np.full((48, 192, 3), 255, np.uint8)
    cv2.putText(img, "Scan 2026", (8, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 40, 160), 2, cv2.LINE_AA)
    return img


def test_ocr_direction_classifier_is_described_and_matches_onnxruntime(tmp_path: Path):
    source = _ocr_direction_model()
    path = tmp_path / "cls.onnx"
    shutil.copy(source, path)
    model = onnx.load(str(path))
    options = ManifestInitConfig(
        name="ocr-direction",
        color="bgr",
        size=(48, 192),
        intensity=IntensityPolicy(mode="scale", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        score_classes=("upright", "upside-down"),
        interpolation="linear",
    )
    manifest, notes = draft_manifest_with_notes(model, options)
    (score,) = manifest.heads
    assert (score.kind, score.activation) == ("probabilities", "softmax")  # Identity <- Softmax in the graph
    assert "read from the graph" in "\n".join(notes)
    write_manifest(model, manifest, path, sidecar=True)
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    upright = _text_image()
    with Pipeline.open(path) as pipe:
        for rgb, expected in ((upright, "upright"), (cv2.rotate(upright, cv2.ROTATE_180), "upside-down")):
            result = pipe.run(Slice.from_array(rgb))
            bgr = rgb[..., ::-1].astype(np.float32)
            (raw,) = session.run(None, {"x": ((bgr / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]})
            (head,) = result.scores
            np.testing.assert_allclose([c.probability for c in head.classes], raw[0], atol=1e-5)
            assert head.top == expected and head.score(expected).decision
