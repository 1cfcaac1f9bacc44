"""A classification model behind the DICOM node: real C-STOREs (pynetdicom), the ``scores`` output's JSON."""

from __future__ import annotations

import json

import pytest

from scanedge.manifest import load_manifest
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import demo, new_series, send
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")


def test_the_node_writes_a_classifiers_series_scores_and_no_seg(listener, head_models):  # noqa: F811
    node = listener([head_models["classifier+manifest"]], series_timeout_s=0.3, outputs=("seg", "scores"))
    series = new_series(demo(4))
    assert [s for s, _ in send(node.port, series)] == [0, 0, 0, 0]
    out = node.config.out
    wait_until(lambda: list((out / "scores").glob("*.json")) and node.spool.files == 0, timeout=60, what="scores")
    (path,) = (out / "scores").glob("*.json")
    doc = json.loads(path.read_text())
    manifest, _ = load_manifest(head_models["classifier+manifest"])
    assert doc["series_uid"] == series[0].SeriesInstanceUID and doc["model"] == "test-classifier@1.0.0"
    assert {f["sop_instance_uid"] for f in doc["frames"]} == {str(ds.SOPInstanceUID) for ds in series}
    (head,) = doc["series_scores"]
    assert head["head"] == "class_logits" and head["slices"] == 4 and head["aggregation"] == "max"
    for i, cls in enumerate(head["classes"]):
        slices = [f["scores"][0]["classes"][i]["probability"] for f in doc["frames"]]
        assert cls["score"] == pytest.approx(max(slices), abs=1e-6)
        assert cls["decision"] == (cls["score"] >= manifest.score_heads[0].classes[i].threshold)
    assert not list((out / "seg").glob("*.dcm"))  # a classifier has no mask: no SEG
    node.stop()
    status = json.loads((out / "status.json").read_text())
    assert status["score_reports_written"] == 1 and status["score_report_failures"] == 0
