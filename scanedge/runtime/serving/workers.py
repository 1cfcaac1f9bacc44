"""Inference workers and their supervision: a job taken is a job answered, whatever happens to the worker.

A worker is a thread with its own pipelines (engines are not thread-safe). It takes jobs from the
:class:`LatestSliceScheduler`, runs them, and hands each outcome to the I/O thread, which alone talks to
sockets. The guarantee is structural: the worker wraps each job in one ``try/finally`` that always emits
an outcome (a RESULT, a typed ERROR, or INTERNAL for a bug), and the :class:`WorkerPool`, polled by the
I/O thread, answers the job of a worker that died anyway, declares a worker stuck in inference past the
job timeout *wedged* (its job answered ``ENGINE_TIMEOUT``), and starts a replacement in both cases. The
I/O thread drops a second outcome for the same job, so a late worker can never answer twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scanedge.errors import EngineTimeoutError, ScanedgeError, redacted_traceback
from scanedge.imaging.heads import SeriesScore
from scanedge.imaging.lesion_load import slice_key
from scanedge.imaging.overlay import OverlayConfig, display_image
from scanedge.imaging.slices import Slice, SliceLimits
from scanedge.log_budget import LogBudget
from scanedge.runtime.core.pipeline import Pipeline, SliceResult
from scanedge.runtime.serving.keep_warm import ArrivalPacer, KeepWarmConfig
from scanedge.runtime.serving.scheduler import Job, LatestSliceScheduler
from scanedge.runtime.serving.series_store import SeriesStore
from scanedge.runtime.wire.payloads import (
    head_mask_frames,
    overlay_options,
    pipeline_reply,
    result_frames,
    slice_from_request,
)
from scanedge.runtime.wire.protocol import Echo, Error, PairedInputs, Result, encode, error_reply

__all__ = [
    "DEFERRED",
    "Outcome",
    "Worker",
    "WorkerPool",
    "error_outcome",
    "expired_outcome",
    "internal_outcome",
    "outcome_of",
    "result_reply_for",
    "run_job",
]
if TYPE_CHECKING:
    from scanedge.runtime.core.followup import SeriesFollowups
    from scanedge.runtime.serving.series_completion import SeriesCompletions


log = logging.getLogger("scanedge.runtime")

Pipelines = dict[str, Pipeline]


@dataclass(frozen=True, eq=False)
class Outcome:
    """A job's reply, ready to send: the header struct (for counters), its encoded frame, payload frames.

    Attributes:
        header: the RESULT or ERROR header.
        encoded: the header as its wire frame.
        payload: the frames after the header (mask, overlay, probabilities), in the header's order.
    """

    header: Result | Error
    encoded: bytes
    payload: tuple[Any, ...] = ()


def _outcome(header: Result | Error, payload: tuple[Any, ...] = ()) -> Outcome:
    return Outcome(header, encode(header), payload)


def outcome_of(header: Result | Error, payload: tuple[Any, ...] = ()) -> Outcome:
    """The outcome carrying ``header`` (encoded once, here) and its payload frames."""
    return _outcome(header, payload)


#: what a job's processing returns when the job is answered later by someone else (a multi-input model's
#: reference slice parked until its partner arrives: runtime.serving.multi_input); the worker emits nothing
DEFERRED = Outcome(Error(version=1, id=None, code="DEFERRED"), b"")


def error_outcome(job: Job, error: ScanedgeError | str, message: str = "", runtime: str = "") -> Outcome:
    """The ERROR reply to ``job`` for a typed error, or for a bare code (``"SUPERSEDED"``) with ``message``."""
    return _outcome(error_reply(job.echo, error, message, received_at=job.received_at, runtime=runtime))


def internal_outcome(job: Job, what: str, runtime: str = "") -> Outcome:
    """The INTERNAL error reply to ``job``; ``what`` says in a few words what failed (no details: those are
    logged in the runtime, not sent to the console)."""
    return error_outcome(job, "INTERNAL", f"internal error in the runtime ({what}; logged there)", runtime)


def expired_outcome(job: Job, now: float, runtime: str = "") -> Outcome:
    """The EXPIRED reply, whether the I/O thread's sweep or a worker finds the deadline passed."""
    waited = (now - job.received_mono) * 1e3
    return error_outcome(
        job, "EXPIRED", f"deadline of {job.request.deadline_ms} ms passed after {waited:.1f} ms in the queue", runtime
    )


