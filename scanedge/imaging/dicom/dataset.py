"""DICOM bytes or a file -> a pydicom Dataset, bounded before it is trusted.

The file's size is capped before it is parsed. A Deflated dataset is inflated by scanedge itself,
lazily and element by element, within :attr:`SliceLimits.max_decoded_bytes`: pydicom would inflate it
whole, and 1 MB of deflated zeros is 1 GiB. The file meta is walked first; only an object whose meta is
plain Explicit VR Little Endian without a Deflated transfer syntax is handed to pydicom unguarded (the
hot path), anything else is read through a guard that stops pydicom's own inflation and bounds its
reads. Whatever pydicom raises on malformed bytes becomes a :class:`NotDicomError` or
:class:`DicomError` naming the file, never the exception's text; pydicom's own warnings and log records,
which quote element values, are dropped while scanedge reads an object (:mod:`.quiet`).

What reading bytes into a Dataset needs goes here; what is done with a Dataset's values, in :mod:`.decode`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

from scanedge.errors import DicomError, ImageTooLargeError, NotDicomError, ScanedgeError
from scanedge.imaging.dicom.quiet import pydicom_quiet
from scanedge.imaging.dicom.tags import PIXEL_TAGS, int_attr, pixel_keyword, vr_lengths
from scanedge.imaging.slices import DEFAULT_LIMITS, SliceLimits

__all__ = ["MAX_HEADER_BYTES", "DicomSource", "read_dataset", "source_name"]

DicomSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Any  # Any: a pydicom Dataset

#: Room for everything in a DICOM object except its pixels. Generous: an enhanced multi-frame header
#: with thousands of per-frame functional groups stays well under it.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Elements after the Pixel Data (padding, signatures) in a Deflated dataset.
_MAX_TRAILER_BYTES = 64 * 1024
#: Reads pydicom may make while parsing one guarded or inflated object (one to three per data element):
#: far above any real header, it bounds what a flood of tiny elements can cost to about a second.
_MAX_READS = 1 << 20


class _TooManyReads(Exception):
    """More reads than :data:`_MAX_READS`: a flood of tiny data elements, not a header."""


class _DeflatedStream(Exception):
    """pydicom asked for the rest of the file in one read: it is about to inflate a Deflated dataset."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _ReadGuard:
    """What pydicom reads from when the file meta is not plainly safe (or to diagnose a missing Pixel Data).

    pydicom reads everything with explicit sizes except the deflated remainder of a Deflated dataset,
    which it would inflate in one unbounded ``zlib.decompress``; that one read raises instead, so
    :func:`_read_deflated` can inflate it within the limits. Reads are counted, and a short one (the
    object ends inside an element, which pydicom only warns about) is remembered.
    """

    reads = 0
    short = False  # a read returned some, but not all, of what pydicom asked for: the object is truncated

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise _DeflatedStream(self.tell())  # type: ignore[attr-defined]
        self.reads += 1
        if self.reads > _MAX_READS:
            raise _TooManyReads
        data: bytes = super().read(size)  # type: ignore[misc]
        if 0 < len(data) < size:
            self.short = True
        return data


class _GuardedBytes(_ReadGuard, io.BytesIO):
    pass


class _GuardedFile(_ReadGuard, io.BufferedReader):
    pass


class _PlainBytes(io.BytesIO):
    """An object whose file meta was checked (:func:`_plain_file_meta`): read at full speed."""

    short = False


class _PlainFile(io.BufferedReader):
    short = False


