"""The sr output of a classification model: real C-STOREs to a real node, its SR read back with highdicom and
dcmtk's dsrdump, every group's figures checked against the ``scores`` JSON the same node writes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pydicom
import pytest

from scanedge.manifest import ClassSpec, CodedConcept, embed_manifest, load_manifest
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import ROOT, demo, new_series, send
from tests.heads.conftest import classifier_manifest, head_models  # noqa: F401 - the test models
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")
pytest.importorskip("scipy", reason="the sr output needs the 'followup' extra")
hd = pytest.importorskip("highdicom")

POSITIVE, NEGATIVE = ("10828004", "SCT"), ("260385009", "SCT")


def run_node(listener, model: Path, outputs: tuple[str, ...]) -> tuple[Any, list[pydicom.Dataset], Path]:  # noqa: F811
    """One four-slice series through a node with ``outputs``; the node, the series and the output folder."""
    node = listener([model], series_timeout_s=0.3, outputs=outputs)
    series = new_series(demo(4))
    assert [s for s, _ in send(node.port, series)] == [0, 0, 0, 0]
    out = node.config.out

    def written() -> bool:
        return bool(list((out / "scores").glob("*.json")) and srs(out) and not node.spool.files)

    wait_until(written, timeout=60, what="the scores JSON and the SR")
    return node, series, out


def srs(out: Path) -> list[Path]:
    """The SRs of ``out/sr`` (not the lesion SEGs)."""
    return [
        p for p in sorted((out / "sr").glob("*.dcm")) if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"
    ]


def texts(group: Any) -> dict[str, str]:
    """A group's TEXT items by concept meaning."""
    return {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    }


def check_score_groups(report: Any, doc: dict[str, Any], manifest: Any) -> None:
    """Each score head of the JSON has a group with its figures, decisions, aggregation, thresholds, model."""
    groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    assert doc["series_scores"]
    for head in doc["series_scores"]:
        group = groups[head["head"]]
        nums = {m.name.meaning: m for m in group.get_measurements()}
        evaluations = {
            e.name.meaning: e.value
            for e in group.get_qualitative_evaluations()
            if e.name.meaning.startswith("Decision")
        }
        assert len(nums) == len(evaluations) == len(head["classes"])
        for cls in head["classes"]:
            num = nums[f"Probability of {cls['name']}"]
            assert float(num.value) == cls["score"]
            assert (num.unit.value, num.unit.scheme_designator) == ("1", "UCUM")
            decision = evaluations[f"Decision: {cls['name']}"]
            assert (decision.value, decision.scheme_designator) == (POSITIVE if cls["decision"] else NEGATIVE)
        text = texts(group)
        assert text["Series aggregation"] == f"{head['aggregation']} over {head['slices']} slices"
        assert text["Decision thresholds"] == "; ".join(f"{c['name']} >= {c['threshold']:g}" for c in head["classes"])
        assert text["Algorithm Name"] == manifest.name and text["Algorithm Version"] == manifest.version
        spec = next(h for h in manifest.score_heads if h.name == head["head"])
        if spec.operating_point is None:
            assert "Operating point" not in text
        else:
            assert text["Operating point"].startswith(spec.operating_point.name)


def test_a_classifier_gets_an_sr_of_its_series_scores_equal_to_the_scores_json(listener, head_models):  # noqa: F811
    model = head_models["classifier+manifest"]
    node, series, out = run_node(listener, model, ("scores", "sr"))
    manifest, _ = load_manifest(model)
    (doc_path,) = (out / "scores").glob("*.json")
    doc = json.loads(doc_path.read_text())
    (sr_path,) = srs(out)
    assert len(list((out / "sr").glob("*.dcm"))) == 1  # no mask: no lesion SEG
    sr = hd.sr.srread(sr_path)
    assert sr.SeriesDescription.startswith("scanedge score report test-classifier")
    report = sr.content
    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["class_logits"]  # one per score head, no lesion load
    check_score_groups(report, doc, manifest)
    assert texts(groups[0])["Operating point"] == "triage (sensitivity 0.95, specificity 0.8)"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {e.ReferencedSOPInstanceUID for e in evidence} == {ds.SOPInstanceUID for ds in series}
    node.stop()
    status = json.loads((out / "status.json").read_text())
    assert status["sr_failures"] == 0 and status["score_report_failures"] == 0

    # dcmtk reads it strictly (.ci/run installs dcmtk; the SR tests need it)
    assert shutil.which("dsrdump") is not None, "dsrdump (Debian's dcmtk) is needed: apt-get install dcmtk"
    proc = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # strict: no warning, no error
    assert "(10828004,SCT," in proc.stdout or "(260385009,SCT," in proc.stdout
    assert '"class_logits"' in proc.stdout and "(1,UCUM," in proc.stdout


