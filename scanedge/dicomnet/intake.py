"""One received image taken in: segmented by every model (each RESULT published live), spooled, held.

The same path serves a C-STORE (:mod:`scanedge.dicomnet.handlers`) and an image an earlier run spooled,
segmented again at start (:meth:`scanedge.dicomnet.listener.DicomListener` recovery): pipelines are
borrowed from the node's pools, the frames' results kept packed for the outputs
(:class:`~scanedge.dicomnet.series.HeldFrame`), the image fsync'd into the spool before it counts as
held. What a new output needs kept per frame is computed in :meth:`Intake.segment`.

Every frame's RESULT is built by the protocol's own builders (:func:`~scanedge.runtime.wire.protocol.result_reply`,
:func:`~scanedge.runtime.wire.payloads.result_frames`) and published as docs/protocol.md section 9 says; the
``id`` is a number the node counts up. A model with score heads has each RESULT carry its series' ``series_scores``
so far (kept in the open series, :meth:`~scanedge.dicomnet.series.OpenSeriesBuffer.add_scores`); a head's 3-D
series model's final score goes out at completion as a series-score update (:meth:`Intake.publish_series_scores`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.dicomnet.series import (
    HeldFrame,
    HeldInstance,
    HeldMaskHead,
    OpenSeries,
    OpenSeriesBuffer,
    ShownSlice,
    frame_number_key,
    pack,
)
from scanedge.dicomnet.spool import Spool
from scanedge.dicomnet.stats import ListenerStats
from scanedge.errors import CapacityError, ScanedgeError
from scanedge.imaging.heads import HeadScore, SeriesScore, for_wire
from scanedge.imaging.lesion_load import SliceKey, slice_key
from scanedge.imaging.overlay import display_image
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest
from scanedge.runtime.core.pipeline import Pipeline, SliceResult
from scanedge.runtime.wire.payloads import head_mask_frames, pipeline_reply, result_frames
from scanedge.runtime.wire.protocol import PROTOCOL_VERSION, Echo, PairedInputs, Result, encode, publish_topic

if TYPE_CHECKING:
    from scanedge.dicomnet.followup import ChangeUpdate, NodeFollowup
    from scanedge.imaging.followup import SeriesChange

__all__ = [
    "PUBLISHED_OUTPUTS",
    "Intake",
    "ReceivedImage",
    "drop_pixels",
    "frame_key",
    "held_mask_heads",
    "identity",
    "quantised",
    "series_scores_message",
    "update_message",
]

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
#: the frames each published RESULT carries (section 4's names); ``change`` once the slice has been compared
#: with the prior (follow-up on); ``saliency`` when the model declares a saliency head; ``mask:LABEL`` per further
#: mask head of the model
PUBLISHED_OUTPUTS = ("mask", "overlay", "image", "change", "saliency", "head_masks")


@dataclass(frozen=True)
class ReceivedImage:
    """One image as the node took it in: read and decoded, not yet segmented, spooled or held.

    Attributes:
        ds: its dataset (pixel data still in it).
        data: its Part-10 bytes, as they go into the spool.
        slices: its frames, decoded.
        series_uid: its Series Instance UID, checked.
        instance_uid: its SOP Instance UID, checked.
        association: the association it came on (the series' completion counts associations).
        received_at: wall-clock time it came in.
        received_mono: the same on the monotonic clock.
        decode_ms: time spent reading and decoding it.
        spooled: where it already lies in the spool (an image recovered after a restart); None: not yet.
    """

    ds: Any
    data: bytes
    slices: list[Slice]
    series_uid: str
    instance_uid: str
    association: int
    received_at: float
    received_mono: float
    decode_ms: float
    spooled: Path | None = None


class Intake:
    """Segments, publishes, spools and holds received images (any association thread, and recovery).

    Args:
        pools: per model name, its pipelines (one image per pipeline at a time).
        store: where held instances wait for their series to complete.
        spool: where each image is fsync'd before it is held.
        publisher: the live feed, or None.
        stats: the node's counters, updated under ``lock``.
        runtime_id: the ``runtime`` every RESULT names.
        busy_timeout_s: how long an image waits for a free pipeline (then CapacityError).
        probabilities: keep each frame's quantised class probabilities (an output needs them).
        followup: the node's follow-up (each frame's mask compared with the prior; RESULTs carry ``change``),
            or None.
    """

    def __init__(
        self,
        pools: Mapping[str, queue.Queue[Pipeline]],
        store: OpenSeriesBuffer,
        spool: Spool,
        publisher: ResultPublisher | None,
        stats: ListenerStats,
        lock: threading.Lock,
        *,
        runtime_id: str,
        busy_timeout_s: float,
        probabilities: bool,
        followup: NodeFollowup | None = None,
    ) -> None:
        self.pools = pools
        self.store = store
        self.spool = spool
        self.publisher = publisher
        self.stats = stats
        self.lock = lock
        self.runtime_id = runtime_id
        self.busy_timeout_s = busy_timeout_s
        self.probabilities = probabilities
        self.followup = followup
        self._ids = itertools.count(1)
        #: a multi-input model's pairing (:mod:`scanedge.dicomnet.pairing_intake`), set by the listener; None: one input
        self.pairing: Any = None
        if followup is not None and publisher is not None:
            followup.sink = self.publish_updates

    def hold(self, image: ReceivedImage) -> None:
        """Segment (publishing live), spool durably (unless ``image.spooled`` already is), then hold for the outputs.

        Raises what the C-STORE status will say; a spooled copy of an instance that is not held is removed."""
        if self.pairing is not None:  # a multi-input model: its images paired across the series of a study
            self.pairing.hold(image)
            return
        self.hold_one_input(image)

    def hold_one_input(self, image: ReceivedImage, *, fates: int = 1) -> Path:
        """:meth:`hold` by the one-input models: segment, spool, hold in the series; returns the spooled file.

        ``fates``: how many owners the spooled file has, this series' outputs being one; the others (a
        multi-input model's pairing) each :meth:`~scanedge.dicomnet.spool.Spool.remove` it once done. Their
        references are taken before the image is held, so the series' outputs can never delete it first."""
        ds, data, slices, spooled = image.ds, image.data, image.slices, image.spooled
        series_uid, instance_uid, association = image.series_uid, image.instance_uid, image.association
        received_at, received_mono, decode_ms = image.received_at, image.received_mono, image.decode_ms
        self.store.begin(series_uid, association, identity(ds))
        if self.followup is not None:
            self.followup.begin(series_uid, ds)  # the prior lookup starts with the series' first instance
        path = spooled
        try:
            frames = self.segment(
                slices, series_uid, instance_uid, received_at, received_mono, decode_ms, publish=spooled is None
            )
            if path is None:
                path = self.spool_image(instance_uid, data, fates)
            elif fates > 1:
                self.spool.share(path, fates - 1)
            header_bytes = len(data) - drop_pixels(ds)
            held = HeldInstance(instance_uid, ds, max(0, header_bytes), frames, spooled=path)
        except BaseException:
            self.store.finish(series_uid, None)
            if path is not None and spooled is None:
                self.spool.discard(path)
            raise
        try:
            replaced = self.store.finish(series_uid, held)
        except BaseException:
            if spooled is None:
                self.spool.discard(path)
            raise
        if replaced is not None and replaced.spooled is not None:  # the earlier of two copies: as in the SEG
            self.spool.remove([replaced.spooled])
        return path

    def spool_image(self, instance_uid: str, data: bytes, fates: int = 1) -> Path:
        """Write a received image durably into the spool (counted and named in the status when the disk refuses)."""
        try:
            return self.spool.write(instance_uid, data, fates=fates)
        except ScanedgeError as exc:
            with self.lock:
                self.stats.spool_failures += 1
                self.stats.last_error = f"{exc.code}: {exc.message}"
            raise

    def segment(
        self,
        slices: list[Slice],
        series_uid: str,
        instance_uid: str,
        received_at: float,
        received_mono: float,
        decode_ms: float,
        *,
        publish: bool = True,
    ) -> tuple[HeldFrame, ...]:
        """Every frame through every one-input model, each RESULT published as soon as it is ready (``publish``);
        a multi-input model's frames are run by its pairing (:mod:`scanedge.dicomnet.pairing_intake`)."""
        masks: list[dict[str, bytes]] = [{} for _ in slices]
        probabilities: list[dict[str, bytes]] = [{} for _ in slices]
        scores: list[dict[str, tuple[HeadScore, ...]]] = [{} for _ in slices]
        heads: list[dict[str, tuple[HeldMaskHead, ...]]] = [{} for _ in slices]
        planes: list[dict[str, tuple[SliceKey | None, np.ndarray]]] = [{} for _ in slices]
        for name, pool in self.pools.items():
            if self.pairing is not None and name == self.pairing.model:
                continue
            try:
                pipe = pool.get(timeout=self.busy_timeout_s)
            except queue.Empty:
                raise CapacityError(
                    f"no {name} pipeline came free within {self.busy_timeout_s:g} s; the node is busy"
                ) from None
            try:
                queue_ms = (time.monotonic() - received_mono) * 1e3
                k = pipe.manifest.input.context_slices
                for i, slice_ in enumerate(slices):
                    context = context_window(slices, i, k) if k else ()
                    live = publish and self.publisher is not None
                    result = pipe.run(slice_, context=context, overlay=live)
                    masks[i][name] = pack(result.mask)
                    if self.followup is not None:
                        self.followup.add(series_uid, name, slice_, result.mask)
                    if self.probabilities:
                        probabilities[i][name] = pack(quantised(result, pipe.manifest))
                    if result.scores:
                        scores[i][name] = result.scores
                    if result.mask_heads:
                        heads[i][name] = held_mask_heads(result, self.probabilities)
                    if pipe.series_model is not None:  # the frame's plane of the series model's volume
                        planes[i][name] = (frame_key(slice_, i, len(slices)), pipe.series_model.plane(slice_))
                    index = slice_.identity.instance_number if len(slices) == 1 else i + 1
                    series_scores = self.live_series_scores(
                        name, pipe, result, slice_, series_uid, instance_uid, i, index, published=publish
                    )
                    if not publish:
                        continue
                    self.publish_result(
                        name,
                        pipe,
                        result,
                        slice_,
                        series_uid,
                        instance_uid,
                        index,
                        received_at,
                        received_mono,
                        queue_ms,
                        decode_ms,
                        series_scores=series_scores,
                    )
            finally:
                pool.put(pipe)
        return tuple(
            HeldFrame(slice_.shape[:2], masks[i], probabilities[i], scores[i], heads[i], planes[i])
            for i, slice_ in enumerate(slices)
        )

    def live_series_scores(
        self,
        name: str,
        pipe: Pipeline,
        result: SliceResult,
        slice_: Slice,
        series_uid: str,
        instance_uid: str,
        frame: int,
        index: int | None,
        *,
        published: bool,
    ) -> tuple[SeriesScore, ...]:
        """The series' scores under model ``name`` with this frame's (its ``frame``-th of its instance) added:
        what its published RESULT carries (docs/protocol.md section 9). Kept in the open series
        (:meth:`OpenSeriesBuffer.add_scores`) only while the node publishes; ``published``: the frame's RESULT is
        published (recovered frames count in the scores, but an update never names them)."""
        if self.publisher is None or not result.scores:
            return ()
        shown = None
        if published:
            position = slice_.geometry.position_along_normal
            shown = ShownSlice(instance_uid, index, None if position is None else round(position, 4), pipe.model_label)
        place = frame_number_key(slice_.identity.instance_number, frame)
        return self.store.add_scores(series_uid, name, pipe.manifest.heads, result.scores, place, shown)

    def publish_result(
        self,
        name: str,
        pipe: Pipeline,
        result: SliceResult,
        slice_: Slice,
        series_uid: str,
        instance_uid: str,
        index: int | None,
        received_at: float,
        received_mono: float,
        queue_ms: float,
        decode_ms: float,
        inputs: PairedInputs | None = None,
        series_scores: Sequence[SeriesScore] = (),
    ) -> None:
        """One frame's RESULT, built by the protocol's builders and published (section 9); ``inputs``: a
        multi-input model's roles (section 3.2, :func:`~scanedge.runtime.wire.payloads.paired_inputs`);
        ``series_scores``: its series' scores so far (:meth:`live_series_scores`)."""
        with self.lock:
            self.stats.results += 1
        if self.publisher is None:
            return

        def send(change: SeriesChange | None, plane: np.ndarray | None) -> None:
            assert self.publisher is not None
            arrays = {
                "mask": result.mask,
                "overlay": result.overlay,
                "probabilities": result.probabilities,
                "image": display_image(slice_),
                "change": plane,
                "saliency": result.saliency[0].normalized() if result.saliency else None,
            }
            of = result.saliency[0].of if result.saliency else ""
            infos, payload, encode_ms = result_frames(
                PUBLISHED_OUTPUTS, arrays, "raw", head_mask_frames(result, pipe.manifest), saliency_of=of
            )
            header = pipeline_reply(
                Echo(next(self._ids), series_uid, instance_uid, index, None),
                result,
                model=pipe.model_label,
                backend=pipe.engine.backend,
                frames=infos,
                queue_ms=queue_ms,
                decode_ms=decode_ms,
                encode_ms=encode_ms,
                received_mono=received_mono,
                received_at=received_at,
                runtime=self.runtime_id,
                position_mm=slice_.geometry.position_along_normal,
                series_scores=series_scores,
                change=change,
                inputs=inputs,
            )
            self.publisher.publish([publish_topic(series_uid), encode(header), *payload])

        if self.followup is None:
            send(None, None)
        else:  # ordered with the change updates of its series (docs/protocol.md section 9)
            self.followup.publish(series_uid, name, slice_, (instance_uid, index, pipe.model_label), send)

    def publish_updates(self, series_uid: str, updates: Sequence[ChangeUpdate]) -> None:
        """Publish a series' change updates (docs/protocol.md section 9): per slice, a RESULT with its
        series, instance, index and ``change``, ``update`` true, and its ``change`` frame as its only frame (none
        while the slice is not compared). Called by the follow-up after a comparison, off the C-STORE path."""
        if self.publisher is None:
            return
        for item in updates:
            self.publisher.publish(update_message(next(self._ids), series_uid, item, self.runtime_id))

    def publish_series_scores(self, series: OpenSeries, name: str) -> bool:
        """Publish a completed series' final scores under model ``name`` (its series model's answer, or its failed
        status: ``series.series_scores``) as an update of the frame the node published last for that model
        (docs/protocol.md section 9, series-score update); False when there is nothing to publish (no feed, no
        final scores, or no frame of the series published for that model). The completion thread calls it."""
        scores = series.series_scores.get(name)
        shown = series.shown.get(name)
        if self.publisher is None or not scores or shown is None:
            return False
        message = series_scores_message(next(self._ids), series.series_uid, shown, scores, self.runtime_id)
        self.publisher.publish(message)
        return True