class _Inflater:
    """A read-only file over a raw deflate stream: inflated only as far as it is read, never past ``limit``.

    pydicom reads element by element, so a bomb is refused after the few bytes that show what it is
    (an element declared larger than the limit is refused before any of it is inflated), and memory
    never holds more than ``limit`` inflated bytes.
    """

    _CHUNK = 64 * 1024

    def __init__(self, source: Any, limit: int, where: str) -> None:
        self._source = source
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()
        self._pos = 0
        self.limit = limit
        self.where = where
        self.reads = 0
        self.short = False

    def _inflate_to(self, end: int) -> None:
        if end - self.limit > self._CHUNK:  # a read this far past the limit cannot end within it
            self._too_large()
        target = min(end, self.limit + 1)
        while len(self._data) < target and not self._inflater.eof:
            chunk = self._inflater.unconsumed_tail or self._source.read(self._CHUNK)
            out = self._inflater.decompress(chunk, target - len(self._data))
            if not out and not chunk:
                break  # no input left and nothing pending: the stream ends here
            self._data += out
        if len(self._data) > self.limit:
            self._too_large()

    def _too_large(self) -> None:
        raise ImageTooLargeError(
            f"{self.where}: the Deflated dataset inflates to more than {self.limit} bytes, more than its header "
            "and the pixels its attributes declare (within SliceLimits.max_decoded_bytes) can take"
        )

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > _MAX_READS:
            raise _TooManyReads
        start = self._pos
        end = self.limit + 1 if size is None or size < 0 else start + size
        self._inflate_to(end)
        out = bytes(self._data[start:end])
        if size is not None and 0 < len(out) < size:
            self.short = True
        self._pos = start + len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos}.get(whence)
        if base is None:
            raise io.UnsupportedOperation("an inflated DICOM stream seeks from its start or its position only")
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _HeaderGuard:
    """``stop_when`` for the top level of an inflated dataset.

    Top-level tags must ascend (PS3.5 7.1), which turns a flood of repeated elements (what a run of
    zeros decodes to) away at its second element; and reading stops at the pixel data, so that its
    declared size is checked before a byte of it is inflated.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.last = -1
        self.calls = 0
        self.pixel_length: int | None = None

    def __call__(self, tag: int, vr: str | None, length: int) -> bool:
        # pydicom may ask twice about the first element (once to guess the VR encoding)
        if tag <= self.last and not (self.calls == 1 and tag == self.last):
            raise DicomError(f"{self.where}: the inflated dataset's data elements are out of order or repeated")
        self.last, self.calls = tag, self.calls + 1
        if tag in PIXEL_TAGS.values():
            self.pixel_length = length
            return True
        return False


def source_name(source: DicomSource) -> str:
    """What an error calls the source: the file's name, never its directory (or what kind of thing it is)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "DICOM bytes"
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return "the DICOM dataset"


def read_dataset(source: DicomSource, *, limits: SliceLimits = DEFAULT_LIMITS) -> Any:
    """Parse DICOM bytes or a file into a pydicom Dataset, mapping pydicom's failures to scanedge errors.

    A file that cannot be opened raises the ``OSError`` (``FileNotFoundError``, ...) as it is.
    """
    from pydicom.dataset import Dataset

    if isinstance(source, Dataset):
        return source
    with pydicom_quiet():
        return _read(source, source_name(source), limits)


def _read(source: DicomSource, where: str, limits: SliceLimits) -> Any:
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = memoryview(source).nbytes
        if size < 8:
            raise NotDicomError(f"{size} bytes is too short to be a DICOM object")
        _check_size(size, where, limits)
        plain = _plain_file_meta(memoryview(source)[:_META_SCAN_BYTES].tobytes())

        def reader(guarded: bool) -> Any:
            return (_GuardedBytes if guarded else _PlainBytes)(source)

    else:
        path = os.fspath(source)
        raw = io.FileIO(path, "r")
        try:
            _check_size(os.fstat(raw.fileno()).st_size, where, limits)
            plain = _plain_file_meta(raw.read(_META_SCAN_BYTES))
            raw.seek(0)
        except BaseException:
            raw.close()
            raise

        unread = [raw]

        def reader(guarded: bool) -> Any:
            return (_GuardedFile if guarded else _PlainFile)(unread.pop() if unread else io.FileIO(path, "r"))

    with reader(not plain) as fp:
        ds = _parse(fp, where, limits)
    if plain and pixel_keyword(ds) is None:
        with reader(True) as fp:  # read again, guarded, to tell a truncated image from an object without one
            ds = _parse(fp, where, limits)
    return ds


def _check_size(size: int, where: str, limits: SliceLimits) -> None:
    if size > limits.max_decoded_bytes + MAX_HEADER_BYTES:
        raise ImageTooLargeError(
            f"{where}: {size} bytes is more than a DICOM object within the limits can hold "
            f"(SliceLimits.max_decoded_bytes is {limits.max_decoded_bytes})"
        )


#: How much of the start of a file is scanned for its file meta information.
_META_SCAN_BYTES = 16 * 1024


def _plain_file_meta(head: bytes) -> bool:
    """True when the file meta is plain Explicit VR Little Endian and names no Deflated transfer syntax.

    Then pydicom reads the meta exactly as this walk does and will not inflate anything, and it may read
    the object unguarded (the hot path). Anything unusual (an unknown VR, a meta longer than ``head``, a
    Deflated UID anywhere in the Transfer Syntax UID) answers False, and the object is read guarded.
    """
    known, long_length = vr_lengths()
    pos, end = (132 if head[128:132] == b"DICM" else 0), len(head)
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(head, pos)
        if group != 2:
            return True
        vr = head[pos + 4 : pos + 6]
        if vr not in known:
            return False
        if vr in long_length:
            if pos + 12 > end:
                return False
            start, length = pos + 12, _U32.unpack_from(head, pos + 8)[0]
        else:
            start, length = pos + 8, _U16.unpack_from(head, pos + 6)[0]
        pos = start + length
        if pos > end or (element == 0x0010 and _DEFLATED_UID in head[start:pos]):
            return False
    return pos == end < _META_SCAN_BYTES  # the meta fills the whole (short) object: nothing to inflate