def run_job(
    job: Job,
    pipe: Pipeline,
    limits: SliceLimits,
    overlay: OverlayConfig,
    runtime: str,
    failure_log: LogBudget | None = None,
    series_store: SeriesStore | None = None,
    followups: SeriesFollowups | None = None,
    completions: SeriesCompletions | None = None,
) -> Outcome:
    """Segment one job's slice and build its RESULT; a typed failure becomes its ERROR (logged within
    ``failure_log``'s budget: failures are the peer's to cause). With a ``series_store``, a slice of a
    series also updates that series' lesion load, which the RESULT carries; with ``followups``, its
    comparison with the series' prior (``change``, and the ``change`` frame when asked for). A series' last
    slice (``last``) to a model with a series model is answered by ``completions`` once it has run
    (:data:`DEFERRED` here)."""
    req = job.request
    start = time.monotonic()
    if job.expired(start):
        return expired_outcome(job, start, runtime)
    queue_ms = (start - job.received_mono) * 1e3
    try:
        t0 = time.perf_counter()
        slice_ = slice_from_request(req, job.payload.buffer, limits)
        decode_ms = (time.perf_counter() - t0) * 1e3
        want_overlay = "overlay" in req.outputs
        result = pipe.run(
            slice_,
            overlay=(overlay_options(req, overlay) or True) if want_overlay else False,
            ignore_scope=req.ignore_scope,
        )
        header, payload = result_reply_for(
            job, pipe, result, slice_, queue_ms, decode_ms, runtime, series_store, followups
        )
    except ScanedgeError as exc:
        if failure_log is None or failure_log.allow(exc.code):
            log.warning("request %r (series %s) failed: %s %s", req.id, req.series or "-", exc.code, exc.message)
        return error_outcome(job, exc, runtime=runtime)
    series = header.series
    if req.last and completions is not None and series_store is not None and pipe.series_model is not None and series:
        volume = series_store.take_volume(series, job.model)
        scores = series_store.get_scores(series, job.model)
        now = completions.submit(job, pipe.series_model, volume, scores, header, payload)
        return DEFERRED if now is None else now
    return _outcome(header, tuple(payload))


def result_reply_for(
    job: Job,
    pipe: Pipeline,
    result: SliceResult,
    slice_: Slice,
    queue_ms: float,
    decode_ms: float,
    runtime: str,
    series_store: SeriesStore | None = None,
    followups: SeriesFollowups | None = None,
    inputs: PairedInputs | None = None,
) -> tuple[Result, list[Any]]:
    """The RESULT header and payload frames of one slice's ``result``, with what the series holds (lesion load,
    scores, the change against its prior) updated by it: one builder for one-input and multi-input models
    (``inputs``: the roles that went into it)."""
    req = job.request
    image = display_image(slice_) if "image" in req.outputs else None
    if image is slice_.pixels and job.shm is not None and job.shm.pixels is not None:
        # 8-bit pixels are shown as they are: these are the console's shared memory (or this thread's
        # scratch copy of it), which the reply, sent without copying, must not go on reading
        image = image.copy()
    arrays = {"mask": result.mask, "overlay": result.overlay, "probabilities": result.probabilities, "image": image}
    # the model's own saliency map (its first saliency head), 0-1 over the slice; no frame without one, and
    # scaled (a float32 copy of the slice's size) only for a console that asked for it
    asked_saliency = result.saliency and "saliency" in req.outputs
    arrays["saliency"] = result.saliency[0].normalized() if asked_saliency else None
    ident = slice_.identity
    series = req.series or ident.series_uid
    change = None
    if followups is not None and series and pipe.manifest.output is not None:
        answer = followups.add(series, job.model, slice_, result.mask)
        change, arrays["change"] = answer.change, answer.plane
    of = result.saliency[0].of if result.saliency else ""
    infos, payload, encode_ms = result_frames(
        req.outputs,
        arrays,
        req.overlay_encoding,
        head_mask_frames(result, pipe.manifest) if "head_masks" in req.outputs else (),
        saliency_of=of,
    )
    if job.shm is not None:  # outputs the console wants in its shared memory (protocol section 12)
        infos, payload = job.shm.place(infos, payload)
    number = req.index if req.index is not None else ident.instance_number
    load = None
    series_scores: tuple[SeriesScore, ...] = ()
    t_series = time.perf_counter()
    if series_store is not None and series and pipe.manifest.output is not None:
        classes = tuple(c.name for c in pipe.manifest.classes)
        load = series_store.update(series, job.model, classes, result.mask, slice_.geometry, number)
    if series_store is not None and series and result.scores:
        series_scores = series_store.update_scores(
            series, job.model, pipe.manifest.heads, result.scores, slice_.geometry, number
        )
    if series_store is not None and series and pipe.series_model is not None:  # a score head's 3-D model
        plane = pipe.series_model.plane(slice_)
        series_store.add_plane(series, job.model, pipe.series_model, plane, slice_key(slice_.geometry, number))
    series_ms = (time.perf_counter() - t_series) * 1e3
    position = slice_.geometry.position_along_normal
    header = pipeline_reply(
        Echo(req.id, series, req.instance or ident.sop_instance_uid, number, req.sent_at),
        result,
        model=pipe.model_label,
        backend=pipe.engine.backend,
        frames=infos,
        queue_ms=queue_ms,
        decode_ms=decode_ms,
        encode_ms=encode_ms,
        series_ms=series_ms,
        received_mono=job.received_mono,
        received_at=job.received_at,
        runtime=runtime,
        position_mm=position,
        series_load=None if load is None else load.rounded(),
        series_scores=series_scores,
        change=change,
        inputs=inputs,
    )
    return header, payload


