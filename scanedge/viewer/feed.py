"""Following the runtime's PUB feed: what each series (scanner) has shown so far, and who is watching.

The viewer is a SUB client (docs/protocol.md section 9). Each published RESULT becomes a
:class:`LiveSlice`: a small JSON-ready description (which slice, findings, the series' lesion load,
runtime timings, and the series against its prior when the RESULT carries ``change``) plus its pixel frames
as bytes (``image`` when the console asked for it, else the RGB ``overlay``, the ``mask``, and the
``change`` codes once the series has been compared). :class:`LiveFeed` keeps, per series, one entry per
slice place for the strip and the latest pixels of a bounded number of slices, and fans every slice out to the watching
pages' :class:`Watcher` s.

A RESULT's ``scores`` and ``series_scores`` (a model's image-level heads) travel in its description. A RESULT
without a mask that carries scores (a classifier served beside the segmentation model) becomes a description
without pixels, kept per series and model beside the slices, so it never takes the place of the slice drawn.

A RESULT's ``saliency`` frame (the model's own saliency map, float32 0-1 on the slice's grid, docs/protocol.md
section 4) is kept quantised to uint8 with the slice's pixels and counted against ``retain_bytes`` like them. A
classifier's map, which comes without a mask, joins the segmentation's slice of the same place and instance,
whichever arrives first (a map that comes first waits, at most ``_WAITING_MAPS`` of them; a page showing the
slice is sent it again), and stays with that image when it is segmented again. A map whose shape is not the
image's is never drawn: it is counted in ``saliency_refused`` and the slice says why.

A RESULT's ``mask:<label>`` frames (a model's further mask heads, docs/protocol.md section 4) are kept with the
slice too, uint8 labels as they came, counted against ``retain_bytes``: at most :data:`MAX_HEADS` of them, each
described by its label, its classes (name and colour, from the frame's entry) and its labelled pixels; a head
without a labelled pixel keeps its description and no bytes (there is nothing to draw). A frame whose shape is not
the image's, that is not a uint8 plane, or past the first :data:`MAX_HEADS` is not kept: it is counted in
``heads_refused`` and the slice says why, by the same shape check as a saliency map's.

Nothing here can slow the runtime: the SUB socket drops at its high-water mark on the runtime's side
(PUB never blocks), and a watcher never queues pixels: it holds the *newest* slice waiting for its page
and sends it only when the page has painted the previous one (drop to newest). Only the small JSON
descriptions are queued per page, and that queue is bounded too.

A change update (a RESULT with ``update`` true, docs/protocol.md section 9: the DICOM node's comparison with the
prior ended after the slice was published) changes a slice already received: its description takes the update's
``change`` (and its ``change`` frame, or none), its image and mask stay, and a page that shows that slice is
sent it again to repaint; the series' newest description takes the update's ``change`` too, so the status,
legend and trend follow the comparison. An update of a slice the viewer never received is ignored.

A series-score update (an update RESULT with ``series_scores`` and no ``change``: the DICOM node's final series
score once a head's 3-D series model ran, or failed, at completion) becomes a description without pixels of the
slice it names, kept with that model's scores (the slice's own ``scores`` taken from what the viewer holds of
it), marked ``scores_update``: the page's score panel takes its ``series_scores`` as the series' newest, and the
trend's point for that slice moves to it. Nothing is repainted. An update for a series the viewer never
received is ignored.

A runtime that restarts is followed without restarting the viewer: ZeroMQ reconnects the SUB socket by
itself, a monitor on it tells whether a runtime is connected at all (pages show "stale" while none is),
and a RESULT carrying another ``runtime`` id than the last one makes every page follow the new runtime's
newest series again instead of waiting on a series the old runtime was publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import zmq
import zmq.asyncio

from scanedge.errors import ProtocolError
from scanedge.imaging.followup import CHANGE_CLASSES, CHANGE_CODES, CHANGE_COLOURS, ChangeCounts, SeriesChange
from scanedge.imaging.heads import SeriesScore
from scanedge.runtime.wire.protocol import HEAD_MASK_PREFIX, Result, decode_reply
from scanedge.safe_text import printable

__all__ = [
    "CHANGE_LEGEND",
    "MAX_HEADS",
    "FeedLimits",
    "LiveFeed",
    "LiveSlice",
    "Watcher",
    "pack_slice",
    "quantised_saliency",
]

log = logging.getLogger("scanedge.viewer")

#: the change classes as the page draws them: name, ``change`` frame code (None: no current pixels) and RGB
#: colour, from :mod:`scanedge.imaging.followup` so the page, overlays and reports agree
CHANGE_LEGEND: tuple[dict[str, Any], ...] = tuple(
    {"name": name, "code": CHANGE_CODES.get(name), "colour": list(CHANGE_COLOURS[name])} for name in CHANGE_CLASSES
)
_TEXT_LIMIT = 300  # characters of a wire string (a reason, a source) the page shows
_MODELS_PER_SERIES = 8  # score-only models remembered per series (one runtime serves a few)
_WAITING_MAPS = 64  # classifiers' saliency maps waiting for the segmentation's slice of their place
#: further mask heads kept per slice (a model has at most 16; a publisher sending more is refused past these)
MAX_HEADS = 16
_HEAD_CLASSES = 16  # classes per head the page is told of (a frame entry lists at most 16)


@dataclass(frozen=True)
class FeedLimits:
    """What the viewer keeps: series followed, pixels retained, descriptions queued per page.

    Attributes:
        max_series: series (scanners) remembered; the least recently updated is forgotten first.
        max_slices: slice places remembered per series (for the strip).
        retain_bytes: pixel bytes kept for browsing back through slices, over every series (LRU).
        page_queue: slice descriptions waiting for one page before the oldest are dropped.
        sub_hwm: messages the SUB socket buffers before the runtime's PUB drops for this viewer.
    """

    max_series: int = 16
    max_slices: int = 4096
    retain_bytes: int = 128 * 1024 * 1024
    page_queue: int = 512
    sub_hwm: int = 64


@dataclass(eq=False)
class LiveSlice:
    """One published RESULT as the page gets it: ``meta`` (JSON) and the pixel frames as bytes."""

    seq: int  # the feed's running count of RESULTs when this one came (rises by arrival); pages name paints by it
    series: str  # the series UID it was published under
    key: str  # the slice's place in its series: position (mm) or index, as text
    meta: dict[str, Any]
    image: bytes | None  # uint8 grey (rows, cols) or RGB (rows, cols, 3)
    mask: bytes | None  # uint8 labels (rows, cols)
    change: bytes | None = None  # uint8 change codes (rows, cols), when the RESULT had a ``change`` frame
    saliency: bytes | None = None  # uint8 saliency 0-255 (its own rows, cols), the model's own map when it has one
    instance: str = ""  # the RESULT's instance: a classifier's map joins the slice of the same place and instance
    heads: bytes | None = None  # further mask heads' uint8 labels, (rows, cols) each, those with pixels, in order

    @property
    def nbytes(self) -> int:
        """Pixel bytes it holds (image, mask, change, saliency, head masks): what it counts against
        ``retain_bytes``."""
        return (
            len(self.image or b"")
            + len(self.mask or b"")
            + len(self.change or b"")
            + len(self.saliency or b"")
            + len(self.heads or b"")
        )


def pack_slice(item: LiveSlice) -> bytes:
    """The binary WebSocket message for a slice: u32 little-endian JSON length, JSON, image, mask, the change
    codes when ``meta["change_frame"]`` is true, the saliency map (uint8, rows x cols) when ``meta["saliency"]``
    is set, then one uint8 (rows x cols) plane per entry of ``meta["heads"]`` with ``pixels`` above 0, in order."""
    import json

    head = json.dumps(item.meta, separators=(",", ":")).encode()
    sal = (item.saliency or b"") if item.meta.get("saliency") else b""
    parts = (item.image, item.mask, item.change, sal, item.heads)
    return len(head).to_bytes(4, "little") + head + b"".join(p for p in parts if p)


def quantised_saliency(info: Any, frame: Any) -> tuple[bytes, tuple[int, int]]:
    """A ``saliency`` frame (raw float32 [rows, cols], 0-1) as uint8 0-255 bytes and its shape; values outside
    0-1 are clipped, NaN counts as 0. :class:`ProtocolError` when the frame is not such a map."""
    import numpy as np

    shape = list(info.shape or ())
    if info.encoding != "raw" or info.dtype != "float32" or len(shape) != 2 or min(shape) < 1:
        raise ProtocolError("a saliency frame is a raw float32 [rows, cols] map")
    rows, cols = int(shape[0]), int(shape[1])
    if len(frame) != rows * cols * 4:
        raise ProtocolError("the saliency frame does not match its shape")
    values = np.nan_to_num(np.frombuffer(frame, "<f4"), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).tobytes(), (rows, cols)


@dataclass(frozen=True)
class _Saliency:
    """A classifier's map for one slice place, waiting for the segmentation's slice there."""

    instance: str
    meta: dict[str, Any]  # model, of, top (what the page's legend says)
    shape: tuple[int, int]
    data: bytes


def _saliency_meta(header: Result, info: Any) -> dict[str, Any]:
    """Whose map it is, as the page's legend names it: model, the score head it explains (the frame's ``of``;
    the only score head when a runtime does not say) and that head's top class on this slice."""
    of = info.of if isinstance(info.of, str) and info.of else (header.scores[0].head if len(header.scores) == 1 else "")
    head = next((s for s in header.scores if s.head == of), None)
    return {
        "model": printable(header.model, 128),
        "of": printable(of, 64),
        "top": printable(head.top, 64) if head is not None else "",
    }


