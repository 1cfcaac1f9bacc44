"""A score head's series model through ``scanedge segment``, the runtime over ZeroMQ and the DICOM node: the
series score each gives is the 3-D model's answer on the series, computed without scanedge
(tests/heads/conftest.py ``expected_series_probability``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.heads.conftest import expected_series_probability


def _by_position(items: list) -> list[np.ndarray]:
    """The DICOM files' (or datasets') pixels ordered along their normal (as the series model's volume orders
    them)."""
    read = [p if isinstance(p, pydicom.Dataset) else pydicom.dcmread(p) for p in items]

    def along(ds) -> float:
        o = np.asarray(ds.ImageOrientationPatient, float)
        return float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(o[:3], o[3:])))

    return [ds.pixel_array.astype(np.float32) for ds in sorted(read, key=along)]


def test_segment_reports_the_series_models_score(series_model_dir, demo_series, tmp_path: Path, capsys):
    from scanedge.cli import main

    data = tmp_path / "in"
    data.mkdir()
    files = sorted(demo_series.glob("*.dcm"))[8:17]
    for path in files:
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    rc = main(["segment", str(data), "--model", str(series_model_dir / "model.onnx"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "score abnormal_logit (3-D series model on 9 slice(s) resampled to 6x16x16" in printed
    (series,) = json.loads((out / "results.json").read_text())["series"]
    (score,) = series["scores"]
    assert score["aggregation"] == "series_model" and score["provisional"] is False
    assert score["series_model"]["status"] == "done" and score["series_model"]["slices"] == 9
    assert score["series_model"]["input"] == [6, 16, 16] and score["series_model"]["ms"] > 0
    expected = expected_series_probability(series_model_dir, _by_position(files))
    assert score["classes"][0]["score"] == pytest.approx(expected, abs=1e-5)
    assert score["classes"][0]["decision"] == (expected >= 0.6)


def _positioned(pixels: list[np.ndarray], spacing: float = 2.0):
    from scanedge.imaging.slices import Slice, SliceGeometry

    return [
        Slice.from_array(
            p,
            geometry=SliceGeometry(
                pixel_spacing=(1.0, 1.0), image_position=(0.0, 0.0, spacing * i), image_orientation=(1, 0, 0, 0, 1, 0)
            ),
        )
        for i, p in enumerate(pixels)
    ]


def test_runtime_answers_the_last_slice_with_the_series_models_score(
    series_model_dir, failing_series_model_dir, head_models
):
    """Over real ZeroMQ: slices sent out of order are provisional until the one marked ``last``, whose reply
    carries the 3-D model's score; a failing series model (another served model) gives a typed status while
    the runtime goes on serving both."""
    from scanedge.runtime.console.client import Client
    from tests.heads.conftest import sample_slices
    from tests.runtime.conftest import running_server

    pixels = sample_slices(8, seed=9)
    slices = _positioned(pixels)
    order = [5, 1, 7, 0, 3, 6, 2, 4]
    expected = expected_series_probability(series_model_dir, pixels)
    models = [series_model_dir / "model.onnx", failing_series_model_dir / "model.onnx"]
    with running_server(models) as server, Client(server.endpoint) as client:
        for k, i in enumerate(order):
            r = client.segment(slices[i], series="vol-1", outputs=("mask",), last=k == len(order) - 1)
            (score,) = r.header.series_scores
            if k < len(order) - 1:
                assert score.provisional and score.aggregation == "max"
                assert score.series_model is not None and score.series_model.status == "pending"
        assert not score.provisional and score.aggregation == "series_model"
        assert score.series_model is not None and score.series_model.status == "done"
        assert score.series_model.slices == 8 and score.series_model.input == (6, 16, 16)
        assert score.classes[0].score == pytest.approx(expected, abs=1e-5)
        assert score.classes[0].decision == (expected >= 0.6)

        seen = []
        for k, s in enumerate(slices):  # the faulty series model: typed status, the provisional score
            bad = client.segment(s, series="vol-2", model="test-nan-series", outputs=(), last=k == len(slices) - 1)
            seen.append(bad.header.scores[0].classes[0].probability)
        (failed,) = bad.header.series_scores
        assert failed.provisional and failed.series_model is not None
        assert failed.series_model.status == "failed" and failed.series_model.code == "NON_FINITE_OUTPUT"
        assert failed.classes[0].score == pytest.approx(max(seen), abs=1e-12)

        # the runtime and the good model go on: the same series again is answered the same way
        for k, i in enumerate(order):
            r = client.segment(slices[i], series="vol-3", outputs=(), last=k == len(order) - 1)
        (again,) = r.header.series_scores
        assert again.series_model is not None and again.series_model.status == "done"
        assert again.classes[0].score == pytest.approx(expected, abs=1e-5)
        pong = {m.name: m for m in client.ping().models}  # alive, and says which model wants "last"
        assert pong["test-mask-score"].series_model is not None
        assert pong["test-mask-score"].series_model.head == "abnormal_logit"
        assert pong["test-mask-score"].series_model.input == (6, 16, 16)


def test_replay_marks_each_series_last_slice(series_model_dir, demo_series, tmp_path: Path):
    from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series
    from tests.runtime.conftest import running_server

    data = tmp_path / "in"
    data.mkdir()
    files = sorted(demo_series.glob("*.dcm"))[4:14]
    for path in files:
        shutil.copy(path, data / path.name)
    (series,) = read_series([data])
    events = []
    with running_server([series_model_dir / "model.onnx"]) as server:
        Replay([series], ReplayConfig(endpoint=server.endpoint, rate=40.0, outputs=("mask",))).run(events.append)
    answered = [e for e in events if e.result is not None]
    last = max(answered, key=lambda e: e.position)
    assert last.position == len(files) - 1  # the last slice is never superseded: nothing comes after it
    (score,) = last.result.header.series_scores
    assert score.series_model is not None and score.series_model.status == "done"
    # the volume holds the slices the runtime served (a slice superseded in its queue never reached it)
    served = [e.slice.pixels.astype(np.float32) for e in sorted(answered, key=lambda e: e.position)]
    assert score.series_model.slices == len(served)
    assert score.classes[0].score == pytest.approx(expected_series_probability(series_model_dir, served), abs=1e-5)
    assert all(e.result.header.series_scores[0].provisional for e in answered if e is not last)


def test_replay_reports_the_series_models_score(series_model_dir, demo_series, tmp_path: Path, capsys):
    """``scanedge replay`` against ``scanedge serve``'s runtime: the summary names the 3-D model's score."""
    from scanedge.cli import main
    from tests.runtime.conftest import running_server

    data = tmp_path / "in"
    data.mkdir()
    for path in sorted(demo_series.glob("*.dcm"))[4:10]:
        shutil.copy(path, data / path.name)
    with running_server([series_model_dir / "model.onnx"]) as server:
        rc = main(
            ["replay", str(data), "--endpoint", server.endpoint, "--rate", "40", "--json", str(tmp_path / "r.json")]
        )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "score abnormal_logit (3-D series model on" in printed
    (report,) = json.loads((tmp_path / "r.json").read_text())["series"]
    (score,) = report["series_scores"]
    assert score["aggregation"] == "series_model" and score["series_model"]["status"] == "done"


def test_convert_carries_the_series_model_beside_the_converted_model(series_model_dir, tmp_path: Path):
    """The converted slice model opens with its series model (fp32: copied unchanged) and gives the same series
    score (fp16 converts the series model too: tests/heads/test_series_model_verify.py)."""
    from scanedge.converters.convert import ConvertConfig, convert
    from scanedge.runtime.core.pipeline import Pipeline
    from tests.heads.conftest import sample_slices

    result = convert(series_model_dir / "model.onnx", ConvertConfig(precision="fp32", out_dir=tmp_path / "fp32"))
    copied = tmp_path / "fp32" / "volume_classifier.onnx"
    assert copied.read_bytes() == (series_model_dir / "volume_classifier.onnx").read_bytes()
    from scanedge.imaging.heads import SeriesScores

    slices = _positioned(sample_slices(5))
    scores = []
    for model in (series_model_dir / "model.onnx", result.output):
        with Pipeline.open(model) as pipe:
            assert pipe.series_model is not None
            volume = pipe.series_model.volume()
            for s in slices:
                volume.add_plane(pipe.series_model.plane(s), ("pos", s.geometry.position_along_normal))
            (score,) = pipe.series_model.complete(volume, SeriesScores(pipe.manifest.heads).scores())
            scores.append(score)
    assert all(s.series_model is not None and s.series_model.status == "done" for s in scores)
    assert scores[0].classes == scores[1].classes  # the planes and the 3-D model are the same: the same score
