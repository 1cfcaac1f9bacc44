"""Which DICOM attributes scanedge reads, by tag, and how a value is looked up: shared by every reader.

The pydicom path (:mod:`.dataset`, :mod:`.decode`) and the fast path (:mod:`.fast`) read the same
attributes through the same lookups, so a tag that one reader starts to use belongs in :data:`TAGS` here,
where the other sees it too. Looking an element up by tag costs half of looking it up by keyword. The
VRs (and which have a 4-byte length) are here for the two walks over raw elements, the file meta check in
:mod:`.dataset` and the fast reader.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from scanedge.errors import DicomError

__all__ = ["PIXEL_TAGS", "TAGS", "attr", "int_attr", "pixel_keyword", "vr_lengths"]

#: The elements that can hold an image's pixels, by keyword.
PIXEL_TAGS = {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008, "DoubleFloatPixelData": 0x7FE00009}

#: Tags of the attributes read on the hot path: looking a tag up costs half of looking up its keyword.
TAGS = {
    "MediaStorageSOPClassUID": 0x00020002,
    "TransferSyntaxUID": 0x00020010,
    "ImageType": 0x00080008,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "Modality": 0x00080060,
    "SeriesDescription": 0x0008103E,
    "ContrastBolusAgent": 0x00180010,
    "BodyPartExamined": 0x00180015,
    "ScanningSequence": 0x00180020,
    "SequenceName": 0x00180024,
    "SliceThickness": 0x00180050,
    "ImagerPixelSpacing": 0x00181164,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "FrameOfReferenceUID": 0x00200052,
    "SliceLocation": 0x00201041,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
    "WindowCenter": 0x00281050,
    "WindowWidth": 0x00281051,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    "SharedFunctionalGroupsSequence": 0x52009229,
    "PerFrameFunctionalGroupsSequence": 0x52009230,
    "PixelData": 0x7FE00010,
}


def attr(item: Any, keyword: str, default: Any = None) -> Any:
    """``item.get(keyword, default)``, by tag."""
    elem = item.get(TAGS[keyword])
    return default if elem is None else elem.value


def int_attr(ds: Any, keyword: str, where: str, default: int | None = None) -> int:
    """An integer attribute, ``default`` when it is absent or empty; a :class:`DicomError` naming ``where``
    when it is missing without a default or is not an integer."""
    value = attr(ds, keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        if default is None:
            raise DicomError(f"{where}: the image attribute {keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(f"{where}: the image attribute {keyword} is not an integer") from None


def pixel_keyword(ds: Any) -> str | None:
    """Which of :data:`PIXEL_TAGS` the dataset holds (the first), or None when it has no pixels."""
    return next((keyword for keyword, tag in PIXEL_TAGS.items() if tag in ds), None)


@cache
def vr_lengths() -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The explicit VRs pydicom knows, and those among them with a 4-byte length."""
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

    return frozenset(v.encode() for v in STANDARD_VR), frozenset(v.encode() for v in EXPLICIT_VR_LENGTH_32)