def _counts(counts: ChangeCounts | None) -> dict[str, int] | None:
    return None if counts is None else {name: getattr(counts, name) for name in CHANGE_CLASSES}


def _change_meta(change: SeriesChange | None) -> dict[str, Any] | None:
    """What the page shows of a RESULT's ``change``: its wire strings as single bounded lines (the page inserts
    them as text), every class counted (0 included)."""
    if change is None:
        return None
    return {
        "status": change.status,
        "reason": printable(change.reason, _TEXT_LIMIT),
        "prior_date": printable(change.prior_date, 16),
        "prior_study": printable(change.prior_study, 64),
        "source": printable(change.source, _TEXT_LIMIT),
        "registration": printable(change.registration, _TEXT_LIMIT),
        "counts": _counts(change.counts),
        "slice_counts": _counts(change.slice_counts),
        "prior_load_mm3": change.prior_load_mm3,
        "current_load_mm3": change.current_load_mm3,
        "load_change_percent": change.load_change_percent,
    }


_SCORE_CLASSES = 16  # classes per score head the page shows (a RESULT carries at most 96 over all heads)


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _scores_meta(header: Result) -> dict[str, Any]:
    """A RESULT's ``scores`` and ``series_scores`` as the page shows them: names as single bounded lines (the
    page inserts them as text), probabilities rounded, at most ``_SCORE_CLASSES`` classes per head."""
    return {
        "scores": [
            {
                "head": printable(s.head, 64),
                "top": printable(s.top, 64),
                "operating_point": printable(s.operating_point, 64),
                "classes": [
                    {
                        "name": printable(c.name, 64),
                        "probability": _finite(c.probability),
                        "threshold": _finite(c.threshold),
                        "decision": bool(c.decision),
                    }
                    for c in s.classes[:_SCORE_CLASSES]
                ],
            }
            for s in header.scores
        ],
        "series_scores": [
            {
                "head": printable(s.head, 64),
                "aggregation": printable(s.aggregation, 16),
                "slices": s.slices,
                "classes": [
                    {
                        "name": printable(c.name, 64),
                        "score": _finite(c.score),
                        "threshold": _finite(c.threshold),
                        "decision": bool(c.decision),
                        "slices_positive": c.slices_positive,
                    }
                    for c in s.classes[:_SCORE_CLASSES]
                ],
                **_series_model_meta(s),
            }
            for s in header.series_scores
        ],
    }


