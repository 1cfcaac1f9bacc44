import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from scanedge.cli import main
from scanedge.converters.calibration import CalibrationSlices, calibration_tensors
from scanedge.converters.checks import check_onnx
from scanedge.converters.convert import ConvertConfig
from scanedge.converters.verify import DEFAULT_MIN_DICE, Thresholds, judge, measure_agreement
from scanedge.demo.assets import DEMO_MODEL_PATH
from scanedge.engines import OnnxRuntimeEngine
from scanedge.errors import ConversionError, ManifestMismatchError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.files import load_slices
from scanedge.imaging.preprocess import Preprocessor
from scanedge.manifest import embed_manifest, graph_sha256, load_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model, dicom_file, simple_manifest


def real_slices():
    out = []
    for name in ("MR2_UNCR.dcm", "693_UNCR.dcm", "MR_small.dcm", "emri_small.dcm", "RG1_UNCR.dcm"):
        out.extend(slices_from_dicom(dicom_file(name)))
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_converted_models_carry_a_stamped_manifest_and_run(converted, precision):
    path = converted[precision]
    assert path.name == f"ms_lesion_demo.{precision}.onnx"
    manifest, source = load_manifest(path)
    assert source == "embedded" and manifest.precision == precision
    assert manifest.onnx_sha256 == graph_sha256(onnx.load(str(path)))
    assert manifest.classes == load_manifest(DEMO_MODEL_PATH)[0].classes
    with Pipeline.open(path) as pipe:
        assert pipe.run(np.zeros((256, 256), np.int16)).mask.shape == (256, 256)
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_agrees_with_fp32_on_demo_and_real_slices(converted, demo_series, precision):
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    demo = [item.slice for item in load_slices([demo_series])]
    with OnnxRuntimeEngine(converted[precision]) as cand, OnnxRuntimeEngine(DEMO_MODEL_PATH) as ref:
        on_demo = measure_agreement(cand, ref, manifest, demo)
        on_real = measure_agreement(cand, ref, manifest, real_slices())
    assert on_demo.reference_pixels["lesion"] > 500  # there is something to agree on
    for agreement in (on_demo, on_real):
        verdict = judge(agreement, Thresholds(DEFAULT_MIN_DICE[precision]))
        assert verdict.passed, verdict.failures
        assert agreement.pixel_agreement > 0.999
    assert on_demo.mean_abs_diff < 0.01


def test_a_broken_model_fails_verify(tmp_path, demo_series):
    model = onnx.load(str(DEMO_MODEL_PATH))
    head = model.graph.initializer[-1]  # damage the last layer's weights
    weights = numpy_helper.to_array(head)
    head.CopyFrom(numpy_helper.from_array((weights * -0.5).astype(weights.dtype), head.name))
    broken = tmp_path / "broken.onnx"
    embed_manifest(model, load_manifest(DEMO_MODEL_PATH)[0].replace(precision="int8"), broken)
    args = ["verify", str(broken), "--reference", str(DEMO_MODEL_PATH), "--data", str(demo_series), "--json"]
    assert main(args) == 1


def test_verify_cli_passes_a_good_engine(converted, demo_series, capsys):
    args = ["verify", str(converted["int8"]), "--reference", str(DEMO_MODEL_PATH), "--data", str(demo_series), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["thresholds"]["min_dice"] == 0.97 and report["agreement"]["slices"] == 32


def test_calibration_sees_exactly_what_inference_sees(calibration_dir):
    import scanedge.converters.calibration as calibration
    import scanedge.imaging.preprocess as preprocess

    assert calibration.Preprocessor is preprocess.Preprocessor  # the same code, not a copy
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    slices = [item.slice for item in load_slices([calibration_dir])]
    reference = Preprocessor(manifest)
    for s, tensor in zip(slices, calibration_tensors(manifest, slices)):
        np.testing.assert_array_equal(tensor, reference(s)[0])
    reader = CalibrationSlices(manifest, calibration_dir)
    first = reader.get_next()
    np.testing.assert_array_equal(first["image"], reference(slices[0])[0])
    assert sum(1 for _ in iter(reader.get_next, None)) == len(slices) - 1
    reader.rewind()
    assert reader.get_next() is not None


def test_int8_without_calibration_is_refused():
    with pytest.raises(ValueError, match="--calibration"):
        ConvertConfig(precision="int8")


def test_checks_refuse_old_opsets_and_contradicting_manifests(tmp_path):
    old = conv_model()
    old.opset_import[0].version = 11
    with pytest.raises(ConversionError, match="opset 11"):
        check_onnx(old, simple_manifest())
    with pytest.raises(ManifestMismatchError):
        check_onnx(conv_model(in_channels=3), simple_manifest())
    report = check_onnx(conv_model(height="h", width="w"), simple_manifest())
    assert report.dynamic_inputs == ("image",) and report.notes


def test_convert_cli_reports_steps(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    embed_manifest(conv_model(), simple_manifest(), path)
    assert main(["convert", str(path), "--precision", "fp16", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "check: done" in err and "fp16 conversion" in err and "scanedge verify" in err
    assert (tmp_path / "e" / "m.fp16.onnx").is_file()


def test_converting_a_model_without_manifest_says_how_to_add_one(tmp_path, capsys):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    assert main(["convert", str(path), "--out", str(tmp_path / "e")]) == 2
    assert "manifest init" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "e", ignore_errors=True)