def update_message(request_id: int, series_uid: str, item: ChangeUpdate, runtime: str) -> list[Any]:
    """The published message of one change update (docs/protocol.md section 9): topic, a RESULT with the slice's
    series, instance, index, position and model, its ``change`` and ``update`` true, and the ``change`` frame as
    its only frame (none while the slice is not compared)."""
    infos, payload, _ = result_frames(("change",), {"change": item.plane}, "raw")
    shown = ShownSlice(item.instance, item.index, item.position_mm, item.model)
    header = _update_header(request_id, series_uid, shown, runtime, frames=infos, change=item.change)
    return [publish_topic(series_uid), encode(header), *payload]


def series_scores_message(
    request_id: int, series_uid: str, shown: ShownSlice, scores: Sequence[SeriesScore], runtime: str
) -> list[Any]:
    """The published message of a series-score update (docs/protocol.md section 9): topic, and a RESULT naming the
    slice ``shown`` (series, instance, index, position and model as its RESULT carried them) with the series' final
    ``series_scores`` (bounded as every RESULT's) and ``update`` true; no frames, no slice ``scores``."""
    _, wire = for_wire((), scores)
    header = _update_header(request_id, series_uid, shown, runtime, series_scores=wire)
    return [publish_topic(series_uid), encode(header)]