def _series_model_meta(score: SeriesScore) -> dict[str, Any]:
    """A head with a 3-D series model: whether its score is still the provisional slice aggregate and where the
    model stands (code strings and numbers only: its message stays in the runtime's log and results)."""
    run = score.series_model
    if run is None:
        return {}
    return {
        "provisional": bool(score.provisional),
        "series_model": {
            "status": printable(run.status, 16),
            "code": printable(run.code, 32),
            "slices": run.slices,
            "ms": _finite(run.ms),
        },
    }


def _place(header: Result) -> str:
    """Where a RESULT's slice sits in its series: its position along the normal, else its index."""
    return f"{header.position_mm:.3f}" if header.position_mm is not None else f"#{header.index}"


def _described(kind: str, seq: int, header: Result, received: float) -> dict[str, Any]:
    """What every slice or scores description starts with: its place, the RESULT's times, and ``type``."""
    return {
        "type": kind,
        "seq": seq,
        "series": header.series,
        "key": _place(header),
        "index": header.index,
        "position_mm": header.position_mm,
        "timings_ms": {"total": header.timings_ms.total, "infer": header.timings_ms.infer},
        "replied_at": header.replied_at,
        "received_at": received,
    }


def _score_slice(seq: int, header: Result, received: float, sal: tuple[Any, Any] | None = None) -> LiveSlice | None:
    """A RESULT without a mask that carries scores (a classifier's): a description without pixels, kept per
    model beside the series' slices (see :meth:`LiveFeed._remember`), with its saliency map when ``sal`` (the
    frame's entry and bytes) is one; None when it has no scores either."""
    if not header.scores and not header.series_scores:
        return None
    key = _place(header)
    meta = {
        **_described("scores", seq, header, received),
        "model": printable(header.model, 128),
        **_scores_meta(header),
        "saliency": None,
        "saliency_refused": None,
    }
    item = LiveSlice(seq, header.series, key, meta, None, None, instance=header.instance)
    if sal is not None:
        try:
            item.saliency, shape = quantised_saliency(*sal)
        except ProtocolError as exc:
            meta["saliency_refused"] = exc.message
        else:
            meta["saliency"] = {**_saliency_meta(header, sal[0]), "rows": shape[0], "cols": shape[1]}
    return item


