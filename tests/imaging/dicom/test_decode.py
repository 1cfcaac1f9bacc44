import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scanedge.errors import (
    CodecUnavailableError,
    DicomError,
    ImageTooLargeError,
    MissingPixelDataError,
    NotDicomError,
    UnsupportedPhotometricError,
)
from scanedge.imaging.dicom import read_dataset, slices_from_dicom
from scanedge.imaging.slices import SliceLimits
from tests.conftest import dicom_file


def raw(name: str) -> np.ndarray:
    return pydicom.dcmread(dicom_file(name)).pixel_array


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "modality"),
    [
        ("MR_small.dcm", (64, 64), np.int16, "MR"),
        ("MR2_UNCR.dcm", (1024, 1024), np.uint16, "MR"),
        ("693_UNCR.dcm", (512, 512), np.int16, "CT"),
    ],
)
def test_single_frame_grey_images_keep_stored_values_and_geometry(name, shape, dtype, modality):
    (s,) = slices_from_dicom(dicom_file(name))
    ds = pydicom.dcmread(dicom_file(name))
    assert s.shape == shape and s.pixels.dtype == dtype and not s.is_color
    np.testing.assert_array_equal(s.pixels, ds.pixel_array)
    assert s.identity.modality == modality
    assert s.identity.series_uid == ds.SeriesInstanceUID
    assert s.geometry.pixel_spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert s.rescale_slope == float(ds.get("RescaleSlope", 1))
    assert s.rescale_intercept == float(ds.get("RescaleIntercept", 0))


def test_ct_rescale_to_hounsfield_units_is_kept_beside_the_pixels():
    (s,) = slices_from_dicom(dicom_file("693_UNCR.dcm"))
    ds = pydicom.dcmread(dicom_file("693_UNCR.dcm"))
    hu = s.pixels * s.rescale_slope + s.rescale_intercept
    np.testing.assert_allclose(hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert (s.window_center, s.window_width) == (
        40.0,
        float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth),
    )


def test_monochrome1_radiograph_is_inverted_and_its_window_mirrored():
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    (s,) = slices_from_dicom(dicom_file("RG1_UNCR.dcm"))
    top = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(s.pixels.astype(np.int64) + ds.pixel_array, top)
    # what was displayed white (low stored value) is now high; the window follows the values
    assert s.window_center == pytest.approx(top - float(ds.WindowCenter))
    assert s.window_width == float(ds.WindowWidth)
    assert s.geometry.pixel_spacing is None  # the file says 0\0, which is no spacing at all


def test_multiframe_mr_splits_into_frames_in_order():
    slices = slices_from_dicom(dicom_file("emri_small.dcm"))
    frames = raw("emri_small.dcm")
    assert len(slices) == 10
    for i, s in enumerate(slices):
        assert s.identity.frame_index == i
        np.testing.assert_array_equal(s.pixels, frames[i])


def test_enhanced_ct_reads_per_frame_geometry_and_rescale_from_functional_groups():
    slices = slices_from_dicom(dicom_file("eCT_Supplemental.dcm"))
    assert len(slices) == 2
    s = slices[0]
    assert s.rescale_intercept == -1024.0 and s.geometry.pixel_spacing is not None
    assert s.geometry.image_position is not None and s.window_center is not None
    assert slices[0].geometry.image_position != slices[1].geometry.image_position


@pytest.mark.parametrize(
    ("name", "frames"),
    [("US1_UNCR.dcm", 1), ("SC_rgb_2frame.dcm", 2), ("SC_ybr_full_uncompressed.dcm", 1), ("OBXXXX1A_2frame.dcm", 2)],
)
def test_colour_ultrasound_becomes_rgb(name, frames):
    slices = slices_from_dicom(dicom_file(name))
    assert len(slices) == frames
    assert all(s.is_color and s.pixels.shape[2] == 3 for s in slices)


def test_palette_colour_is_expanded_through_its_lookup_table():
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(dicom_file("OBXXXX1A.dcm"))
    (s,) = slices_from_dicom(dicom_file("OBXXXX1A.dcm"))
    np.testing.assert_array_equal(s.pixels, apply_color_lut(ds.pixel_array, ds))


def test_ybr_full_is_converted_to_rgb():
    (ybr,) = slices_from_dicom(dicom_file("SC_ybr_full_uncompressed.dcm"))
    (rgb,) = slices_from_dicom(dicom_file("SC_rgb.dcm"))
    # 8-bit YBR quantisation costs a few grey levels; unconverted YBR would be off by ~100s (red is 76,85,255)
    assert np.abs(ybr.pixels.astype(int) - rgb.pixels.astype(int)).max() <= 8


@pytest.mark.parametrize(
    ("original", "compressed"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("emri_small.dcm", "emri_small_RLE.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
        ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
        ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
        ("693_UNCR.dcm", "693_J2KR.dcm"),
        ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
        ("US1_UNCR.dcm", "US1_J2KR.dcm"),
        ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
        ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
    ],
)
def test_lossless_transfer_syntaxes_give_the_uncompressed_pixels(original, compressed):
    a, b = slices_from_dicom(dicom_file(original)), slices_from_dicom(dicom_file(compressed))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.pixels, y.pixels)
        assert (x.window_center, x.rescale_slope) == (y.window_center, y.rescale_slope)


