"""The fuzz targets: one function per parser entry point, registered by name in :data:`TARGETS`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.errors import ScanedgeError

__all__ = ["DICOM_SEED_FILES", "TARGETS", "FuzzTarget"]


@dataclass(frozen=True)
class FuzzTarget:
    """``run(data)`` exercises one entry point; ``seeds()`` yields valid inputs to start mutating from.

    Attributes:
        name: how the command line and :data:`TARGETS` call it.
        run: feeds raw bytes to the entry point; any exception other than a ScanedgeError is a finding.
        seeds: valid inputs for the initial corpus.
        description: one line for ``--list``.
    """

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], Iterator[bytes]]
    description: str


def _header(data: bytes) -> None:
    from scanedge.runtime.wire.protocol import Segment, decode_request, encode, request_echo

    try:  # a SEGMENT with pixels_at (shared memory) comes without a pixel frame
        request = decode_request([data] if b"pixels_at" in data else [data, b"\0" * 16], 1 << 20)
    except ScanedgeError:
        request_echo(data)  # what an ERROR reply would echo must never fail either
        return
    encode(request)  # what was accepted can be written back
    if isinstance(request, Segment):
        from scanedge.imaging.slices import SliceLimits
        from scanedge.runtime.wire.payloads import slice_from_request

        try:
            slice_from_request(request, b"\0" * 16, SliceLimits(max_pixels=4096, max_side=4096))
        except ScanedgeError:
            pass


def _header_seeds() -> Iterator[bytes]:
    yield b'{"version":1,"type":"PING","id":1}'
    yield (
        b'{"version":1,"type":"SEGMENT","id":"c1-42","series":"1.2.3","index":7,"encoding":"raw",'
        b'"dtype":"int16","shape":[2,3],"geometry":{"pixel_spacing":[0.5,0.5]},"deadline_ms":100,'
        b'"outputs":["mask"]}'
    )
    yield (
        b'{"version":1,"type":"SEGMENT","id":7,"dtype":"int16","shape":[2,3],"outputs":["mask","overlay"],'
        b'"pixels_at":{"region":"/scanedge-c1-0","offset":0,"nbytes":12},'
        b'"outputs_at":{"mask":{"region":"/scanedge-c1-0","offset":64,"nbytes":6}}}'
    )
    yield b'{"version":1,"type":"SHM_REGISTER","id":"r1","name":"/scanedge-c1-0","size":1048576}'


def _dicom(data: bytes) -> None:
    from scanedge.imaging.dicom import slices_from_dicom
    from scanedge.imaging.dicom.decode import fast_slices
    from scanedge.imaging.slices import SliceLimits

    # small limits: the fuzzer looks for crashes and hangs, not for the cost of legitimately large images
    limits = SliceLimits(max_pixels=1024 * 1024, max_side=4096, max_decoded_bytes=16 * 1024 * 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about most mutants
        # both readers, differentially: where the fast one answers, pydicom's must answer the same
        fast = fast_slices(data, limits, 16, "DICOM bytes")
        try:
            full = slices_from_dicom(data, limits=limits, max_frames=16, fast=False)
        except ScanedgeError:
            assert fast is None, "the fast DICOM reader accepted an object the pydicom path refuses"
            return
        if fast is not None:
            _same_slices(fast, full)


def _same_slices(fast: list[Any], full: list[Any]) -> None:
    """A finding (AssertionError) unless both readers gave the same pixels, geometry, rescale, window, identity."""
    assert len(fast) == len(full), "the fast DICOM reader and pydicom disagree on the number of frames"
    for a, b in zip(fast, full):
        assert a.pixels.dtype == b.pixels.dtype and np.array_equal(a.pixels, b.pixels), "pixels differ"
        assert (a.geometry, a.identity) == (b.geometry, b.identity), "geometry or identity differs"
        assert (a.rescale_slope, a.rescale_intercept, a.window_center, a.window_width) == (
            b.rescale_slope,
            b.rescale_intercept,
            b.window_center,
            b.window_width,
        ), "rescale or window differs"


#: Small real files from pydicom's test data, one per encoding the reader handles: read when the fuzzer
#: starts (scanedge ships no copies of them).
DICOM_SEED_FILES = (
    "MR_small.dcm",  # explicit VR little endian, 16-bit signed
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated
    "SC_rgb_jpeg.dcm",  # JPEG baseline, colour
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",  # RLE, multi-frame colour
    "emri_small.dcm",  # enhanced multi-frame with functional groups
    "CT_small.dcm",
    "OBXXXX1A_rle.dcm",  # palette colour, RLE
    "MR_small_padded.dcm",  # the fast reader's case, trailing padding after the pixels
    "6293",  # a small CT of the DICOMDIR tests: sequences of undefined length, the fast reader skips them
)


def _dicom_seeds() -> Iterator[bytes]:
    from pydicom.data import get_testdata_file

    for name in DICOM_SEED_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            yield Path(str(path)).read_bytes()


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget(
            "header",
            _header,
            _header_seeds,
            "a request header frame: bounded JSON decoding, validation, the echo of a refused one, the slice",
        ),
        FuzzTarget(
            "dicom",
            _dicom,
            _dicom_seeds,
            "a DICOM object: parsing, inflating, decoding into slices; the fast reader against pydicom",
        ),
    )
}