def _plane(entry: tuple[Any, Any] | None, rows: int, cols: int) -> bytes | None:
    """A raw uint8 (rows, cols) frame's bytes, or None when ``entry`` is absent or not that."""
    if entry is None:
        return None
    info, frame = entry
    if info.encoding != "raw" or info.dtype != "uint8" or list(info.shape or ()) != [rows, cols]:
        return None
    return bytes(frame) if len(frame) == rows * cols else None


def _live_slice(seq: int, header: Result, frames: Sequence[Any], received: float) -> LiveSlice | None:
    by_name: dict[str, tuple[Any, Any]] = {}
    if len(frames) != len(header.frames):
        raise ProtocolError(f"RESULT lists {len(header.frames)} frames but carries {len(frames)}")
    for info, frame in zip(header.frames, frames):
        by_name[info.name] = (info, frame)
    mask_info, mask = by_name.get("mask", (None, None))
    base = by_name.get("image") or by_name.get("overlay")
    if mask_info is None or mask_info.encoding != "raw" or mask_info.dtype != "uint8" or not mask_info.shape:
        # nothing to draw from: no mask (asked for none, a classifier)
        return _score_slice(seq, header, received, by_name.get("saliency"))
    if not header.findings and header.scores:  # a model without a mask output (a classifier): its mask is empty
        return _score_slice(seq, header, received, by_name.get("saliency"))
    rows, cols = mask_info.shape[:2]
    if len(mask) != rows * cols:
        raise ProtocolError("mask frame does not match its shape")
    image = channels = None
    if base is not None:
        info, frame = base
        ok = info.encoding == "raw" and info.dtype == "uint8" and info.shape and tuple(info.shape[:2]) == (rows, cols)
        if ok:
            channels = 1 if len(info.shape) == 2 else int(info.shape[2])
            if channels in (1, 3) and len(frame) == rows * cols * channels:
                image = bytes(frame)
            else:
                channels = None
    change = _plane(by_name.get("change"), rows, cols)
    load = header.series_load
    key = _place(header)
    meta = {
        **_described("slice", seq, header, received),
        "rows": rows,
        "cols": cols,
        "channels": channels,
        "model": header.model,
        "findings": [
            {"label": f.label, "name": f.name, "pixels": f.pixels, "components": f.components} for f in header.findings
        ],
        "lesion_pixels": sum(f.pixels for f in header.findings),
        "series_load": None
        if load is None
        else {
            "slices": load.slices,
            "spacing_mm": load.spacing_mm,
            "lesions": sum(c.lesions for c in load.classes),
            "volume_mm3": None
            if any(c.volume_mm3 is None for c in load.classes)
            else round(sum(c.volume_mm3 or 0.0 for c in load.classes), 3),
            "largest_mm3": max((c.largest_mm3 or 0.0 for c in load.classes), default=0.0),
            "classes": [{"name": c.name, "lesions": c.lesions, "volume_mm3": c.volume_mm3} for c in load.classes],
        },
        "change": _change_meta(header.change),
        "change_frame": change is not None,
        **_scores_meta(header),
        "saliency": None,
        "saliency_refused": None,
    }
    item = LiveSlice(seq, header.series, key, meta, image, bytes(mask), change, instance=header.instance)
    sal = by_name.get("saliency")
    if sal is not None:
        try:
            data, shape = quantised_saliency(*sal)
            _join(item, _Saliency(header.instance, _saliency_meta(header, sal[0]), shape, data))
        except ProtocolError as exc:
            meta["saliency_refused"] = exc.message
    _keep_heads(item, [(info, frame) for info, frame in zip(header.frames, frames) if _is_head(info.name)])
    return item


def _is_head(name: str) -> bool:
    return name.startswith(HEAD_MASK_PREFIX) and len(name) > len(HEAD_MASK_PREFIX)


def _head_classes(info: Any) -> list[dict[str, Any]]:
    """A ``mask:<label>`` frame entry's classes as the page shows them: each name one bounded line (the page
    inserts it as text), its colour; ``[]`` when the entry lists none (the page then uses its own colours)."""
    listed = info.classes or ()
    return [{"name": printable(c.name, 32), "colour": list(c.color)} for c in listed[:_HEAD_CLASSES]]


