"""``scanedge segment`` with a FLAIR + T1 model on study folders: roles recognised (or named with --roles),
slices paired across two series on different grids, unpaired slices named and the batch going on."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from scanedge.cli import main
from scanedge.manifest import embed_manifest
from tests.conftest import conv_model, simple_manifest
from tests.dicomnet.test_multi_input_node import Study, expected_masks
from tests.runtime.core.test_multi_input import WEIGHTS, two_role_inputs

PATIENT = ("ANON-1", "Anonymous^Test")  # what Study.datasets writes; never in a report


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "flair_t1.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs()), path)
    return path


def write_series(study_slices, folder: Path, rng: random.Random, **attributes) -> dict[str, int]:
    """The slices as DICOM files under random names (file order says nothing); name -> slice index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for k, ds in enumerate(Study.datasets(study_slices)):
        for key, value in attributes.items():
            setattr(ds, key, value)
        name = f"{rng.getrandbits(48):012x}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names[name] = k
    return names


def masks_by_name(out: Path) -> dict[str, np.ndarray]:
    report = json.loads((out / "results.json").read_text())
    return {s["name"]: np.load(s["mask"]) for s in report["slices"]}


def test_a_study_folder_is_paired_across_grids_and_each_flair_slice_segmented(model_path, tmp_path, capsys):
    study, rng = Study(), random.Random(7)
    folder = tmp_path / "study"
    flair = write_series(study.flair, folder, rng)  # 96x96 at 1 mm
    write_series(study.t1, folder, rng)  # 48x48 at 2 mm, shifted: resampled onto the FLAIR grid
    out = tmp_path / "out"
    assert (
        main(["segment", "--model", str(model_path), str(folder), "--out", str(out), "--save-masks", "--threads", "1"])
        == 0
    )
    captured = capsys.readouterr()
    expected = expected_masks(model_path, study)
    masks = masks_by_name(out)
    assert set(masks) == set(flair)  # results on the reference series only
    for name, k in flair.items():
        assert masks[name].shape == (96, 96)  # the reference series' grid
        np.testing.assert_array_equal(masks[name], expected[k])
    report = json.loads((out / "results.json").read_text())
    roles = {r["role"]: r for r in report["inputs"]["roles"]}
    assert [s["series_uid"] for s in roles["flair"]["series"]] == [study.flair_uid]
    assert [s["series_uid"] for s in roles["t1"]["series"]] == [study.t1_uid]
    assert roles["t1"]["series"][0]["how"] == "recognised" and roles["flair"]["reference"]
    assert report["inputs"]["paired"] == 6 and report["inputs"]["missing"] == 0
    assert f'role t1: series {study.t1_uid} "T1 SE" (6 slice(s)), recognised' in captured.out
    assert "paired 6 of 6 reference slice(s)" in captured.out


def test_a_missing_partner_slice_is_named_and_the_batch_goes_on(model_path, tmp_path, capsys):
    study, rng = Study(), random.Random(8)
    folder = tmp_path / "study"
    flair = write_series(study.flair, folder, rng)
    write_series(study.t1[:2] + study.t1[3:], folder, rng)  # the T1 slice at the third position is lost
    out = tmp_path / "out"
    assert main(["segment", "--model", str(model_path), str(folder), "--out", str(out), "--save-masks", "--json"]) == 3
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    (lost,) = [n for n, k in flair.items() if k == 2]
    assert [(s["name"], s["code"]) for s in report["skipped"]] == [(lost, "MISSING_INPUT")]
    reason = report["skipped"][0]["reason"]
    assert "role 't1'" in reason and study.t1_uid in reason and "position 8.00 mm" in reason
    assert study.flair_uid in reason and "waiting" not in reason
    assert f"skipped {lost} [MISSING_INPUT]" in captured.err
    assert not any(p in captured.out + captured.err for p in PATIENT)
    expected = expected_masks(model_path, study)
    masks = masks_by_name(out)
    assert set(masks) == set(flair) - {lost}
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, expected[flair[name]])
    assert report["inputs"]["paired"] == 5 and report["inputs"]["missing"] == 1


def test_a_role_without_any_series_is_a_typed_error_naming_it_and_what_was_seen(model_path, tmp_path, capsys):
    study, rng = Study(), random.Random(9)
    folder = tmp_path / "study"
    write_series(study.flair, folder, rng)
    write_series(study.t1, folder, rng, SeriesDescription="MPRAGE 3D")  # no rule of the t1 role matches it
    assert main(["segment", "--model", str(model_path), str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MISSING_INPUT" in err and "no series fills 't1'" in err
    assert '"AX FLAIR"' in err and '"MPRAGE 3D"' in err and "--roles t1=DIR" in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("form", ["pairs", "list"])
def test_roles_named_explicitly_fill_them_whatever_the_descriptions(model_path, tmp_path, capsys, form):
    study, rng = Study(), random.Random(10)
    flair_dir, t1_dir = tmp_path / "series3", tmp_path / "series5"
    flair = write_series(study.flair, flair_dir, rng, SeriesDescription="sag 1")
    write_series(study.t1, t1_dir, rng, SeriesDescription="sag 2")  # neither is recognised
    out = tmp_path / "out"
    roles = (
        ["--roles", f"FLAIR={flair_dir}", f"t1={t1_dir}"]
        if form == "pairs"
        else [str(flair_dir), str(t1_dir), "--roles", "flair,t1"]
    )
    assert main(["segment", "--model", str(model_path), *roles, "--out", str(out), "--save-masks"]) == 0
    expected = expected_masks(model_path, study)
    masks = masks_by_name(out)
    assert set(masks) == set(flair)
    for name, k in flair.items():
        np.testing.assert_array_equal(masks[name], expected[k])
    report = json.loads((out / "results.json").read_text())
    assert [r["series"][0]["how"] for r in report["inputs"]["roles"]] == ["named", "named"]


def test_roles_options_that_cannot_work_are_refused_before_any_work(model_path, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert (
        main(["segment", "--model", str(model_path), str(folder), "--roles", "flair,t1", "--out", str(tmp_path / "o1")])
        == 2
    )
    assert "names 2 role(s) for 1 path(s)" in capsys.readouterr().err
    assert main(["segment", "--model", str(model_path), "--roles", "flair", "--out", str(tmp_path / "o2")]) == 2
    assert "ROLE=PATH" in capsys.readouterr().err
    assert main(["segment", "--model", str(model_path), "--out", str(tmp_path / "o3")]) == 2
    assert "name the files or folders of slices" in capsys.readouterr().err
