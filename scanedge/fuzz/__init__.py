"""Fuzz targets for everything scanedge parses from outside, and a runner for them.

Each target takes raw bytes and feeds them to one entry point (a wire header, a SEGMENT with its pixel
frame, a DICOM object). The contract every target checks is the runtime's promise: bad input may only
ever fail with a typed :class:`scanedge.errors.ScanedgeError`; any other exception, a hang or a crash is
a bug. The same targets run under hypothesis in the test suite (bounded, in CI) and under atheris's
coverage-guided fuzzer for as long as you like::

    python -m scanedge.fuzz header 600          # ten minutes on the header decoder
    python -m scanedge.fuzz --list
"""

from scanedge.fuzz.targets import TARGETS, FuzzTarget

__all__ = ["TARGETS", "FuzzTarget"]
