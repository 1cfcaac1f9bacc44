"""The demo's second model, the slice classifier: its training module (a tiny run, exported and checked), the
shipped model's evaluation reproduced from its evaluation JSON's command, and ``scanedge demo`` running it
beside the segmentation model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from scanedge.demo.classify import classify_slices, truth_figures
from scanedge.demo.series import load_demo_patient
from scanedge.imaging.files import load_slices
from scanedge.manifest import load_manifest
from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH
from scanedge.runtime.core.pipeline import Pipeline

EVALUATION = DEMO_CLASSIFIER_PATH.with_name(DEMO_CLASSIFIER_PATH.stem + ".evaluation.json")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _raw_probability(model: Path, tensor: np.ndarray) -> float:
    """The classifier's probability straight from ONNX Runtime (no scanedge): sigmoid of its logit."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logit,) = session.run(["lesion_present"], {"image": tensor})
    assert logit.shape == (1, 1)
    return float(_sigmoid(logit)[0, 0])


def _through_scanedge_and_raw(model: Path, image: np.ndarray) -> tuple[float, float]:
    from scanedge.imaging.preprocess import Preprocessor
    from scanedge.imaging.slices import Slice

    with Pipeline.open(model) as pipe:
        result = pipe.run(Slice.from_array(image), overlay=False)
        tensor, _ = Preprocessor(pipe.manifest)(Slice.from_array(image))
    return result.scores[0].score("lesion").probability, _raw_probability(model, tensor)


def test_the_shipped_classifier_is_small_and_its_manifest_states_its_operating_point():
    assert DEMO_CLASSIFIER_PATH.stat().st_size < 400_000  # it ships inside the wheel beside the demo model
    manifest, _ = load_manifest(DEMO_CLASSIFIER_PATH)
    seg, _ = load_manifest(DEMO_MODEL_PATH)
    assert manifest.output is None and manifest.classes == ()
    head, saliency = manifest.heads
    assert (saliency.role, saliency.of) == ("saliency", "lesion_present")  # the model's own map, its 2nd output
    assert (head.role, head.activation, head.aggregation) == ("score", "sigmoid", "max")
    assert [c.name for c in head.classes] == ["lesion"]
    # the same tensor as the segmentation model: input, size and intensity policies are the demo model's
    assert (manifest.input, manifest.size, manifest.intensity) == (seg.input, seg.size, seg.intensity)
    figures = json.loads(EVALUATION.read_text())
    assert head.classes[0].threshold == figures["threshold"] == figures["validation"]["threshold"]
    assert head.operating_point is not None
    assert head.operating_point.sensitivity == pytest.approx(figures["sensitivity"])
    assert head.operating_point.specificity == pytest.approx(figures["specificity"])
    assert figures["validation"]["sensitivity"] >= 0.95  # the threshold's rule, on the validation subjects
    assert figures["auc"] > 0.9 and figures["positive_slices"] > 0 and figures["negative_slices"] > 0


def test_the_shipped_classifier_through_scanedge_equals_onnx_runtime(demo_series):
    patient = load_demo_patient()
    for k in (0, 10, 20):
        ours, raw = _through_scanedge_and_raw(DEMO_CLASSIFIER_PATH, patient.pixels[k].astype(np.float32))
        assert ours == pytest.approx(raw, abs=1e-6)


@pytest.mark.slow
def test_the_evaluation_json_is_reproduced_by_its_command():
    pytest.importorskip("nilearn", reason="the held-out subjects are synthesised with the 'train' extra")
    from scanedge.demo import train_classifier

    figures = json.loads(EVALUATION.read_text())
    assert figures["command"] == "python -m scanedge.demo.train_classifier --evaluate-model"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_classifier.main(figures["command"].split()[3:]) == 0
    again = json.loads(out.getvalue()[out.getvalue().index("{") :])
    for key in ("positive_slices", "negative_slices", "slices", "subjects", "threshold"):
        assert again[key] == figures[key], key
    for key in ("auc", "sensitivity", "specificity"):
        assert again[key] == pytest.approx(figures[key], abs=1e-9), key


