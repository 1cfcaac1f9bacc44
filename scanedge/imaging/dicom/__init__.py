"""DICOM in and out of scanedge: the one place that reads and writes DICOM objects, with pydicom.

Import what you need from here (``from scanedge.imaging.dicom import slices_from_dicom``); the modules
behind it each do one part, and a new part goes beside them:

- :mod:`.dataset`: bytes or a file -> a pydicom Dataset, bounded before it is trusted (size, Deflate).
- :mod:`.fast`: the common simple case (uncompressed little-endian grey) read without pydicom.
- :mod:`.decode`: a dataset -> slices (attributes checked, pixels decoded, per-frame geometry).
- :mod:`.encode`: a slice -> a DICOM dataset or Part-10 bytes.
- :mod:`.tags`: the attributes read, by tag, and how a value is looked up (shared by both readers).
- :mod:`.quiet`: pydicom's warnings and log records (which quote values) silenced while reading.
"""

from __future__ import annotations

from scanedge.imaging.dicom.dataset import read_dataset
from scanedge.imaging.dicom.decode import SUPPORTED_PHOTOMETRIC, invert_monochrome1, slices_from_dicom, warm_up_decoding
from scanedge.imaging.dicom.encode import dataset_from_slice, encode_dicom

__all__ = [
    "SUPPORTED_PHOTOMETRIC",
    "dataset_from_slice",
    "encode_dicom",
    "invert_monochrome1",
    "read_dataset",
    "slices_from_dicom",
    "warm_up_decoding",
]