def _update_header(request_id: int, series_uid: str, shown: ShownSlice, runtime: str, **carried: Any) -> Result:
    """An update's RESULT: the published slice it names, ``update`` true, and what it ``carried`` (its change and
    frames, or the series' scores); findings empty, timings zero."""
    now = time.time()
    return Result(
        version=PROTOCOL_VERSION,
        id=request_id,
        series=series_uid,
        instance=shown.instance,
        index=shown.index,
        model=shown.model,
        received_at=now,
        replied_at=now,
        runtime=runtime,
        position_mm=shown.position_mm,
        update=True,
        **carried,
    )


def frame_key(slice_: Slice, i: int, frames: int) -> SliceKey | None:
    """Where a frame sits in its series' series-model volume: its position along the normal; without one its
    instance number (a multi-frame instance's frames in their order within it, as the scores JSON places them)."""
    number = slice_.identity.instance_number
    if number is not None and frames > 1:
        number = int(number) * 100_000 + i
    return slice_key(slice_.geometry, number)


def identity(ds: Any) -> tuple[str, str]:
    """(Patient ID, Study Instance UID): what every instance of one series must share (compared, never logged)."""
    return (str(ds.get("PatientID", "") or "").strip(), str(ds.get("StudyInstanceUID", "") or "").strip())


