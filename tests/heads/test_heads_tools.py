"""Several heads through the runtime's wire, ``scanedge segment``, ``convert``/``verify`` and the node's output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scanedge.converters.convert import ConvertConfig, convert
from scanedge.converters.verify import Thresholds, judge, measure_engine_file
from scanedge.imaging.heads import SeriesScores
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest import load_manifest
from scanedge.runtime.console.client import Client
from scanedge.runtime.wire.protocol import Result, decode_reply, encode
from tests.heads.conftest import sample_slices
from tests.runtime.conftest import running_server


def _positioned(count: int = 6) -> list[Slice]:
    """The sample slices 2 mm apart along z, in one series."""
    out = []
    for i, pixels in enumerate(sample_slices(count)):
        geometry = SliceGeometry(
            pixel_spacing=(1.0, 1.0), image_position=(0.0, 0.0, 2.0 * i), image_orientation=(1, 0, 0, 0, 1, 0)
        )
        out.append(Slice.from_array(pixels, geometry=geometry))
    return out


def test_result_header_round_trips_scores():
    from scanedge.imaging.heads import ClassScore, HeadScore, SeriesClassScore, SeriesScore

    header = Result(
        version=1,
        id=1,
        scores=(HeadScore("h", (ClassScore("bleed", 0.7, 0.3, True),), "bleed", "triage"),),
        series_scores=(SeriesScore("h", "max", 3, (SeriesClassScore("bleed", 0.9, 0.3, True, 2),)),),
    )
    back = decode_reply(encode(header))
    assert back.scores == header.scores and back.series_scores == header.series_scores
    plain = json.loads(encode(Result(version=1, id=2)))
    assert plain["scores"] == [] and plain["series_scores"] == []  # older consoles ignore unknown fields


def test_runtime_results_carry_slice_and_series_scores(head_models):
    slices = _positioned()
    manifest, _ = load_manifest(head_models["classifier+manifest"])
    local = SeriesScores(manifest.heads)
    with running_server([head_models["classifier+manifest"]]) as server, Client(server.endpoint) as client:
        for i, s in enumerate([*slices, slices[2]]):  # the third slice sent again: it replaces itself
            r = client.segment(s, series="cls-series", outputs=("mask",))
            (score,) = r.header.scores
            expected = local.add([score], s.geometry, None)
            assert r.header.series_scores == expected
            assert r.header.series_scores[0].slices == min(i + 1, len(slices))
            assert r.findings == ()
    (final,) = expected
    assert final.aggregation == "max" and final.slices == len(slices)
    bleed = final.classes[1]
    assert bleed.name == "bleed" and bleed.decision == (bleed.score >= 0.3)


def test_segment_writes_slice_and_series_scores(head_models, demo_series, tmp_path: Path):
    from scanedge.cli import main

    data = tmp_path / "in"
    data.mkdir()
    for path in sorted(demo_series.glob("*.dcm"))[10:16]:  # one series, six slices with their geometry
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    rc = main(["segment", str(data), "--model", str(head_models["mask_score+manifest"]), "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    slice_scores = [s["scores"][0] for s in results["slices"]]
    assert all(s["head"] == "abnormal_logit" for s in slice_scores)
    (series,) = results["series"]
    (agg,) = series["scores"]
    per_slice = [s["classes"][0]["probability"] for s in slice_scores]
    assert agg["aggregation"] == "noisy_or" and agg["slices"] == 6
    assert agg["classes"][0]["score"] == pytest.approx(1 - np.prod([1 - p for p in per_slice]), abs=1e-5)
    assert agg["classes"][0]["slices_positive"] == sum(p >= 0.6 for p in per_slice)
    assert len(list(out.glob("*.overlay.png"))) == 6


def test_segment_reports_a_classifier(head_models, tmp_path: Path, capsys):
    from scanedge.cli import main

    data = tmp_path / "in"
    data.mkdir()
    for i, pixels in enumerate(sample_slices(3)):
        np.save(data / f"s{i}.npy", pixels)
    rc = main(["segment", str(data), "--model", str(head_models["classifier+manifest"]), "--out", str(tmp_path / "o")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "score class_logits (max over" in printed and "bleed" in printed


@pytest.mark.parametrize("name", ["classifier", "mask_score", "two_masks"])
def test_fp16_keeps_every_head_and_verify_compares_each(head_models, tmp_path: Path, name):
    source = head_models[f"{name}+manifest"]
    result = convert(source, ConvertConfig(precision="fp16", out_dir=tmp_path))
    converted, _ = load_manifest(result.output)
    original, _ = load_manifest(source)
    assert converted.heads == original.heads and converted.precision == "fp16"
    _, agreement = measure_engine_file(result.output, source, [Slice.from_array(p) for p in sample_slices()])
    assert set(agreement.heads) == {h.name for h in original.heads if h.role != "saliency"}
    for head in agreement.heads.values():
        assert head.max_abs_diff < 1e-2
        if head.role == "score":
            assert head.decision_agreement == 1.0
        else:
            assert all(d > 0.9 for d in head.dice.values())
    verdict = judge(agreement, Thresholds.for_precision("fp16"))
    assert verdict.passed, verdict.failures
    strict = judge(agreement, Thresholds(min_dice=0.99, max_abs_diff=0.0))  # a threshold no fp16 engine meets
    assert not strict.passed and any(h in f for f in strict.failures for h in agreement.heads)


def test_int8_keeps_every_head(head_models, tmp_path: Path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, pixels in enumerate(sample_slices(20, seed=11)):
        np.save(calib / f"c{i}.npy", pixels)
    source = head_models["mask_score+manifest"]
    result = convert(source, ConvertConfig(precision="int8", calibration=calib, out_dir=tmp_path / "int8"))
    converted, _ = load_manifest(result.output)
    assert converted.heads == load_manifest(source)[0].heads
    _, agreement = measure_engine_file(result.output, source, [Slice.from_array(p) for p in sample_slices()])
    assert agreement.heads["abnormal_logit"].max_abs_diff < 0.2  # int8 moves scores a little, not wildly


def test_node_scores_output_writes_the_series_scores(head_models, tmp_path: Path):
    from pydicom.dataset import Dataset

    from scanedge.dicomnet.outputs.scores import SCORES_FORMAT, ScoresOutput, series_score_report
    from scanedge.dicomnet.series import HeldFrame, HeldInstance, OpenSeries
    from scanedge.runtime.core.pipeline import Pipeline

    manifest, _ = load_manifest(head_models["classifier+manifest"])
    series = OpenSeries("1.2.3")
    with Pipeline.open(head_models["classifier+manifest"]) as pipe:
        for i, pixels in enumerate(sample_slices(3)):
            header = Dataset()
            header.InstanceNumber = i + 1
            scores = pipe.run(pixels, overlay=False).scores
            frame = HeldFrame(pixels.shape, {"cls": b""}, {}, {"cls": scores})
            series.instances[f"1.2.3.{i}"] = HeldInstance(f"1.2.3.{i}", header, 0, (frame,))
    doc = series_score_report(series, "cls", manifest)
    assert doc is not None and doc["format"] == SCORES_FORMAT and len(doc["frames"]) == 3
    probs = [f["scores"][0]["classes"][1]["probability"] for f in doc["frames"]]
    assert doc["series_scores"][0]["classes"][1]["score"] == pytest.approx(max(probs), abs=1e-6)
    output = ScoresOutput()
    (obj,), problems = output.build(series, "cls", manifest)
    assert problems == [] and not output.forwarded
    path = tmp_path / output.file_name(obj)
    output.save(obj, path)
    assert json.loads(path.read_text()) == doc
    assert output.build(series, "other-model", manifest) == ([], [])  # no scores held for that model


def test_the_largest_score_heads_fit_one_result_header():
    from scanedge.errors import ManifestInvalidError
    from scanedge.imaging.heads import WIRE_SCORE_CLASSES, ClassScore, HeadScore, SeriesScores, for_wire
    from scanedge.manifest import MAX_SCORE_CLASSES, ClassSpec, HeadSpec
    from scanedge.runtime.wire.protocol import MAX_HEADER_BYTES

    names = [f"{i:04d}" + "x" * 60 for i in range(MAX_SCORE_CLASSES)]
    head = HeadSpec("h", "score", activation="sigmoid", classes=tuple(ClassSpec(n) for n in names))
    probabilities = np.random.default_rng(0).random(MAX_SCORE_CLASSES)
    score = HeadScore(
        "h", tuple(ClassScore(n, float(p), 0.5, bool(p >= 0.5)) for n, p in zip(names, probabilities)), "x"
    )
    series = SeriesScores([head]).add([score])
    scores, series_scores = for_wire([score], series)
    size = len(encode(Result(version=1, id="x" * 64, scores=scores, series_scores=series_scores)))
    assert size < MAX_HEADER_BYTES * 0.75  # room left for findings, timings and the rest
    (kept,) = scores
    assert len(kept.classes) == WIRE_SCORE_CLASSES and kept.omitted == MAX_SCORE_CLASSES - WIRE_SCORE_CLASSES
    least_kept = min(c.probability for c in kept.classes)
    assert sum(p > least_kept for p in probabilities) == WIRE_SCORE_CLASSES - 1  # the most probable ones
    assert [c.name for c in kept.classes] == sorted(c.name for c in kept.classes)  # in the head's order
    small = HeadScore("h", score.classes[:3], "x")
    assert for_wire([small], ()) == ((small,), ())  # a small head travels whole
    with pytest.raises(ManifestInvalidError, match="1 to 1000 classes"):
        HeadSpec("h", "score", activation="sigmoid", classes=tuple(ClassSpec(f"c{i}") for i in range(1001)))


@pytest.mark.parametrize("name", ["classifier", "two_masks"])
def test_edge_bench_times_a_multi_head_model(head_models, name):
    from tests.bench.test_cli_output import run

    model = str(head_models[f"{name}+manifest"])
    done = run("pipeline", "--model", model, "--count", "20", "--warmup", "2", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["figures"]["postprocess"]["count"] == 20 and report["figures"]["infer"]["count"] == 20


def test_the_saliency_frame_is_the_models_own_map(head_models):
    pixels = sample_slices(1)[0]
    with running_server([head_models["classifier+manifest"]]) as server, Client(server.endpoint) as client:
        remote = client.segment(pixels, outputs=("mask", "saliency"))
    from scanedge.runtime.core.pipeline import Pipeline

    with Pipeline.open(head_models["classifier+manifest"]) as pipe:
        local = pipe.run(pixels, overlay=False)
    assert remote.saliency is not None and remote.saliency.dtype == np.float32
    np.testing.assert_allclose(remote.saliency, local.saliency[0].normalized(), atol=1e-6)
    with running_server([head_models["mask_score+manifest"]]) as server, Client(server.endpoint) as client:
        plain = client.segment(pixels, outputs=("mask", "saliency"))
    assert plain.saliency is None and [f.name for f in plain.header.frames] == ["mask"]  # none made up


def test_verify_reports_every_head(head_models, tmp_path: Path, capsys):
    from scanedge.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for i, pixels in enumerate(sample_slices(4)):
        np.save(data / f"s{i}.npy", pixels)
    source = head_models["mask_score+manifest"]
    engine = convert(source, ConvertConfig(precision="fp16", out_dir=tmp_path / "fp16")).output
    assert main(["verify", str(engine), "--reference", str(source), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "score head abnormal_logit: max |diff|" in out and "decisions agree on 100.00%" in out and "PASS" in out
    assert main(["verify", str(engine), "--reference", str(source), "--data", str(data), "--max-abs-diff", "0"]) == 1
    assert "abnormal_logit: max |probability difference|" in capsys.readouterr().out
