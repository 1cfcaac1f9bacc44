"""The DICOM node serving a model with several inputs (manifest ``inputs``): series of one study paired.

A FLAIR + T1 model needs, for every FLAIR slice, the T1 slice at the same place. The two series arrive by
C-STORE interleaved in any order, on one association or several. What :class:`PairingIntake` does with
each received image (its role: the one the manifest's recognition rules give, else the reference role):

- a *partner* image (T1) is spooled durably, held in a bounded
  :class:`~scanedge.runtime.core.pairing.PairingBuffer`, and answered Success; any reference image that
  waited for it is segmented then, in the partner's association thread;
- a *reference* image (FLAIR) whose partners are held is segmented at once with
  :meth:`~scanedge.runtime.core.pipeline.Pipeline.run_inputs` (its RESULT published) and held in its series
  for the SEG, as a one-input model's image is;
- a reference image whose partner is not there yet is spooled, answered Success and *parked*: no thread
  waits. The node's completion thread ends the wait after the manifest's ``pairing.wait_s``: the image
  gets no mask, ``missing_input`` is counted and the log names the role, the series and the position
  lacking (:class:`~scanedge.errors.MissingInputError`'s message: UIDs and millimetres, never patient
  attributes). Its series' SEG covers the slices that were paired. A partner in another frame of reference
  is refused at once the same way (never paired).

Beside one-input models (``--model`` given several times), every image has two fates: it goes through each
one-input model as any image does (RESULTs published, held in its series for their SEGs) *and*, as above,
is held for pairing (a partner) or paired (a reference, whose held frames then carry both models' results).
The spooled file is shared by its fates (:meth:`~scanedge.dicomnet.spool.Spool.share`): a partner image's
file leaves the spool only once its series' outputs are durable *and* its study is done pairing; a
reference image answered MISSING_INPUT stays held for the one-input models' outputs, and leaves with them.

Durability: a parked reference image keeps its series open (it counts as in flight) and stays in the spool;
at stop it is left there and the next start pairs it again with the partners recovered from the spool (beside
one-input models, its one-input results are held for their outputs at stop, and the file kept all the same).
A partner image leaves the spool when its study has been idle for the series timeout plus the wait (no
reference slice can need it any more); a reference image answered MISSING_INPUT leaves it then too (its
outcome is final and counted). After a crash every spooled file is replayed through every fate: an output
written before the crash is written again, under the same UID.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanedge.dicomnet.intake import Intake, ReceivedImage, drop_pixels, held_mask_heads, identity, quantised
from scanedge.dicomnet.series import HeldFrame, HeldInstance, pack
from scanedge.errors import CapacityError, ConfigError, MissingInputError, ScanedgeError, redacted_traceback
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest
from scanedge.runtime.core.pairing import PairingBuffer, slices_by_role
from scanedge.runtime.wire.payloads import paired_inputs

__all__ = ["PairingIntake", "check_multi_input_models"]

log = logging.getLogger("scanedge.dicomnet")

#: series whose unpaired slices are remembered for their SEG's log line (the oldest forgotten past it)
_NOTED_SERIES = 1024


@dataclass(eq=False)
class _Reference:
    """A reference image taken in (spooled, answered or about to be) whose frames wait for their partners."""

    ds: Any
    header_bytes: int
    slices: list[Slice]
    series_uid: str
    instance_uid: str
    received_at: float
    received_mono: float
    decode_ms: float
    path: Path
    publish: bool
    deadline: float
    own: tuple[HeldFrame, ...] | None = None  # beside one-input models: their results for its frames

    def held(self, frames: tuple[HeldFrame, ...]) -> tuple[str, HeldInstance]:
        """(series, what to hold for its outputs) with ``frames``."""
        return self.series_uid, HeldInstance(self.instance_uid, self.ds, self.header_bytes, frames, spooled=self.path)

    @property
    def study(self) -> str:
        return self.slices[0].identity.study_uid


@dataclass(eq=False)
class _StudyFiles:
    """Spooled files of one study kept for pairing (partners, references answered MISSING_INPUT)."""

    paths: list[Path] = field(default_factory=list)
    last: float = 0.0


def check_multi_input_models(manifests: dict[str, Manifest]) -> str | None:
    """The name of the one multi-input model among ``manifests`` (None when there is none; one-input models may
    be served beside it); ConfigError when several are (one node pairs for one multi-input model)."""
    multi = [name for name, m in manifests.items() if m.inputs is not None]
    if not multi:
        return None
    if len(multi) > 1:
        raise ConfigError(
            f"models {', '.join(multi)} each take several series of one study; the DICOM node pairs the series "
            "of one multi-input model: run a node per multi-input model"
        )
    return multi[0]


class PairingIntake:
    """What :class:`~scanedge.dicomnet.intake.Intake` does with every image when its model has several inputs
    (thread-safe: association threads, recovery, and the completion thread's :meth:`expire_due`).

    Args:
        intake: the node's intake (pools, store, spool, publisher, stats).
        model: the multi-input model's name (its pool).
        manifest: its manifest (``inputs`` set).
        idle_s: the series timeout; a study's partners are dropped after it plus the wait.
    """

    def __init__(self, intake: Intake, model: str, manifest: Manifest, *, idle_s: float) -> None:
        assert manifest.inputs is not None, "only multi-input models are paired"
        self.intake = intake
        self.model = model
        self.manifest = manifest
        self.inputs = manifest.inputs
        self.buffer = PairingBuffer(manifest.inputs)
        self.wait_s = self.inputs.pairing.wait_s
        self.idle_s = idle_s
        #: the one-input models served beside it: every image goes through them too
        self.beside = tuple(name for name in intake.pools if name != model)
        self._lock = threading.Lock()  # parked references, kept files, and adding to the buffer
        self._parked: list[_Reference] = []
        self._files: dict[str, _StudyFiles] = {}
        self._unpaired: OrderedDict[str, int] = OrderedDict()  # series -> reference images without a mask

    @property
    def parked(self) -> int:
        """Reference images waiting for a partner."""
        with self._lock:
            return len(self._parked)

    # --- taking in one image ------------------------------------------------------------------------------

    def hold(self, image: ReceivedImage) -> None:
        """Intake.hold for a multi-input model: hold a partner, segment or park a reference (module docstring).
        Returns once the image is durably spooled (and, if it could be paired, segmented and held)."""
        role = self.inputs.recognise(image.slices[0]) or self.inputs.reference.role
        if role != self.inputs.reference.role:
            self._hold_partner(role, image)
            return
        ds, data, slices, spooled = image.ds, image.data, image.slices, image.spooled
        series_uid, instance_uid, association = image.series_uid, image.instance_uid, image.association
        received_at, received_mono, decode_ms = image.received_at, image.received_mono, image.decode_ms
        intake = self.intake
        intake.store.begin(series_uid, association, identity(ds))
        if self.beside and intake.followup is not None:
            intake.followup.begin(series_uid, ds)
        path = spooled
        try:
            own = None
            if self.beside:  # the first fate: every one-input model, as for any image
                own = intake.segment(
                    slices, series_uid, instance_uid, received_at, received_mono, decode_ms, publish=spooled is None
                )
            if path is None:
                path = self._spool(instance_uid, data)
            header_bytes = max(0, len(data) - drop_pixels(ds))
            ref = _Reference(
                ds,
                header_bytes,
                slices,
                series_uid,
                instance_uid,
                received_at,
                received_mono,
                decode_ms,
                path,
                publish=spooled is None,
                deadline=time.monotonic() + self.wait_s,
                own=own,
            )
            with self._lock:
                partners = self._partners(ref)
                if partners is None:
                    self._check_room(ref)
                    self._parked.append(ref)
                    log.debug("instance %s of series %s waits for its partner series", instance_uid, series_uid)
                    return
            held = None if isinstance(partners, MissingInputError) else self._segment(ref, partners)
        except BaseException:
            intake.store.finish(series_uid, None)
            if path is not None and spooled is None:
                intake.spool.discard(path)
            raise
        try:
            if held is None:
                assert isinstance(partners, MissingInputError)
                self._missing(ref, partners)
            else:
                self._keep(held)
        except BaseException:
            if spooled is None:
                intake.spool.discard(path)
            raise

    def _spool(self, instance_uid: str, data: bytes) -> Path:
        return self.intake.spool_image(instance_uid, data)

    def _hold_partner(self, role: str, image: ReceivedImage) -> None:
        """Hold a partner image for pairing; beside one-input models, first segmented and held in its series by
        them (its spooled file then has two owners, taken before either can let it go)."""
        slices, spooled, instance_uid, data = image.slices, image.spooled, image.instance_uid, image.data
        if self.beside:
            path = self.intake.hold_one_input(image, fates=2)
        else:
            path = spooled if spooled is not None else self._spool(instance_uid, data)
        study = slices[0].identity.study_uid
        with self._lock:
            for s in slices:
                self.buffer.add(role, s)
            files = self._files.setdefault(study, _StudyFiles())
            files.paths.append(path)
            files.last = time.monotonic()
            ready = []
            for ref in list(self._parked):
                found = self._partners(ref)
                if found is not None:
                    self._parked.remove(ref)
                    ready.append((ref, found))
        for ref, found in ready:  # in this partner's thread: its C-STORE answer waits for them (back-pressure)
            self._finish_parked(ref, found)

    def _partners(self, ref: _Reference) -> list[dict[str, Slice]] | MissingInputError | None:
        """Each frame's partners; None while one is missing; the error when one can never be paired."""
        found = []
        for s in ref.slices:
            try:
                partners = self.buffer.partners(s)
            except MissingInputError as exc:
                return exc
            if partners is None:
                return None
            found.append(partners)
        return found

    def _check_room(self, ref: _Reference) -> None:
        """CapacityError (0xA700, not taken) when parking ``ref`` would pass the pairing bounds: parked reference
        images keep their pixels, at most ``pairing.max_slices`` frames and ``pairing.max_bytes`` bytes in all."""
        policy = self.inputs.pairing
        frames = sum(len(r.slices) for r in self._parked) + len(ref.slices)
        nbytes = sum(s.pixels.nbytes for r in self._parked for s in r.slices) + sum(s.pixels.nbytes for s in ref.slices)
        if frames > policy.max_slices or nbytes > policy.max_bytes:
            raise CapacityError(
                f"{len(self._parked)} reference image(s) already wait for their partner series (at most "
                f"{policy.max_slices} frames, {policy.max_bytes} bytes); send the partner series first or later"
            )

    # --- a parked reference's end -------------------------------------------------------------------------

    def _finish_parked(self, ref: _Reference, found: list[dict[str, Slice]] | MissingInputError) -> None:
        """Segment (or answer MISSING_INPUT for) a reference image whose C-STORE was already answered."""
        try:
            if isinstance(found, MissingInputError):
                self._missing(ref, found)
                return
            held = self._segment(ref, found)
        except Exception as exc:  # answered Success already: it stays spooled for the next start
            self._failed(ref, exc)
            self._unsegmented(ref)
            return
        try:
            self._keep(held)
        except Exception as exc:
            self._failed(ref, exc)

    def _unsegmented(self, ref: _Reference) -> None:
        """A parked reference image ends without this model's result, its file left in the spool for the next
        start; beside one-input models their results are held all the same (their outputs written), the file
        keeping one more owner than they release."""
        if ref.own is None:
            self.intake.store.finish(ref.series_uid, None)
            return
        self.intake.spool.share(ref.path)
        try:
            self._keep(ref.held(ref.own))
        except Exception as exc:
            log.error(
                "instance %s of series %s: its one-input results could not be held (%s); it stays in the spool",
                ref.instance_uid,
                ref.series_uid,
                exc.message if isinstance(exc, ScanedgeError) else type(exc).__name__,
            )

    def _failed(self, ref: _Reference, exc: Exception) -> None:
        """A parked image answered Success already that could not be segmented: logged, left in the spool."""
        why = exc.message if isinstance(exc, ScanedgeError) else redacted_traceback(exc)
        with self.intake.lock:
            self.intake.stats.last_error = f"instance {ref.instance_uid} could not be segmented"
        log.error(
            "instance %s of series %s could not be segmented with its partners; it stays in the spool for the "
            "next start: %s",
            ref.instance_uid,
            ref.series_uid,
            why,
        )

    def expire_due(self, now: float | None = None) -> None:
        """End the wait of every parked reference image past its deadline (MISSING_INPUT), and drop the kept
        files of studies idle for the series timeout plus the wait (the completion thread calls it)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [r for r in self._parked if r.deadline <= now]
            answers: list[tuple[_Reference, list[dict[str, Slice]] | MissingInputError]] = []
            for ref in due:
                self._parked.remove(ref)
                found = self._partners(ref)
                if found is None:
                    try:
                        missing = next(s for s in ref.slices if self.buffer.partners(s) is None)
                        found = self.buffer.missing(missing, self.wait_s)
                    except MissingInputError as exc:
                        found = exc
                answers.append((ref, found))
            waiting = {r.study for r in self._parked}
            idle = [
                study
                for study, files in self._files.items()
                if study not in waiting and now - files.last >= self.idle_s + self.wait_s
            ]
            dropped = [self._files.pop(study) for study in idle]
            for study in idle:
                self.buffer.forget(study)
        for ref, found in answers:
            self._finish_parked(ref, found)
        for files in dropped:
            self.intake.spool.remove(files.paths)

    def stop(self) -> None:
        """At shutdown: parked reference images end unsegmented here and stay spooled (the next start pairs
        them again with the partners recovered from the spool)."""
        with self._lock:
            parked, self._parked = self._parked, []
        for ref in parked:
            self._unsegmented(ref)
        if parked:
            log.warning(
                "%d image(s) still waiting for their partner series stay in the spool; paired at the next start",
                len(parked),
            )

    def completion_note(self, series_uid: str) -> str:
        """What the log line of a completed series' SEG adds: how many of its images got no mask (and forgets it)."""
        with self._lock:
            unpaired = self._unpaired.pop(series_uid, 0)
        if not unpaired:
            return ""
        where = f"model {self.model}'s outputs" if self.beside else "it"
        return f"; {unpaired} image(s) without their partner (MISSING_INPUT) are not in {where}"

    # --- outcomes -----------------------------------------------------------------------------------------

    def _missing(self, ref: _Reference, error: MissingInputError) -> None:
        """No mask for this reference image: counted, logged (UIDs and positions only); its file is final (beside
        one-input models it is held for their outputs and leaves the spool with them)."""
        if ref.own is not None:
            self._keep(ref.held(ref.own))
        else:
            self.intake.store.finish(ref.series_uid, None)
        with self.intake.lock:
            self.intake.stats.missing_input += 1
            self.intake.stats.last_error = f"{error.code}: {error.message}"
        log.warning(
            "instance %s of series %s gets no mask (its series' SEG covers the paired slices): %s %s",
            ref.instance_uid,
            ref.series_uid,
            error.code,
            error.message,
        )
        with self._lock:
            self._unpaired[ref.series_uid] = self._unpaired.pop(ref.series_uid, 0) + 1
            while len(self._unpaired) > _NOTED_SERIES:
                self._unpaired.popitem(last=False)
            if ref.own is None:
                files = self._files.setdefault(ref.study, _StudyFiles())
                files.paths.append(ref.path)
                files.last = time.monotonic()

    def _segment(self, ref: _Reference, found: list[dict[str, Slice]]) -> tuple[str, HeldInstance]:
        """Run every frame with its partners and publish each RESULT; (series, what to hold for its SEG)."""
        intake = self.intake
        pool = intake.pools[self.model]
        try:
            pipe = pool.get(timeout=intake.busy_timeout_s)
        except queue.Empty:
            raise CapacityError(
                f"no {self.model} pipeline came free within {intake.busy_timeout_s:g} s; the node is busy"
            ) from None
        frames = []
        try:
            queue_ms = (time.monotonic() - ref.received_mono) * 1e3
            live = ref.publish and intake.publisher is not None
            for i, (slice_, partners) in enumerate(zip(ref.slices, found)):
                result = pipe.run_inputs(slices_by_role(slice_, partners, self.inputs), overlay=live)
                own = ref.own[i] if ref.own is not None else HeldFrame(slice_.shape[:2], {})
                probabilities = {self.model: pack(quantised(result, pipe.manifest))} if intake.probabilities else {}
                scores = {self.model: result.scores} if result.scores else {}
                heads = {self.model: held_mask_heads(result, intake.probabilities)} if result.mask_heads else {}
                frames.append(
                    HeldFrame(
                        slice_.shape[:2],
                        {**own.masks, self.model: pack(result.mask)},
                        {**own.probabilities, **probabilities},
                        {**own.scores, **scores},
                        {**own.heads, **heads},
                        own.planes,
                    )
                )
                index = slice_.identity.instance_number if len(ref.slices) == 1 else i + 1
                series_scores = intake.live_series_scores(
                    self.model, pipe, result, slice_, ref.series_uid, ref.instance_uid, i, index, published=ref.publish
                )
                if ref.publish:
                    intake.publish_result(
                        self.model,
                        pipe,
                        result,
                        slice_,
                        ref.series_uid,
                        ref.instance_uid,
                        index,
                        ref.received_at,
                        ref.received_mono,
                        queue_ms,
                        ref.decode_ms,
                        inputs=paired_inputs(self.inputs.reference.role, slice_, partners),
                        series_scores=series_scores,
                    )
        finally:
            pool.put(pipe)
        return ref.held(tuple(frames))

    def _keep(self, held: tuple[str, HeldInstance]) -> None:
        """Hold a segmented image in its series (ends its in-flight count); the copy it replaces leaves the spool."""
        replaced = self.intake.store.finish(*held)
        if replaced is not None and replaced.spooled is not None:
            self.intake.spool.remove([replaced.spooled])
