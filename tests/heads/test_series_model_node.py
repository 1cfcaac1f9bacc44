"""A score head's series model behind the DICOM node: real C-STOREs (pynetdicom) in shuffled order, the scores
JSON and the SR (read back with highdicom) carry the 3-D model's score at completion, computed without scanedge;
a faulty series model beside it gives a typed status in both and the node goes on."""

from __future__ import annotations

import json
import random

import pytest

from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import demo, new_series, send
from tests.dicomnet.test_sr_scores import srs
from tests.heads.conftest import expected_series_probability
from tests.heads.test_series_model_tools import _by_position
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")
pytest.importorskip("scipy", reason="the sr output needs the 'followup' extra")
hd = pytest.importorskip("highdicom")


def _score_group(sr_path, head: str):
    report = hd.sr.srread(sr_path).content
    (group,) = [g for g in report.get_image_measurement_groups() if g.tracking_identifier == head]
    texts = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in group[0].ContentSequence if i.ValueType == "TEXT"
    }
    (num,) = group.get_measurements()
    return float(num.value), texts


def test_the_node_reports_the_series_models_score(
    listener,  # noqa: F811
    series_model_dir,
    failing_series_model_dir,
    tmp_path,
):
    models = [series_model_dir / "model.onnx", failing_series_model_dir / "model.onnx"]
    node = listener(models, series_timeout_s=0.3, outputs=("seg", "scores", "sr"))
    series = new_series(demo(32)[10:18])
    shuffled = list(series)
    random.Random(5).shuffle(shuffled)
    assert [s for s, _ in send(node.port, shuffled)] == [0] * len(series)
    out = node.config.out

    def written() -> bool:
        return len(list((out / "scores").glob("*.json"))) == 2 and len(srs(out)) == 2

    wait_until(lambda: written() and not node.spool.files, timeout=90, what="both models' scores JSON and SR")
    docs = {json.loads(p.read_text())["model"]: p for p in (out / "scores").glob("*.json")}
    good = json.loads(docs["test-mask-score@1.0.0"].read_text())
    (score,) = good["series_scores"]
    assert score["aggregation"] == "series_model" and score["provisional"] is False
    assert score["series_model"]["status"] == "done" and score["series_model"]["slices"] == len(series)
    expected = expected_series_probability(series_model_dir, _by_position(list(series)))
    assert score["classes"][0]["score"] == pytest.approx(expected, abs=1e-5)

    bad = json.loads(docs["test-nan-series@1.0.0"].read_text())
    (failed,) = bad["series_scores"]
    assert failed["provisional"] is True and failed["aggregation"] == "max"
    assert failed["series_model"]["status"] == "failed" and failed["series_model"]["code"] == "NON_FINITE_OUTPUT"
    frames = [f["scores"][0]["classes"][0]["probability"] for f in bad["frames"]]
    assert failed["classes"][0]["score"] == pytest.approx(max(frames), abs=1e-6)

    by_model = {}
    for path in srs(out):
        by_model["test-nan-series" if b"test-nan-series" in path.read_bytes() else "test-mask-score"] = path
    value, texts = _score_group(by_model["test-mask-score"], "abnormal_logit")
    assert value == pytest.approx(round(expected, 6), abs=1e-6)
    assert texts["Series aggregation"].startswith(f"3-D series model on {len(series)} slices resampled to 6x16x16")
    value, texts = _score_group(by_model["test-nan-series"], "abnormal_logit")
    assert (
        texts["Series aggregation"]
        == f"provisional max over {len(series)} slices; series model failed: NON_FINITE_OUTPUT"
    )
    assert value == pytest.approx(round(failed["classes"][0]["score"], 6), abs=1e-6)
    node.stop()
    status = json.loads((out / "status.json").read_text())
    assert status["score_reports_written"] == 2 and status["score_report_failures"] == 0
