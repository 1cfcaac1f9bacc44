"""The sr output: the lesion SEG and the TID 1500 Measurement Report, read back with highdicom and dcmtk's dsrdump.

Comparisons are real (:func:`compare_series` on the synthetic follow-up pairs, registration included), chained
prior -> follow-up 1 -> follow-up 2 the way the node chains studies; the series the output builds from hold
real headers and packed masks as the node holds them. Real dcmtk, real highdicom readers.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanedge.demo.followup import make_pair
from scanedge.dicomnet import ListenerConfig
from scanedge.dicomnet.outputs import OutputStats, make_outputs
from scanedge.dicomnet.outputs.sr import NO_FOLLOWUP_REASON, SrConfig, SrOutput, build_lesion_seg, lesion_labels
from scanedge.dicomnet.series import ComparedSeries, HeldFrame, HeldInstance, OpenSeries, pack
from scanedge.imaging.followup import PriorVolume, SeriesComparison, compare_series
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.manifest import Manifest, load_manifest
from scanedge.models import DEMO_MODEL_PATH

needs_dsrdump = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump is not installed")


@cache
def manifest() -> Manifest:
    return load_manifest(DEMO_MODEL_PATH)[0]


def held_series(mask: np.ndarray, spacing: tuple[float, float, float], study: str, date: str) -> OpenSeries:
    """A completed series as the node holds it: one single-frame MR header per z plane, the masks packed."""
    series = OpenSeries(generate_uid())
    frame_of_reference = generate_uid()
    z, rows, cols = mask.shape
    for k in range(z):
        ds = pydicom.Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series.series_uid, frame_of_reference
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "MR", "P1", "Test^Patient", date, "1200"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, k * spacing[2]]
        ds.SliceThickness, ds.InstanceNumber, ds.SeriesNumber = spacing[2], k + 1, 3
        frame = HeldFrame((rows, cols), {manifest().name: pack(mask[k])})
        series.instances[ds.SOPInstanceUID] = HeldInstance(ds.SOPInstanceUID, ds, 1000, (frame,))
    return series


def frames_of(series: OpenSeries) -> tuple[tuple[str, int], ...]:
    return tuple((sop, 1) for sop in series.instances)  # built in z order


def as_prior(series: OpenSeries, volume: np.ndarray, comparison: SeriesComparison, date: str) -> PriorVolume:
    """A compared series as the next study's prior (its tracking volume and UIDs carry over)."""
    header = next(iter(series.instances.values())).header
    report = comparison.report
    return PriorVolume(
        str(header.StudyInstanceUID),
        series.series_uid,
        date,
        volume,
        comparison.geometry,
        report.tracking,
        dict(report.uids),
        source="test prior",
        rules="same body part",
    )


@pytest.fixture(scope="module")
def chain() -> list[tuple[OpenSeries, SeriesComparison]]:
    """prior -> follow-up 1 (lesions changed, head moved) -> follow-up 2 (the same images again)."""
    pair = make_pair(3)
    spacing = pair.geometry.spacing
    prior_series = held_series(pair.prior_mask, spacing, generate_uid(), "20240101")
    tracking, uids = initial_tracking(pair.prior_mask, spacing)
    first = compare_series(pair.prior, pair.geometry, pair.prior_mask, None)
    first = SeriesComparison(
        "no_prior",
        "first study",
        type(first.report)((), tracking, uids, 0.0, first.report.current_load_mm3),
        None,
        None,
        pair.geometry,
    )
    prior = as_prior(prior_series, pair.prior, first, "20240101")
    one = held_series(pair.current_mask, spacing, generate_uid(), "20250101")
    cmp1 = compare_series(pair.current, pair.geometry, pair.current_mask, prior)
    two = held_series(pair.current_mask, spacing, generate_uid(), "20260101")
    cmp2 = compare_series(pair.current, pair.geometry, pair.current_mask, as_prior(one, pair.current, cmp1, "20250101"))
    assert cmp1.status == cmp2.status == "compared"
    return [(prior_series, first), (one, cmp1), (two, cmp2)]


