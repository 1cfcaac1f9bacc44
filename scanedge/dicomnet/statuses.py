"""C-STORE response statuses (DICOM PS3.4 B.2.3, PS3.7 C) for each typed failure, with a short comment.

The status tells the sending device what happened in the terms it understands; the Error Comment
(0000,0902, at most 64 characters) carries scanedge's stable error code and the start of its message,
which never holds patient data. The full reason goes to the log.
"""

from __future__ import annotations

from typing import Any

from scanedge.errors import ScanedgeError
from scanedge.safe_text import printable

__all__ = ["STATUS_FOR_CODE", "SUCCESS", "status_dataset", "status_for"]

SUCCESS = 0x0000
#: scanedge error code -> C-STORE status. Anything not listed is 0x0110 (Processing failure).
STATUS_FOR_CODE = {
    # Refused: SOP class not supported (an object the node does not segment)
    "UNSUPPORTED_SOP_CLASS": 0x0122,
    "NOT_AN_IMAGE": 0x0122,
    "OUT_OF_SCOPE": 0x0122,  # the model scope guard's refusal, where a manifest declares a scope
    # Refused: out of resources (too large to take, or the node is full or busy)
    "IMAGE_TOO_LARGE": 0xA700,
    "OUT_OF_RESOURCES": 0xA700,
    "SPOOL_FAILED": 0xA700,  # the image could not be made durable (disk full, I/O error): never Success
    # Error: cannot understand (the object or its pixels cannot be read)
    "NOT_DICOM": 0xC000,
    "BAD_DICOM": 0xC000,
    "NO_PIXEL_DATA": 0xC000,
    "CODEC_UNAVAILABLE": 0xC000,
    "UNSUPPORTED_PHOTOMETRIC": 0xC000,
    "INVALID_SLICE": 0xC000,
    "SERIES_CONFLICT": 0xC000,  # another patient or study than the rest of its series
    "NO_FRAME_GEOMETRY": 0xC000,  # a multi-frame image no SEG can reference frame by frame
}
PROCESSING_FAILURE = 0x0110


def status_for(error: ScanedgeError) -> int:
    """The C-STORE status that answers ``error``."""
    return STATUS_FOR_CODE.get(error.code, PROCESSING_FAILURE)


def status_dataset(status: int, comment: str = "") -> Any:
    """A status the event handler returns: the code, and an Error Comment when there is one."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = printable(comment).replace("\\", " ")[:64]  # LO: no backslash, 64 characters
    return ds
