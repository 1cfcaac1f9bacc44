"""DICOM from a hostile or broken sender: decompression bombs, absurd attributes, corrupt codec streams, non-images.

Every case must end in a typed error (never a library exception), refused before the expensive part
(inflating, decoding) where the limits allow, and without echoing element values or raw bytes.
"""

import io
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.uid import (
    UID,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RawDataStorage,
    RTImageStorage,
)

from scanedge.errors import DicomError, FrameCountError, ImageTooLargeError, InvalidSliceError, NotAnImageError
from scanedge.imaging.dicom import invert_monochrome1, slices_from_dicom
from scanedge.imaging.slices import SliceLimits
from tests.conftest import dicom_file

MIB = 1 << 20


# --- building hostile objects ------------------------------------------------------------------------------


def _deflated_parts() -> tuple[bytes, bytes]:
    """(preamble + file meta, inflated dataset) of pydicom's Deflated Explicit VR Little Endian test image."""
    data = Path(dicom_file("image_dfl.dcm")).read_bytes()
    meta_end = 132 + 12 + pydicom.dcmread(dicom_file("image_dfl.dcm")).file_meta.FileMetaInformationGroupLength
    return data[:meta_end], zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)


def deflated(body: bytes, zero_mib: int = 0) -> bytes:
    """A Deflated object whose dataset is ``body`` followed by ``zero_mib`` MiB of zeros.

    Each MiB of zeros compresses to the same ~1 KB after a full flush, so a 1 GiB bomb costs 1 MB and
    no time to build.
    """
    head, _ = _deflated_parts()
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = c.compress(body) + c.flush(zlib.Z_FULL_FLUSH) if body else b""
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = z.compress(bytes(MIB)) + z.flush(zlib.Z_FULL_FLUSH)
    return head + stream + zeros * zero_mib + b"\x03\x00"  # an empty final block ends the stream


def explicit(tag: int, vr: bytes, length: int) -> bytes:
    """The header of an Explicit VR Little Endian element with a 4-byte length (OB, OW, UN, ...)."""
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, length)


def header_before_pixels() -> bytes:
    """The inflated dataset of the Deflated test image up to its Pixel Data (512x512, 8 bits)."""
    _, body = _deflated_parts()
    return body[: body.index(b"\xe0\x7f\x10\x00")]


def peak_memory(call) -> tuple[BaseException, int]:
    """Run ``call``, which must raise; the exception and the peak of Python allocations meanwhile."""
    tracemalloc.start()
    try:
        call()
    except Exception as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("no error raised")


