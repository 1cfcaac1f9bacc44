"""int8 of a multi-input model: the calibration study paired as the runtime pairs it, every graph input calibrated
on the tensors the runtime builds, the result verified against the fp32 reference."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import onnx
import pytest

import scanedge.cli.arguments
from scanedge.cli import main
from scanedge.converters.calibration import CalibrationFeeds
from scanedge.errors import ConversionError
from scanedge.imaging.role_inputs import RoleAssembler
from scanedge.manifest import load_manifest
from scanedge.runtime.core.pairing import resample_onto
from tests.converters.test_verify_inputs import models
from tests.dicomnet.test_multi_input_node import Study
from tests.test_cli_segment_inputs import write_series


@pytest.fixture
def study_dir(tmp_path):
    study, rng = Study(), random.Random(21)
    folder = tmp_path / "study"
    write_series(study.flair, folder, rng)
    write_series(study.t1, folder, rng)
    return folder


def quantized_inputs(path) -> set[str]:
    """The graph inputs that feed a QuantizeLinear node (each calibrated with its own range)."""
    model = onnx.load(str(path))
    names = {i.name for i in model.graph.input}
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in names}


@pytest.mark.parametrize("assembly", ["channels", "named"])
def test_int8_of_a_two_input_model_calibrates_on_the_paired_study_and_verifies(tmp_path, study_dir, capsys, assembly):
    ref, _ = models(tmp_path, assembly)
    out = tmp_path / "engines"
    args = ["convert", str(ref), "--precision", "int8", "--calibration", str(study_dir), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "model takes 2 roles: calibrating on 6 paired slice set(s)" in err
    assert "calibrating on 6 paired slice set(s), every role through the runtime's own preprocessing" in err
    assert "only 6 calibration paired slice set(s)" in err  # fewer than 20: said, not hidden
    int8 = out / f"{assembly}.int8.onnx"
    manifest, _ = load_manifest(int8)
    assert manifest.precision == "int8" and manifest.roles == ("flair", "t1")
    assert quantized_inputs(int8) == set(manifest.graph_inputs())  # every graph input has its own range
    verify = ["verify", str(int8), "--reference", str(ref), "--data", str(study_dir), "--threads", "1", "--json"]
    assert main(verify) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["thresholds"]["min_dice"] == 0.97 and report["agreement"]["slices"] == 6
    assert report["agreement"]["dice"]["finding"] >= 0.97 and report["agreement"]["max_abs_diff"] > 0  # really int8


def test_calibration_feeds_are_the_tensors_the_runtime_assembles(tmp_path):
    ref, _ = models(tmp_path, "named")
    manifest, _ = load_manifest(ref)
    study = Study()
    sets = [{"flair": f, "t1": resample_onto(t, f)} for f, t in zip(study.flair, study.t1)]
    reader = CalibrationFeeds(manifest, sets)
    assemble = RoleAssembler(manifest)
    for item in sets:
        feed = reader.get_next()
        assert feed is not None and set(feed) == {"flair", "t1"}
        for name, tensor in assemble(item)[0].items():
            np.testing.assert_array_equal(feed[name], tensor)
    assert reader.get_next() is None and reader.count == 6
    reader.rewind()
    assert reader.get_next() is not None
    assert CalibrationFeeds(manifest, sets, limit=2).count == 2
    with pytest.raises(ConversionError, match="lacks role"):
        CalibrationFeeds(manifest, [{"flair": study.flair[0]}])
    with pytest.raises(ConversionError, match="no paired calibration slice sets"):
        CalibrationFeeds(manifest, [])


def test_roles_name_each_calibration_folder_without_a_study_folder(tmp_path, capsys):
    ref, _ = models(tmp_path, "channels")
    study, rng = Study(), random.Random(22)
    write_series(study.flair, tmp_path / "a", rng, SeriesDescription="sag 1")  # recognised by no rule
    write_series(study.t1, tmp_path / "b", rng, SeriesDescription="sag 2")
    out = tmp_path / "engines"
    roles = ["--roles", f"flair={tmp_path / 'a'}", f"t1={tmp_path / 'b'}"]
    assert main(["convert", str(ref), "--precision", "int8", *roles, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"role t1: series {study.t1_uid}" in err and "named" in err
    assert (out / "channels.int8.onnx").exists()


def test_a_calibration_study_lacking_a_role_is_a_typed_error_naming_it(tmp_path, capsys):
    ref, _ = models(tmp_path, "channels")
    write_series(Study().flair, tmp_path / "flair_only", random.Random(23))
    out = tmp_path / "engines"
    args = ["convert", str(ref), "--precision", "int8", "--calibration", str(tmp_path / "flair_only")]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[MISSING_INPUT]" in err and "no series fills 't1'" in err
    assert not out.exists()
    assert main(["convert", str(ref), "--precision", "int8", "--out", str(out)]) == 2  # no calibration data at all
    err = capsys.readouterr().err
    assert "[BAD_CONFIG]" in err and "--calibration STUDY" in err and "--roles ROLE=DIR" in err


def test_bad_roles_are_refused_before_anything_is_read(tmp_path, study_dir, conv_model_path, capsys, monkeypatch):
    ref, _ = models(tmp_path, "channels")

    def no_reading(*_args, **_kwargs):
        raise AssertionError("slices were read before --roles was checked")

    monkeypatch.setattr(scanedge.cli.arguments, "read_slices", no_reading)
    out = tmp_path / "engines"
    base = ["convert", str(ref), "--calibration", str(study_dir), "--out", str(out)]
    cases = [
        ([*base, "--precision", "int8", "--roles", f"t2={study_dir}"], "has no role(s) t2; its roles are flair, t1"),
        ([*base, "--precision", "int8", "--roles", "flair,t1"], "names 2 role(s) for 1 path(s)"),
        ([*base, "--precision", "int8", "--roles", f"t1={tmp_path / 'nowhere'}"], "no such file or folder"),
        ([*base, "--precision", "int8", "--roles", "Flair=x"], "--roles"),
        ([*base, "--precision", "fp16", "--roles", f"t1={study_dir}"], "only --precision int8 calibrates"),
        (
            ["convert", str(conv_model_path), "--precision", "int8", "--calibration", str(study_dir), "--roles", "a=b"],
            "takes one input",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "[BAD_CONFIG]" in err and message in err, (argv, err)
    assert not out.exists()


def test_sets_outside_the_models_scope_are_left_out_and_said(tmp_path):
    from scanedge.demo.assets import demo_manifest

    ref, _ = models(tmp_path, "channels")
    manifest, _ = load_manifest(ref)
    manifest = manifest.replace(applies_to=demo_manifest().applies_to)  # MR only
    study = Study()
    sets = [{"flair": f, "t1": resample_onto(t, f)} for f, t in zip(study.flair, study.t1)]
    sets[0]["flair"] = replace(sets[0]["flair"], identity=replace(sets[0]["flair"].identity, modality="CT"))
    reader = CalibrationFeeds(manifest, sets)
    assert (reader.count, reader.excluded) == (5, 1)
    assert "left out 1 calibration slice set(s) outside the model's scope" in reader.notes[0]
    ct_only = [{r: replace(s, identity=replace(s.identity, modality="CT")) for r, s in item.items()} for item in sets]
    with pytest.raises(ConversionError, match="none of the calibration slice sets is inside the model's scope"):
        CalibrationFeeds(manifest, ct_only)