def build(series: OpenSeries, comparison: SeriesComparison | None, tmp_path: Path) -> tuple[Path | None, Path]:
    if comparison is not None:
        series.comparisons[manifest().name] = ComparedSeries(comparison, frames_of(series))
    objects, problems = SrOutput(SrConfig(device_serial_number="NODE")).build(series, manifest().name, manifest())
    assert problems == []
    paths: dict[str, Path] = {}
    for obj in objects:
        path = tmp_path / f"{obj.SOPInstanceUID}.dcm"
        obj.save_as(path, enforce_file_format=True)
        paths[obj.Modality] = path
    return paths.get("SEG"), paths["SR"]


def groups(sr: Any) -> list[Any]:
    return sr.content.get_volumetric_roi_measurement_groups()


def change_of(group: Any) -> str:
    (evaluation,) = [e for e in group.get_qualitative_evaluations() if e.name.value == "change"]
    return str(evaluation.value.value)


def test_the_sr_has_one_group_per_lesion_referencing_its_segment_with_volume_change_and_tracking_uid(chain, tmp_path):
    series, comparison = chain[1]
    seg_path, sr_path = build(series, comparison, tmp_path)
    assert seg_path is not None
    sr = hd.sr.srread(sr_path)
    seg = hd.seg.segread(seg_path)
    report = comparison.report
    found = groups(sr)
    assert len(found) == len(report.uids) and len(found) >= 3
    by_label = {lesion.label: lesion for lesion in report.lesions}
    for group in found:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (n,) = ref.referenced_segment_numbers
        lesion = by_label[n]
        assert group.tracking_identifier == f"lesion {n}" and str(group.tracking_uid) == lesion.tracking_uid
        assert seg.get_segment_description(n).tracking_uid == lesion.tracking_uid
        (volume,) = [m for m in group.get_measurements() if m.name.value == "118565006"]
        assert volume.unit.value == "mm3" and volume.value == pytest.approx(lesion.current_volume_mm3, abs=1e-3)
        assert change_of(group) == lesion.change
        if lesion.change != "new":
            (prior_volume,) = [m for m in group.get_measurements() if m.name.value == "prior-volume"]
            assert prior_volume.value == pytest.approx(lesion.prior_volume_mm3, abs=1e-3)
    assert {change_of(g) for g in found} >= {"new", "enlarging", "stable"}
    # the disappeared lesion: a group of its own with the prior's UID and volume 0
    gone = [lesion for lesion in report.lesions if lesion.change == "disappeared"]
    image_groups = sr.content.get_image_measurement_groups()
    tracked = {str(g.tracking_uid): g for g in image_groups}
    for lesion in gone:
        (volume,) = [m for m in tracked[lesion.tracking_uid].get_measurements() if m.name.value == "118565006"]
        assert volume.value == 0 and change_of(tracked[lesion.tracking_uid]) == "disappeared"
    # the model's identity in the content and in the Contributing Equipment Sequence
    (equipment,) = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "scanedge"]
    assert manifest().onnx_sha256 in equipment.ContributionDescription
    assert equipment.ManufacturerModelName == manifest().name
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SCANEDGE"


def test_the_lesion_seg_read_back_gives_the_tracking_volume_and_uids(chain, tmp_path):
    series, comparison = chain[1]
    seg_path, _ = build(series, comparison, tmp_path)
    seg = hd.seg.segread(seg_path)
    assert seg.SeriesDescription.startswith("scanedge lesions") and seg.Manufacturer == "scanedge"
    assert seg.SegmentationType == "BINARY"
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} == {series.series_uid}
    uids = {n: seg.get_segment_description(n).tracking_uid for n in seg.segment_numbers}
    assert uids == dict(comparison.report.uids)
    assert all(seg.get_segment_description(n).tracking_id == f"lesion {n}" for n in seg.segment_numbers)
    labels = seg.get_pixels_by_source_instance(
        [sop for sop, _ in frames_of(series)],
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=False,
    )
    np.testing.assert_array_equal(np.asarray(labels), comparison.report.tracking)


