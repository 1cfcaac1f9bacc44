"""``scanedge segment --prior DIR`` end to end on real DICOM folders of a synthetic follow-up pair.

The pair (:func:`scanedge.demo.followup.make_pair`) has a known motion and lesions planted as stable,
enlarging, shrinking, disappeared and new. The model is a real ONNX graph that calls "lesion" wherever the
stored value is above a threshold, and the planted lesions are written brighter than any tissue, so what the
model finds is the planted truth and the test checks the wiring: reading, matching, segmenting both series,
registering, classifying, reporting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scanedge.cli import main
from scanedge.demo.followup import make_pair
from scanedge.manifest import IntensityPolicy, SizePolicy, embed_manifest
from tests.conftest import conv_model, simple_manifest
from tests.followup_dicom import write_lesion_seg, write_series

pytest.importorskip("SimpleITK")

SHAPE = (32, 128, 128)
SPACING = (1.8, 1.8, 5.0)  # make_pair's grid: the head, about 230 x 230 x 160 mm
BRIGHT = 400.0  # added to planted lesions: above this plus any tissue is lesion, below is not
THRESHOLD = 1000.0


@pytest.fixture(scope="module")
def pair_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, object]:
    """(current folder, prior folder, threshold model, the pair)."""
    root = tmp_path_factory.mktemp("followup")
    pair = make_pair(1, shape=SHAPE, spacing=SPACING)
    write_series(root / "current", pair.current + BRIGHT * pair.current_mask, pair.geometry, patient_id="P-1",
                 date="20260301")  # fmt: skip
    write_series(root / "prior", pair.prior + BRIGHT * pair.prior_mask, pair.geometry, patient_id="P-1",
                 date="20250301")  # fmt: skip
    model = root / "threshold.onnx"
    manifest = simple_manifest(
        size=SizePolicy(mode="fixed", height=SHAPE[1], width=SHAPE[2], interpolation="nearest"),
        intensity=IntensityPolicy(mode="scale", scale=1.0, mean=(THRESHOLD,), std=(100.0,)),
    )
    embed_manifest(conv_model(height=SHAPE[1], width=SHAPE[2]), manifest, model)
    return root / "current", root / "prior", model, pair


def _run(argv: list[str]) -> int:
    # a registration that runs to convergence: the classes must not depend on how busy the machine is
    return main([*argv, "--threads", "1", "--registration-budget", "120"])


def test_segment_with_a_prior_reports_each_planted_change(pair_folders, tmp_path, capsys):
    current, prior, model, pair = pair_folders
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(prior), "--model", str(model), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"follow-up: compared with 2025-03-01 (MR, {SHAPE[0]} slice(s)" in captured.out, captured.out
    assert "registration: good in" in captured.out
    assert "registering the prior onto the current series" in captured.err  # progress goes to stderr
    planted = sorted(kind for kind, _ in pair.truth)  # stable, enlarging, shrinking, disappeared, new, new
    followup = json.loads((out / "results.json").read_text())["followup"]
    assert followup["status"] == "compared" and followup["registration"]["quality"] == "good"
    assert sorted(lesion["change"] for lesion in followup["lesions"]) == planted
    counts = {k: v for k, v in followup["counts"].items() if v}
    assert counts == {"new": 2, "enlarging": 1, "stable": 1, "shrinking": 1, "disappeared": 1}
    assert "  new 2: " in captured.out and "  disappeared 1: " in captured.out and "  enlarging 1: " in captured.out
    uids = [lesion["tracking_uid"] for lesion in followup["lesions"]]
    assert len(set(uids)) == 6 and all(uid.startswith("2.25.") for uid in uids)
    prior_load, current_load = followup["prior_load_mm3"], followup["current_load_mm3"]
    voxel = float(np.prod(SPACING))
    # the current study was resampled: a few edge voxels of its true mask fall under the model's threshold
    assert prior_load == pytest.approx(pair.prior_mask.sum() * voxel, rel=0.01)
    assert current_load == pytest.approx(pair.current_mask.sum() * voxel, rel=0.03)
    change = current_load - prior_load
    assert f"total lesion load: {prior_load:.0f} -> {current_load:.0f} mm³ ({change:+.0f} mm³" in captured.out
    assert followup["prior"]["study_date"] == "20250301" and "P-1" not in json.dumps(followup)
    assert "P-1" not in captured.out + captured.err  # the Patient ID is compared, never shown
    assert len(list(out.glob("*.change.png"))) == SHAPE[0] and (out / "change-montage.png").is_file()


def test_a_prior_of_another_patient_is_refused_unless_allowed(pair_folders, tmp_path, capsys):
    current, _, model, pair = pair_folders
    other = tmp_path / "other"
    write_series(other, pair.prior, pair.geometry, patient_id="P-2", date="20250301")
    argv = ["segment", str(current), "--prior", str(other), "--model", str(model)]
    assert _run([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "error [PRIOR_MISMATCH] the prior is of another patient (Patient ID differs)" in err
    assert "--prior-any-patient" in err and "P-2" not in err and "P-1" not in err
    assert not (tmp_path / "a" / "results.json").exists()  # refused before anything was segmented
    assert _run([*argv, "--out", str(tmp_path / "b"), "--prior-any-patient"]) == 0
    captured = capsys.readouterr()
    assert "warning: the prior is of another patient (--prior-any-patient)" in captured.out + captured.err


def test_a_garbage_file_in_the_prior_is_named_and_the_comparison_goes_on(pair_folders, tmp_path, capsys):
    current, prior, model, _ = pair_folders
    mixed = tmp_path / "prior"
    mixed.mkdir()
    for path in prior.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset")
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(mixed), "--model", str(model), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "prior: skipped broken.dcm [" in captured.err
    followup = json.loads((out / "results.json").read_text())["followup"]
    assert followup["status"] == "compared"
    assert [s["name"] for s in followup["prior_skipped"]] == ["broken.dcm"]


def test_a_missing_prior_folder_is_a_clear_error_before_anything_runs(pair_folders, tmp_path, capsys):
    current, _, model, _ = pair_folders
    missing = tmp_path / "nowhere"
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(missing), "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error [BAD_CONFIG] the prior folder {missing} does not exist" in err
    assert not (out / "results.json").exists()


def test_a_later_prior_is_compared_with_a_warning(pair_folders, tmp_path, capsys):
    current, _, model, pair = pair_folders
    later = tmp_path / "later"
    write_series(later, pair.prior + BRIGHT * pair.prior_mask, pair.geometry, patient_id="P-1", date="20270101")
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(later), "--model", str(model), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: the prior (20270101) is later than the current study (20260301)" in captured.out


def test_without_simpleitk_the_error_names_the_extra_literally(pair_folders, tmp_path, capsys, monkeypatch):
    import builtins

    current, prior, model, _ = pair_folders
    real_import = builtins.__import__

    def no_sitk(name, *args, **kwargs):  # a fault injected: the followup extra is not installed
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sitk)
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(prior), "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs SimpleITK: pip install 'scanedge[followup]'" in err  # the brackets survive the console


def test_a_lesion_seg_beside_the_prior_keeps_its_tracking_uids(pair_folders, tmp_path, capsys):
    current, prior, model, pair = pair_folders
    with_seg = tmp_path / "prior"
    with_seg.mkdir()
    for path in prior.iterdir():
        (with_seg / path.name).write_bytes(path.read_bytes())
    uids = write_lesion_seg(with_seg / "lesions.dcm", prior, pair.prior_mask)
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(with_seg), "--model", str(model), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tracking ids: prior lesion SEG" in captured.out and "lesions.dcm" not in captured.err  # used, not skipped
    followup = json.loads((out / "results.json").read_text())["followup"]
    kept = {lesion["tracking_uid"] for lesion in followup["lesions"] if lesion["change"] != "new"}
    assert kept == set(uids.values())  # stable, enlarging, shrinking and disappeared keep the SEG's ids
    assert sorted(lesion["change"] for lesion in followup["lesions"]) == sorted(kind for kind, _ in pair.truth)


def test_a_lesion_seg_that_does_not_fit_is_a_warning_and_lesions_get_new_ids(pair_folders, tmp_path, capsys):
    import pydicom

    current, prior, model, pair = pair_folders
    with_seg = tmp_path / "prior"
    with_seg.mkdir()
    for path in prior.iterdir():
        (with_seg / path.name).write_bytes(path.read_bytes())
    seg_path = with_seg / "lesions.dcm"
    uids = write_lesion_seg(seg_path, prior, pair.prior_mask)
    ds = pydicom.dcmread(seg_path)
    del ds.SegmentSequence[0].TrackingUID  # a lesion without its id: the SEG cannot carry the ids on
    ds.save_as(seg_path)
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(with_seg), "--model", str(model), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "warning: the lesion SEG lesions.dcm cannot be used (lesions.dcm: segment 1 has no Tracking UID)" in (
        captured.out
    )
    assert "prior: skipped lesions.dcm [NOT_AN_IMAGE]" in captured.err  # not used, so listed as every such file
    followup = json.loads((out / "results.json").read_text())["followup"]
    assert followup["status"] == "compared" and followup["prior"]["tracking"].startswith("new ids")
    assert not {lesion["tracking_uid"] for lesion in followup["lesions"]} & set(uids.values())


def test_a_prior_that_does_not_register_withholds_the_change_with_the_reason(pair_folders, tmp_path, capsys):
    current, _, model, pair = pair_folders
    noise = tmp_path / "noise"  # same patient and modality, but nothing of the head to align
    rng = np.random.default_rng(0)
    write_series(noise, rng.uniform(0, 900, SHAPE).astype(np.float32), pair.geometry, patient_id="P-1",
                 date="20250301")  # fmt: skip
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(noise), "--model", str(model), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    followup = json.loads((out / "results.json").read_text())["followup"]
    assert followup["status"] == "withheld" and followup["reason"].startswith("registration ")
    assert followup["counts"] is None and followup["lesions"] == []
    assert f"change withheld: {followup['reason']}" in captured.out
    assert "current lesion load" in captured.out and "(no change given)" in captured.out


def test_a_prior_folder_of_unreadable_files_gives_no_prior_with_the_reason(pair_folders, tmp_path, capsys):
    current, _, model, _ = pair_folders
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x08\x00")
    out = tmp_path / "out"
    assert _run(["segment", str(current), "--prior", str(garbage), "--model", str(model), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "prior: skipped a.dcm [" in captured.err
    assert "follow-up: no prior (none of the prior's 1 file(s) could be read)" in captured.out
    assert json.loads((out / "results.json").read_text())["followup"]["status"] == "no_prior"
