"""Reading slices from files and folders: DICOM (any name), .npy arrays and PNG/JPEG/TIFF images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanedge.errors import InvalidSliceError, NotDicomError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.series import sort_slices
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceIdentity, SliceLimits

__all__ = ["LoadedSlice", "is_dicom_file", "iter_files", "load_slices"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True, eq=False)
class LoadedSlice:
    """A slice and where it came from (``name`` is the file, with ``#frame`` for multi-frame DICOM).

    Attributes:
        path: the file it was read from.
        slice: the slice itself.
    """

    name: str
    path: Path
    slice: Slice


def is_dicom_file(path: Path) -> bool:
    """True for Part-10 files (``DICM`` at offset 128) and for ``.dcm`` files without a preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named directly, and every readable-looking file below named folders, in sorted order."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and not child.name.startswith("."):
                    if child.suffix.lower() in IMAGE_SUFFIXES | {".npy"} or is_dicom_file(child):
                        yield child
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")


def load_slices(paths: Iterable[str | os.PathLike[str]], *, limits: SliceLimits = DEFAULT_LIMITS) -> list[LoadedSlice]:
    """Every slice under ``paths``, grouped by series and ordered in space."""
    loaded: list[LoadedSlice] = []
    for path in iter_files(paths):
        suffix = path.suffix.lower()
        if suffix == ".npy":
            loaded.extend(_from_npy(path, limits))
        elif suffix in IMAGE_SUFFIXES:
            loaded.append(LoadedSlice(path.name, path, _from_image(path, limits)))
        else:
            frames = slices_from_dicom(path, limits=limits)
            for s in frames:
                name = path.name if len(frames) == 1 else f"{path.name}#{s.identity.frame_index}"
                loaded.append(LoadedSlice(name, path, s))
    return sort_slices(loaded, key_slice=lambda item: item.slice)


def _from_npy(path: Path, limits: SliceLimits) -> list[LoadedSlice]:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidSliceError(f"{path.name} is not a readable .npy array: {exc}") from exc
    series = f"npy:{path.name}"
    if arr.ndim == 3 and arr.shape[2] != 3:  # a stack of grey slices
        return [
            LoadedSlice(
                f"{path.name}#{i}",
                path,
                Slice.from_array(arr[i], identity=SliceIdentity(series, frame_index=i), limits=limits),
            )
            for i in range(arr.shape[0])
        ]
    return [LoadedSlice(path.name, path, Slice.from_array(arr, identity=SliceIdentity(series), limits=limits))]


def _from_image(path: Path, limits: SliceLimits) -> Slice:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise NotDicomError(f"{path.name} is neither DICOM nor an image OpenCV can read")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return Slice.from_array(img, identity=SliceIdentity(f"image:{path.parent.name}"), limits=limits)
