"""The fuzz targets: one function per parser entry point, registered by name in :data:`TARGETS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scanedge.errors import ScanedgeError

__all__ = ["TARGETS", "FuzzTarget"]


@dataclass(frozen=True)
class FuzzTarget:
    """``run(data)`` exercises one entry point; ``seeds()`` yields valid inputs to start mutating from."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], Iterator[bytes]]
    description: str


def _header(data: bytes) -> None:
    from scanedge.runtime.protocol import decode_header, parse_segment

    try:
        header = decode_header(data)
        if header.get("type") == "SEGMENT":
            parse_segment(header, 1)
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
        FuzzTarget("header", _header, _header_seeds, "a wire header frame: JSON decoding and SEGMENT validation"),
    )
}
