"""The fuzz targets: one function per parser entry point, registered by name in :data:`TARGETS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scanedge.errors import ScanedgeError

__all__ = ["TARGETS", "FuzzTarget"]


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
    from scanedge.runtime.protocol import Segment, decode_request, encode, request_echo

    try:
        request = decode_request([data, b"\0" * 16], 1 << 20)
    except ScanedgeError:
        request_echo(data)  # what an ERROR reply would echo must never fail either
        return
    encode(request)  # what was accepted can be written back
    if isinstance(request, Segment):
        from scanedge.imaging.slices import SliceLimits
        from scanedge.runtime.payloads import slice_from_request

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


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget(
            "header",
            _header,
            _header_seeds,
            "a request header frame: bounded JSON decoding, validation, the echo of a refused one, the slice",
        ),
    )
}
