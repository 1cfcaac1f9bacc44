"""The runtime's I/O thread: the only owner of its sockets, the only sender of replies.

pyzmq sockets are not thread-safe, so the ROUTER (consoles), the PUB (viewers) and the ROUTER's
monitor belong to this loop alone. It decodes and validates each request, dispatches it through a
handler table keyed by message type, applies admission (models, limits, the in-flight byte cap),
schedules SEGMENTs, answers PING/STATS at once, sweeps deadlines, supervises the workers and forwards
their outcomes. Worker outcomes arrive through a deque; a byte on a pipe wakes the poller (a worker
owns no ZeroMQ socket, so a worker stuck in inference can never block the context's shutdown).

Every reply goes through :meth:`IoLoop._answer`, which releases the job exactly once: whoever answers
first (worker, sweep, supersede, supervisor, shutdown) wins, and any later outcome for the same job is
dropped. Nothing one message can carry ends the loop: each message is handled inside its own guard, and
bookkeeping (counters, in-flight bytes) is owned by this thread, so it needs no lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.utils.monitor

from scanedge._moved import forward_names
from scanedge.errors import (
    BusyError,
    ScanedgeError,
    ShuttingDownError,
    UnknownModelError,
    redacted_traceback,
)
from scanedge.imaging.slices import SliceLimits
from scanedge.log_budget import LogBudget
from scanedge.runtime.serving.scheduler import Job, LatestSliceScheduler
from scanedge.runtime.serving.series_store import SeriesStore
from scanedge.runtime.serving.shm import RegionTable, peer_of
from scanedge.runtime.serving.stats import RuntimeStats
from scanedge.runtime.serving.workers import Outcome, WorkerPool, error_outcome, expired_outcome
from scanedge.runtime.wire.payloads import check_raw_payload
from scanedge.runtime.wire.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Echo,
    EngineStatus,
    Histogram,
    Limits,
    ModelInfo,
    Ping,
    Pong,
    Request,
    Result,
    Segment,
    ShmRegions,
    ShmRegister,
    ShmStatus,
    ShmUnregister,
    Stats,
    StatsReply,
    WorkerHealth,
    decode_request,
    encode,
    error_reply,
    publish_topic,
    request_echo,
)
from scanedge.version import __version__

__all__ = ["IoLoop", "LoopConfig"]

log = logging.getLogger("scanedge.runtime")
_GONE_MEMORY = 4096  # identities of vanished consoles remembered (LRU), for counting their replies
#: after a stop request, requests still arriving for this long are answered SHUTTING_DOWN (not dropped
#: unread): a console that sent just before the signal learns what happened instead of timing out
SHUTDOWN_DRAIN_S = 0.25


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """What the loop needs from the server's configuration (plain values, no sockets).

    Attributes:
        max_message_bytes: larger requests are answered TOO_LARGE.
        max_inflight_bytes: payload bytes accepted and unanswered before SEGMENTs get BUSY.
        limits: per-slice pixel and decoded-size limits.
        sweep_interval_s: how often deadlines are swept and workers supervised.
        stats_log_interval_s: seconds between the stats log lines.
        shutdown_grace_s: how long requests in flight may take after a stop request.
        insecure_warning: logged every 10 minutes when serving unencrypted beyond loopback, else None.
    """

    max_message_bytes: int
    max_inflight_bytes: int
    limits: SliceLimits
    sweep_interval_s: float
    stats_log_interval_s: float
    shutdown_grace_s: float
    insecure_warning: str | None


class IoLoop:
    """Owns the sockets once built; :meth:`run` returns after a requested stop has answered everything."""

    def __init__(
        self,
        router: zmq.Socket,
        pub: zmq.Socket | None,
        settings: LoopConfig,
        *,
        models: dict[str, ModelInfo],
        default_model: str,
        engine: str,
        runtime_id: str,
        scheduler: LatestSliceScheduler,
        pool: WorkerPool,
        stats: RuntimeStats,
        finished: deque[tuple[Job, Outcome]],
        wake_fd: int,
        stop_requested: Callable[[], bool],
        engine_health: Callable[[], dict[str, EngineStatus]] | None = None,
        series_store: SeriesStore | None = None,
        regions: RegionTable | None = None,
    ) -> None:
        self.router = router
        self.pub = pub
        self.settings = settings
        self.models = models
        self.default_model = default_model
        self.engine = engine
        self.runtime_id = runtime_id
        self.started_at = time.time()
        self.scheduler = scheduler
        self.pool = pool
        self.stats = stats
        self.inflight: dict[int, Job] = {}
        self.inflight_bytes = 0
        self._finished = finished
        self._wake_fd = wake_fd
        self._stop_requested = stop_requested
        self._engine_health = engine_health
        self._series_store = series_store
        self._next_series_sweep = 0.0
        self._stopping = False
        self._seq = itertools.count(1)
        self._fd_identity: dict[int, bytes] = {}  # connection fd -> the console last heard on it
        self._fd_open: dict[int, int] = {}  # connections accepted and not yet closed, per fd number
        self._gone: OrderedDict[bytes, None] = OrderedDict()
        self._monitor = router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._reject_log = LogBudget("rejected request(s)")
        self.regions = regions if regions is not None else RegionTable("off")  # shared memory (section 12)
        self._frame: zmq.Frame | None = None  # the header frame of the request being handled (its peer)
        self._handlers: dict[type, Callable[[bytes, Any, list[zmq.Frame]], None]] = {
            Segment: self._on_segment,
            Ping: self._on_ping,
            Stats: self._on_stats,
            ShmRegister: self._on_shm_register,
            ShmUnregister: self._on_shm_unregister,
            ShmStatus: self._on_shm_status,
        }

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve on the calling thread until a stop is requested and everything in flight is answered (or
        the shutdown grace runs out), or the ZeroMQ context is terminated."""
        s = self.settings
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)  # read in _drain_requests, before any request
        poller.register(self._wake_fd, zmq.POLLIN)
        interval_ms = max(1, int(min(s.sweep_interval_s, 0.1) * 1000))  # stop and supervision stay prompt
        now = time.monotonic()
        next_sweep, next_stats, next_warning = now, now + s.stats_log_interval_s, now + 600
        stop_deadline = quiet_until = 0.0
        while True:
            if self._stop_requested() and not self._stopping:
                self._stopping = True
                stop_deadline = time.monotonic() + s.shutdown_grace_s
                quiet_until = time.monotonic() + SHUTDOWN_DRAIN_S
                log.info("stopping: answering %d request(s) in flight, refusing new ones", len(self.inflight))
            if self._stopping:
                if not self.inflight and time.monotonic() >= quiet_until:
                    self._drain_requests()  # what already arrived is answered SHUTTING_DOWN, not dropped
                    return
                if time.monotonic() > stop_deadline:
                    self._abandon_inflight()
                    return
            try:
                events = dict(poller.poll(interval_ms))
                if self._wake_fd in events:
                    self._drain_finished()
                if self.router in events or self._monitor in events:
                    self._drain_requests()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + s.sweep_interval_s
                if now >= next_stats:
                    log.info("stats: %s", self.stats.summary_line())
                    next_stats = now + s.stats_log_interval_s
                if s.insecure_warning and now >= next_warning:
                    log.warning(s.insecure_warning)
                    next_warning = now + 600
            except zmq.ContextTerminated:
                return
            except Exception as exc:  # a bug outside any one message: log it, keep serving
                log.error("I/O loop error; the runtime carries on: %s", redacted_traceback(exc))

    def close(self) -> None:
        """Stop monitoring connections, close the monitor socket (the caller owns the others), forget every
        shared-memory region (descriptors still in use by a wedged worker's job close with it)."""
        self.router.disable_monitor()
        self._monitor.close(0)
        self.regions.close()

    # --- requests ------------------------------------------------------------------------------------------

    def _drain_requests(self) -> None:
        # Connection events first: libzmq reports a closed connection before its file descriptor can be
        # reused, so a console arriving on a reused fd is never mistaken for the one that left.
        self._drain_monitor()
        for _ in range(256):  # bounded, so results are forwarded between bursts
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        self.stats.counters["received"] += 1
        try:
            fd = frames[1].get(zmq.SRCFD) if len(frames) > 1 else -1
            if fd >= 0:
                self._fd_identity[fd] = identity
        except zmq.ZMQError:
            pass
        self._gone.pop(identity, None)  # it is talking, so it is here
        body = frames[1:]
        self._frame = body[0] if body else None
        try:
            request = decode_request([f.buffer for f in body], self.settings.max_message_bytes)
        except ScanedgeError as exc:
            self._reject(identity, request_echo(body[0].buffer) if body else Echo(), exc)
            return
        except Exception as exc:  # a decoder bug: this message gets INTERNAL, the loop carries on
            log.error("internal error decoding a request: %s", redacted_traceback(exc))
            self._reject(identity, Echo(), "INTERNAL", "internal error in the runtime (logged there)")
            return
        try:
            self._handlers[type(request)](identity, request, body[1:])
        except ScanedgeError as exc:
            self._reject(identity, Echo.of(request), exc)
        except Exception as exc:  # a bug in a handler: this request gets INTERNAL, the loop carries on
            log.error("internal error handling request %r: %s", request.id, redacted_traceback(exc))
            self._reject(identity, Echo.of(request), "INTERNAL", "internal error in the runtime (logged there)")

    def _reject(self, identity: bytes, echo: Echo, error: ScanedgeError | str, message: str = "") -> None:
        header = error_reply(echo, error, message, received_at=time.time(), runtime=self.runtime_id)
        self.stats.record_error(header.code)
        if self._reject_log.allow(header.code):
            log.warning(
                "request %r%s rejected: %s %s",
                echo.id,
                f" (series {echo.series})" if echo.series else "",
                header.code,
                header.message,
            )
        self._send(identity, [encode(header)])

    def _on_ping(self, identity: bytes, request: Request, payload: list[zmq.Frame]) -> None:
        self._send(identity, [encode(self.pong(request.id, shared_memory=self.regions.allows(self._peer())))])

    def _peer(self) -> Any:
        return peer_of(self._frame)

    def _on_shm_register(self, identity: bytes, request: ShmRegister, payload: list[zmq.Frame]) -> None:
        self.regions.register(identity, self._peer(), request.name, request.size, request.fd)
        self._on_shm_status(identity, request, payload)

    def _on_shm_unregister(self, identity: bytes, request: ShmUnregister, payload: list[zmq.Frame]) -> None:
        self.regions.unregister(identity, request.name)
        self._on_shm_status(identity, request, payload)

    def _on_shm_status(self, identity: bytes, request: Request, payload: list[zmq.Frame]) -> None:
        reply = ShmRegions(
            version=PROTOCOL_VERSION, id=request.id, regions=self.regions.listing(identity), runtime=self.runtime_id
        )
        self._send(identity, [encode(reply)])

    def _on_stats(self, identity: bytes, request: Request, payload: list[zmq.Frame]) -> None:
        reply = StatsReply(
            version=PROTOCOL_VERSION,
            id=request.id,
            counters=dict(sorted(self.stats.counters.items())),
            histograms={
                model: {"latency_ms": Histogram(**h["latency_ms"]), "queue_ms": Histogram(**h["queue_ms"])}
                for model, h in self.stats.histograms().items()
            },
            runtime=self.runtime_id,
        )
        self._send(identity, [encode(reply)])

    def pong(self, request_id: Any, *, shared_memory: bool = False) -> Pong:
        """The PONG answering request ``request_id``: models, queue, workers and limits as of now;
        ``shared_memory``: whether the asking connection may register shared-memory regions."""
        s = self.settings
        return Pong(
            version=PROTOCOL_VERSION,
            id=request_id,
            server=__version__,
            protocols=SUPPORTED_VERSIONS,
            models=tuple(self.models.values()),
            default_model=self.default_model,
            engine=self.engine,
            queue_depth=self.scheduler.depth(),
            in_flight_bytes=self.inflight_bytes,
            runtime=self.runtime_id,
            started_at=self.started_at,
            workers=WorkerHealth(
                configured=self.pool.size,
                alive=self.pool.alive(),
                busy=self.pool.busy(),
                restarted=self.pool.restarted,
                wedged=len(self.pool.wedged),
            ),
            limits=Limits(
                max_message_bytes=s.max_message_bytes,
                max_inflight_bytes=s.max_inflight_bytes,
                max_pixels=s.limits.max_pixels,
                max_side=s.limits.max_side,
                max_decoded_bytes=s.limits.max_decoded_bytes,
                max_shm_regions=self.regions.max_per_connection if self.regions.mode != "off" else 0,
            ),
            engine_health=self._engine_health() if self._engine_health is not None else {},
            shared_memory=shared_memory,
        )

    def _on_segment(self, identity: bytes, req: Segment, payload: list[zmq.Frame]) -> None:
        if self._stopping or self._stop_requested():  # the flag, not the loop's state: stop admits nothing more
            raise ShuttingDownError("the runtime is shutting down and accepts no new slices")
        model = req.model or self.default_model
        if model not in self.models:
            raise UnknownModelError(f"model {model!r} is not served here; models: {sorted(self.models)}")
        frame: Any = payload[0] if payload else None
        nbytes = len(frame) if frame is not None else 0
        if req.encoding == "raw" and frame is not None:
            check_raw_payload(req, nbytes, self.settings.limits)
        shm = self.regions.bind(
            identity, self._peer, req, self.settings.limits, self.settings.max_message_bytes
        )  # section 12: pixels and/or outputs in the console's shared memory
        if shm is not None and shm.pixels is not None:
            frame, nbytes = shm.pixels, shm.nbytes
        cap = self.settings.max_inflight_bytes
        if self.inflight_bytes + nbytes > cap:
            if shm is not None:
                shm.close()
            raise BusyError(
                f"{self.inflight_bytes} bytes already in flight; accepting {nbytes} more would pass the cap "
                f"of {cap}; retry shortly"
            )
        now = time.monotonic()
        job = Job(
            request=req,
            identity=identity,
            payload=frame,
            model=model,
            nbytes=nbytes,
            received_mono=now,
            deadline_mono=None if req.deadline_ms is None else now + req.deadline_ms / 1e3,
            seq=next(self._seq),
            shm=shm,
            latest=not self.models[model].roles,
        )
        self.inflight[job.seq] = job
        self.inflight_bytes += nbytes
        replaced = self.scheduler.submit(job)
        if replaced is not None:
            self._answer(
                replaced,
                error_outcome(
                    replaced,
                    "SUPERSEDED",
                    f"a newer slice of series {req.series} arrived before this one started",
                    self.runtime_id,
                ),
            )

    # --- replies -----------------------------------------------------------------------------------------

    def _answer(self, job: Job, outcome: Outcome) -> None:
        """Send a job's one reply (dropping any later one), publish it, release its in-flight bytes."""
        if self.inflight.pop(job.seq, None) is None:
            log.debug("a second outcome for request %r was dropped (already answered)", job.request.id)
            return
        self.inflight_bytes -= job.nbytes
        if job.shm is not None:
            job.shm.close()  # before the reply: nothing touches the console's memory for this request after it
        header = outcome.header
        if isinstance(header, Result):
            self.stats.record_result(job.model, header.timings_ms.total, header.timings_ms.queue)
        else:
            self.stats.record_error(header.code)
            log.debug("request %r (series %s) answered %s", job.request.id, job.request.series or "-", header.code)
        if job.identity in self._gone:
            self.stats.counters["client_gone"] += 1
        else:
            self._send(job.identity, [outcome.encoded, *outcome.payload])
        if self.pub is not None and isinstance(header, Result) and job.request.publish and not _held(header):
            try:
                self.pub.send_multipart(
                    [publish_topic(header.series), outcome.encoded, *outcome.payload], zmq.NOBLOCK, copy=False
                )
            except zmq.Again:
                self.stats.counters["publish_dropped"] += 1

    def _send(self, identity: bytes, frames: list[Any]) -> bool:
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.stats.counters["client_gone"] += 1
                dropped = self.regions.drop(identity)
                if dropped:
                    self.stats.counters["shm_regions_dropped"] += dropped
                log.info("console %s disconnected before its reply could be sent", identity.hex()[:12])
            elif exc.errno == zmq.EAGAIN:
                self.stats.counters["reply_dropped"] += 1
                log.warning(
                    "console %s is not reading its replies (high-water mark); reply dropped", identity.hex()[:12]
                )
            else:
                self.stats.counters["send_failed"] += 1
                log.error("sending a reply failed: %s", exc)
            return False

    def _drain_finished(self) -> None:
        try:
            while os.read(self._wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        while self._finished:
            job, outcome = self._finished.popleft()
            self._answer(job, outcome)

    def _drain_monitor(self) -> None:
        """A console's connection closed: forget queued work for it, count what it will never receive.

        Connections are known by file descriptor, and a closed one's number can be reused at once. So
        open connections are counted per fd: a close reported while a newer connection on the same
        number is already open may belong to either, and is not attributed (never drop a live console's
        work; at worst a vanished one is counted when its reply bounces instead).
        """
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._fd_open[fd] = self._fd_open.get(fd, 0) + 1
                continue
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            open_before = self._fd_open.pop(fd, 1)
            if open_before > 1:
                self._fd_open[fd] = open_before - 1
                continue
            identity = self._fd_identity.pop(fd, None)
            if identity is not None:
                self._console_gone(identity)

    def _console_gone(self, identity: bytes) -> None:
        self._gone[identity] = None
        if len(self._gone) > _GONE_MEMORY:
            self._gone.popitem(last=False)
        for job in self.scheduler.remove(lambda j: j.identity == identity):
            if self.inflight.pop(job.seq, None) is not None:
                self.inflight_bytes -= job.nbytes
                self.stats.counters["client_gone"] += 1
                if job.shm is not None:
                    job.shm.close()
        dropped = self.regions.drop(identity)  # its regions close once the jobs still running on them are answered
        if dropped:
            self.stats.counters["shm_regions_dropped"] += dropped

    def _sweep(self, now: float) -> None:
        for job in self.scheduler.expire(now):
            self._answer(job, expired_outcome(job, now, self.runtime_id))
        for job, outcome in self.pool.supervise(now):
            self._answer(job, outcome)
        if self._series_store is not None and now >= self._next_series_sweep:
            self._series_store.evict_idle(now)  # series that ended: nothing announces it on the wire
            self._next_series_sweep = now + 1.0

    def _abandon_inflight(self) -> None:
        for job in self.scheduler.drain():
            err = ShuttingDownError("the runtime stopped before this slice started")
            self._answer(job, error_outcome(job, err, runtime=self.runtime_id))
        for job in list(self.inflight.values()):
            err = ShuttingDownError(
                f"the runtime stopped after its {self.settings.shutdown_grace_s:g} s grace period before this "
                "slice finished"
            )
            self._answer(job, error_outcome(job, err, runtime=self.runtime_id))


def _held(header: Result) -> bool:
    """A partner slice kept for pairing (docs/protocol.md 3.2): answered, but nothing to show, so not published."""
    return header.inputs is not None and header.inputs.held


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "LoopSettings": ("scanedge.runtime.serving.io_loop", "LoopConfig"),
    },
)