@pytest.mark.slow
def test_a_tiny_training_run_exports_a_classifier_scanedge_serves_exactly(tmp_path):
    pytest.importorskip("torch", reason="training needs the 'train' extra")
    pytest.importorskip("nilearn", reason="training needs the 'train' extra")
    from scanedge.demo import synth, train_classifier

    out = tmp_path / "tiny.onnx"
    argv = ["--samples", "24", "--steps", "3", "--batch", "4", "--crop", "128", "--workers", "1"]
    argv += ["--out", str(out), "--checkpoint", str(tmp_path / "tiny.pt"), "--validation-subjects", "1"]
    assert train_classifier.main([*argv, "--no-evaluate"]) == 0
    manifest, _ = load_manifest(out)  # embedded, and it validates
    assert manifest.name == "ms-lesion-classifier-demo" and manifest.heads[0].name == "lesion_present"
    threshold = manifest.heads[0].classes[0].threshold
    assert 0 <= threshold <= 1
    image, _ = synth.synth_slice(
        synth.load_anatomy(), synth.random_subject(np.random.default_rng(5)), [], 90, np.random.default_rng(6)
    )
    ours, raw = _through_scanedge_and_raw(out, image)
    assert ours == pytest.approx(raw, abs=1e-6)


def test_threshold_rule_auc_and_operating_figures():
    from scanedge.demo.train_classifier import auc, choose_threshold, operating_figures

    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.5, 0.1, 0.05, 0.3])
    assert auc(truth, scores) == pytest.approx(13 / 16)  # 13 of the 16 positive-negative pairs ordered right
    assert auc(truth, np.where(truth, 1.0, 0.0)) == 1.0 and auc(truth, np.full(8, 0.5)) == 0.5
    assert np.isnan(auc(np.ones(3, bool), np.ones(3)))
    t = choose_threshold(truth, scores, target=0.75)  # the highest threshold keeping 3 of 4 positives
    assert t == 0.4 and operating_figures(truth, scores, t) == {"sensitivity": 0.75, "specificity": 0.75}
    assert choose_threshold(truth, scores, target=1.0) == 0.2
    with pytest.raises(ValueError):
        choose_threshold(np.zeros(3, bool), np.ones(3))


def test_the_classifier_beside_the_demo_model_on_the_demo_series(demo_series):
    loaded = load_slices([demo_series])
    report = classify_slices(loaded)
    assert report.model.startswith("ms-lesion-classifier-demo@") and len(report.slices) == len(loaded)
    (uid,) = report.series
    (series,) = report.series[uid]
    p = report.probabilities("lesion_present", "lesion")
    assert series.classes[0].score == pytest.approx(p.max())  # max over the slices
    threshold = series.classes[0].threshold
    assert series.classes[0].slices_positive == int(np.sum(p >= threshold))
    figures = truth_figures(p >= threshold, load_demo_patient().labels)
    assert figures["positive_slices"] + figures["negative_slices"] == len(loaded)
    assert figures["sensitivity"] >= 0.8 and figures["specificity"] >= 0.8  # a held-out subject, never trained on