def test_tracking_uids_persist_across_two_follow_ups(chain, tmp_path):
    (_, first), (one, cmp1), (two, cmp2) = chain
    _, sr1 = build(one, cmp1, tmp_path)
    _, sr2 = build(two, cmp2, tmp_path)
    uids1 = {str(g.tracking_uid): change_of(g) for g in groups(hd.sr.srread(sr1))}
    uids2 = {str(g.tracking_uid): change_of(g) for g in groups(hd.sr.srread(sr2))}
    # every lesion of follow-up 1 is the same lesion (same UID) in follow-up 2, now stable
    assert set(uids1) == set(uids2) and set(uids2.values()) == {"stable"}
    # and the lesions follow-up 1 did not call new are the prior study's own
    assert {u for u, c in uids1.items() if c != "new"} <= set(first.report.uids.values())


@needs_dsrdump
def test_dsrdump_reads_the_sr_without_errors_and_shows_its_content(chain, tmp_path):
    series, comparison = chain[1]
    _, sr_path = build(series, comparison, tmp_path)
    proc = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # strict: no warning, no error
    out = proc.stdout
    assert "Comprehensive 3D SR" in out and '"Imaging Measurement Report"' in out
    for uid in comparison.report.uids.values():
        assert uid in out
    assert "(new,99SCANEDGE," in out and "(enlarging,99SCANEDGE," in out
    assert '"Referenced Segment"' in out and "(mm3,UCUM," in out and "(%,UCUM," in out
    assert '"Compared with"' in out and '"Registration"' in out and "good:" in out


def test_without_follow_up_the_held_masks_are_tracked_with_no_prior_and_the_same_uids_on_every_build(tmp_path):
    pair = make_pair(5)
    series = held_series(pair.current_mask, pair.geometry.spacing, generate_uid(), "20260101")
    first_seg, first_sr = build(series, None, tmp_path)
    assert first_seg is not None and not series.comparisons
    again, _ = SrOutput(SrConfig(device_serial_number="NODE")).build(series, manifest().name, manifest())
    sr = hd.sr.srread(first_sr)
    seg = hd.seg.segread(first_seg)
    assert {o.SOPInstanceUID for o in again} == {seg.SOPInstanceUID, sr.SOPInstanceUID}
    again_seg = next(o for o in again if o.Modality == "SEG")
    assert [s.TrackingUID for s in again_seg.SegmentSequence] == [s.TrackingUID for s in seg.SegmentSequence]
    assert {change_of(g) for g in groups(sr)} == {"not-assessed"}
    (load,) = sr.content.get_image_measurement_groups()
    texts = [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]
    assert f"no prior: {NO_FOLLOWUP_REASON}" in texts


def test_a_series_without_lesions_gets_an_sr_and_no_lesion_seg(tmp_path):
    series = held_series(np.zeros((4, 32, 32), np.uint8), (1.0, 1.0, 3.0), generate_uid(), "20260101")
    seg, sr = build(series, None, tmp_path)
    assert seg is None and groups(hd.sr.srread(sr)) == []


def test_a_series_that_is_no_volume_gets_an_sr_saying_why(tmp_path):
    series = held_series(np.ones((2, 32, 32), np.uint8), (1.0, 1.0, 3.0), generate_uid(), "20260101")
    for inst in series.instances.values():
        del inst.header.PixelSpacing  # no volume without a pixel spacing
    seg, sr_path = build(series, None, tmp_path)
    assert seg is None
    (load,) = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    texts = [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]
    assert any(t.startswith("not tracked:") for t in texts)


