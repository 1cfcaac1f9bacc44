"""A model runs only on the images it was made for: the manifest's ``applies_to`` against real DICOM files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from scanedge.demo.assets import demo_manifest
from scanedge.errors import ManifestInvalidError, NotAnImageError, OutOfScopeError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.scope import check_scope, require_scope
from scanedge.imaging.slices import Slice, SliceAcquisition, SliceGeometry, SliceIdentity
from scanedge.manifest import AppliesTo, Manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import dicom_file, simple_manifest
from tests.imaging.dicom.test_hostile import saved

DEMO_SCOPE = demo_manifest().applies_to


@pytest.fixture(scope="module")
def demo_pipe():
    with Pipeline.open() as pipe:
        yield pipe


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("CT_small.dcm", "modality CT"),  # a CT slice: vertebra-like cortex became "lesions" with p=1.00
        ("US1_J2KR.dcm", "modality US, photometric YBR_RCT"),  # colour ultrasound, JPEG 2000
        ("US1_UNCR.dcm", "modality US, photometric RGB"),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", "body part ABDOMEN"),  # an MR, but not of the brain
    ],
)
def test_the_demo_model_refuses_real_images_it_was_not_made_for(demo_pipe, name, why):
    with pytest.raises(OutOfScopeError) as caught:
        demo_pipe.run(slices_from_dicom(dicom_file(name))[0])
    message = caught.value.message
    assert caught.value.code == "OUT_OF_SCOPE"
    assert "made for MR images (body part BRAIN or HEAD" in message, message
    assert f"this slice has {why}" in message, message
    assert "--ignore-scope" in message


def test_a_segmentation_object_is_not_an_image_at_all(demo_pipe):
    with pytest.raises(NotAnImageError, match="Segmentation Storage"):
        demo_pipe.run(open(dicom_file("liver.dcm"), "rb").read())


def test_brain_mr_is_in_scope_and_the_result_says_so(demo_pipe):
    result = demo_pipe.run(slices_from_dicom(dicom_file("emri_small.dcm"))[0])  # MR, body part HEAD
    assert result.scope.status == "in"
    assert set(result.scope.tested) == {"modality", "body part", "photometric"}
    assert result.to_dict()["scope"] == {"status": "in", "detail": ""}


def test_ignore_scope_segments_anyway_and_the_result_states_it(demo_pipe):
    ct = slices_from_dicom(dicom_file("CT_small.dcm"))[0]
    result = demo_pipe.run(ct, ignore_scope=True)
    assert result.scope.status == "outside" and "modality CT" in result.scope.detail
    assert result.to_dict()["scope"]["status"] == "outside"


def test_raw_pixels_without_attributes_pass_untested_and_say_unchecked(demo_pipe):
    result = demo_pipe.run(np.zeros((64, 64), np.int16))
    assert result.scope.status == "unchecked" and result.scope.tested == ()


def test_raw_pixels_carrying_a_modality_are_checked_like_dicom(demo_pipe):
    ct = Slice.from_array(np.zeros((64, 64), np.int16), identity=SliceIdentity(modality="ct"))
    with pytest.raises(OutOfScopeError, match="this slice has modality CT"):
        demo_pipe.run(ct)


def _slice(**acquisition) -> Slice:
    geometry = acquisition.pop("geometry", SliceGeometry())
    modality = acquisition.pop("modality", "MR")
    return Slice.from_array(
        np.zeros((8, 8), np.uint8),
        geometry=geometry,
        identity=SliceIdentity(modality=modality),
        acquisition=SliceAcquisition(**acquisition),
    )


def test_each_rule_is_tested_only_against_attributes_the_slice_carries():
    rules = AppliesTo(
        modalities=("MR",),
        image_type=("ORIGINAL", "PRIMARY"),
        series_description=r"flair",
        slice_thickness_mm=(1, 6),
        pixel_spacing_mm=(0.5, 1.5),
    )
    assert check_scope(rules, _slice()).tested == ("modality",)
    good = _slice(
        image_type=("ORIGINAL", "PRIMARY", "M"),
        series_description="AX T2 FLAIR",
        geometry=SliceGeometry(pixel_spacing=(0.9, 0.9), slice_thickness=3.0),
    )
    assert check_scope(rules, good).status == "in"
    for change, why in (
        ({"image_type": ("DERIVED", "PRIMARY")}, "image type without ORIGINAL"),
        ({"series_description": "AX T1 MPRAGE"}, "series description that does not match"),
        ({"geometry": SliceGeometry(slice_thickness=10.0)}, "slice thickness 10 mm"),
        ({"geometry": SliceGeometry(pixel_spacing=(0.9, 2.0))}, "pixel spacing 0.9 x 2 mm"),
    ):
        verdict = check_scope(rules, _slice(**change))
        assert verdict.status == "outside" and why in verdict.detail, (change, verdict)


def test_a_model_without_scope_accepts_everything_unchecked():
    assert check_scope(AppliesTo(), _slice(modality="CT")).status == "unchecked"


def test_the_refusal_never_quotes_free_text_or_undefined_terms():
    """Series descriptions and odd body parts are typed by people: they may hold a name."""
    rules = AppliesTo(body_parts=("BRAIN",), series_description="^flair")
    odd = _slice(body_part="doe^john", series_description="DOE^JOHN head")
    with pytest.raises(OutOfScopeError) as caught:
        require_scope(rules, odd, "m@1")
    assert "JOHN" not in caught.value.message.upper(), caught.value.message
    assert "(not a defined term)" in caught.value.message


def test_dicom_decoding_fills_the_acquisition_record_without_patient_data():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.BodyPartExamined = "BRAIN"
    ds.SeriesDescription = "AX FLAIR\x00\x1b[31m"
    ds.SeriesNumber = 7
    (s,) = slices_from_dicom(saved(ds))
    expected = SliceAcquisition("BRAIN", ("DERIVED", "SECONDARY", "OTHER"), "MONOCHROME2", 7, "AX FLAIR[31m")
    value = ds.ScanningSequence
    sequence = ((value,) if isinstance(value, str) else tuple(value), str(ds.get("SequenceName", "")), "")
    assert (s.acquisition.scanning_sequence, s.acquisition.sequence_name, s.acquisition.contrast_agent) == sequence
    assert dataclasses.replace(s.acquisition, scanning_sequence=(), sequence_name="") == expected
    assert "PatientName" not in repr(s) and str(ds.PatientName) not in repr(s)


@pytest.mark.parametrize(
    ("applies_to", "problem"),
    [
        ({"modalities": "MR"}, "list of DICOM code strings"),
        ({"modalities": ["M-R"]}, "not a DICOM code string"),
        ({"series_description": "(unclosed"}, "not a regular expression"),
        ({"pixel_spacing_mm": [2, 1]}, "min <= max"),
        ({"slice_thickness_mm": [1, float("inf")]}, "finite"),
        ({"colour": ["MR"]}, "unknown key"),
    ],
)
def test_invalid_scopes_are_refused_naming_the_field(applies_to, problem):
    data = simple_manifest().to_dict()
    data["applies_to"] = applies_to
    with pytest.raises(ManifestInvalidError, match=problem):
        Manifest.from_dict(data)


def test_manifests_without_a_scope_stay_as_they_were():
    plain = simple_manifest()
    assert "applies_to" not in plain.to_dict() and "not_for_clinical_use" not in plain.to_dict()
    scoped = plain.replace(applies_to=AppliesTo(modalities=("mr",)), not_for_clinical_use=True)
    again = Manifest.from_json(scoped.to_json())
    assert again == scoped and again.applies_to.modalities == ("MR",)


def test_the_shipped_demo_model_declares_brain_mr_and_not_for_clinical_use(demo_pipe):
    assert demo_pipe.manifest.applies_to == DEMO_SCOPE
    assert DEMO_SCOPE.modalities == ("MR",) and "BRAIN" in DEMO_SCOPE.body_parts
    assert demo_pipe.manifest.not_for_clinical_use