_TAG, _U16, _U32 = struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<L")
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"


def _parse(fp: Any, where: str, limits: SliceLimits) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            try:
                ds = pydicom.dcmread(fp)
            except InvalidDicomError:
                # a bare dataset without the 128-byte preamble is legal on the wire: accept it only when it
                # starts with a group 0x0002 or 0x0008 tag, so random bytes are still refused
                fp.seek(0)
                if fp.read(2) not in (b"\x02\x00", b"\x08\x00"):
                    raise
                fp.seek(0)
                ds = pydicom.dcmread(fp, force=True)
        except _DeflatedStream as deflated:
            ds, short = _read_deflated(fp, deflated.offset, where, limits)
        else:
            short = fp.short
    except ScanedgeError:
        raise
    except _TooManyReads as exc:
        raise DicomError(
            f"{where}: parsing stopped after {_MAX_READS} reads: far more data elements than any image has"
        ) from exc
    except InvalidDicomError as exc:
        raise NotDicomError(f"{where} is not DICOM (no 'DICM' prefix and no recognisable dataset)") from exc
    except zlib.error as exc:
        raise NotDicomError(f"{where}: the Deflated dataset is not a valid deflate stream") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(f"{where}: parsing the DICOM object needs more memory than is available") from exc
    except Exception as exc:  # pydicom raises whatever its parser hits: struct.error, OSError, ValueError, ...
        raise NotDicomError(
            f"{where} is truncated or corrupt and cannot be parsed ({type(exc).__name__} while reading its "
            "data elements)"
        ) from exc
    if short and pixel_keyword(ds) is None:
        # pydicom drops an element it cannot read to the end (a pixel stream cut short) with a warning
        raise DicomError(f"{where} is truncated: it ends inside a data element, so its pixels cannot be read")
    return ds


def _read_deflated(fp: Any, offset: int, where: str, limits: SliceLimits) -> tuple[Any, bool]:
    """The dataset of a Deflated Explicit VR Little Endian object, inflated within the limits.

    Also says whether the inflated stream ended inside a data element.
    """
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset as read_elements

    fp.seek(0)
    head = pydicom.dcmread(io.BytesIO(fp.read(offset)), force=True)  # preamble and file meta, nothing inflated
    fp.seek(offset)
    inflater: Any = _Inflater(fp, MAX_HEADER_BYTES, where)  # a file for pydicom's purposes
    guard = _HeaderGuard(where)
    ds = read_elements(inflater, is_implicit_VR=False, is_little_endian=True, stop_when=guard)
    if guard.pixel_length is not None:
        # the attributes read so far say how long native pixels are: inflate that much and no more
        needed = _native_pixel_bytes(ds, where)
        if guard.pixel_length == 0xFFFFFFFF:
            raise DicomError(f"{where}: a Deflated dataset cannot hold encapsulated (compressed) pixel data")
        if guard.pixel_length > limits.max_decoded_bytes:
            raise ImageTooLargeError(
                f"{where}: the Pixel Data declares {guard.pixel_length} bytes, over the limit of "
                f"{limits.max_decoded_bytes} (SliceLimits.max_decoded_bytes)"
            )
        if guard.pixel_length > needed + _MAX_TRAILER_BYTES:
            raise DicomError(
                f"{where}: the Pixel Data declares {guard.pixel_length} bytes, but the image attributes need {needed}"
            )
        inflater.limit = inflater.tell() + 12 + guard.pixel_length + _MAX_TRAILER_BYTES
        ds.update(
            read_elements(
                inflater, is_implicit_VR=False, is_little_endian=True, parent_encoding=ds.original_character_set
            )
        )
    out = FileDataset(where, ds, head.preamble, head.file_meta, is_implicit_VR=False, is_little_endian=True)
    out.set_original_encoding(False, True, ds.original_character_set)
    return out, inflater.short


def _native_pixel_bytes(ds: Any, where: str) -> int:
    """How many bytes uncompressed pixels take by the image attributes (checked in full later)."""
    size = 1
    for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"):
        value = int_attr(ds, keyword, where, default=1 if keyword in ("NumberOfFrames", "SamplesPerPixel") else None)
        if value < 1:
            raise DicomError(f"{where}: the image attribute {keyword} is {value}")
        size *= value
    return (size + 7) // 8