def drop_pixels(ds: Any) -> int:
    """Remove the pixel data from ``ds`` (the outputs need only the header); returns its length in bytes."""
    dropped = 0
    for tag in _PIXEL_TAGS:
        if tag in ds:
            value = ds[tag].value
            dropped += len(value) if isinstance(value, (bytes, bytearray)) else 0
            del ds[tag]
    return dropped


def held_mask_heads(result: SliceResult, probabilities: bool) -> tuple[HeldMaskHead, ...]:
    """What the node holds of a frame's further mask heads for its SEG: each head's packed label mask, with
    ``probabilities`` its foreground probabilities on the slice's grid as uint8 (x 255), and its findings."""
    import cv2
    import numpy as np

    out = []
    for head in result.mask_heads:
        planes = b""
        if probabilities:
            rows, cols = head.mask.shape
            # one plane per foreground class: the last ones (a softmax head's first plane is its background)
            channels = head.probabilities[head.probabilities.shape[0] - len(head.findings) :]
            resized = [cv2.resize(p, (cols, rows), interpolation=cv2.INTER_LINEAR) for p in channels]
            stacked = np.stack(resized) if resized else np.zeros((0, rows, cols), np.float32)
            planes = pack(np.rint(np.clip(stacked, 0.0, 1.0) * 255).astype(np.uint8))
        findings = tuple(f.to_dict() for f in head.findings)
        out.append(HeldMaskHead(head.label or head.head, pack(head.mask), planes, findings))
    return tuple(out)


def quantised(result: SliceResult, manifest: Manifest) -> Any:
    """The foreground classes' probabilities on the slice's grid, as uint8 (x 255), for FRACTIONAL SEGs."""
    import numpy as np

    if manifest.output is None:  # no mask output: no planes (its further mask heads are held on their own)
        return np.zeros((0, *result.mask.shape), np.uint8)
    planes = result.probabilities_on_slice(
        1 if manifest.output is not None and manifest.output.activation == "softmax" else 0
    )
    return np.rint(np.clip(planes, 0.0, 1.0) * 255).astype(np.uint8)