def saved(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def edited(name: str, **attributes) -> bytes:
    ds = pydicom.dcmread(dicom_file(name))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return saved(ds)


# --- decompression bombs -----------------------------------------------------------------------------------


def test_a_1_mb_deflate_bomb_is_refused_without_inflating_it():
    bomb = deflated(b"", zero_mib=1024)  # 1 MB that inflates to 1 GiB of zeros
    assert len(bomb) < 1.1 * MIB
    exc, peak = peak_memory(lambda: slices_from_dicom(bomb))
    assert isinstance(exc, DicomError) and "out of order or repeated" in str(exc)
    assert peak < 8 * MIB


def test_an_element_declared_past_the_limit_is_refused_before_a_byte_of_it_is_inflated():
    bomb = deflated(explicit(0x00091010, b"OB", 1 << 30), zero_mib=1024)
    exc, peak = peak_memory(lambda: slices_from_dicom(bomb))
    assert isinstance(exc, ImageTooLargeError)
    assert peak < 8 * MIB


def test_an_undefined_length_value_stops_at_the_header_limit():
    bomb = deflated(explicit(0x00091010, b"OB", 0xFFFFFFFF), zero_mib=1024)
    exc, peak = peak_memory(lambda: slices_from_dicom(bomb))
    assert isinstance(exc, ImageTooLargeError)
    assert peak < 80 * MIB  # the 16 MiB header limit, held by the inflater and by pydicom's value buffer


@pytest.mark.parametrize(
    ("declared", "error", "message"),
    [
        (1 << 30, ImageTooLargeError, "over the limit"),  # more than max_decoded_bytes
        (64 * MIB, DicomError, "the image attributes need 262144"),  # more than 512x512 8-bit pixels
    ],
)
def test_pixel_data_declared_longer_than_allowed_is_refused_before_it_is_inflated(declared, error, message):
    bomb = deflated(header_before_pixels() + explicit(0x7FE00010, b"OB", declared), zero_mib=1024)
    exc, peak = peak_memory(lambda: slices_from_dicom(bomb))
    assert isinstance(exc, error) and message in str(exc)
    assert peak < 8 * MIB


def test_a_real_deflated_image_reads_as_pydicom_reads_it():
    reference = pydicom.dcmread(dicom_file("image_dfl.dcm")).pixel_array
    for source in (dicom_file("image_dfl.dcm"), Path(dicom_file("image_dfl.dcm")).read_bytes()):
        (s,) = slices_from_dicom(source)
        np.testing.assert_array_equal(s.pixels, reference)
    assert s.identity.sop_instance_uid == pydicom.dcmread(dicom_file("image_dfl.dcm")).SOPInstanceUID


def test_a_deflated_image_larger_than_max_decoded_bytes_is_refused():
    with pytest.raises(ImageTooLargeError, match="max_decoded_bytes"):
        slices_from_dicom(dicom_file("image_dfl.dcm"), limits=SliceLimits(max_decoded_bytes=200_000))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_or_corrupt_deflate_stream_is_a_dicom_error(cut):
    data = Path(dicom_file("image_dfl.dcm")).read_bytes()
    with pytest.raises(DicomError):
        slices_from_dicom(data[: int(len(data) * cut)])
    flipped = bytearray(data)
    flipped[400:420] = b"\xff" * 20
    with pytest.raises(DicomError):
        slices_from_dicom(bytes(flipped))


def test_a_file_larger_than_the_limits_allow_is_refused_before_it_is_parsed():
    with pytest.raises(ImageTooLargeError, match="max_decoded_bytes"):
        slices_from_dicom(bytes(17 * MIB), limits=SliceLimits(max_decoded_bytes=1000))


# --- image attributes, checked before decoding ------------------------------------------------------------


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm"])
def test_decoded_size_is_checked_against_the_limit_before_decoding(name, monkeypatch):
    import pydicom.pixels

    def must_not_decode(*args, **kwargs):
        raise AssertionError("pixels decoded although the decoded size is over the limit")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", must_not_decode)
    with pytest.raises(ImageTooLargeError, match=r"10 frame\(s\) of 64x64x1 at 16 bits decode to 81920 bytes"):
        slices_from_dicom(dicom_file(name), limits=SliceLimits(max_decoded_bytes=80_000))


@pytest.mark.parametrize(
    ("attributes", "error", "message"),
    [
        ({"BitsStored": 40}, DicomError, "BitsStored 40"),
        ({"BitsStored": 0}, DicomError, "BitsStored 0"),
        ({"HighBit": 16}, DicomError, "HighBit 16"),
        ({"BitsAllocated": 24}, DicomError, "BitsAllocated 24"),
        ({"PixelRepresentation": 2}, DicomError, "PixelRepresentation 2"),
        ({"SamplesPerPixel": 3}, DicomError, "SamplesPerPixel is 3"),
        ({"Rows": 0}, DicomError, "0x64"),
        ({"NumberOfFrames": "0"}, DicomError, "NumberOfFrames is 0"),
        ({"NumberOfFrames": "100000000"}, FrameCountError, "100000000 frames"),
        ({"Rows": 65535, "Columns": 65535}, ImageTooLargeError, "65535x65535"),
        ({"PhotometricInterpretation": "MONOCHROME1", "BitsStored": 65535}, DicomError, "BitsStored 65535"),
    ],
)
def test_absurd_image_attributes_are_refused(attributes, error, message):
    with pytest.raises(error, match=message):
        slices_from_dicom(edited("MR_small.dcm", **attributes))


@pytest.mark.parametrize("bits", [10**8, 17, 0, -1])
def test_invert_monochrome1_refuses_bits_that_do_not_fit_the_pixels(bits):
    """The raw wire path passes a client's bits_stored here; 2**(10**8) would hold the worker for seconds."""
    with pytest.raises(InvalidSliceError, match="bits_stored"):
        invert_monochrome1(np.zeros((4, 4), np.uint16), bits, 1.0, 0.0, None)
    inverted, _ = invert_monochrome1(np.zeros((4, 4), np.uint16), 16, 1.0, 0.0, None)
    assert int(inverted[0, 0]) == 65535


# --- whatever pydicom or a codec raises becomes a typed error ----------------------------------------------


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def name_in_number_of_frames() -> bytes:
    data = edited("MR_small.dcm", NumberOfFrames="12345678")
    return _replace(data, b"12345678", b"Doe^Jane")  # int() of it says: invalid literal ... 'Doe^Jane'


def unknown_transfer_syntax() -> bytes:
    data = Path(dicom_file("MR_small.dcm")).read_bytes()
    return _replace(data, b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.7\x00")


def unknown_vr() -> bytes:
    data = Path(dicom_file("MR_small.dcm")).read_bytes()
    return _replace(data, b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00UP")  # SOP Instance UID: no such VR


def odd_length_rows() -> bytes:
    data = Path(dicom_file("MR_small.dcm")).read_bytes()
    return _replace(data, b"\x28\x00\x10\x00US\x02\x00\x40\x00", b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00")


def cut_inside_a_length() -> bytes:
    data = Path(dicom_file("MR_small.dcm")).read_bytes()
    return data[: data.index(b"\xe0\x7f\x10\x00OW") + 8]  # the 4-byte length of Pixel Data is missing


def rle_with_a_stray_segment_offset() -> bytes:
    data = Path(dicom_file("MR_small_RLE.dcm")).read_bytes()
    fragment = list(generate_fragments(pydicom.dcmread(dicom_file("MR_small_RLE.dcm")).PixelData))[1]
    header = data.index(fragment[:64])
    stray = bytearray(data)
    stray[header + 8] = 0xFF  # the second segment's offset points into the first
    return bytes(stray)


def corrupt_jpeg() -> bytes:
    data = Path(dicom_file("SC_rgb_jpeg.dcm")).read_bytes()
    return _replace(data, b"\xff\xd8\xff", b"\x00\x00\xff")  # no start-of-image marker


def truncated_j2k() -> bytes:
    return Path(dicom_file("MR_small_jp2klossless.dcm")).read_bytes()[:-500]


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (name_in_number_of_frames, "BAD_DICOM", "NumberOfFrames is not an integer"),  # was: ValueError
        (unknown_transfer_syntax, "BAD_DICOM", "not a known transfer syntax"),  # was: ValueError
        (unknown_vr, "BAD_DICOM", r"\(NotImplementedError\)"),  # was: NotImplementedError
        (odd_length_rows, "BAD_DICOM", r"\(BytesLengthException\)"),  # was: BytesLengthException
        (cut_inside_a_length, "NOT_DICOM", r"\(error while reading its data elements\)"),  # was: struct.error
        (rle_with_a_stray_segment_offset, "BAD_DICOM", "RLE Lossless pixel stream is corrupt"),  # was: a Rust panic
        (corrupt_jpeg, "BAD_DICOM", "JPEG Baseline .* pixel stream is corrupt"),  # was: CODEC_UNAVAILABLE
        (truncated_j2k, "BAD_DICOM", "truncated"),  # was: NO_PIXEL_DATA
    ],
)
def test_malformed_dicom_is_a_typed_error_without_values_or_bytes(make, code, message):
    with pytest.raises(DicomError, match=message) as exc:
        slices_from_dicom(make())
    assert exc.value.code == code
    text = str(exc.value)
    assert "Doe" not in text and "Jane" not in text and "\\x" not in text and text.isprintable()


def test_a_truncated_j2k_file_is_bad_dicom_not_missing_pixels():
    with pytest.raises(DicomError, match="truncated") as exc:
        slices_from_dicom(dicom_file("emri_small_jpeg_2k_lossless_too_short.dcm"))
    assert exc.value.code == "BAD_DICOM"


def test_the_error_names_the_file(tmp_path):
    path = tmp_path / "broken-scan.dcm"
    path.write_bytes(odd_length_rows())
    with pytest.raises(DicomError, match=r"^broken-scan\.dcm: "):
        slices_from_dicom(path)


# --- objects that are not images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("liver.dcm", "Segmentation Storage"),  # a SEG with 3 frames of pixel data: must not become 3 slices
        ("liver_1frame.dcm", "Segmentation Storage"),
        ("rtdose.dcm", "RT Dose Storage"),  # a dose grid, with pixel data
        ("rtplan.dcm", "RT Plan Storage"),
        ("rtstruct.dcm", "RT Structure Set Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("reportsi.dcm", "Basic Text SR Storage"),
        ("waveform_ecg.dcm", "12-lead ECG Waveform Storage"),
        ("DICOMDIR", "Media Storage Directory Storage"),
    ],
)
def test_real_objects_that_are_not_images_are_refused_by_sop_class(name, what):
    with pytest.raises(NotAnImageError, match=f"a DICOM {what} object is not an image; nothing to segment"):
        slices_from_dicom(dicom_file(name))


@pytest.mark.parametrize(
    "sop_class",
    [
        EncapsulatedPDFStorage,
        KeyObjectSelectionDocumentStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        RawDataStorage,
    ],
)
def test_a_non_image_sop_class_is_refused_before_its_pixels_are_decoded(sop_class, monkeypatch):
    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("pixels decoded"))
    ds = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))  # pixel data that would decode, under another class
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    with pytest.raises(NotAnImageError, match=UID(sop_class).name):
        slices_from_dicom(saved(ds))