def test_the_sr_output_is_configured_from_the_node_and_names_lesion_classes():
    (_, sr) = make_outputs(ListenerConfig(outputs=("seg", "sr"), ae_title="NODE"))
    assert isinstance(sr, SrOutput) and sr.settings.device_serial_number == "NODE" and sr.forwarded
    assert lesion_labels(manifest()) == (1,)
    assert sr.counters(OutputStats(1, 2, 3)) == {"srs_written": 1, "sr_failures": 2, "sr_retries": 3}


def test_a_lesion_seg_read_back_is_a_prior_whose_lesions_keep_their_tracking_uids(chain, tmp_path):
    """The contract the node's follow-up relies on: the next study's prior, taken from this lesion SEG."""
    series, comparison = chain[1]
    seg_path, _ = build(series, comparison, tmp_path)
    seg = hd.seg.segread(seg_path)
    tracking = np.asarray(
        seg.get_pixels_by_source_instance(
            [sop for sop, _ in frames_of(series)],
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=False,
        ),
        dtype=np.int32,
    )
    uids = {int(n): str(seg.get_segment_description(n).tracking_uid) for n in seg.segment_numbers}
    pair = make_pair(3)
    prior = PriorVolume("1.2.3", series.series_uid, "20250101", pair.current, comparison.geometry, tracking, uids)
    again = compare_series(pair.current, pair.geometry, pair.current_mask, prior)
    assert again.status == "compared"
    assert dict(again.report.uids) == dict(comparison.report.uids)
    assert {lesion.change for lesion in again.report.lesions} == {"stable"}


def test_the_lesion_seg_of_a_multi_frame_image_maps_each_tracked_plane_to_its_source_frame(tmp_path):
    """Tracked planes in another order than the frames (z order): each segment lands on its own frame."""
    from scanedge.imaging.lesion_change import ChangeReport
    from scanedge.imaging.registration import VolumeGeometry
    from tests.dicomnet.test_listener import enhanced_mr

    header = pydicom.dcmread(enhanced_mr(tmp_path))
    del header.PixelData
    n, rows, cols = int(header.NumberOfFrames), int(header.Rows), int(header.Columns)
    empty = pack(np.zeros((rows, cols), np.uint8))
    held = HeldInstance(
        str(header.SOPInstanceUID),
        header,
        1000,
        tuple(HeldFrame((rows, cols), {manifest().name: empty}) for _ in range(n)),
    )
    series = OpenSeries(str(header.SeriesInstanceUID))
    series.instances[held.sop_instance_uid] = held
    order = list(range(n))[::-1]  # z plane k is frame n - k
    tracking = np.zeros((n, rows, cols), np.int32)
    tracking[1, 10:20, 10:20] = 1
    tracking[2, 12:18, 12:18] = 1
    tracking[n - 1, 30:40, 30:40] = 2
    uids = {1: "2.25.1001", 2: "2.25.1002"}
    report = ChangeReport((), tracking, uids, 0.0, 0.0, withheld="test")
    comparison = SeriesComparison("no_prior", "test", report, None, None, VolumeGeometry(spacing=(1.0, 1.0, 2.0)))
    tracked = ComparedSeries(comparison, tuple((held.sop_instance_uid, i + 1) for i in order))
    seg = build_lesion_seg(series, manifest().name, manifest(), tracked, SrConfig())
    path = tmp_path / "lesions.dcm"
    seg.save_as(path, enforce_file_format=True)
    back = hd.seg.segread(path)
    got = back.get_pixels_by_source_frame(
        source_sop_instance_uid=held.sop_instance_uid,
        source_frame_numbers=[i + 1 for i in order],
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=True,  # frames without a lesion are omitted, as DICOM allows
    )
    np.testing.assert_array_equal(np.asarray(got), tracking)
    assert {s.SegmentNumber: s.TrackingUID for s in back.SegmentSequence} == uids