def _keep_heads(item: LiveSlice, entries: Sequence[tuple[Any, Any]]) -> None:
    """Give ``item`` its further mask heads (``mask:<label>`` frames, in frame order): ``meta["heads"]`` lists
    each head kept, ``item.heads`` holds the planes of those with labelled pixels; a frame that is not the
    image's uint8 plane, or past :data:`MAX_HEADS`, is refused and ``meta["heads_refused"]`` says why."""
    import numpy as np

    meta = item.meta
    kept: list[dict[str, Any]] = []
    planes: list[bytes] = []
    refused: list[str] = []
    for n, (info, frame) in enumerate(entries):
        if n >= MAX_HEADS:
            refused.append(f"{len(entries) - n} head mask(s) past the {MAX_HEADS} a slice keeps: not drawn")
            break
        label = printable(info.name[len(HEAD_MASK_PREFIX) :], 64)
        shape = tuple(int(d) for d in (info.shape or ()))
        why = _misfit(f"head mask {label}", shape, meta) if len(shape) == 2 else f"head mask {label} is not 2-D"
        plane = None if why else _plane((info, frame), *shape)
        if why or plane is None:
            refused.append(why or f"head mask {label} is not raw uint8 labels: not drawn")
            continue
        pixels = int(np.count_nonzero(np.frombuffer(plane, np.uint8)))
        kept.append({"label": label, "classes": _head_classes(info), "pixels": pixels})
        if pixels:
            planes.append(plane)
    meta["heads"] = kept
    meta["heads_refused"] = refused or None
    item.heads = b"".join(planes) or None


def _misfit(what: str, shape: tuple[int, int], meta: dict[str, Any]) -> str | None:
    """Why a layer of ``shape`` cannot be drawn on the slice ``meta`` describes (not the image's shape), or None.
    Saliency maps and further mask heads alike are drawn only on the grid of the image under them."""
    rows, cols = int(meta["rows"]), int(meta["cols"])
    if tuple(shape) == (rows, cols):
        return None
    return f"{what} {shape[0]}x{shape[1]} is not the image's {rows}x{cols}: not drawn"


def _join(item: LiveSlice, sal: _Saliency) -> None:
    """Give ``item`` the map ``sal`` when its shape is the image's; otherwise say in its description why not.
    Raises nothing: a refused map leaves the slice as it was, without a heat map."""
    why = _misfit("saliency map", sal.shape, item.meta)
    if why is not None:
        item.saliency = None
        item.meta["saliency"] = None
        item.meta["saliency_refused"] = why
        return
    item.saliency = sal.data
    item.meta["saliency"] = dict(sal.meta)
    item.meta["saliency_refused"] = None


class Watcher:
    """One page: the descriptions it has not been sent yet, and the newest slice of its series to paint."""

    def __init__(self, limits: FeedLimits) -> None:
        self.selected: str | None = None  # None: follow whichever series published last
        self.pinned: tuple[str, str] | None = None  # (series, key) the page asked to look at
        self.texts: deque[dict[str, Any]] = deque(maxlen=limits.page_queue)
        self.pixels: LiveSlice | None = None  # newest slice to paint, replaced by newer ones (drop to newest)
        self.showing: tuple[str, str] | None = None  # (series, key) of the slice the page was sent last
        self.awaiting_paint = False
        self.dropped = 0
        self.status_changed = True  # the page is told the feed's status (connected, runtime) with the next wake
        self.wake = asyncio.Event()

    def feed_changed(self, new_runtime: bool) -> None:
        """The runtime connected, went away or was replaced. A new runtime also drops what this page was
        looking at, so its next slice is painted whatever series it belongs to."""
        if new_runtime:
            self.selected = None
            self.pinned = None
            self.awaiting_paint = False  # a paint of the old runtime's slice may never be reported
        self.status_changed = True
        self.wake.set()

    def offer(self, item: LiveSlice) -> None:
        """Queue a new slice's description for the page and, when the page follows its series live and the
        slice has an image, make it the slice to paint next: one still unsent is replaced (and counted
        in ``dropped``). Wakes the page's sender; never blocks."""
        self.texts.append(item.meta)
        if self.pinned is None and (self.selected is None or self.selected == item.series) and item.image:
            if self.pixels is not None:
                self.dropped += 1
            self.pixels = item
        self.wake.set()

    def take_pixels(self) -> LiveSlice | None:
        """The slice to send now, if the page has painted the last one."""
        if self.awaiting_paint or self.pixels is None:
            return None
        item, self.pixels = self.pixels, None
        self.awaiting_paint = True
        self.showing = (item.series, item.key)
        return item

    def offer_update(self, item: LiveSlice) -> None:
        """Queue an update's description (a change update, or a classifier's saliency map joining a slice) and,
        when the page shows that slice (live or pinned) and no other slice waits to be painted, or that very
        slice waits, make the updated slice the one to paint next. Never blocks."""
        self.texts.append(item.meta)
        place = (item.series, item.key)
        shown = self.pinned if self.pinned is not None else self.showing
        if self.pixels is not None:  # a slice waits to be sent: the update replaces it when it is that slice
            due = (self.pixels.series, self.pixels.key) == place
        else:
            due = shown == place
        if item.image and due:
            self.pixels = item if self.pinned is None else replace(item, meta={**item.meta, "pinned": True})
        self.wake.set()

    def painted(self) -> None:
        """The page has painted the last slice sent: the next one may go (see :meth:`take_pixels`)."""
        self.awaiting_paint = False
        self.wake.set()


