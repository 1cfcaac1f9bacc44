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


def _by_position(paths: list[Path]) -> list[np.ndarray]:
    """The DICOM files' pixels ordered along their normal (as the series model's volume orders them)."""
    read = [pydicom.dcmread(p) for p in paths]

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