def test_rt_image_is_an_image():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTImageStorage
    (s,) = slices_from_dicom(saved(ds))
    np.testing.assert_array_equal(s.pixels, ds.pixel_array)


# --- codestreams that claim more pixels than the image has ---------------------------------------------------


def _claims(name: str, marker: bytes, at: int, fmt: str, size: int) -> bytes:
    data = Path(dicom_file(name)).read_bytes()
    i = data.index(marker) + at
    return data[:i] + struct.pack(fmt, size, size) + data[i + struct.calcsize(fmt) :]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: _claims("SC_rgb_jpeg.dcm", b"\xff\xc0", 5, ">HH", 8000), id="jpeg"),
        pytest.param(lambda: _claims("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", 5, ">HH", 8000), id="jpeg-ls"),
        pytest.param(lambda: _claims("MR_small_jp2klossless.dcm", b"\xff\x4f\xff\x51", 8, ">II", 8000), id="j2k"),
    ],
)
def test_a_codestream_claiming_more_pixels_than_the_image_is_refused_before_decoding(data):
    """The decoders allocate what the codestream header says (8000x8000 took libjpeg 5 s and 1 GB; 60000x60000
    killed the process), not what Rows and Columns say."""
    with pytest.raises(DicomError, match="declares 8000x8000 pixels") as exc:
        slices_from_dicom(data())
    assert exc.value.code == "BAD_DICOM"


def test_pydicoms_warnings_and_log_records_about_the_object_are_not_shown(tmp_path):
    """pydicom warns "Invalid value for VR IS: 'Doe^Jane'" on stderr and in the log (a server's log, with
    logging configured); while scanedge reads the object, neither may show it. In a fresh interpreter,
    as the command line runs, because pytest records warnings itself."""
    path = tmp_path / "scan.dcm"
    path.write_bytes(name_in_number_of_frames())
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG)
        from scanedge.errors import DicomError
        from scanedge.imaging.dicom import slices_from_dicom
        try:
            slices_from_dicom({str(path)!r})
        except DicomError as exc:
            print("refused:", exc.code)
        print("-- outside scanedge --", file=sys.stderr, flush=True)
        import pydicom
        pydicom.dcmread({str(path)!r}).NumberOfFrames  # pydicom's own warning, shown as before
        """
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.stdout.strip() == "refused: BAD_DICOM", out.stderr
    during, after = out.stderr.split("-- outside scanedge --")
    assert "Doe" not in during
    assert "Invalid value for VR IS: 'Doe^Jane'" in after