class Worker:
    """One inference thread. ``current`` is the job it is running (read by the supervisor)."""

    def __init__(
        self,
        index: int,
        scheduler: LatestSliceScheduler,
        open_pipelines: Callable[[], Pipelines],
        process: Callable[[Job, Pipeline], Outcome],
        emit: Callable[[Job, Outcome], None],
        pipelines: Pipelines | None = None,
        keep_warm: KeepWarmConfig | None = None,
    ) -> None:
        self.index = index
        self.current: Job | None = None
        self.started_mono = 0.0
        self.retired = False  # set by the supervisor when wedged: finish the job in hand, then exit
        self.failed: str | None = None  # why its pipelines could not be opened
        self._scheduler = scheduler
        self._open = open_pipelines
        self._process = process
        self._emit = emit
        self._pipelines = pipelines
        self.pacer = ArrivalPacer(keep_warm) if keep_warm is not None and keep_warm.enabled else None
        self.thread = threading.Thread(target=self._run, name=f"scanedge-worker-{index}", daemon=True)

    def start(self) -> Worker:
        """Start the thread; returns the worker."""
        self.thread.start()
        return self

    def is_alive(self) -> bool:
        """Whether its thread is still running."""
        return self.thread.is_alive()

    def _run(self) -> None:
        pipelines = self._pipelines
        if pipelines is None:
            try:
                pipelines = self._open()
            except Exception as exc:
                self.failed = exc.message if isinstance(exc, ScanedgeError) else redacted_traceback(exc)
                log.error("worker %d could not open its models: %s", self.index, self.failed)
                return
        last_model: str | None = None
        try:
            while not self.retired:
                plan = self.pacer.plan(time.monotonic()) if self.pacer is not None else None
                job = self._scheduler.take(None if plan is None else max(0.0, plan[0] - time.monotonic()))
                if job is None:
                    if self._scheduler.closed:
                        return
                    if plan is not None and last_model is not None and time.monotonic() >= plan[0]:
                        self._keep_warm(pipelines[last_model], plan[1])
                    continue
                if self.pacer is not None:
                    self.pacer.arrived(job.received_mono)
                last_model = job.model
                self.started_mono = time.monotonic()
                self.current = job
                outcome: Outcome | None = None
                try:
                    outcome = self._guarded(job, pipelines)
                finally:  # also when something beyond Exception ends this thread: the job is still answered
                    self.current = None
                    if outcome is not DEFERRED:
                        self._emit(job, outcome or internal_outcome(job, f"worker {self.index} died"))
                if job.shm is not None and job.shm.pixels is not None and job.model in pipelines:
                    # after the reply, off the console's critical path: a copy only when keep-warm will use it
                    pipelines[job.model].own_last(keep=self.pacer is not None)
        except BaseException as exc:  # the thread ends here; the supervisor starts a replacement
            log.error("inference worker %d died: %s", self.index, redacted_traceback(exc))
        finally:
            for pipe in pipelines.values():
                try:
                    pipe.close()
                except Exception as exc:
                    log.warning("worker %d: closing a pipeline failed: %s", self.index, redacted_traceback(exc))

    def _keep_warm(self, pipe: Pipeline, expected: float) -> None:
        """One keep-warm pass; a failure stops keeping warm (the next real slice reports any real fault)."""
        assert self.pacer is not None
        started = time.monotonic()
        try:
            pipe.keep_warm()
        except Exception as exc:
            log.warning("worker %d stops keeping warm: %s", self.index, redacted_traceback(exc))
            self.pacer = None
            return
        self.pacer.ran(expected, started, time.monotonic())

    def _guarded(self, job: Job, pipelines: Pipelines) -> Outcome:
        try:
            return self._process(job, pipelines[job.model])
        except Exception as exc:  # a bug: answer INTERNAL, keep serving
            log.error(
                "internal error on request %r; the runtime carries on: %s", job.request.id, redacted_traceback(exc)
            )
            return internal_outcome(job, type(exc).__name__)