def test_jpeg_baseline_matches_dcmtks_own_decompression_within_one_grey_level():
    (a,) = slices_from_dicom(dicom_file("SC_rgb_dcmtk_+eb+cr.dcm"))
    (b,) = slices_from_dicom(dicom_file("SC_rgb_dcmtk_ebcr_dcmd.dcm"))
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 1


def test_bytes_and_a_bare_dataset_without_preamble_decode_like_the_file():
    data = Path(dicom_file("693_UNCR.dcm")).read_bytes()
    (from_file,) = slices_from_dicom(dicom_file("693_UNCR.dcm"))
    (from_bytes,) = slices_from_dicom(data)
    (bare,) = slices_from_dicom(data[132:])  # no preamble, no 'DICM'
    np.testing.assert_array_equal(from_file.pixels, from_bytes.pixels)
    np.testing.assert_array_equal(from_file.pixels, bare.pixels)


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello", b"%PDF-1.7\n" + b"x" * 500, bytes(range(256)) * 4])
def test_non_dicom_bytes_are_refused(data):
    with pytest.raises(NotDicomError):
        slices_from_dicom(data)


def test_a_png_file_is_not_dicom():
    import cv2

    _, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    with pytest.raises(NotDicomError):
        slices_from_dicom(png.tobytes())


def test_truncated_pixel_data_is_a_dicom_error():
    data = Path(dicom_file("693_UNCR.dcm")).read_bytes()
    with pytest.raises(DicomError, match="truncated"):
        slices_from_dicom(data[: len(data) // 2])


def test_truncated_header_is_refused():
    data = Path(dicom_file("693_UNCR.dcm")).read_bytes()
    with pytest.raises(DicomError):
        slices_from_dicom(data[:300])


def test_dicom_without_pixel_data_says_so():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(MissingPixelDataError, match="no Pixel Data"):
        slices_from_dicom(buf.getvalue())


def test_unsupported_photometric_interpretation_is_named():
    ds = pydicom.dcmread(dicom_file("SC_rgb.dcm"))
    ds.PhotometricInterpretation = "CMYK"
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(UnsupportedPhotometricError, match="CMYK"):
        slices_from_dicom(buf.getvalue())


def test_image_over_the_size_limit_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError):
        slices_from_dicom(dicom_file("MR2_J2KR.dcm"), limits=SliceLimits(max_pixels=512 * 512))


def test_missing_file_is_file_not_found():
    with pytest.raises(FileNotFoundError):
        read_dataset("/nonexistent/file.dcm")


def test_compressed_pixels_without_codecs_name_the_extra():
    """In a fresh interpreter where the codec plugins cannot be imported, as on a base install."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        BLOCKED = {"pylibjpeg", "libjpeg", "openjpeg", "rle", "PIL", "gdcm", "jpeg_ls", "pyjpegls"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from pydicom.data import get_testdata_file
        from scanedge.errors import CodecUnavailableError
        from scanedge.imaging.dicom import slices_from_dicom
        for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg.dcm"):
            try:
                slices_from_dicom(get_testdata_file(name))
            except CodecUnavailableError as exc:
                print("CODEC_UNAVAILABLE", exc)
        print("RLE", len(slices_from_dicom(get_testdata_file("MR_small_RLE.dcm"))))
        """
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("CODEC_UNAVAILABLE") for line in lines) == 3
    assert all("scanedge[dicom]" in line for line in lines if line.startswith("CODEC"))
    assert "RLE 1" in lines  # pydicom's own RLE decoder needs no plugin
    assert CodecUnavailableError.code == "CODEC_UNAVAILABLE"


@pytest.mark.parametrize(
    "name",
    [
        "693_UNCR.dcm",  # 14 of 16 bits, signed
        "MR2_UNCR.dcm",  # 12 of 16 bits, unsigned
        "RG3_UNCR.dcm",  # 10 of 16 bits, MONOCHROME1
        "vlut_04.dcm",  # 8 bits
        "MR_small_implicit.dcm",
        "emri_small.dcm",  # multi-frame
        "image_dfl.dcm",  # deflated
    ],
)
def test_uncompressed_greyscale_pixels_are_exactly_what_pydicom_decodes(name):
    """Native little-endian greyscale skips pydicom's pixel_array set-up; the values must not change."""
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(dicom_file(name))
    expected = pixel_array(ds)
    expected = expected[None] if expected.ndim == 2 else expected
    slices = slices_from_dicom(dicom_file(name))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = (2**ds.BitsStored - 1) - expected.astype(np.int64)
    for s, frame in zip(slices, expected, strict=True):
        assert s.pixels.dtype == np.dtype(ds.pixel_array.dtype).newbyteorder("=")
        np.testing.assert_array_equal(s.pixels, frame)


def test_the_tag_table_matches_pydicoms_dictionary():
    from pydicom.datadict import tag_for_keyword

    from scanedge.imaging.dicom.tags import TAGS

    assert {keyword: tag_for_keyword(keyword) for keyword in TAGS} == TAGS