@dataclass
class _Series:
    uid: str
    slices: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)  # key -> meta, by arrival
    latest: dict[str, Any] | None = None
    # model -> key -> description of a RESULT without pixels (a classifier's scores), by arrival
    scores: dict[str, OrderedDict[str, dict[str, Any]]] = field(default_factory=dict)


class LiveFeed:
    """The SUB socket's reader and the viewer's memory of what was published."""

    def __init__(self, endpoint: str, limits: FeedLimits | None = None) -> None:
        self.endpoint = endpoint
        self.limits = limits or FeedLimits()
        self.series: OrderedDict[str, _Series] = OrderedDict()
        self.watchers: set[Watcher] = set()
        self.received = 0
        self.malformed = 0
        self.paint_ms: deque[float] = deque(maxlen=2000)  # publish-to-paint as the pages measured it
        self._retained: OrderedDict[tuple[str, str], LiveSlice] = OrderedDict()
        self._retained_bytes = 0
        # classifiers' saliency maps that came before the segmentation's slice of their place (at most
        # _WAITING_MAPS, oldest dropped first; their bytes count against retain_bytes with the retained slices')
        self._saliency: OrderedDict[tuple[str, str], _Saliency] = OrderedDict()
        self._saliency_bytes = 0
        self.saliency_refused = 0  # saliency maps not drawn: not the image's shape, or not a 0-1 float32 map
        self.heads_refused = 0  # slices with a further mask head not kept: not the image's shape or dtype, too many
        self._seq = 0
        self._task: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self.peers = 0  # runtimes the SUB socket is connected to now (from its monitor)
        self.runtime = ""  # the ``runtime`` id of the last RESULT (a new one: the runtime restarted)
        self.last_slice_at: float | None = None  # time.time() of the last publication

    def status(self) -> dict[str, Any]:
        """What a page shows in its badge: whether a runtime is connected, and which one published last."""
        ago = None if self.last_slice_at is None else round(max(0.0, time.time() - self.last_slice_at), 1)
        return {"type": "feed", "connected": self.peers > 0, "runtime": self.runtime, "last_slice_s_ago": ago}

    def _changed(self, new_runtime: bool = False) -> None:
        for w in self.watchers:
            w.feed_changed(new_runtime)

    async def start(self) -> None:
        """Open the SUB socket (every series), connect it and start reading in a task on the running loop.

        Returns at once: ZeroMQ connects in the background and reconnects by itself, so a runtime that is
        not up yet is followed once it is.
        """
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.limits.sub_hwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self._task = asyncio.create_task(self._read(sock), name="scanedge-viewer-feed")
        self._monitor = asyncio.create_task(self._watch(monitor), name="scanedge-viewer-feed-monitor")

    async def stop(self) -> None:
        """Cancel the reading task and close the socket and its context; what was received is kept."""
        for task in (self._monitor, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ctx is not None:
            self._ctx.term()

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        try:
            while True:
                frames = await sock.recv_multipart(copy=False)
                self.handle([f.buffer for f in frames])
        finally:
            sock.close(0)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        from zmq.utils.monitor import parse_monitor_message

        try:
            while True:
                try:
                    event = parse_monitor_message(await monitor.recv_multipart())
                except (ValueError, KeyError, IndexError):
                    continue
                if event["event"] == zmq.EVENT_CONNECTED:
                    self.peers += 1
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self.peers = max(0, self.peers - 1)
                    if self.peers == 0:
                        log.warning("the runtime at %s went away; waiting for it to come back", self.endpoint)
                self._changed()
        finally:
            monitor.close(0)

    def handle(self, frames: Sequence[Any]) -> LiveSlice | None:
        """One published message: topic, RESULT header, payload frames. Malformed ones are counted."""
        self.received += 1
        try:
            if len(frames) < 2:
                raise ProtocolError("a publication has a topic and a header")
            header = decode_reply(frames[1])
            if not isinstance(header, Result):
                raise ProtocolError("only RESULTs are published")
            self._seq += 1
            if header.update:
                item = self._update(self._seq, header, frames[2:])
            else:
                item = _live_slice(self._seq, header, frames[2:], time.time())
        except ProtocolError as exc:
            self.malformed += 1
            if self.malformed <= 10:
                log.warning("ignoring a malformed publication: %s", exc.message)
            return None
        self.last_slice_at = time.time()
        if header.runtime and header.runtime != self.runtime:
            replaced = bool(self.runtime)  # the first runtime seen replaces none
            if replaced:
                log.warning("a new runtime (%s) publishes on %s; pages follow it", header.runtime, self.endpoint)
            self.runtime = header.runtime
            self._changed(new_runtime=replaced)
        if item is not None and header.update:
            for w in self.watchers:
                w.offer_update(item)
        elif item is not None:
            joined = self._remember(item)
            for w in self.watchers:
                w.offer(item)
                if joined is not None:
                    w.offer_update(joined)
            refused = item.meta.get("saliency_refused") or (joined.meta.get("saliency_refused") if joined else None)
            if refused:
                self.saliency_refused += 1
                if self.saliency_refused <= 10:
                    log.warning("not drawing a saliency map of series %s: %s", item.series, refused)
            heads_refused = item.meta.get("heads_refused")
            if heads_refused:
                self.heads_refused += 1
                if self.heads_refused <= 10:
                    log.warning("not drawing head masks of series %s: %s", item.series, "; ".join(heads_refused))
        return item

    def _update(self, seq: int, header: Result, frames: Sequence[Any]) -> LiveSlice | None:
        """A change update applied to the slice it names (see the module docstring); None when the viewer does
        not hold that slice."""
        if len(frames) != len(header.frames):
            raise ProtocolError(f"RESULT lists {len(header.frames)} frames but carries {len(frames)}")
        s = self.series.get(header.series)
        key = _place(header)
        if s is not None and header.change is None and header.series_scores:
            return self._score_update(seq, s, key, header)
        old = s.slices.get(key) if s is not None else None
        if s is None or old is None or header.change is None:
            return None
        by_name = {info.name: (info, frame) for info, frame in zip(header.frames, frames)}
        plane = _plane(by_name.get("change"), int(old["rows"]), int(old["cols"]))
        change = _change_meta(header.change)
        meta = {**old, "seq": seq, "change": change, "change_frame": plane is not None, "update": True}
        meta["replied_at"], meta["received_at"], meta["scores_update"] = header.replied_at, time.time(), False
        s.slices[key] = meta  # in place: an update does not make a slice the newest
        if s.latest is not None and s.latest.get("key") == key:
            s.latest = meta
        elif s.latest is not None:  # the series' status, counts and load as the comparison stands now
            own = (s.latest.get("change") or {}).get("slice_counts")
            s.latest = {**s.latest, "change": {**(change or {}), "slice_counts": own}}
        kept = self._retained.get((header.series, key))
        if kept is None:
            return LiveSlice(seq, header.series, key, meta, None, None, None)
        item = replace(kept, seq=seq, meta=meta, change=plane)
        self._forget((header.series, key))
        self._retained[(header.series, key)] = item
        self._retained_bytes += item.nbytes
        return item

    def _score_update(self, seq: int, s: _Series, key: str, header: Result) -> LiveSlice:
        """A series-score update (see the module docstring): the slice's scores description as held (a
        classifier's, or the slice of that model), with the update's ``series_scores``, kept with the model's scores."""
        model = printable(header.model, 128)
        held = s.scores.get(model)
        old = held.get(key) if held is not None else None
        drawn = s.slices.get(key)
        if old is None and drawn is not None and drawn.get("model") == header.model:
            old = {"scores": drawn.get("scores") or []}
        meta = {
            **(old or {}),
            **_described("scores", seq, header, time.time()),
            "key": key,
            "model": model,
            "scores": (old or {}).get("scores") or [],
            "series_scores": _scores_meta(header)["series_scores"],
            "update": True,
            "scores_update": True,
        }
        meta.setdefault("saliency", None)
        meta.setdefault("saliency_refused", None)
        item = LiveSlice(seq, header.series, key, meta, None, None, instance=header.instance)
        self._remember_scores(s, item)
        return item

    def _remember(self, item: LiveSlice) -> LiveSlice | None:
        """Keep ``item``; returns the retained slice a classifier's saliency map has just joined (to be sent
        to the pages showing it again), if any."""
        s = self.series.pop(item.series, None) or _Series(item.series)
        self.series[item.series] = s  # most recently updated last
        while len(self.series) > self.limits.max_series:
            gone, _ = self.series.popitem(last=False)
            for key in [k for k in self._retained if k[0] == gone]:
                self._forget((gone, key[1]))
            for key in [k for k in self._saliency if k[0] == gone]:
                self._forget_saliency(key)
        if item.mask is None:  # a classifier's scores: beside the slices, never in place of the one drawn there
            self._remember_scores(s, item)
            return self._keep_saliency(s, item)
        place = (item.series, item.key)
        if item.saliency is None and item.meta.get("saliency_refused") is None:
            waiting = self._saliency.get(place)
            before = self._retained.get(place)
            if waiting is not None and waiting.instance == item.instance:
                _join(item, waiting)
                self._forget_saliency(place)
            elif before is not None and before.saliency is not None and before.instance == item.instance:
                # the same image segmented again (a replay's next pass): its classifier's map still holds
                item.saliency = before.saliency
                item.meta["saliency"] = before.meta["saliency"]
        s.slices.pop(item.key, None)
        s.slices[item.key] = item.meta
        while len(s.slices) > self.limits.max_slices:
            s.slices.popitem(last=False)
        s.latest = item.meta
        if item.image is not None:
            self._forget((item.series, item.key))
            self._retained[(item.series, item.key)] = item
            self._retained_bytes += item.nbytes
            self._trim()
        return None

    def _keep_saliency(self, s: _Series, item: LiveSlice) -> LiveSlice | None:
        """A classifier's map: kept for its slice place and joined to the retained slice of that place and
        instance, which is returned (its description updated where the series keeps it)."""
        info = item.meta.get("saliency")
        if item.saliency is None or not info:
            return None
        place = (item.series, item.key)
        sal = _Saliency(
            item.instance, {k: info[k] for k in ("model", "of", "top")}, (info["rows"], info["cols"]), item.saliency
        )
        self._forget_saliency(place)
        kept = self._retained.get(place)
        joined = None
        if kept is None or kept.instance != item.instance:  # the slice has not come yet: the map waits for it
            self._saliency[place] = sal
            self._saliency_bytes += len(sal.data)
            while len(self._saliency) > _WAITING_MAPS:
                self._forget_saliency(next(iter(self._saliency)))
        else:
            meta = {**kept.meta, "seq": item.seq, "update": True}
            joined = replace(kept, seq=item.seq, meta=meta)
            _join(joined, sal)
            if item.key in s.slices:  # in place: a map does not make a slice the newest
                s.slices[item.key] = meta
            if s.latest is not None and s.latest.get("key") == item.key:
                s.latest = meta
            self._forget(place)
            self._retained[place] = joined
            self._retained_bytes += joined.nbytes
        self._trim()
        return joined

    def _trim(self) -> None:
        """Drop the oldest retained slices, then the oldest waiting saliency maps, while the bytes kept exceed
        ``retain_bytes``."""
        while self._retained_bytes + self._saliency_bytes > self.limits.retain_bytes:
            if self._retained:
                self._forget(next(iter(self._retained)))
            elif self._saliency:
                self._forget_saliency(next(iter(self._saliency)))
            else:
                return

    def _forget_saliency(self, key: tuple[str, str]) -> None:
        old = self._saliency.pop(key, None)
        if old is not None:
            self._saliency_bytes -= len(old.data)

    def _remember_scores(self, s: _Series, item: LiveSlice) -> None:
        model = str(item.meta["model"])
        held = s.scores.get(model)
        if held is None:
            if len(s.scores) >= _MODELS_PER_SERIES:
                return
            held = s.scores[model] = OrderedDict()
        held.pop(item.key, None)
        held[item.key] = item.meta
        while len(held) > self.limits.max_slices:
            held.popitem(last=False)

    def _forget(self, key: tuple[str, str]) -> None:
        old = self._retained.pop(key, None)
        if old is not None:
            self._retained_bytes -= old.nbytes

    def retained(self, series: str, key: str) -> LiveSlice | None:
        """The latest slice with pixels received at place ``key`` of ``series`` (for a page browsing back);
        None when none came with an image or its pixels were dropped under ``FeedLimits``."""
        return self._retained.get((series, key))

    def snapshot(self) -> dict[str, Any]:
        """Every series as a page needs it on (re)connecting: its slices' descriptions and latest state."""
        return {
            "type": "hello",
            "change_classes": list(CHANGE_LEGEND),
            "series": [
                {
                    "uid": s.uid,
                    "slices": list(s.slices.values()),
                    "latest": s.latest,
                    "scores": [meta for held in s.scores.values() for meta in held.values()],
                }
                for s in self.series.values()
            ],
        }

    def latency(self) -> dict[str, Any]:
        """Publish-to-paint milliseconds as the pages measured them: count, p50, p90, max."""
        samples = sorted(self.paint_ms)
        if not samples:
            return {"count": 0, "p50": None, "p90": None, "max": None}

        def pct(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2)

        return {"count": len(samples), "p50": pct(0.5), "p90": pct(0.9), "max": round(samples[-1], 2)}
