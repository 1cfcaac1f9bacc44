"""Hostile console traffic: the multipart messages a broken or malicious peer sends, mixed with good ones.

Used by the live-server fuzz test and by ``edge-bench soak``. Deterministic for a seed. Each message says
whether a reply must carry its id (``request_id``) or may only be attributable as ``"id": null``, and
whether it is a good request that must succeed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HOSTILE_KINDS", "HostileTraffic", "Message"]

HOSTILE_KINDS = (
    "wrong_type",
    "deep_nesting",
    "huge_number",
    "surrogate",
    "frame_count",
    "random_bytes",
    "mutated_dicom",
    "absurd_geometry",
    "truncated_json",
    "payload_mismatch",
    "control",
)


@dataclass(frozen=True)
class Message:
    """One multipart message to send, and what its reply must look like.

    Attributes:
        frames: the ZeroMQ frames, header first.
        kind: ``good`` or the entry of :data:`HOSTILE_KINDS` that made it.
    """

    frames: list[bytes]
    request_id: str | None  # None: the id is deliberately unreadable
    good: bool = False  # a valid SEGMENT that must be answered RESULT (or SUPERSEDED when it has a series)
    kind: str = "good"


class HostileTraffic:
    """Messages for one console; ``prefix`` keeps its ids apart from other consoles'."""

    def __init__(self, seed: int, dicom: Sequence[bytes] = (), prefix: str = "f") -> None:
        self.rng = random.Random(seed)
        self.dicom = list(dicom)
        self.prefix = prefix
        self.n = 0

    def _header(self, **fields: object) -> dict[str, object]:
        self.n += 1
        return {"version": 1, "type": "SEGMENT", "id": f"{self.prefix}-{self.n}", **fields}

    def good(self, shape: tuple[int, int] = (32, 32), series: str = "", outputs: Sequence[str] = ("mask",)) -> Message:
        """A valid raw uint8 SEGMENT of ``shape`` (rows, cols) with random pixels, in ``series`` when given."""
        rows, cols = shape
        h = self._header(dtype="uint8", shape=[rows, cols], outputs=list(outputs))
        if series:
            h["series"] = series
        pixels = self.rng.randbytes(rows * cols)
        return Message([json.dumps(h).encode(), pixels], str(h["id"]), good=True)

    def hostile(self) -> Message:
        """A malformed or unexpected message of a random kind from :data:`HOSTILE_KINDS` (``mutated_dicom``
        only when DICOM objects were given)."""
        r = self.rng
        kind = r.choice(HOSTILE_KINDS if self.dicom else tuple(k for k in HOSTILE_KINDS if k != "mutated_dicom"))
        h = self._header(dtype="uint8", shape=[8, 8])
        rid = str(h["id"])
        pixels = bytes(64)
        if kind == "wrong_type":
            field = r.choice(["dtype", "shape", "series", "index", "geometry", "rescale", "outputs", "deadline_ms"])
            h[field] = r.choice([None, True, "x", 3.5, [1, "a"], {"k": []}, -1])
        elif kind == "deep_nesting":
            depth = r.choice([2000, 20000])
            body = json.dumps(h)[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
            return Message([body.encode(), pixels], None, kind=kind)
        elif kind == "huge_number":
            field = r.choice(["deadline_ms", "index", "bits_stored", "sent_at"])
            digits = "9" * r.choice([20, 400, 5000])
            body = json.dumps(h)[:-1] + f', "{field}": {digits}' + "}"
            return Message([body.encode(), pixels], rid, kind=kind)
        elif kind == "surrogate":
            body = json.dumps(h)[:-1] + ', "series": "a\\ud800"}'
            return Message([body.encode(), pixels], None, kind=kind)
        elif kind == "frame_count":
            return Message([json.dumps(h).encode(), *([pixels] * r.choice([0, 2, 3]))], rid, kind=kind)
        elif kind == "random_bytes":
            return Message([r.randbytes(r.randrange(1, 200)), pixels], None, kind=kind)
        elif kind == "mutated_dicom":
            data = bytearray(r.choice(self.dicom))
            for _ in range(r.randrange(1, 30)):
                data[r.randrange(len(data))] = r.getrandbits(8)
            if r.random() < 0.3:
                data = data[: r.randrange(1, len(data))]
            h = {k: v for k, v in h.items() if k not in ("dtype", "shape")}
            h["encoding"] = "dicom"
            return Message([json.dumps(h).encode(), bytes(data)], rid, kind=kind)
        elif kind == "absurd_geometry":
            h["geometry"] = {"pixel_spacing": [r.choice([1e200, -1.0, 5e3]), 1]}
            h["window"] = {"center": r.choice([1e300, 0]), "width": r.choice([0, -5, 1e11])}
        elif kind == "truncated_json":
            body = json.dumps(h)
            return Message([body[: r.randrange(1, len(body) - 1)].encode(), pixels], None, kind=kind)
        elif kind == "payload_mismatch":
            h["shape"] = [r.randrange(1, 100), r.randrange(1, 100)]
            if h["shape"] == [8, 8]:
                h["shape"] = [9, 8]
        else:  # control messages, some of reply types or with a stray frame
            c = {"version": 1, "type": r.choice(["PING", "STATS", "RESULT", "NOPE"]), "id": rid}
            return Message([json.dumps(c).encode(), *([b"x"] if r.random() < 0.5 else [])], rid, kind=kind)
        return Message([json.dumps(h).encode(), pixels], rid, kind=kind)
