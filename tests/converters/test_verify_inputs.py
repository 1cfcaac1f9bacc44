"""``scanedge verify`` on multi-input models: every graph input fed from a paired study, as the runtime feeds it."""

from __future__ import annotations

import json
import random

import pytest
from onnx import numpy_helper

from scanedge.cli import main
from scanedge.converters.calibration import CalibrationSlices
from scanedge.converters.convert import ConvertConfig, convert
from scanedge.converters.verify import Thresholds, judge, measure_engine_file
from scanedge.errors import ConfigError, ConversionError
from scanedge.manifest import embed_manifest
from scanedge.runtime.core.pairing import resample_onto
from tests.conftest import conv_model, simple_manifest
from tests.dicomnet.test_multi_input_node import Study
from tests.runtime.core.test_multi_input import WEIGHTS, named_inputs_model, two_role_inputs
from tests.test_cli_segment_inputs import write_series


def named_manifest():
    inputs = two_role_inputs()
    for role in inputs["roles"]:
        role["input"] = role["role"]
    return simple_manifest(inputs={**inputs, "assembly": "named"})


@pytest.fixture
def study_dir(tmp_path):
    study, rng = Study(), random.Random(11)
    folder = tmp_path / "study"
    write_series(study.flair, folder, rng)
    write_series(study.t1, folder, rng)
    return folder


def models(tmp_path, assembly: str):
    """(reference, candidate with the weights' signs flipped: the opposite mask) of one assembly."""
    ref, broken = tmp_path / f"{assembly}.onnx", tmp_path / f"{assembly}.broken.onnx"
    if assembly == "channels":
        manifest = simple_manifest(inputs=two_role_inputs())
        embed_manifest(conv_model(2, WEIGHTS), manifest, ref)
        embed_manifest(conv_model(2, -WEIGHTS), manifest.replace(precision="fp16"), broken)
    else:
        manifest = named_manifest()
        embed_manifest(named_inputs_model(), manifest, ref)
        flipped = named_inputs_model()
        w = flipped.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
        embed_manifest(flipped, manifest.replace(precision="fp16"), broken)
    return ref, broken


@pytest.mark.parametrize("assembly", ["channels", "named"])
def test_fp16_of_a_two_input_model_passes_and_a_corrupted_candidate_fails(tmp_path, study_dir, capsys, assembly):
    ref, broken = models(tmp_path, assembly)
    fp16 = convert(ref, ConvertConfig(precision="fp16", out_dir=tmp_path / "engines")).output
    args = ["verify", str(fp16), "--reference", str(ref), "--data", str(study_dir), "--threads", "1", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["passed"] and report["agreement"]["slices"] == 6  # every FLAIR slice with its T1 partner
    assert report["agreement"]["dice"]["finding"] >= 0.99 and report["agreement"]["reference_pixels"]["finding"] > 0
    assert "model takes 2 roles: comparing on 6 paired slice set(s)" in captured.err
    args[1] = str(broken)
    assert main(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["passed"] and report["agreement"]["dice"]["finding"] < 0.1


def test_paired_sets_are_measured_directly_and_bare_slices_refused(tmp_path):
    """The library call: one slice per role (on the reference grid); the reference against itself agrees exactly."""
    ref, _ = models(tmp_path, "named")
    study = Study()
    sets = [{"flair": f, "t1": resample_onto(t, f)} for f, t in zip(study.flair, study.t1)]
    _, agreement = measure_engine_file(ref, ref, sets)
    assert agreement.slices == 6 and agreement.max_abs_diff == 0.0 and agreement.pixel_agreement == 1.0
    assert judge(agreement, Thresholds.for_precision("fp32")).passed
    with pytest.raises(ConfigError, match="one slice per role"):
        measure_engine_file(ref, ref, study.flair)


def test_verify_names_a_missing_role_and_refuses_roles_for_a_one_input_model(tmp_path, conv_model_path, capsys):
    ref, _ = models(tmp_path, "channels")
    study, rng = Study(), random.Random(12)
    write_series(study.flair, tmp_path / "flair_only", rng)
    assert main(["verify", str(ref), "--reference", str(ref), "--data", str(tmp_path / "flair_only")]) == 2
    assert "no series fills 't1'" in capsys.readouterr().err
    args = ["verify", str(conv_model_path), "--reference", str(conv_model_path), "--data", str(tmp_path)]
    assert main([*args, "--roles", "flair,t1"]) == 2
    assert "takes one input" in capsys.readouterr().err


def test_one_series_calibration_of_a_multi_input_model_is_refused_with_the_way_out(tmp_path):
    ref, _ = models(tmp_path, "channels")
    from scanedge.manifest import load_manifest

    manifest, _ = load_manifest(ref)
    with pytest.raises(ConversionError, match=r"--calibration STUDY or --roles ROLE=DIR.*CalibrationFeeds"):
        CalibrationSlices(manifest, [Study().flair[0]])


def test_verify_takes_each_roles_folder_with_roles_instead_of_data(tmp_path, capsys):
    ref, _ = models(tmp_path, "channels")
    study, rng = Study(), random.Random(13)
    write_series(study.flair, tmp_path / "a", rng, SeriesDescription="sag 1")  # recognised by no rule
    write_series(study.t1, tmp_path / "b", rng, SeriesDescription="sag 2")
    roles = ["--roles", f"flair={tmp_path / 'a'}", f"t1={tmp_path / 'b'}"]
    assert main(["verify", str(ref), "--reference", str(ref), *roles, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["agreement"]["slices"] == 6
    assert f"role t1: series {study.t1_uid}" in captured.err and "named" in captured.err