def test_a_mask_and_score_model_gets_the_score_groups_beside_its_lesion_groups(listener, head_models):  # noqa: F811
    model = head_models["mask_score+manifest"]
    node, _, out = run_node(listener, model, ("scores", "sr"))
    manifest, _ = load_manifest(model)
    (doc_path,) = (out / "scores").glob("*.json")
    doc = json.loads(doc_path.read_text())
    (sr_path,) = srs(out)
    sr = hd.sr.srread(sr_path)
    report = sr.content
    names = [g.tracking_identifier for g in report.get_image_measurement_groups()]
    assert names[0] == "lesion load" and "abnormal_logit" in names
    check_score_groups(report, doc, manifest)
    node.stop()


HEMORRHAGE = CodedConcept("50960005", "SCT", "Hemorrhage")
ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")


def coded_classifier(head_models: dict[str, Path], folder: Path) -> Path:  # noqa: F811
    """The test classifier whose ``bleed`` class is coded (SCT Hemorrhage); ``normal`` and ``mass`` are not."""
    manifest = classifier_manifest()
    score, saliency = manifest.heads

    def coded(c: ClassSpec) -> ClassSpec:
        return dataclasses.replace(c, property_category=ABNORMAL, property_type=HEMORRHAGE) if c.name == "bleed" else c

    manifest = manifest.replace(heads=(dataclasses.replace(score, classes=tuple(map(coded, score.classes))), saliency))
    path = folder / "coded_classifier.onnx"
    embed_manifest(onnx.load(str(head_models["classifier"])), manifest, path)
    return path


def test_a_score_class_coded_in_the_manifest_names_its_sr_items_with_its_code(listener, head_models, tmp_path):  # noqa: F811
    model = coded_classifier(head_models, tmp_path)
    node, _, out = run_node(listener, model, ("scores", "sr"))
    manifest, _ = load_manifest(model)
    (doc_path,) = (out / "scores").glob("*.json")
    (sr_path,) = srs(out)
    report = hd.sr.srread(sr_path).content
    check_score_groups(report, json.loads(doc_path.read_text()), manifest)  # the figures, keyed by meaning
    (group,) = report.get_image_measurement_groups()
    names = [(m.name.value, m.name.scheme_designator, m.name.meaning) for m in group.get_measurements()]
    assert names == [
        ("probability-1", "99SCANEDGE", "Probability of normal"),
        ("50960005", "SCT", "Probability of bleed"),
        ("probability-3", "99SCANEDGE", "Probability of mass"),
    ]
    decisions = [
        (e.name.value, e.name.scheme_designator, e.name.meaning)
        for e in group.get_qualitative_evaluations()
        if e.name.meaning.startswith("Decision")  # not the algorithm's own items
    ]
    assert decisions == [
        ("decision-1", "99SCANEDGE", "Decision: normal"),
        ("50960005", "SCT", "Decision: bleed"),
        ("decision-3", "99SCANEDGE", "Decision: mass"),
    ]
    node.stop()
    proc = subprocess.run(["dsrdump", "+Pc", str(sr_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # strict: no warning, no error
    assert '(50960005,SCT,"Probability of bleed")' in proc.stdout
    assert '(50960005,SCT,"Decision: bleed")' in proc.stdout


#: a node with only a classifier and the sr output, in a process where SciPy cannot be imported
_NO_SCIPY = """
import json, sys
sys.modules["scipy"] = None  # as if SciPy were not installed: any import of it fails
from pathlib import Path
from scanedge.dicomnet import DicomListener, ListenerConfig
from scanedge.runtime.core.model_spec import ModelSpec
from tests.dicomnet.test_durability import demo, new_series, send
from tests.waiting import wait_until

config = ListenerConfig(port=0, out=Path(sys.argv[2]), series_timeout_s=0.3, outputs=("sr",))
node = DicomListener([ModelSpec(Path(sys.argv[1]))], config).start()
try:
    statuses = [s for s, _ in send(node.port, new_series(demo(4)))]
    wait_until(lambda: node.written and not node.spool.files, timeout=60, what="the SR")
finally:
    node.stop()
print(json.dumps({"statuses": statuses, "written": [str(p) for p in node.written],
                  "failures": node.stats.outputs["sr"].failures, "scipy_blocked": sys.modules["scipy"] is None}))
"""


def test_a_classifier_only_node_writes_its_sr_without_scipy(head_models, tmp_path):  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-c", _NO_SCIPY, str(head_models["classifier+manifest"]), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [0] * 4 and result["failures"] == 0 and result["scipy_blocked"]
    (sr_path,) = map(Path, result["written"])
    sr = hd.sr.srread(sr_path)
    assert [g.tracking_identifier for g in sr.content.get_image_measurement_groups()] == ["class_logits"]


def test_a_mask_model_with_the_sr_output_is_refused_at_start_without_scipy(head_models, tmp_path):  # noqa: F811
    script = _NO_SCIPY.split("config = ")[0] + (
        "from scanedge.errors import ConfigError\n"
        "try:\n"
        "    DicomListener([ModelSpec(Path(sys.argv[1]))], ListenerConfig(port=0, out=Path(sys.argv[2]), "
        "outputs=('sr',))).start()\n"
        "except ConfigError as exc:\n"
        "    print(exc.message)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(head_models["mask_score+manifest"]), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lesion tracking (model test-mask-score has a mask) needs scipy" in proc.stdout
    assert "pip install 'scanedge[followup]'" in proc.stdout
