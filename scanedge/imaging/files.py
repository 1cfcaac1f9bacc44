"""Reading slices from files and folders: DICOM (any name), .npy arrays and PNG/JPEG/TIFF images.

A folder from a scanner or a PACS export holds more than images: structured reports, segmentations,
presentation states, a DICOMDIR, a truncated transfer. :func:`scan_slices` reads what it can and lists
each file it could not use with the typed error code and reason, the way dcm2niix or MONAI Deploy carry
on past a bad file; :func:`load_slices` is the strict form that raises on the first one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanedge.errors import InputError, InvalidSliceError, NotDicomError, ScanedgeError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.series import sort_slices
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceIdentity, SliceLimits

__all__ = ["LoadedSlice", "SkippedFile", "SliceScan", "is_dicom_file", "iter_files", "load_slices", "scan_slices"]

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


@dataclass(frozen=True)
class SkippedFile:
    """A file (or a frame of one, ``name#frame``) that was not segmented, and why.

    Attributes:
        name: the file's name (with ``#frame`` for one frame of a multi-frame object).
        path: the file.
        code: the error code (``NOT_DICOM``, ``NOT_AN_IMAGE``, ``OUT_OF_SCOPE``, ...; see scanedge.errors).
        reason: the error's message: what was wrong, never a patient identifier.
    """

    name: str
    path: Path
    code: str
    reason: str

    @classmethod
    def of(cls, name: str, path: Path, error: ScanedgeError) -> SkippedFile:
        """The record of ``error`` raised for ``path``."""
        return cls(name, path, error.code, error.message)

    def to_dict(self) -> dict[str, str]:
        """JSON-ready: file, name, code, reason."""
        return {"file": str(self.path), "name": self.name, "code": self.code, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class SliceScan:
    """What :func:`scan_slices` found.

    Attributes:
        loaded: every slice read, grouped by series and ordered in space.
        skipped: files that could not be read as slices, with the reason, in the order met.
        ignored: files inside the named folders that are neither DICOM, ``.npy`` nor an image (not read).
    """

    loaded: tuple[LoadedSlice, ...]
    skipped: tuple[SkippedFile, ...]
    ignored: tuple[Path, ...] = ()


def is_dicom_file(path: Path) -> bool:
    """True for Part-10 files (``DICM`` at offset 128) and for ``.dcm`` files without a preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def _walk(paths: Iterable[str | os.PathLike[str]], ignored: list[Path] | None = None) -> Iterator[Path]:
    named = [Path(raw) for raw in paths]
    for p in named:  # every named path first: a typo must not surface after half the work is done
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    for p in named:
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and not child.name.startswith("."):
                    if child.suffix.lower() in IMAGE_SUFFIXES | {".npy"} or is_dicom_file(child):
                        yield child
                    elif ignored is not None:
                        ignored.append(child)
        else:
            yield p


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named directly, and every readable-looking file below named folders, in sorted order."""
    return _walk(paths)


def _read_file(path: Path, limits: SliceLimits) -> list[LoadedSlice]:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _from_npy(path, limits)
    if suffix in IMAGE_SUFFIXES:
        return [LoadedSlice(path.name, path, _from_image(path, limits))]
    frames = slices_from_dicom(path, limits=limits)
    return [
        LoadedSlice(path.name if len(frames) == 1 else f"{path.name}#{s.identity.frame_index}", path, s) for s in frames
    ]


def load_slices(paths: Iterable[str | os.PathLike[str]], *, limits: SliceLimits = DEFAULT_LIMITS) -> list[LoadedSlice]:
    """Every slice under ``paths``, grouped by series and ordered in space; the first bad file raises."""
    loaded: list[LoadedSlice] = []
    for path in iter_files(paths):
        loaded.extend(_read_file(path, limits))
    return sort_slices(loaded, key_slice=lambda item: item.slice)


def scan_slices(paths: Iterable[str | os.PathLike[str]], *, limits: SliceLimits = DEFAULT_LIMITS) -> SliceScan:
    """Every slice under ``paths`` that can be read; each file that cannot is listed with its typed error.

    A path the caller named that does not exist still raises FileNotFoundError: that is the caller's
    mistake, not a bad file in a folder. A file that cannot be opened (permissions) is skipped as
    ``BAD_INPUT``.
    """
    loaded: list[LoadedSlice] = []
    skipped: list[SkippedFile] = []
    ignored: list[Path] = []
    for path in _walk(paths, ignored):
        try:
            loaded.extend(_read_file(path, limits))
        except ScanedgeError as exc:
            skipped.append(SkippedFile.of(path.name, path, exc))
        except OSError as exc:
            error = InputError(f"{path.name} cannot be read ({exc.strerror or type(exc).__name__})")
            skipped.append(SkippedFile.of(path.name, path, error))
    return SliceScan(tuple(sort_slices(loaded, key_slice=lambda item: item.slice)), tuple(skipped), tuple(ignored))


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
