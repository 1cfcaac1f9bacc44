"""What the node holds per open series until its outputs are written: bounded, and released once written.

:class:`OpenSeriesBuffer` holds the received instances of every open series until the series completes;
the outputs (:mod:`scanedge.dicomnet.outputs`) are built from what it hands out then. What a new output
needs kept per frame goes into :class:`HeldFrame` (the SEG's precedent: packed masks, packed probabilities).

Per received instance it keeps the DICOM header *without* its pixel data (highdicom needs the source
attributes: UIDs, patient and study modules, geometry, functional groups) and, per model and frame, the
label mask (or the quantised class probabilities for FRACTIONAL segmentations) compressed with zlib
(masks are mostly background and shrink to a few hundred bytes). The pixels themselves are dropped as
soon as the pipeline has run.

Bounds (:class:`SeriesLimits`): at most ``max_series`` series open at once and at most ``max_bytes``
held over all of them, counted as the header bytes plus the compressed masks. A new series past the
series cap, or an instance past the byte cap, first completes the series idle the longest (its SEG is
written early and the log says so); an instance that cannot fit even then is refused with
:class:`CapacityError` (C-STORE 0xA700). At most ``max_frames`` frames per series.

Completion: a series is complete when no instance has arrived for the series timeout, or, when the
listener is told to, when every association that sent instances of it has been released; instances
being processed count as activity, so a series is never completed under an instance still in flight.
An instance arriving after its series was completed opens the series anew (and yields a second SEG).

One series, one patient and one study: an instance whose Patient ID or Study Instance UID differs from
those of its series' first instance is refused (:class:`SeriesConflictError`, C-STORE 0xC000), so no SEG
ever references two patients. Instances that differ in geometry (frame of reference, orientation, or a
position another instance already has) are legitimate (localizers, multi-echo, diffusion) and are split
into SEG groups of their own by :mod:`scanedge.dicomnet.outputs.seg`.

(``OpenSeriesBuffer`` was called ``SeriesStore``, a name it shared with the runtime's lesion-load store; the
old name still works, with a DeprecationWarning.)
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge._moved import forward_names
from scanedge.errors import CapacityError, SeriesConflictError
from scanedge.imaging.heads import HeadScore, SeriesScore, SeriesScores
from scanedge.imaging.lesion_load import SliceKey
from scanedge.manifest import HeadSpec

if TYPE_CHECKING:  # the follow-up needs scipy and SimpleITK (the followup extra); the node runs without them
    from scanedge.imaging.followup import SeriesComparison

__all__ = [
    "ComparedSeries",
    "HeldFrame",
    "HeldInstance",
    "HeldMaskHead",
    "OpenSeries",
    "OpenSeriesBuffer",
    "SeriesLimits",
    "ShownSlice",
    "frame_number_key",
    "pack",
    "unpack",
]

_log = logging.getLogger("scanedge.dicomnet")


def pack(array: np.ndarray) -> bytes:
    """A uint8 array compressed (zlib level 1: a 512x512 mask in a fraction of a millisecond)."""
    return zlib.compress(np.ascontiguousarray(array, np.uint8).tobytes(), 1)


def unpack(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array :func:`pack` compressed, with its shape."""
    return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape)


def frame_number_key(instance_number: int | None, frame: int) -> int | None:
    """Where a frame's scores sit in its series' score aggregate: its instance's number and its order within
    the instance (None without a number: a place of its own). The node's live ``series_scores`` and its
    completed series' scores JSON and SR place frames by this one rule, so the last live score is theirs."""
    return None if instance_number is None else int(instance_number) * 100_000 + frame


@dataclass(frozen=True)
class ShownSlice:
    """A frame's RESULT as the node published it: what a later update of its series names (docs/protocol.md
    section 9).

    Attributes:
        instance: its SOP Instance UID.
        index: its ``index``.
        position_mm: its ``position_mm``.
        model: its ``model`` (name@version).
    """

    instance: str
    index: int | None
    position_mm: float | None
    model: str


