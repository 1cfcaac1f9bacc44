"""The fast DICOM reader gives exactly what the pydicom path gives, or steps aside.

Every file of pydicom's test data and of the pydicom-data package is read both ways; so are real files
with one element rewritten into each unusual form a value can take, and seeded byte mutations. Where the
fast reader answers, pixels, geometry, rescale, window and identity must be identical to the pydicom
path's; where the pydicom path refuses an object, the fast reader must have stepped aside (so the typed
error is the pydicom path's, word for word).
"""

import io
import random
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from scanedge.errors import ScanedgeError
from scanedge.imaging.dicom import encode_dicom, slices_from_dicom
from scanedge.imaging.dicom.decode import fast_slices
from scanedge.imaging.dicom.fast import fast_dataset
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceGeometry, SliceIdentity
from tests.conftest import dicom_file
from tests.imaging.dicom.test_mutations import mutate, seed


def _all_test_files() -> list[Path]:
    from pydicom.data import get_testdata_files

    return sorted(p for p in map(Path, set(get_testdata_files("**/*"))) if p.is_file())


def outcome(read, data: bytes):
    """What a reader makes of ``data``: each slice's values, or the error's class, code and message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slices = read(data)
        except ScanedgeError as exc:
            return type(exc).__name__, exc.code, exc.message
    return [
        (
            s.pixels.dtype,
            s.pixels.shape,
            s.pixels.tobytes(),
            s.geometry,
            s.identity,
            s.rescale_slope,
            s.rescale_intercept,
            s.window_center,
            s.window_width,
            s.acquisition,
        )
        for s in slices
    ]


def fast(data: bytes):
    return fast_slices(data, DEFAULT_LIMITS, 4096, "DICOM bytes")


def via_pydicom(data: bytes):
    return slices_from_dicom(data, fast=False)


def test_every_pydicom_data_file_reads_the_same_both_ways():
    files = _all_test_files()
    assert len(files) > 200  # pydicom's own test files and the pydicom-data package
    taken = []
    for path in files:
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answered = fast(data)
        if answered is None:
            continue  # the object goes through pydicom: one code path, nothing to compare
        taken.append(path.name)
        assert outcome(lambda _, got=answered: got, data) == outcome(via_pydicom, data), path.name
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm"} <= set(taken)
    assert len(taken) >= 45, taken


@cache
def _ct_with(keyword: str, raw: bytes) -> bytes:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    tag = tag_for_keyword(keyword)
    if len(raw) % 2:
        raw += b" "
    ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(raw), raw, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


NUMBERS = [b"1e999", b"-1e999", b"nan", b"inf", b" 1.5 ", b"+1", b"-0", b"1.", b".5", b"1e5", b"00012", b"1\\2",
           b" 12", b"+12", b"1.0", b"99999999999", b"0", b"1\\", b"\\1", b"1.5\\2.5\\3.5", b"1e-400", b"  ", b"0x10",
           b"1_0", b"2e308"]  # fmt: skip
TEXTS = [b"1.2.3", b"1.2.3\0", b" 1.2.3", b"a b", b"bench", b"1\\2", b"\0\0", b"  ", b"x\0y", b"MONOCHROME1",
         b"monochrome2", b" MONOCHROME2", b"MONOCHROME2\0", b"MR\\CT", b"\xe9", b"ORIGINAL\\PRIMARY\\AXIAL",
         b"ORIGINAL\\\\AXIAL", b"AX FLAIR", b"AX FLAIR  ", b" AX", b"12", b" 7 ", b"", b"BRAIN", b"x" * 70,
         b"DERIVED \\PRIMARY\\AXIAL ", b"A\\\\B", b"A\\ B", b"A\\", b"WHOLE BODY", b"lower"]  # fmt: skip


@pytest.mark.parametrize(
    "keyword",
    ["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "PixelSpacing", "SliceThickness",
     "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "InstanceNumber", "NumberOfFrames"],
)  # fmt: skip
def test_numbers_in_every_form_read_the_same_both_ways(keyword):
    taken = 0
    for raw in NUMBERS:
        data = _ct_with(keyword, raw)
        taken += fast(data) is not None
        assert outcome(slices_from_dicom, data) == outcome(via_pydicom, data), raw
    assert taken  # the plain forms take the fast path


@pytest.mark.parametrize(
    "keyword",
    ["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "PhotometricInterpretation", "ImageType",
     "BodyPartExamined", "SeriesDescription", "SeriesNumber"],
)  # fmt: skip
def test_texts_in_every_form_read_the_same_both_ways(keyword):
    for raw in TEXTS:
        data = _ct_with(keyword, raw)
        assert outcome(slices_from_dicom, data) == outcome(via_pydicom, data), raw


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm"])
def test_mutated_files_read_the_same_both_ways(name):
    rng = random.Random(name)
    base = seed(name)
    taken = 0
    for _ in range(150):
        data = mutate(base, rng)
        taken += fast(data) is not None
        assert outcome(slices_from_dicom, data) == outcome(via_pydicom, data)
    assert taken > 10


def test_the_pixels_are_a_read_only_view_of_the_bytes_received():
    data = bytearray(encode_dicom(Slice.from_array(np.arange(64 * 48, dtype=np.int16).reshape(64, 48))))
    (s,) = slices_from_dicom(memoryview(data))
    assert np.shares_memory(s.pixels, np.frombuffer(data, np.uint8))
    assert not s.pixels.flags.writeable
    np.testing.assert_array_equal(s.pixels, np.arange(64 * 48).reshape(64, 48))


def test_a_console_slice_takes_the_fast_path_with_its_geometry_and_identity():
    pixels = (np.arange(512 * 512, dtype=np.int32) % 4000 - 1000).astype(np.int16).reshape(512, 512)
    original = Slice.from_array(
        pixels,
        geometry=SliceGeometry(pixel_spacing=(0.5, 0.5), slice_thickness=3.0, image_position=(1.0, 2.0, 3.5)),
        identity=SliceIdentity(series_uid="1.2.3", sop_instance_uid="1.2.3.4", instance_number=7, modality="MR"),
        rescale_slope=2.0,
        rescale_intercept=-1024.0,
        window_center=40.0,
        window_width=400.0,
    )
    data = encode_dicom(original)
    ds = fast_dataset(data, len(data))
    assert ds is not None and fast(data) is not None
    (s,) = slices_from_dicom(data)
    np.testing.assert_array_equal(s.pixels, pixels)
    assert s.geometry == original.geometry
    assert s.identity == SliceIdentity(
        series_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        instance_number=7,
        frame_index=0,
        modality="MR",
        study_uid=s.identity.study_uid,  # a new one, the encoder's
    )
    assert s.identity.study_uid
    assert (s.rescale_slope, s.rescale_intercept, s.window_center, s.window_width) == (2.0, -1024.0, 40.0, 400.0)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",  # big endian
        "image_dfl.dcm",  # deflated
        "MR_small_RLE.dcm",  # compressed
        "eCT_Supplemental.dcm",  # functional groups
        "SC_rgb.dcm",  # colour
        "ExplVR_LitEndNoMeta.dcm",  # no preamble or file meta
    ],
)
def test_anything_but_the_simple_case_is_left_to_pydicom(name):
    assert fast(Path(dicom_file(name)).read_bytes()) is None


def test_objects_over_the_size_limit_are_left_to_the_full_reader():
    data = Path(dicom_file("CT_small.dcm")).read_bytes()
    assert fast_dataset(data, len(data)) is not None
    assert fast_dataset(data, len(data) - 1) is None