class WorkerPool:
    """The workers of one runtime, kept at strength by :meth:`supervise` (called by the I/O thread)."""

    def __init__(
        self,
        size: int,
        scheduler: LatestSliceScheduler,
        open_pipelines: Callable[[], Pipelines],
        process: Callable[[Job, Pipeline], Outcome],
        emit: Callable[[Job, Outcome], None],
        *,
        job_timeout_s: float,
        max_wedged: int = 4,
        retry_s: float = 5.0,
        keep_warm: KeepWarmConfig | None = None,
    ) -> None:
        self.size = size
        self.keep_warm = keep_warm
        self.job_timeout_s = job_timeout_s
        self.max_wedged = max_wedged
        self.retry_s = retry_s
        self.workers: list[Worker] = []
        self.wedged: list[Worker] = []
        self.restarted = 0
        self._scheduler = scheduler
        self._open = open_pipelines
        self._process = process
        self._emit = emit
        self._next_index = 0
        self._next_retry = 0.0

    def _new(self, pipelines: Pipelines | None = None) -> Worker:
        worker = Worker(
            self._next_index, self._scheduler, self._open, self._process, self._emit, pipelines, self.keep_warm
        )
        self._next_index += 1
        self.workers.append(worker)
        return worker.start()

    def start(self, pipelines: list[Pipelines]) -> None:
        """Start one worker per set of already opened pipelines (opened by the caller, so that a model that
        cannot load fails the start-up instead of a worker)."""
        for p in pipelines:
            self._new(p)

    def supervise(self, now: float) -> list[tuple[Job, Outcome]]:
        """Replace dead and wedged workers; return the replies owed for the jobs they held."""
        owed: list[tuple[Job, Outcome]] = []
        for w in list(self.workers):
            job = w.current
            if w.failed is not None or not w.is_alive():
                self.workers.remove(w)
                if w.failed is not None:  # its models would not open: try again later, not in a tight loop
                    self._next_retry = now + self.retry_s
                if job is not None:
                    owed.append((job, internal_outcome(job, f"inference worker {w.index} died")))
                if w.failed is None:
                    log.error("inference worker %d died; starting a replacement", w.index)
            elif job is not None and now - w.started_mono > self.job_timeout_s:
                w.retired = True
                self.workers.remove(w)
                self.wedged.append(w)
                err = EngineTimeoutError(
                    f"inference took longer than the runtime's job timeout of {self.job_timeout_s:g} s; "
                    "the worker was set aside and replaced"
                )
                owed.append((job, error_outcome(job, err)))
                log.error(
                    "worker %d wedged for %.1f s on request %r; replacing it",
                    w.index,
                    now - w.started_mono,
                    job.request.id,
                )
        self.wedged = [w for w in self.wedged if w.is_alive()]
        missing = self.size - len(self.workers)
        if missing > 0 and now >= self._next_retry:
            if len(self.wedged) >= self.max_wedged:
                log.error("%d workers are wedged; not starting more (capacity reduced)", len(self.wedged))
                self._next_retry = now + self.retry_s
            else:
                for _ in range(missing):
                    self._new()
                    self.restarted += 1
        return owed

    def keep_warm_runs(self) -> int:
        """Keep-warm passes run by the current workers."""
        return sum(w.pacer.runs for w in self.workers if w.pacer is not None)

    def busy(self) -> int:
        """Workers running a job right now."""
        return sum(1 for w in self.workers if w.current is not None)

    def alive(self) -> int:
        """Workers whose thread runs and whose models opened."""
        return sum(1 for w in self.workers if w.is_alive() and w.failed is None)

    def join(self, timeout: float) -> list[Worker]:
        """Wait up to ``timeout`` s for every worker to exit; return those still running (wedged)."""
        end = time.monotonic() + timeout
        for w in self.workers + self.wedged:
            w.thread.join(max(0.0, end - time.monotonic()))
        return [w for w in self.workers + self.wedged if w.is_alive()]