def test_the_classifier_montage_shows_the_models_own_map_and_its_decisions(demo_series, tmp_path):
    import cv2

    from scanedge.imaging.montage import TileLabel
    from scanedge.imaging.overlay import display_image

    loaded = load_slices([demo_series])[:2]
    report = classify_slices(loaded, montage_dir=tmp_path)
    assert report.montage_path == tmp_path / "classifier-montage.png"
    sheet = cv2.imread(str(report.montage_path))[:, :, ::-1]
    # each tile is the slice as displayed, tinted only by the model's own map: grey where the map is low,
    # coloured where it is high (the overlay's scores text is left out: the tile's label carries it)
    with Pipeline.open(DEMO_CLASSIFIER_PATH) as pipe:
        first = pipe.run(loaded[0].slice, overlay=False)
    values = first.saliency[0].normalized()
    grey = cv2.cvtColor(display_image(loaded[0].slice), cv2.COLOR_GRAY2RGB)
    below_label = slice(48, None)  # the tile's label covers its top rows
    found = cv2.matchTemplate(sheet, grey[below_label].copy(), cv2.TM_SQDIFF)
    assert found.shape[0] > 1  # the tile is where the grey slice is, but tinted: the closest match
    y, x = np.unravel_index(np.argmin(found), found.shape)
    rows, cols = grey.shape[:2]
    tile = sheet[y : y + rows - 48, x : x + cols].astype(int)
    spread = tile.max(axis=2) - tile.min(axis=2)  # 0 on grey pixels
    hot = np.argwhere(values[below_label] >= 0.9)
    cold = np.argwhere(values[below_label] < 0.05)
    rim = 32  # orientation letters are drawn along the tile's edges
    cold = cold[(cold[:, 0] < rows - 48 - rim) & (cold[:, 1] >= rim) & (cold[:, 1] < cols - rim)]
    assert len(hot) and len(cold)
    assert all(spread[r, c] > 30 for r, c in hot)  # tinted where the model looked
    assert all(spread[r, c] == 0 for r, c in cold)  # the slice as displayed elsewhere
    assert np.array_equal(tile[cold[:, 0], cold[:, 1]], grey[below_label][cold[:, 0], cold[:, 1]])
    # the decision is written in the tile's label (+ present, - absent)
    from scanedge.demo.classify import _scored_label

    label = _scored_label(TileLabel("#1"), first.scores)
    top = first.scores[0].classes[0]
    assert label.title == f"#1  lesion {top.probability:.2f}{'+' if top.decision else '-'}"


def test_scanedge_demo_runs_both_models(demo_series, tmp_path, capsys):
    from scanedge.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "classifier ms-lesion-classifier-demo@" in printed
    assert "score lesion_present (max over 32 slice(s)): lesion" in printed
    assert "classifier against the true labels: sensitivity" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["model"].startswith("ms-lesion-demo@")  # the segmentation's results as before
    assert len(results["slices"]) == 32 and "scores" not in results["slices"][0]
    cls = results["classifier"]
    assert cls["model"].startswith("ms-lesion-classifier-demo@") and len(cls["slices"]) == 32
    (entry,) = cls["series"]
    (score,) = entry["series_scores"]
    probabilities = [s["scores"][0]["classes"][0]["probability"] for s in cls["slices"]]
    assert score["classes"][0]["score"] == pytest.approx(max(probabilities), abs=1e-6)
    assert (out / "classifier-montage.png").is_file() and "the classifier's: classifier-montage.png" in printed
    # --force replaces an earlier run's pictures, the classifier's montage among them
    assert main(["demo", "--out", str(out), "--no-classifier", "--no-check", "--force"]) == 0
    assert not (out / "classifier-montage.png").exists()
    # the classifier is the demo's only: --no-classifier, or another --model, leaves it out
    again = tmp_path / "plain"
    assert main(["demo", "--out", str(again), "--no-classifier", "--no-check"]) == 0
    assert "classifier" not in json.loads((again / "results.json").read_text())
    assert not (again / "classifier-montage.png").exists()
    assert "classifier ms-lesion" not in capsys.readouterr().out
    other = tmp_path / "other"
    assert main(["demo", "--out", str(other), "--model", str(DEMO_MODEL_PATH), "--no-check"]) == 0
    assert "classifier" not in json.loads((other / "results.json").read_text())


#: the shipped classifier's graph before its saliency output was added (its manifest's onnx_sha256 then)
_SCORE_GRAPH_SHA256 = "ffb7367168c39a52699979c178495fbbf6702be49e4701dd96634db766cacfe1"


