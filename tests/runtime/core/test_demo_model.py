"""The shipped demo model on the shipped demo series: lesions are found where the generator put them."""

import numpy as np
import onnx
import pytest
from scipy import ndimage

from scanedge.demo.assets import DEMO_MODEL_PATH
from scanedge.demo.series import load_demo_patient
from scanedge.imaging.files import load_slices
from scanedge.manifest import graph_sha256, load_manifest
from scanedge.runtime.core.pipeline import Pipeline


@pytest.fixture(scope="module")
def demo_results(demo_series):
    loaded = load_slices([demo_series])
    with Pipeline.open() as pipe:
        results = list(pipe.run_series([item.slice for item in loaded], overlay=False))
    return load_demo_patient(), results


def test_the_shipped_model_is_small_and_carries_a_matching_manifest():
    assert DEMO_MODEL_PATH.stat().st_size < 5_000_000
    manifest, source = load_manifest(DEMO_MODEL_PATH)
    assert source == "embedded" and manifest.onnx_sha256 == graph_sha256(onnx.load(str(DEMO_MODEL_PATH)))
    assert "not for clinical use" in manifest.intended_use
    assert [c.name for c in manifest.classes] == ["background", "lesion"]


def test_lesions_are_found_where_the_generator_put_them(demo_results):
    patient, results = demo_results
    truth = patient.labels.astype(bool)
    pred = np.stack([r.mask for r in results]).astype(bool)
    dice = 2 * np.sum(truth & pred) / (truth.sum() + pred.sum())
    assert dice >= 0.75, dice
    components, n = ndimage.label(truth)
    sizes = ndimage.sum(truth, components, range(1, n + 1))
    detected = [bool(pred[components == i + 1].any()) for i in range(n) if sizes[i] >= 20]
    assert len(detected) >= 5 and np.mean(detected) >= 0.9


def test_lesion_free_slices_stay_almost_clean(demo_results):
    patient, results = demo_results
    clean = [r for r, labels in zip(results, patient.labels) if not labels.any()]
    assert clean, "the demo patient should have slices without lesions"
    false_pixels = sum(r.findings[0].pixels for r in clean)
    assert false_pixels <= 20 * len(clean)


def test_findings_report_area_in_mm2_from_the_dicom_spacing(demo_results):
    _, results = demo_results
    lesion = max((r.findings[0] for r in results), key=lambda f: f.pixels)
    assert lesion.pixels > 0 and lesion.area_mm2 == pytest.approx(lesion.pixels * 1.0)
    assert lesion.components >= 1 and 0.5 < lesion.mean_probability <= lesion.max_probability <= 1.0