@dataclass(frozen=True)
class SeriesLimits:
    """How much the listener holds while series are open.

    Attributes:
        max_series: series open at once.
        max_bytes: header bytes plus compressed masks (and series-model planes) held over all open series.
        max_frames: frames (slices) per series.
    """

    max_series: int = 32
    max_bytes: int = 512 * 1024 * 1024
    max_frames: int = 4096

    def __post_init__(self) -> None:
        if self.max_series < 1 or self.max_bytes < 1 or self.max_frames < 1:
            raise ValueError("series limits must be >= 1")


@dataclass(frozen=True, eq=False)
class HeldFrame:
    """One frame's results: per model name, the packed label mask and (FRACTIONAL) packed probabilities.

    Attributes:
        shape: (rows, columns) of the frame.
        masks: model name -> :func:`pack`-ed label mask.
        probabilities: model name -> :func:`pack`-ed (classes-1, rows, cols) probabilities x 255, or empty.
        scores: model name -> the frame's score heads (models with score heads only; for the ``scores`` output).
        heads: model name -> the frame's further mask heads, in manifest order (models with mask heads only;
            for the SEG's head segments).
        planes: model name -> the frame's place and its plane of the model's series-model volume (models with a
            series model only: :mod:`scanedge.imaging.series_model`), run when the series completes.
    """

    shape: tuple[int, int]
    masks: dict[str, bytes]
    probabilities: dict[str, bytes] = field(default_factory=dict)
    scores: dict[str, tuple[HeadScore, ...]] = field(default_factory=dict)
    heads: dict[str, tuple[HeldMaskHead, ...]] = field(default_factory=dict)
    planes: dict[str, tuple[SliceKey | None, np.ndarray]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held for this frame."""
        held = sum(map(len, self.masks.values())) + sum(map(len, self.probabilities.values()))
        held += sum(plane.nbytes for _, plane in self.planes.values())
        return held + sum(h.nbytes for heads in self.heads.values() for h in heads)


@dataclass(frozen=True, eq=False)
class HeldMaskHead:
    """One further mask head's result on one frame, as the SEG needs it.

    Attributes:
        label: the head's label (:func:`~scanedge.imaging.heads.head_labels`).
        mask: the :func:`pack`-ed label mask on the frame's grid.
        probabilities: the :func:`pack`-ed (classes-1, rows, cols) probabilities x 255 (FRACTIONAL), or empty.
        findings: the head's findings on the frame (JSON-ready, as :meth:`MaskHead.to_dict` has them).
    """

    label: str
    mask: bytes
    probabilities: bytes = b""
    findings: tuple[dict[str, Any], ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes held (the findings are a few hundred bytes at most per class: counted as 256 each)."""
        return len(self.mask) + len(self.probabilities) + 256 * len(self.findings)


@dataclass(frozen=True, eq=False)
class HeldInstance:
    """One received instance: its header without pixels, and its frames' results in frame order.

    Attributes:
        sop_instance_uid: the instance's SOP Instance UID.
        header: the pydicom Dataset without Pixel Data.
        header_bytes: about how many bytes the header holds (its encoded size).
        frames: one :class:`HeldFrame` per frame.
        spooled: the durable copy in the spool (removed once the series' SEGs are durable), or None.
    """

    sop_instance_uid: str
    header: Any
    header_bytes: int
    frames: tuple[HeldFrame, ...]
    spooled: Path | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held for this instance."""
        return self.header_bytes + sum(f.nbytes for f in self.frames)


@dataclass(frozen=True)
class ComparedSeries:
    """A completed series compared with its prior, for the outputs (the SR) to report.

    Attributes:
        comparison: the comparison; its report's tracking volume is in the z order of ``frames``.
        frames: (SOP Instance UID, frame number from 1) of the current series' image behind each z plane.
    """

    comparison: SeriesComparison
    frames: tuple[tuple[str, int], ...]


@dataclass(eq=False)
class OpenSeries:
    """A series being received.

    Attributes:
        series_uid: its Series Instance UID.
        instances: received instances by SOP Instance UID, in arrival order (a re-sent one replaces).
        last_activity: monotonic time of the last instance received or started.
        pending: instances being processed now.
        associations: ids of the associations that sent instances of it and are still open.
        ended: every association that sent it has been released (explicit end).
        early: completed before it was idle, to make room (series or byte cap).
        identity: (Patient ID, Study Instance UID) every instance of it must share; set by the first one.
        comparisons: per model name, the series compared with its prior at completion (set by the node's
            follow-up before the outputs are built; empty when follow-up is off).
        series_scores: per model with a series model, the series' scores with that model's answer, set at
            completion before the outputs are built (the scores JSON and the SR report them).
        live_scores: per model with score heads, the series' scores over the frames segmented so far, which the
            node's published RESULTs carry (kept only while it publishes; at most ``max_frames`` places each).
        shown: per model, the frame whose RESULT the node published last (the series-score update names it).
    """

    series_uid: str
    instances: OrderedDict[str, HeldInstance] = field(default_factory=OrderedDict)
    last_activity: float = 0.0
    pending: int = 0
    associations: set[int] = field(default_factory=set)
    ended: bool = False
    early: bool = False
    identity: tuple[str, str] | None = None
    comparisons: dict[str, ComparedSeries] = field(default_factory=dict)
    series_scores: dict[str, tuple[SeriesScore, ...]] = field(default_factory=dict)
    live_scores: dict[str, SeriesScores] = field(default_factory=dict)
    shown: dict[str, ShownSlice] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held for this series."""
        return sum(i.nbytes for i in self.instances.values())

    @property
    def frames(self) -> int:
        """Frames held for this series."""
        return sum(len(i.frames) for i in self.instances.values())


class OpenSeriesBuffer:
    """The received instances of every open series, held until the series completes; shared by the
    association threads and the completion thread (one lock)."""

    def __init__(self, limits: SeriesLimits, *, clock: Any = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._open: OrderedDict[str, OpenSeries] = OrderedDict()
        self._bytes = 0
        self._evicted: list[OpenSeries] = []

    @property
    def held_bytes(self) -> int:
        """Bytes held over all open series."""
        return self._bytes

    def open_series(self) -> list[str]:
        """UIDs of the series open now."""
        with self._lock:
            return list(self._open)

    def begin(self, series_uid: str, association: int, identity: tuple[str, str] | None = None) -> None:
        """An instance of ``series_uid`` starts processing: the series stays open until :meth:`finish`.

        ``identity`` is the instance's (Patient ID, Study Instance UID): SeriesConflictError, before anything
        is held, when it differs from the series' (the message names which, never the values)."""
        with self._lock:
            series = self._open.get(series_uid)
            if series is not None and identity is not None and series.identity is not None:
                what = [n for n, a, b in zip(("Patient ID", "Study Instance UID"), identity, series.identity) if a != b]
                if what:
                    raise SeriesConflictError(
                        f"its {' and '.join(what)} differ(s) from the rest of series {series_uid}; "
                        "one SEG never references two patients or studies"
                    )
            if series is None:
                if len(self._open) >= self.limits.max_series:
                    self._evict_one("the cap of open series")
                series = self._open[series_uid] = OpenSeries(series_uid, identity=identity)
            series.pending += 1
            series.last_activity = self._clock()
            series.associations.add(association)
            series.ended = False

    def finish(self, series_uid: str, instance: HeldInstance | None) -> HeldInstance | None:
        """The instance started by :meth:`begin` is done: hold it (None: it failed and is not held). Returns
        the earlier copy it replaces (same SOP Instance UID), if any.

        Raises :class:`CapacityError` when the instance alone would not fit even with every other series
        completed, or when its series has all the frames it may have."""
        with self._lock:
            series = self._open[series_uid]
            series.pending -= 1
            series.last_activity = self._clock()
            if instance is None:
                self._forget_if_empty(series)
                return None
            old = series.instances.get(instance.sop_instance_uid)
            if old is not None and old.spooled and instance.spooled and old.spooled.name > instance.spooled.name:
                return instance  # an older spooled copy (recovered at start) never replaces a newer one held
            old_bytes = old.nbytes if old is not None else 0
            frames = series.frames - (len(old.frames) if old is not None else 0) + len(instance.frames)
            if frames > self.limits.max_frames:
                self._forget_if_empty(series)
                raise CapacityError(
                    f"series {series_uid} already holds {series.frames} frames; at most {self.limits.max_frames} "
                    "are taken per series"
                )
            need = instance.nbytes - old_bytes
            while self._bytes + need > self.limits.max_bytes and self._evict_one("the cap of bytes held", series):
                pass
            if self._bytes + need > self.limits.max_bytes:
                self._forget_if_empty(series)
                raise CapacityError(
                    f"holding this instance would exceed the {self.limits.max_bytes} bytes the listener may hold"
                )
            series.instances[instance.sop_instance_uid] = instance
            series.instances.move_to_end(instance.sop_instance_uid)
            self._bytes += need
            return old

    def add_scores(
        self,
        series_uid: str,
        model: str,
        heads: tuple[HeadSpec, ...],
        scores: tuple[HeadScore, ...],
        place: int | None,
        shown: ShownSlice | None = None,
    ) -> tuple[SeriesScore, ...]:
        """Add one frame's ``scores`` under ``model`` to its open series' live scores (``place``:
        :func:`frame_number_key`) and return the series' scores with it; ``shown``: the frame's RESULT is being
        published. Between :meth:`begin` and :meth:`finish` of the frame's instance; () when the series is not
        open. Memory: at most ``max_frames`` places x classes x 8 bytes per model, less than the frames' own
        scores the series holds, so it is not counted apart."""
        with self._lock:
            series = self._open.get(series_uid)
            if series is None:
                return ()
            live = series.live_scores.get(model)
            if live is None:
                live = series.live_scores[model] = SeriesScores(heads, max_slices=self.limits.max_frames)
            if shown is not None:
                series.shown[model] = shown
            return live.add(scores, None, place)

    def released(self, association: int) -> None:
        """An association was released: series it sent, and no other open association is sending, end."""
        with self._lock:
            for series in self._open.values():
                if association in series.associations:
                    series.associations.discard(association)
                    if not series.associations:
                        series.ended = True

    def closed(self, association: int) -> None:
        """An association ended without release (aborted): it no longer counts as sending anything."""
        with self._lock:
            for series in self._open.values():
                series.associations.discard(association)

    def complete(self, idle_s: float, *, on_release: bool) -> list[OpenSeries]:
        """Take out the series that are complete now (and those evicted to make room), oldest first."""
        now = self._clock()
        with self._lock:
            done, self._evicted = self._evicted, []
            for uid, series in list(self._open.items()):
                if series.pending:
                    continue
                if now - series.last_activity >= idle_s or (on_release and series.ended):
                    done.append(self._take(uid))
            return done

    def drain(self) -> list[OpenSeries]:
        """Take out every series holding instances (at shutdown)."""
        with self._lock:
            done, self._evicted = self._evicted, []
            done += [self._take(uid) for uid in list(self._open)]
            return [s for s in done if s.instances]

    # --- under the lock ------------------------------------------------------------------------------

    def _take(self, uid: str) -> OpenSeries:
        series = self._open.pop(uid)
        self._bytes -= series.nbytes
        return series

    def _forget_if_empty(self, series: OpenSeries) -> None:
        if not series.instances and not series.pending:
            self._open.pop(series.series_uid, None)

    def _evict_one(self, why: str, keep: OpenSeries | None = None) -> bool:
        """Complete early the idle-longest series holding instances (not ``keep``, none in flight)."""
        candidates = [s for s in self._open.values() if s is not keep and s.instances and not s.pending]
        if not candidates:
            return False
        victim = min(candidates, key=lambda s: s.last_activity)
        victim.early = True
        self._evicted.append(self._take(victim.series_uid))
        _log.warning("series %s completed early to stay within %s", victim.series_uid, why)
        return True


__getattr__ = forward_names(__name__, {"SeriesStore": (__name__, "OpenSeriesBuffer")})
