"""The common DICOM case read without pydicom: uncompressed little-endian grey frames, a plain header.

A console that sends DICOM usually sends exactly this: a Part-10 object in Explicit (or Implicit) VR Little
Endian with 8- or 16-bit MONOCHROME frames (usually one). Building a pydicom Dataset for it costs about a millisecond
at 512x512, most of it for elements nobody reads. This reader walks the data elements once, keeps the
~30 that :mod:`.decode` reads (the same :data:`~.tags.TAGS`), views the Pixel Data in place, and hands
the result to the same code that turns a pydicom Dataset into a slice, so every check on the values
(limits, SOP class, bit layout) is the same code on the same values.

It never decides that an object is bad: anything it does not recognise with certainty (another transfer
syntax, a value in a form pydicom might read differently, an element out of bounds, sequences nested
deeper than :data:`_MAX_DEPTH`, functional groups, float pixels, a repeated element) answers ``None``
and the object goes through pydicom, whose reader gives the typed error. Every read is bounds-checked
against the buffer, and the walk is bounded in elements and depth.
"""

from __future__ import annotations

import re
import struct
from functools import cache
from typing import Any, NamedTuple

from scanedge.imaging.dicom.tags import TAGS, vr_lengths

__all__ = ["FastDataset", "fast_dataset"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"

#: Elements the walk visits at most (a flood of tiny elements goes to pydicom's bounded reader instead).
_MAX_ELEMENTS = 20_000
#: Sequence nesting the walk follows (real headers nest 2-3 deep).
_MAX_DEPTH = 8

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_TAG_VR_LEN = struct.Struct("<HH2sH")  # explicit VR: group, element, VR, 16-bit length
_TAG_LEN = struct.Struct("<HHL")  # implicit VR, and items and delimiters in both
_U32 = struct.Struct("<L")
_U16 = struct.Struct("<H")

#: The value representation of every element kept, as the standard's dictionary gives it (an explicit VR
#: object that says otherwise goes to pydicom).
_KEPT_VR = {
    TAGS["SOPClassUID"]: b"UI",
    TAGS["SOPInstanceUID"]: b"UI",
    TAGS["Modality"]: b"CS",
    TAGS["SliceThickness"]: b"DS",
    TAGS["ImagerPixelSpacing"]: b"DS",
    TAGS["SeriesInstanceUID"]: b"UI",
    TAGS["InstanceNumber"]: b"IS",
    TAGS["ImagePositionPatient"]: b"DS",
    TAGS["ImageOrientationPatient"]: b"DS",
    TAGS["SliceLocation"]: b"DS",
    TAGS["SamplesPerPixel"]: b"US",
    TAGS["PhotometricInterpretation"]: b"CS",
    TAGS["NumberOfFrames"]: b"IS",
    TAGS["Rows"]: b"US",
    TAGS["Columns"]: b"US",
    TAGS["PixelSpacing"]: b"DS",
    TAGS["BitsAllocated"]: b"US",
    TAGS["BitsStored"]: b"US",
    TAGS["HighBit"]: b"US",
    TAGS["PixelRepresentation"]: b"US",
    TAGS["WindowCenter"]: b"DS",
    TAGS["WindowWidth"]: b"DS",
    TAGS["RescaleIntercept"]: b"DS",
    TAGS["RescaleSlope"]: b"DS",
    # what a model's scope is checked against (imaging.scope): read when present, absent when empty
    TAGS["ImageType"]: b"CS",
    TAGS["BodyPartExamined"]: b"CS",
    TAGS["SeriesNumber"]: b"IS",
    TAGS["SeriesDescription"]: b"LO",
    # what pairs and recognises the series of a multi-input model (runtime.core.pairing, manifest inputs)
    TAGS["StudyInstanceUID"]: b"UI",
    TAGS["FrameOfReferenceUID"]: b"UI",
    TAGS["ScanningSequence"]: b"CS",
    TAGS["SequenceName"]: b"SH",
    TAGS["ContrastBolusAgent"]: b"LO",
}
#: Kept elements whose empty value means the same as no element (the slice reader defaults them).
_EMPTY_IS_ABSENT = frozenset(
    {
        TAGS["ImageType"],
        TAGS["BodyPartExamined"],
        TAGS["SeriesNumber"],
        TAGS["SeriesDescription"],
        TAGS["ScanningSequence"],
        TAGS["SequenceName"],
        TAGS["ContrastBolusAgent"],
    }
)
_PIXEL_DATA = TAGS["PixelData"]
#: Elements whose presence means this is not the simple case: per-frame functional groups, float pixels.
_NOT_SIMPLE = frozenset({TAGS["SharedFunctionalGroupsSequence"], TAGS["PerFrameFunctionalGroupsSequence"]}) | {
    0x7FE00008,  # Float Pixel Data
    0x7FE00009,  # Double Float Pixel Data
}

# Text values in exactly the forms whose pydicom reading is plain (anything else goes to pydicom).
#: printable ASCII without a backslash or leading space; trailing NULs and spaces are padding
_UID = re.compile(rb"[!-\[\]-~](?:[ -\[\]-~]*[!-\[\]-~])?[\0 ]*")
_CODE = re.compile(rb"[A-Z0-9_]{1,16} ?")
#: descriptive code strings (Image Type, Body Part Examined): spaces inside, empty values between
#: backslashes, no space at the start of a value
_TERM = rb"[A-Z0-9_][A-Z0-9_ ]*"
_TERMS = re.compile(_TERM + rb"(?:\\(?:" + _TERM + rb")?)*")
#: one long string: printable ASCII without a backslash, no leading space; trailing spaces are padding
_LONG = re.compile(rb"[!-\[\]-~](?:[ -\[\]-~]{0,62}[!-\[\]-~])? *")
_NUMBER = rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_DECIMALS = re.compile(_NUMBER + rb"(?:\\" + _NUMBER + rb")*")
_INTEGER = re.compile(rb" *[+-]?[0-9]{1,10} *")


class _Unsupported(Exception):
    """Not the simple case, or not certainly well-formed: pydicom reads this object."""


class _Element(NamedTuple):
    value: Any


class _Meta:
    """The file meta information the slice reader looks at (SOP class and transfer syntax)."""

    def __init__(self, elements: dict[int, _Element]) -> None:
        self._elements = elements

    def get(self, tag: int, default: Any = None) -> Any:
        return self._elements.get(tag, default)

    def __contains__(self, tag: int) -> bool:
        return tag in self._elements


class FastDataset(_Meta):
    """The elements :mod:`.decode` reads, shaped as pydicom has them (``get(tag).value``).

    Values are what pydicom gives for the same bytes: UIDs and code strings as ``str``, decimal and integer
    strings as ``float``/``int`` (a list of them when multi-valued), US as ``int``, and the Pixel Data as a
    read-only ``memoryview`` over the caller's buffer. ``file_meta`` holds the transfer syntax (a pydicom
    ``UID``) and the media storage SOP class.
    """

    def __init__(self, elements: dict[int, _Element], file_meta: _Meta) -> None:
        super().__init__(elements)
        self.file_meta = file_meta


@cache
def _uid(text: str) -> Any:
    from pydicom.uid import UID

    return UID(text)


def fast_dataset(data: bytes | bytearray | memoryview, max_bytes: int) -> FastDataset | None:
    """The elements of a simple DICOM object (see the module's docstring), or None for pydicom to read it.

    ``max_bytes``: larger objects are left to the full reader (which refuses them with its own error).
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if view.nbytes > max_bytes or view.nbytes < 144 or view[128:132].tobytes() != b"DICM":
        return None
    try:
        return _read(view)
    except (_Unsupported, struct.error, ValueError, OverflowError, UnicodeDecodeError):
        return None


def _read(view: memoryview) -> FastDataset:
    buf = view.obj if isinstance(view.obj, bytes) and len(view.obj) == view.nbytes else view
    meta, pos = _file_meta(buf, len(view))
    syntax = meta.get(TAGS["TransferSyntaxUID"])
    if syntax is None or syntax.value not in (_EXPLICIT_LE, _IMPLICIT_LE):
        raise _Unsupported
    meta = _Meta({**meta._elements, TAGS["TransferSyntaxUID"]: _Element(_uid(syntax.value))})
    elements: dict[int, _Element] = {}
    walk = _Walk(buf, len(view), explicit=syntax.value == _EXPLICIT_LE)
    end, _ = walk.elements(pos, len(view), 0, elements)
    if end != len(view) or _PIXEL_DATA not in elements:
        raise _Unsupported
    pixels = elements[_PIXEL_DATA].value
    elements[_PIXEL_DATA] = _Element(view[pixels[0] : pixels[1]].toreadonly())
    return FastDataset(elements, meta)


def _file_meta(buf: Any, size: int) -> tuple[_Meta, int]:
    """Group 0002, always Explicit VR Little Endian; returns it and where the dataset starts."""
    known, long_length = vr_lengths()
    elements: dict[int, _Element] = {}
    pos = 132
    while pos + 8 <= size:
        group, element, vr, length = _TAG_VR_LEN.unpack_from(buf, pos)
        if group != 2:
            break
        if vr not in known:
            raise _Unsupported
        if vr in long_length:
            length = _U32.unpack_from(buf, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if length == _UNDEFINED or pos + length > size:
            raise _Unsupported
        if element in (0x0002, 0x0010):  # Media Storage SOP Class UID, Transfer Syntax UID
            if vr != b"UI":
                raise _Unsupported
            elements[0x00020000 | element] = _Element(_text(buf, pos, length, _UID).rstrip("\0 "))
        pos += length
    return _Meta(elements), pos


def _text(buf: Any, pos: int, length: int, form: re.Pattern[bytes]) -> str:
    raw = bytes(buf[pos : pos + length])
    if form.fullmatch(raw) is None:
        raise _Unsupported
    return raw.decode("ascii")


class _Walk:
    """One pass over a dataset's elements, skipping everything but the elements kept."""

    def __init__(self, buf: Any, size: int, *, explicit: bool) -> None:
        self.buf = buf
        self.size = size
        self.explicit = explicit
        self.visited = 0
        self.known, self.long_length = vr_lengths()

    def header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value position) of the element at ``pos``."""
        self.visited += 1
        if self.visited > _MAX_ELEMENTS or pos + 8 > self.size:
            raise _Unsupported
        group, element, length = _TAG_LEN.unpack_from(self.buf, pos)
        tag = group << 16 | element
        if group == 0xFFFE:  # items and delimiters have no VR, in either encoding
            return tag, None, length, pos + 8
        if not self.explicit:
            return tag, None, length, pos + 8
        _, _, vr, length = _TAG_VR_LEN.unpack_from(self.buf, pos)
        if vr not in self.known:
            raise _Unsupported
        if vr in self.long_length:
            if pos + 12 > self.size:
                raise _Unsupported
            return tag, vr, _U32.unpack_from(self.buf, pos + 8)[0], pos + 12
        return tag, vr, length, pos + 8

    def elements(self, pos: int, end: int, depth: int, kept: dict[int, _Element] | None) -> tuple[int, bool]:
        """Walk elements from ``pos`` to ``end``, or to an item delimiter inside an undefined-length item.

        ``kept`` collects the top level's kept elements (None inside sequences, whose contents are skipped).
        Returns the position after the last element (after the delimiter, if one ended the walk) and
        whether a delimiter ended it.
        """
        while pos < end:
            tag, vr, length, start = self.header(pos)
            if tag == _ITEM_END:
                if kept is not None or length != 0:
                    raise _Unsupported
                return start, True
            if tag >> 16 == 0xFFFE or (kept is not None and tag in _NOT_SIMPLE):
                raise _Unsupported  # a delimiter where a data element belongs, or not the simple case
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA or tag in _KEPT_VR or vr not in (None, b"SQ"):
                    raise _Unsupported  # encapsulated pixels, or an undefined-length UN: pydicom's job
                pos = self.sequence(start, depth + 1)
                continue
            stop = start + length
            if stop > end:
                raise _Unsupported
            if kept is not None:
                if tag == _PIXEL_DATA:
                    if tag in kept or (vr is not None and vr not in (b"OB", b"OW")):
                        raise _Unsupported
                    kept[tag] = _Element((start, stop))
                elif tag in _KEPT_VR:
                    if tag in kept:
                        raise _Unsupported
                    if length or tag not in _EMPTY_IS_ABSENT:
                        kept[tag] = _Element(self.value(tag, vr, start, length))
            pos = stop  # a defined-length sequence is skipped whole: pydicom reads it only when asked
        return pos, False

    def sequence(self, pos: int, depth: int) -> int:
        """Skip an undefined-length sequence's items; returns the position after its delimiter."""
        if depth > _MAX_DEPTH:
            raise _Unsupported
        while True:
            tag, _, length, start = self.header(pos)
            if tag == _SEQUENCE_END:
                if length != 0:
                    raise _Unsupported
                return start
            if tag != _ITEM:
                raise _Unsupported
            if length == _UNDEFINED:
                pos, delimited = self.elements(start, self.size, depth, None)
                if not delimited:
                    raise _Unsupported  # the object ended inside the item
            else:
                pos = start + length
                if pos > self.size:
                    raise _Unsupported

    def value(self, tag: int, vr: bytes | None, start: int, length: int) -> Any:
        """A kept element's value, as pydicom reads it in the plain forms; anything else is unsupported."""
        want = _KEPT_VR[tag]
        if vr is not None and vr != want:
            raise _Unsupported
        if length == 0:
            raise _Unsupported  # pydicom's empty values differ by VR and version: let it say
        if want == b"US":
            if length != 2:
                raise _Unsupported
            return _U16.unpack_from(self.buf, start)[0]
        if want == b"UI":
            return _text(self.buf, start, length, _UID).rstrip("\0 ")
        if tag == TAGS["ImageType"] or tag == TAGS["ScanningSequence"]:
            terms = _text(self.buf, start, length, _TERMS).rstrip(" ").split("\\")
            return terms[0] if len(terms) == 1 else terms
        if tag == TAGS["BodyPartExamined"]:
            return _text(self.buf, start, length, _TERMS).rstrip(" ")
        if want == b"CS":
            return _text(self.buf, start, length, _CODE).rstrip(" ")
        if want == b"LO" or want == b"SH":
            return _text(self.buf, start, length, _LONG).rstrip(" ")
        if want == b"IS":
            return int(_text(self.buf, start, length, _INTEGER))
        values = [float(v) for v in _text(self.buf, start, length, _DECIMALS).strip().split("\\")]
        return values[0] if len(values) == 1 else values
