"""Conversions and exports that would quietly go wrong say so, or refuse."""

from __future__ import annotations

import pytest

from scanedge.cli import main
from scanedge.converters.calibration import MIN_CALIBRATION_SLICES, CalibrationSlices
from scanedge.converters.convert import ConvertConfig, convert
from scanedge.demo.assets import DEMO_MODEL_PATH, demo_manifest
from scanedge.errors import ConversionError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.files import load_slices
from tests.conftest import dicom_file


def test_calibration_leaves_out_slices_outside_the_scope_and_says_so(demo_series):
    mr = [item.slice for item in load_slices([demo_series])][:MIN_CALIBRATION_SLICES]
    ct = slices_from_dicom(dicom_file("CT_small.dcm"))
    reader = CalibrationSlices(demo_manifest(), [*ct, *mr])
    assert (reader.count, reader.excluded) == (MIN_CALIBRATION_SLICES, 1)
    assert len(reader.notes) == 1 and "left out 1 calibration slice(s) outside the model's scope" in reader.notes[0]
    assert "modality CT" in reader.notes[0]


def test_too_few_calibration_slices_are_warned_about(demo_series):
    few = [item.slice for item in load_slices([demo_series])][:3]
    reader = CalibrationSlices(demo_manifest(), few)
    assert reader.count == 3 and any(f"fewer than {MIN_CALIBRATION_SLICES}" in n for n in reader.notes)


def test_calibration_with_nothing_in_scope_is_refused():
    with pytest.raises(ConversionError, match="none of the calibration slices is inside the model's scope"):
        CalibrationSlices(demo_manifest(), slices_from_dicom(dicom_file("CT_small.dcm")))


def test_fp16_for_onnx_runtime_on_a_cpu_is_warned_about(conv_model_path, tmp_path):
    said: list[str] = []
    convert(conv_model_path, ConvertConfig(precision="fp16", out_dir=tmp_path), say=said.append)
    warnings = [line for line in said if line.startswith("warning:")]
    assert warnings and "fp16 on ONNX Runtime's CPU provider is usually slower than fp32" in warnings[0]
    said.clear()
    convert(conv_model_path, ConvertConfig(precision="fp32", out_dir=tmp_path), say=said.append)
    assert not [line for line in said if line.startswith("warning:")]


def test_export_triton_never_replaces_a_deployed_version_by_accident(tmp_path, capsys):
    argv = ["export-triton", str(DEMO_MODEL_PATH), "--repo", str(tmp_path)]
    assert main(argv) == 0
    model = tmp_path / "ms-lesion-demo" / "1" / "model.onnx"
    model.write_bytes(b"the model Triton serves today")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [BAD_CONFIG] ") and "already holds model.onnx" in err and "--force" in err
    assert model.read_bytes() == b"the model Triton serves today"
    assert main([*argv, "--force"]) == 0
    assert model.read_bytes() == DEMO_MODEL_PATH.read_bytes()
