"""Serving a model with several inputs (manifest ``inputs``): SEGMENTs of several series become one result.

Each SEGMENT is one slice of one role (its ``role`` field; else the role its DICOM attributes match; else the
reference role). A partner role's slice is held in the model's
:class:`~scanedge.runtime.core.pairing.PairingBuffer` and answered at once with a RESULT that says so
(``inputs.held``, no findings, no frames). A reference slice whose partners are all held is segmented at
once; otherwise its job is *parked*, not run: no worker waits, so partners queued behind it are taken by the
same workers. The worker that holds the last partner runs every parked job it completes; a parked job whose
wait (the manifest's ``pairing.wait_s``) ends first is answered ``MISSING_INPUT`` by this module's timer
thread, which waits on a condition until the earliest deadline. One-input models never come here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scanedge.errors import MissingInputError, ProtocolError, ScanedgeError
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import Slice, SliceLimits
from scanedge.log_budget import LogBudget
from scanedge.manifest import Manifest
from scanedge.runtime.core.pairing import PairingBuffer
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.serving.scheduler import Job
from scanedge.runtime.serving.series_store import SeriesStore
from scanedge.runtime.serving.workers import (
    DEFERRED,
    Outcome,
    error_outcome,
    expired_outcome,
    outcome_of,
    result_reply_for,
)
from scanedge.runtime.wire.payloads import overlay_options, paired_inputs, slice_from_request
from scanedge.runtime.wire.protocol import Echo, PairedInputs, Timings, result_reply

__all__ = ["MultiInputServing"]

log = logging.getLogger("scanedge.runtime")


@dataclass(eq=False)
class _Parked:
    job: Job
    slice: Slice
    deadline: float
    decode_ms: float


class MultiInputServing:
    """The pairing state of every multi-input model a runtime serves, shared by its workers (thread-safe).

    ``emit`` hands an outcome to the I/O thread (the same callable the workers use); it is called for parked
    jobs, by the worker that completes them or by the timer thread when their wait ends.
    """

    def __init__(
        self,
        manifests: Mapping[str, Manifest],
        emit: Callable[[Job, Outcome], None],
        *,
        limits: SliceLimits,
        overlay: OverlayConfig,
        runtime: str,
        failure_log: LogBudget | None = None,
        series_store: SeriesStore | None = None,
    ) -> None:
        self.manifests = {name: m for name, m in manifests.items() if m.inputs is not None}
        self.buffers = {name: PairingBuffer(m.inputs) for name, m in self.manifests.items() if m.inputs is not None}
        self._emit = emit
        self._limits, self._overlay, self._runtime = limits, overlay, runtime
        self._failure_log, self._series_store = failure_log, series_store
        self._cond = threading.Condition()
        self._parked: list[_Parked] = []
        self._closed = False
        self._timer: threading.Thread | None = None

    def serves(self, model: str) -> bool:
        """Whether ``model`` takes several inputs (its SEGMENTs come here)."""
        return model in self.manifests

    @property
    def parked(self) -> int:
        """Reference slices waiting for a partner."""
        with self._cond:
            return len(self._parked)

    def close(self) -> None:
        """Stop the timer (parked jobs still unanswered are the I/O thread's to answer at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._timer is not None:
            self._timer.join(5.0)

    # --- one job --------------------------------------------------------------------------------------

    def process(self, job: Job, pipe: Pipeline) -> Outcome:
        """A worker's handling of one SEGMENT of a multi-input model: its outcome, or DEFERRED when parked."""
        req = job.request
        start = time.monotonic()
        if job.expired(start):
            return expired_outcome(job, start, self._runtime)
        try:
            t0 = time.perf_counter()
            slice_ = slice_from_request(req, job.payload.buffer, self._limits)
            decode_ms = (time.perf_counter() - t0) * 1e3
            manifest = self.manifests[job.model]
            inputs = manifest.inputs
            assert inputs is not None
            role = self._role(job, slice_, manifest)
            buffer = self.buffers[job.model]
            if role != inputs.reference.role:
                if job.shm is not None:  # the console's memory: held beyond this request, so copied
                    slice_ = dataclasses.replace(slice_, pixels=slice_.pixels.copy())
                with self._cond:
                    buffer.add(role, slice_)
                    ready = self._take_ready(job.model, buffer)
                held = self._held_reply(job, pipe, slice_, role, start, decode_ms)
                for parked, partners in ready:
                    self._emit(parked.job, self._finish(parked, pipe, partners))
                return held
            with self._cond:
                found = buffer.partners(slice_)
                if found is None:
                    until = time.monotonic() + inputs.pairing.wait_s
                    if job.deadline_mono is not None:  # past its deadline the slice is useless, paired or not
                        until = min(until, job.deadline_mono)
                    self._parked.append(_Parked(job, slice_, until, decode_ms))
                    self._start_timer()
                    self._cond.notify_all()
                    return DEFERRED
            return self._segment(job, pipe, slice_, found, decode_ms)
        except ScanedgeError as exc:
            return self._failed(job, exc)

    def _role(self, job: Job, slice_: Slice, manifest: Manifest) -> str:
        inputs = manifest.inputs
        assert inputs is not None
        named = job.request.role
        if named is not None:
            if named not in inputs.names:
                raise ProtocolError(
                    f"model {manifest.name} has no input role {named!r}; its roles are {', '.join(inputs.names)}"
                )
            return named
        if job.request.encoding == "dicom":
            recognised = inputs.recognise(slice_)
            if recognised is not None:
                return recognised
        return inputs.reference.role

    def _take_ready(self, model: str, buffer: PairingBuffer) -> list[tuple[_Parked, dict[str, Slice] | ScanedgeError]]:
        """Parked jobs of ``model`` whose partners are all held now (or can never be): taken off the list."""
        ready: list[tuple[_Parked, dict[str, Slice] | ScanedgeError]] = []
        for parked in list(self._parked):
            if parked.job.model != model:
                continue
            try:
                found: dict[str, Slice] | ScanedgeError | None = buffer.partners(parked.slice)
            except MissingInputError as exc:
                found = exc
            if found is not None:
                self._parked.remove(parked)
                ready.append((parked, found))
        return ready

    def _finish(self, parked: _Parked, pipe: Pipeline, partners: dict[str, Slice] | ScanedgeError) -> Outcome:
        try:
            if isinstance(partners, ScanedgeError):
                raise partners
            now = time.monotonic()
            if parked.job.expired(now):
                return expired_outcome(parked.job, now, self._runtime)
            return self._segment(parked.job, pipe, parked.slice, partners, parked.decode_ms)
        except ScanedgeError as exc:
            return self._failed(parked.job, exc)
        except Exception:  # a bug on another request's behalf: answer it, keep this worker serving
            log.exception("internal error completing a paired request")
            return error_outcome(parked.job, "INTERNAL", "internal error in the runtime (pairing; logged there)")

    def _failed(self, job: Job, exc: ScanedgeError) -> Outcome:
        if self._failure_log is None or self._failure_log.allow(exc.code):
            req = job.request
            log.warning("request %r (series %s) failed: %s %s", req.id, req.series or "-", exc.code, exc.message)
        return error_outcome(job, exc, runtime=self._runtime)

    # --- replies --------------------------------------------------------------------------------------

    def _held_reply(
        self, job: Job, pipe: Pipeline, slice_: Slice, role: str, start: float, decode_ms: float
    ) -> Outcome:
        req, ident = job.request, slice_.identity
        series, instance = req.series or ident.series_uid, req.instance or ident.sop_instance_uid
        header = result_reply(
            Echo(req.id, series, instance, _number(job, slice_), req.sent_at),
            model=pipe.model_label,
            engine=pipe.engine.backend,
            timings=Timings(
                queue=round((start - job.received_mono) * 1e3, 4),
                decode=round(decode_ms, 4),
                total=round((time.monotonic() - job.received_mono) * 1e3, 4),
            ),
            findings=(),
            frames=(),
            received_at=job.received_at,
            runtime=self._runtime,
            position_mm=_rounded(slice_.geometry.position_along_normal),
            inputs=PairedInputs(role=role, held=True),
        )
        return outcome_of(header)

    def _segment(
        self, job: Job, pipe: Pipeline, reference: Slice, partners: dict[str, Slice], decode_ms: float
    ) -> Outcome:
        req = job.request
        queue_ms = (time.monotonic() - job.received_mono) * 1e3
        manifest = self.manifests[job.model]
        assert manifest.inputs is not None
        ref_role = manifest.inputs.reference.role
        want_overlay = "overlay" in req.outputs
        result = pipe.run_inputs(
            {ref_role: reference, **partners},
            overlay=(overlay_options(req, self._overlay) or True) if want_overlay else False,
            ignore_scope=req.ignore_scope,
        )
        inputs = paired_inputs(ref_role, reference, partners)
        header, payload = result_reply_for(
            job, pipe, result, reference, queue_ms, decode_ms, self._runtime, self._series_store, inputs=inputs
        )
        return outcome_of(header, tuple(payload))

    # --- the wait's end -------------------------------------------------------------------------------

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._expire_loop, name="scanedge-pairing", daemon=True)
            self._timer.start()

    def _expire_loop(self) -> None:
        while not self._closed:
            try:
                self._expire_due()
            except Exception:  # a bug answering one request: log it, keep answering the others
                log.exception("the pairing timer failed once; it carries on")

    def _expire_due(self) -> None:
        """Wait until the earliest parked deadline (or close), then answer every parked job that is due."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [p for p in self._parked if p.deadline <= now]
                if due:
                    break
                earliest = min((p.deadline for p in self._parked), default=None)
                self._cond.wait(None if earliest is None else earliest - now)
            if self._closed:
                return
            for p in due:
                self._parked.remove(p)
            answers = []
            for p in due:
                buffer = self.buffers[p.job.model]
                try:  # a partner that came would have completed it under this lock: it is missing
                    error = buffer.missing(p.slice, buffer.policy.wait_s)
                except MissingInputError as exc:
                    error = exc
                answers.append((p, error))
        for p, error in answers:
            try:
                now = time.monotonic()
                if p.job.deadline_mono is not None and now >= p.job.deadline_mono:
                    self._emit(p.job, expired_outcome(p.job, now, self._runtime))
                    continue
                self._emit(p.job, self._failed(p.job, error))
            except Exception:
                log.exception("answering a request whose partner did not come failed")


def _number(job: Job, slice_: Slice) -> int | None:
    return job.request.index if job.request.index is not None else slice_.identity.instance_number


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
