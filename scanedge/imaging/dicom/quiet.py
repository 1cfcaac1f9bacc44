"""pydicom's warnings and log records silenced while scanedge reads a DICOM object, in that thread only.

pydicom quotes element values in what it logs and warns ("Invalid value for VR IS: 'Doe^Jane'"), and
those can be patient names. Whatever reads or receives DICOM through pydicom (the readers here, the
DICOM node) does so inside :func:`pydicom_quiet`; other threads, and the same thread outside it, see
pydicom's messages as before.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

__all__ = ["pydicom_quiet"]

_reading_here = threading.local()  # depth > 0 while this thread is inside read_dataset / slices_from_dicom


class _NotWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading_here, "depth", 0)


@cache
def _hush_pydicom_logs() -> None:
    """Once per process: pydicom's log records quote element values ("Invalid value for VR IS:
    'Doe^Jane'"); those emitted while scanedge reads a DICOM object in this thread are dropped."""
    hush = _NotWhileReading()
    for name in ("pydicom", "py.warnings"):  # the second: where logging.captureWarnings sends warnings
        logging.getLogger(name).addFilter(hush)


def _hush_pydicom_warnings() -> None:
    """The same for pydicom's warnings, by wrapping ``warnings.showwarning``; checked on every read, as
    ``warnings.catch_warnings`` (pytest, other libraries) restores the function it found when it exits."""
    shown = warnings.showwarning
    if getattr(shown, "scanedge_hush", False):
        return

    def showwarning(*args: Any, **kwargs: Any) -> None:
        if not getattr(_reading_here, "depth", 0):
            shown(*args, **kwargs)

    showwarning.scanedge_hush = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


@contextmanager
def pydicom_quiet() -> Iterator[None]:
    """While this thread reads a DICOM object, pydicom's warnings and log records (and only those of this
    thread) are dropped; elsewhere they pass as before."""
    _hush_pydicom_logs()
    _hush_pydicom_warnings()
    _reading_here.depth = getattr(_reading_here, "depth", 0) + 1
    try:
        yield
    finally:
        _reading_here.depth -= 1