def _without_saliency(path: Path) -> object:
    """The shipped graph with the saliency output and every node and weight added for it removed."""
    import onnx

    from scanedge.demo.classifier_saliency import SALIENCY_HEAD

    model = onnx.load(str(path))
    g = model.graph
    keep = [n for n in g.node if not n.name.startswith("/saliency/")]
    weights = [t for t in g.initializer if not t.name.startswith("/saliency/")]
    outputs = [o for o in g.output if o.name != SALIENCY_HEAD]
    assert len(keep) < len(g.node) and len(outputs) == 1  # there was something to take away
    del g.node[:], g.initializer[:], g.output[:]
    g.node.extend(keep)
    g.initializer.extend(weights)
    g.output.extend(outputs)
    return model


def test_the_saliency_output_leaves_the_score_graph_and_its_scores_bit_identical(demo_series):
    from scanedge.demo.classifier_saliency import SALIENCY_HEAD
    from scanedge.imaging.preprocess import Preprocessor
    from scanedge.imaging.slices import Slice
    from scanedge.manifest import graph_sha256

    plain = _without_saliency(DEMO_CLASSIFIER_PATH)
    assert graph_sha256(plain) == _SCORE_GRAPH_SHA256  # what is left is the graph that was evaluated, byte for byte
    before = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    now = ort.InferenceSession(str(DEMO_CLASSIFIER_PATH), providers=["CPUExecutionProvider"])
    assert [o.name for o in now.get_outputs()] == ["lesion_present", SALIENCY_HEAD]
    manifest, _ = load_manifest(DEMO_CLASSIFIER_PATH)
    pre = Preprocessor(manifest)
    for image in load_demo_patient().pixels:
        tensor, _ = pre(Slice.from_array(image.astype(np.float32)))
        (old,) = before.run(None, {"image": tensor})
        new, _ = now.run(None, {"image": tensor})
        assert old.tobytes() == new.tobytes()  # bit-identical: the AUC and operating figures stay valid


def test_the_saliency_map_holds_the_evidence_for_the_class_and_lies_on_the_lesions(demo_series):
    """The map is the score's own: it sums to the evidence for the class that reaches the logit (the positive
    weights times the pooled features), it is never negative, and it is higher on lesion pixels."""
    import onnx
    from onnx import helper, numpy_helper

    from scanedge.imaging.preprocess import Preprocessor
    from scanedge.imaging.slices import Slice

    model = onnx.load(str(DEMO_CLASSIFIER_PATH))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, bias = weights["head.weight"][0].astype(np.float64), float(weights["head.bias"][0])
    pooled = next(n.output[0] for n in model.graph.node if n.op_type == "ReduceMax" and not n.name.startswith("/sal"))
    model.graph.output.append(helper.make_tensor_value_info(pooled, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    manifest, _ = load_manifest(DEMO_CLASSIFIER_PATH)
    patient = load_demo_patient()
    inside_higher = lesion_slices = 0
    with Pipeline.open(DEMO_CLASSIFIER_PATH) as pipe:
        for image, labels in zip(patient.pixels, patient.labels):
            tensor, _ = Preprocessor(manifest)(Slice.from_array(image.astype(np.float32)))
            logit, saliency, features = session.run(None, {"image": tensor})
            assert saliency.shape == (1, 1, 8, 8) and saliency.min() >= 0
            g = features[0].astype(np.float64)  # what the max pool passes on, per channel
            assert float(logit[0, 0]) == pytest.approx(w @ g + bias, abs=1e-4)
            assert float(saliency.sum()) == pytest.approx(np.maximum(w, 0) @ g, abs=1e-4)
            result = pipe.run(Slice.from_array(image.astype(np.float32)), overlay=False)
            (sal,) = result.saliency
            assert (sal.head, sal.of) == ("lesion_present_saliency", "lesion_present")
            assert sal.values.shape == image.shape
            if labels.any():
                lesion_slices += 1
                shown = sal.normalized()
                inside_higher += int(shown[labels > 0].mean() > shown[labels == 0].mean())
    assert lesion_slices >= 10 and inside_higher == lesion_slices