def test_a_series_past_the_voxel_bound_is_not_tracked_without_follow_up(tmp_path, monkeypatch):
    import scanedge.dicomnet.outputs.sr as sr_module

    monkeypatch.setattr(sr_module, "MAX_VOXELS", 4 * 32 * 32 - 1)
    series = held_series(np.ones((4, 32, 32), np.uint8), (1.0, 1.0, 3.0), generate_uid(), "20260101")
    seg, sr_path = build(series, None, tmp_path)
    assert seg is None
    (load,) = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    texts = [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]
    assert "not tracked: the series has 4096 voxels; at most 4095 are tracked without follow-up" in texts


def test_a_model_without_a_lesion_class_is_logged_at_start_and_tracks_every_foreground_class(tmp_path, caplog):
    from scanedge.manifest import ClassSpec

    organs = manifest().replace(classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("liver", (0, 200, 0))))
    assert lesion_labels(organs) == ()
    with caplog.at_level(logging.WARNING, "scanedge.dicomnet"):
        SrOutput(SrConfig()).check_model("organs", organs)
    assert "no class is coded SCT 52988006 Lesion" in caplog.text and "(liver)" in caplog.text
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[1:3, 8:16, 8:16] = 1
    series = held_series(mask, (1.0, 1.0, 3.0), generate_uid(), "20260101")
    for inst in series.instances.values():  # the same masks, held under this model's name
        inst.frames[0].masks["organs"] = inst.frames[0].masks[manifest().name]
    objects, problems = SrOutput(SrConfig()).build(series, "organs", organs)
    assert problems == [] and [o.Modality for o in objects] == ["SEG", "SR"]
    assert len(objects[0].SegmentSequence) == 1


def test_withheld_change_is_stated_with_its_reason_and_no_lesion_gets_a_class(tmp_path):
    from scanedge.imaging.lesion_change import compare

    pair = make_pair(3)
    spacing = pair.geometry.spacing
    reason = "registration poor: head-mask Dice 0.5 < 0.85"
    empty = np.zeros(pair.current_mask.shape, np.int32)
    report = compare(empty, {}, pair.current_mask, spacing, withhold=reason)
    tracking, uids = initial_tracking(pair.prior_mask, spacing)
    prior = PriorVolume("1.2.3.4", "1.2.3.4.5", "20240101", pair.prior, pair.geometry, tracking, uids)
    withheld = SeriesComparison("withheld", reason, report, prior, None, pair.geometry)
    series = held_series(pair.current_mask, spacing, generate_uid(), "20260101")
    seg_path, sr_path = build(series, withheld, tmp_path)
    assert seg_path is not None
    sr = hd.sr.srread(sr_path)
    assert {change_of(g) for g in groups(sr)} == {"not-assessed"} and len(groups(sr)) == len(report.uids)
    (load,) = sr.content.get_image_measurement_groups()
    texts = [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]
    assert f"change withheld: {reason}" in texts and "prior study of 20240101, study 1.2.3.4" in texts
    names = {m.name.value for m in load.get_measurements()}
    assert names == {"lesion-load"}  # no load change, no counts: nothing was compared


def test_without_the_followup_extra_a_mask_model_is_refused_by_the_sr_output_with_the_install_hint(monkeypatch):
    """Lesions are tracked in masks (SciPy); a classifier's SR needs none of it (test_sr_scores runs one)."""
    import sys

    from scanedge.errors import ConfigError
    from tests.heads.conftest import classifier_manifest

    for name in ("scanedge.imaging.followup", "scanedge.imaging.lesion_change"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if SciPy were not installed
    (sr,) = make_outputs(ListenerConfig(outputs=("sr",)))
    sr.check_model("test-classifier", classifier_manifest())
    with pytest.raises(ConfigError, match=r"model demo has a mask\) needs scipy: pip install 'scanedge\[followup\]'"):
        sr.check_model("demo", load_manifest(DEMO_MODEL_PATH)[0])
