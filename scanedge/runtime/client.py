"""Console-side client: send slices, get futures; many requests in flight on one connection.

One background I/O thread owns the DEALER socket and its monitor (pyzmq sockets are not thread-safe);
any thread may call :meth:`Client.submit`. Requests are handed to the I/O thread through a queue plus a
one-byte inproc wake-up, and pixel arrays go out with ``copy=False``. Messages are built and read by
:mod:`scanedge.runtime.protocol`, the same module the runtime uses.

Reliability, after the ZeroMQ guide's Lazy Pirate pattern, plus restart detection:

- every PONG and reply names the runtime *instance* that sent it; the client greets each new connection
  with a PING, so when a runtime is killed and another one takes its port, the first PONG shows a new
  instance and every request still unanswered is resent at once (the new runtime never saw them);
- when the runtime has been silent for ``heartbeat_s * liveness`` while requests are outstanding, the
  client closes the socket, opens a new one and resends them, up to ``retries`` times; then it fails
  them with :class:`RuntimeUnavailableError`;
- replies are matched by id and each future completes once, so a request answered twice (before and
  after a restart, or after a resend) is delivered to its caller once;
- a runtime that refuses this console's CurveZMQ key (or speaks another security mechanism) fails the
  outstanding requests with :class:`UnauthorizedError` instead of letting them time out.

With ``ClientConfig(shared_memory=True)`` and a runtime on the same host, pixels and the mask and raw
overlay travel through a shared-memory region the client creates (docs/protocol.md section 12,
:mod:`scanedge.runtime.shm_client`) instead of frames. The region is registered on every new connection;
until the runtime has acknowledged it, and whenever the runtime refuses it or no longer knows it (after a
restart), requests go as frames, so nothing fails for want of shared memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.utils.monitor

from scanedge.errors import (
    BusyError,
    ClientClosedError,
    ConfigError,
    ProtocolError,
    RequestTimeoutError,
    RuntimeUnavailableError,
    ScanedgeError,
    UnauthorizedError,
    error_for_code,
)
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.imaging.overlay import OverlayOptions
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest import CODE_STRING
from scanedge.runtime.endpoints import parse_endpoint
from scanedge.runtime.payloads import arrays_from_frames, geometry_from_slice, wire_array
from scanedge.runtime.protocol import (
    Error,
    Pong,
    Result,
    ShmRegions,
    StatsReply,
    decode_reply,
    encode,
    ping_request,
    segment_request,
    shm_register_request,
    stats_request,
)
from scanedge.runtime.security import CurveClientKeys
from scanedge.runtime.shm_client import Block, ConsoleRegion

__all__ = ["AsyncClient", "Client", "ClientConfig", "RemoteResult"]

log = logging.getLogger("scanedge.client")

_MONITORED = (
    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
#: error codes that mean "this request's shared memory is not usable here": it is sent again as frames
_SHM_CODES = frozenset({"SHM_UNAVAILABLE", "SHM_REFUSED", "UNKNOWN_REGION", "BAD_REGION"})


@dataclass(frozen=True)
class ClientConfig:
    """How patient a console is with its runtime.

    Attributes:
        timeout_s: default time a request may take, from submit to reply (per call: ``timeout=``).
        heartbeat_s: with requests outstanding and nothing heard for this long, the client sends PING.
        liveness: heartbeats of silence after which the connection is reopened and requests resent.
        retries: reopenings before the outstanding requests fail with RuntimeUnavailableError.
        curve: this console's CurveZMQ keys (required by a networked runtime).
        hwm: most requests outstanding on this connection; more fail at once with BusyError.
        shared_memory: send pixels and receive the mask and raw overlay through shared memory (a runtime on
            this host over ipc:// only: a tcp runtime refuses it and the client sends frames); requests the
            region cannot take go as frames.
        shared_memory_mb: size of the client's shared-memory region (a 512x512 int16 slice with mask and
            overlay takes 1.5 MiB of it while in flight, and while its result's arrays are alive).
    """

    timeout_s: float = 10.0
    heartbeat_s: float = 1.0
    liveness: int = 3
    retries: int = 3
    curve: CurveClientKeys | None = None
    hwm: int = 1000
    shared_memory: bool = False
    shared_memory_mb: int = 64

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.heartbeat_s > 0) or self.liveness < 1 or self.retries < 0 or self.hwm < 1:
            raise ConfigError("timeouts must be > 0, liveness >= 1, retries >= 0, hwm >= 1")
        if self.shared_memory_mb < 1:
            raise ConfigError(f"shared_memory_mb must be >= 1, got {self.shared_memory_mb}")


@dataclass(frozen=True, eq=False)
class RemoteResult:
    """A RESULT from the runtime. Arrays are read-only views over the received frames.

    Attributes:
        id: the request id it answers.
        series: the request's series, else the DICOM object's Series Instance UID ("" when neither).
        instance: the request's instance, else the DICOM object's SOP Instance UID ("" when neither).
        index: the request's index, else the DICOM Instance Number; None when neither.
        model: ``name@version`` of the model that ran.
        engine: the backend that ran it (``ort``, ``tensorrt``).
        findings: per foreground class, what was found.
        timings_ms: the runtime's milliseconds per stage (``queue``, ``decode``, ..., ``total``).
        mask: (rows, cols) uint8 labels on the slice's grid, when requested.
        overlay: (rows, cols, 3) uint8 RGB, when requested raw.
        probabilities: (classes, h, w) float32 on the model's grid, when requested.
        round_trip_ms: send to reply as this client measured it.
        header: the RESULT header as received.
    """

    id: Any
    series: str
    instance: str
    index: int | None
    model: str
    engine: str
    findings: tuple[ClassFindings, ...]
    timings_ms: dict[str, float]
    mask: np.ndarray | None
    overlay: np.ndarray | None
    overlay_encoded: bytes | None  # JPEG/PNG bytes when the overlay was requested encoded
    probabilities: np.ndarray | None
    round_trip_ms: float
    header: Result
    image: np.ndarray | None = None  # the windowed 8-bit slice the overlay is drawn on (output "image")
    position_mm: float | None = None  # the slice's place along its normal, when its geometry says
    series_load: LesionLoad | None = None  # the series' 3-D lesion load after this slice

    def finding(self, name: str) -> ClassFindings:
        """The findings of the class called ``name`` (KeyError if the model has no such class)."""
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(name)


def _remote_result(
    header: Result, frames: Sequence[Any], rtt_ms: float, shared: dict[str, Any] | None = None
) -> RemoteResult:
    arrays = {**arrays_from_frames(header.frames, frames), **(shared or {})}
    t = header.timings_ms
    return RemoteResult(
        id=header.id,
        series=header.series,
        instance=header.instance,
        index=header.index,
        model=header.model,
        engine=header.engine,
        findings=tuple(
            ClassFindings(
                label=f.label,
                name=f.name,
                pixels=f.pixels,
                area_mm2=f.area_mm2,
                components=f.components,
                max_probability=f.max_probability,
                mean_probability=f.mean_probability,
            )
            for f in header.findings
        ),
        timings_ms={k: getattr(t, k) for k in t.__struct_fields__},
        mask=arrays.get("mask"),
        overlay=arrays.get("overlay"),
        overlay_encoded=arrays.get("overlay_encoded"),
        probabilities=arrays.get("probabilities"),
        round_trip_ms=rtt_ms,
        header=header,
        image=arrays.get("image"),
        position_mm=header.position_mm,
        series_load=header.series_load,
    )


@dataclass(eq=False)
class _Pending:
    frames: list[Any]
    future: Future[Any]
    deadline: float
    sent_mono: float = 0.0
    sent: bool = False
    runtime: str | None = None  # the runtime instance it was last sent to, once known
    block: Block | None = None  # its part of the shared-memory region, while lent to the runtime
    as_frames: Callable[[], list[Any]] | None = None  # the same request with frames, should the region fail


class Client:
    """A connection to one runtime. Thread-safe; close() when done (or use ``with``)."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        """Connect (in the background) to the runtime at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""
        parse_endpoint(endpoint)
        self.endpoint = endpoint
        self.config = config or ClientConfig()
        self.reconnects = 0
        self.resent = 0
        self.runtime_id: str | None = None
        self._ctx = zmq.Context()
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._outbox: queue.SimpleQueue[tuple[str, _Pending]] = queue.SimpleQueue()
        self._outstanding = 0
        self._count_lock = threading.Lock()
        self._wake_endpoint = f"inproc://scanedge-client-{self._prefix}"
        self._wake_lock = threading.Lock()
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_endpoint)
        self._wake = self._ctx.socket(zmq.PUSH)
        self._wake.connect(self._wake_endpoint)
        self._closing = threading.Event()
        self._refused: UnauthorizedError | None = None
        self._unsent: deque[str] = deque()  # ids waiting to be (re)sent, in order; owned by the I/O thread
        self._region: ConsoleRegion | None = None
        self._shm_ready = False  # the runtime on the current connection acknowledged the region
        self._shm_register_id: str | None = None
        self._shm_refusal: str | None = None
        if self.config.shared_memory:
            self._region = self._create_region(endpoint)
        self._thread = threading.Thread(target=self._run, name="scanedge-client", daemon=True)
        self._thread.start()

    def _create_region(self, endpoint: str) -> ConsoleRegion:
        if not parse_endpoint(endpoint).is_loopback:
            raise ConfigError(
                f"shared memory needs a runtime on this host (ipc:// or tcp to a loopback address), not {endpoint}"
            )
        try:  # over ipc:// the runtime knows this process, so it can take (and map) a sealed memfd
            memfd = parse_endpoint(endpoint).scheme == "ipc" and hasattr(os, "memfd_create")
            return ConsoleRegion(self.config.shared_memory_mb * 1024 * 1024, memfd=memfd)
        except OSError as exc:
            raise ConfigError(f"cannot create a shared-memory region on this host ({exc.strerror})") from exc

    @property
    def shared_memory_active(self) -> bool:
        """Whether requests go through shared memory now (the runtime acknowledged this client's region)."""
        return self._shm_ready

    # --- public API ----------------------------------------------------------------------------------

    def submit(
        self,
        image: np.ndarray | bytes | bytearray | memoryview | Slice,
        *,
        series: str = "",
        instance: str = "",
        index: int | None = None,
        model: str | None = None,
        geometry: SliceGeometry | None = None,
        rescale: tuple[float, float] | None = None,
        window: tuple[float, float] | None = None,
        deadline_ms: float | None = None,
        outputs: Sequence[str] = ("mask", "overlay"),
        overlay_encoding: str = "raw",
        overlay_options: OverlayOptions | None = None,
        publish: bool = True,
        timeout: float | None = None,
        ignore_scope: bool = False,
    ) -> Future[RemoteResult]:
        """Send one slice; the future holds its :class:`RemoteResult`.

        Args:
            image: a numpy array (grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``), a :class:`Slice`
                (its geometry, rescale, window and identity are sent along), or the bytes of one DICOM object.
            series: the stream key (Series Instance UID): per series only the newest waiting slice is computed.
            instance, index: echoed back (SOP Instance UID, instance number).
            model: which served model to run (default: the runtime's default).
            geometry, rescale, window: override what a Slice carries (raw pixels only).
            deadline_ms: after this long in the runtime's queue the request is answered EXPIRED.
            outputs: payload frames wanted back: ``mask``, ``overlay``, ``probabilities``, ``image`` (the
                windowed 8-bit slice, for viewers that draw the overlay themselves).
            overlay_encoding: ``raw`` (fastest), ``jpeg`` or ``png``.
            overlay_options: how the overlay is drawn (default: the runtime's).
            publish: also publish the result on the runtime's PUB socket.
            timeout: seconds before the future fails with RequestTimeoutError (default: the config's).
            ignore_scope: segment the slice even when it is outside the model's scope (research use only;
                the result's ``header.scope`` then says ``outside``). A Slice's modality, body part and
                photometric interpretation are sent along so that raw pixels are checked like DICOM.

        The future raises the runtime's error as the same scanedge exception class as in-process code
        (e.g. :class:`NotDicomError`), :class:`SupersededError` / :class:`ExpiredError` /
        :class:`BusyError` for scheduling outcomes, :class:`RequestTimeoutError` after ``timeout``.
        """
        fields: dict[str, Any] = {}
        if isinstance(image, Slice):
            s = image
            geometry = geometry or s.geometry
            rescale = rescale or (s.rescale_slope, s.rescale_intercept)
            if window is None and s.window_center is not None and s.window_width is not None:
                window = (s.window_center, s.window_width)
            series = series or s.identity.series_uid
            instance = instance or s.identity.sop_instance_uid
            index = index if index is not None else s.identity.instance_number
            scope_fields = {
                "modality": s.identity.modality.strip().upper(),
                "body_part": s.acquisition.body_part,
                "photometric": "RGB" if s.is_color else "MONOCHROME2",  # decoding made it one of these
            }
            fields.update({k: v for k, v in scope_fields.items() if CODE_STRING.fullmatch(v)})
            image = s.pixels
        if isinstance(image, np.ndarray):
            pixels = wire_array(image)
            fields.update(encoding="raw", dtype=pixels.dtype.name, shape=list(pixels.shape))
            payload: Any = pixels
        else:
            fields["encoding"] = "dicom"
            payload = image
            pixels = None
        fields.update(series=series, instance=instance, outputs=list(outputs), publish=publish)
        if index is not None:
            fields["index"] = int(index)
        if model:
            fields["model"] = model
        geo = geometry_from_slice(geometry) if geometry is not None else None
        if geo:
            fields["geometry"] = geo
        if rescale is not None and tuple(rescale) != (1.0, 0.0):
            fields["rescale"] = {"slope": float(rescale[0]), "intercept": float(rescale[1])}
        if window is not None:
            fields["window"] = {"center": float(window[0]), "width": float(window[1])}
        if deadline_ms is not None:
            fields["deadline_ms"] = float(deadline_ms)
        if overlay_encoding != "raw":
            fields["overlay_encoding"] = overlay_encoding
        if overlay_options is not None:
            fields["overlay_options"] = {
                k: getattr(overlay_options, k) for k in ("alpha", "fill", "contours", "heatmap")
            }
        if ignore_scope:
            fields["ignore_scope"] = True
        fields["sent_at"] = time.time()
        request_id = self._next_id()
        shared = self._place(request_id, fields, payload, pixels)
        if shared is not None:
            return self._enqueue(request_id, shared[0], timeout, shared[1], shared[2])
        header = segment_request(request_id, **fields)
        return self._enqueue(request_id, [encode(header), payload], timeout)

    def _place(
        self, request_id: str, fields: dict[str, Any], payload: Any, pixels: np.ndarray | None
    ) -> tuple[list[Any], Block, Callable[[], list[Any]]] | None:
        """The request with its pixels copied into a block of the shared-memory region and the mask and raw
        overlay asked there (frames, block, the frames-only version); None when it goes as frames."""
        region = self._region
        if region is None or not self._shm_ready:
            return None
        nbytes = pixels.nbytes if pixels is not None else memoryview(payload).nbytes
        parts = [("pixels", nbytes)]
        if pixels is not None:
            rows, cols = pixels.shape[:2]
            if "mask" in fields["outputs"]:
                parts.append(("mask", rows * cols))
            if "overlay" in fields["outputs"] and fields.get("overlay_encoding", "raw") == "raw":
                parts.append(("overlay", rows * cols * 3))
        block = region.allocate(parts)
        if block is None:
            return None  # the region is full (results still alive): this one goes as frames
        region.write(block, "pixels", payload)

        def at(name: str) -> dict[str, Any]:
            offset, size = block.ranges[name]
            return {"region": region.name, "offset": offset, "nbytes": size}

        shm_fields: dict[str, Any] = {"pixels_at": at("pixels")}
        outputs_at = {name: at(name) for name, _ in parts[1:]}
        if outputs_at:
            shm_fields["outputs_at"] = outputs_at
        header = segment_request(request_id, **fields, **shm_fields)
        return [encode(header)], block, lambda: [encode(segment_request(request_id, **fields)), payload]

    def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        """``submit(...).result()``."""
        return self.submit(image, **kwargs).result()

    def ping(self, timeout: float | None = None) -> Pong:
        """The runtime's PONG: version, models, engine, queue depth, worker health, limits."""
        return self.request("PING", timeout).result()

    def stats(self, timeout: float | None = None) -> StatsReply:
        """The runtime's counters and latency histograms (STATS_REPLY)."""
        return self.request("STATS", timeout).result()

    def request(self, kind: str, timeout: float | None = None) -> Future[Any]:
        """Send a payload-less request (``PING`` or ``STATS``); the future holds the reply."""
        builders = {"PING": ping_request, "STATS": stats_request}
        if kind not in builders:
            raise ValueError(f"request() sends PING or STATS, not {kind!r}")
        request_id = self._next_id()
        return self._enqueue(request_id, [encode(builders[kind](request_id))], timeout)

    def close(self) -> None:
        """Stop the I/O thread; unanswered futures fail with :class:`ClientClosedError`. The shared-memory
        region is unlinked (result arrays viewing it stay valid until they are garbage)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._poke()
        self._thread.join(10)
        with self._wake_lock:
            self._wake.close(0)
        self._ctx.term()
        if self._region is not None:
            self._region.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _enqueue(
        self,
        request_id: str,
        frames: list[Any],
        timeout: float | None,
        block: Block | None = None,
        as_frames: Callable[[], list[Any]] | None = None,
    ) -> Future[Any]:
        try:
            if self._closing.is_set():
                raise ClientClosedError("the client is closed")
            if self._refused is not None:
                raise UnauthorizedError(self._refused.message)
            with self._count_lock:
                if self._outstanding >= self.config.hwm:
                    raise BusyError(f"{self._outstanding} requests are already outstanding on this connection (hwm)")
                self._outstanding += 1
        except ScanedgeError:
            if block is not None and self._region is not None:
                self._region.release(block)
            raise
        future: Future[Any] = Future()
        future.add_done_callback(self._done)
        wait = self.config.timeout_s if timeout is None else timeout
        item = _Pending(frames, future, time.monotonic() + wait, block=block, as_frames=as_frames)
        self._outbox.put((request_id, item))
        self._poke()
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._count_lock:
            self._outstanding -= 1

    def _poke(self) -> None:
        with self._wake_lock:
            if not self._wake.closed:
                try:
                    self._wake.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # wake-ups are already queued; the I/O thread will see this request too

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        if self.config.curve is not None:
            self.config.curve.apply(sock)
        monitor = sock.get_monitor_socket(_MONITORED)
        sock.connect(self.endpoint)
        return sock, monitor

    def _run(self) -> None:
        cfg = self.config
        pending: dict[str, _Pending] = {}
        unsent = self._unsent
        sock, monitor = self._open()
        poller = zmq.Poller()
        for s in (sock, monitor, self._wake_pull):
            poller.register(s, zmq.POLLIN)
        last_heard = last_ping = time.monotonic()
        attempts = 0
        try:
            while not self._closing.is_set():
                events = dict(poller.poll(int(cfg.heartbeat_s * 250)))
                now = time.monotonic()
                if self._wake_pull in events:
                    self._drain_wakeups()
                was_idle = not pending
                if self._take_new(pending) and was_idle:
                    last_heard = now  # silence only counts while something is outstanding
                if monitor in events:
                    self._on_monitor(monitor, sock, pending)
                if sock in events:
                    heard = self._receive(sock, pending)
                    if heard:
                        last_heard = time.monotonic()
                        attempts = 0
                if unsent:
                    self._send_unsent(sock, pending)
                now = time.monotonic()
                for request_id in [k for k, p in pending.items() if now > p.deadline or p.future.done()]:
                    item = pending.pop(request_id)
                    if not item.future.done():
                        waited = now - (item.sent_mono or now)
                        item.future.set_exception(
                            RequestTimeoutError(f"no reply from {self.endpoint} within {waited:.2f} s")
                        )
                if pending and now - last_heard > cfg.heartbeat_s and now - last_ping > cfg.heartbeat_s:
                    self._ping(sock, "hb")
                    last_ping = now
                if pending and now - last_heard > cfg.heartbeat_s * cfg.liveness:
                    attempts += 1
                    for s in (sock, monitor):
                        poller.unregister(s)
                    self._close_socket(sock, monitor)
                    if attempts > cfg.retries:
                        error = RuntimeUnavailableError(
                            f"runtime at {self.endpoint} did not answer after {cfg.retries} reconnect(s)"
                        )
                        self._fail_all(pending, error)
                        attempts = 0
                    else:
                        log.warning(
                            "runtime at %s silent for %.1f s; reconnecting and resending %d request(s) (attempt %d)",
                            self.endpoint,
                            now - last_heard,
                            len(pending),
                            attempts,
                        )
                    self.reconnects += 1
                    sock, monitor = self._open()
                    for s in (sock, monitor):
                        poller.register(s, zmq.POLLIN)
                    self._mark_unsent(pending, pending.values())
                    last_heard = time.monotonic()
        finally:
            self._fail_all(pending, ClientClosedError("the client was closed before the reply arrived"))
            while True:
                try:
                    _, item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                item.future.set_exception(ClientClosedError("the client was closed"))
            self._close_socket(sock, monitor)
            self._wake_pull.close(0)

    def _take_new(self, pending: dict[str, _Pending]) -> int:
        """Move newly submitted requests into ``pending`` and the send queue; how many there were. (A method of
        its own, so that no local variable of the loop keeps the last request, and its result, alive.)"""
        taken = 0
        while True:
            try:
                request_id, item = self._outbox.get_nowait()
            except queue.Empty:
                return taken
            pending[request_id] = item
            self._unsent.append(request_id)
            taken += 1

    def _drain_wakeups(self) -> None:
        while True:
            try:
                self._wake_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    @staticmethod
    def _close_socket(sock: zmq.Socket, monitor: zmq.Socket) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(0)
        sock.close(0)

    @staticmethod
    def _fail_all(pending: dict[str, _Pending], error: ScanedgeError) -> None:
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(type(error)(error.message))
        pending.clear()

    def _send_unsent(self, sock: zmq.Socket, pending: dict[str, _Pending]) -> None:
        unsent = self._unsent
        while unsent:
            request_id = unsent[0]
            item = pending.get(request_id)
            if item is None or item.sent or item.future.done():
                unsent.popleft()
                continue
            try:
                sock.send_multipart(item.frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # no connection (yet) or queue full: retried on the next turn, until its deadline
            unsent.popleft()
            if item.sent_mono:
                self.resent += 1
            item.sent = True
            item.sent_mono = time.monotonic()
            item.runtime = self.runtime_id

    def _mark_unsent(self, pending: dict[str, _Pending], items: Any) -> None:
        """Queue ``items`` to be sent again (on the current socket, in their original order)."""
        index = {id(item): key for key, item in pending.items()}
        for item in items:
            item.sent = False
            self._unsent.append(index[id(item)])

    def _ping(self, sock: zmq.Socket, kind: str) -> None:
        try:
            sock.send(encode(ping_request(f"{self._prefix}-{kind}-{next(self._ids)}")), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _on_monitor(self, monitor: zmq.Socket, sock: zmq.Socket, pending: dict[str, _Pending]) -> None:
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_CONNECTED:
                self._shm_register(sock)  # a new connection has no regions: register before anything else
                self._ping(sock, "hello")  # learn which runtime instance is there
            elif kind == zmq.EVENT_DISCONNECTED:
                self._shm_ready = False
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH or (
                kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                and event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            ):
                reason = (
                    "the runtime refused this console's CurveZMQ key (it is not in the runtime's allow-list)"
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    else "the runtime uses another security mechanism (CurveZMQ keys needed, or not expected)"
                )
                log.error("%s: %s", self.endpoint, reason)
                self._refused = UnauthorizedError(f"{self.endpoint}: {reason}")
                self._fail_all(pending, self._refused)

    def _shm_register(self, sock: zmq.Socket) -> None:
        """Offer the region to the runtime on this connection; requests use it once it is acknowledged."""
        self._shm_ready = False
        if self._region is None:
            return
        self._shm_register_id = f"{self._prefix}-shm-{next(self._ids)}"
        try:
            region = self._region
            header = shm_register_request(self._shm_register_id, region.name, region.size, region.fd)
            sock.send(encode(header), zmq.NOBLOCK)
        except zmq.Again:
            pass  # no connection after all: the next one registers again

    def _on_shm_reply(self, reply: Any) -> None:
        region = self._region
        if region is None:
            return
        if isinstance(reply, ShmRegions) and any(r.name == region.name for r in reply.regions):
            self._shm_ready = True
            self._shm_refusal = None
        elif isinstance(reply, Error) and reply.message != self._shm_refusal:
            self._shm_refusal = reply.message
            log.warning("%s: shared memory refused (%s: %s); sending frames", self.endpoint, reply.code, reply.message)

    def _receive(self, sock: zmq.Socket, pending: dict[str, _Pending]) -> bool:
        heard = False
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return heard
            heard = True
            try:
                reply = decode_reply(frames[0].buffer)
            except ProtocolError as exc:
                log.warning("ignoring a malformed message from the runtime: %s", exc.message)
                continue
            if reply.runtime and reply.runtime != self.runtime_id:
                self._on_runtime(reply.runtime, sock, pending)
            if self._shm_register_id is not None and str(reply.id) == self._shm_register_id:
                self._on_shm_reply(reply)
                continue
            item = pending.pop(str(reply.id), None)
            if item is None or item.future.done():
                continue  # a heartbeat PONG, or a late duplicate after a resend: never delivered twice
            if isinstance(reply, Error) and reply.code in _SHM_CODES and item.as_frames is not None:
                self._resend_as_frames(str(reply.id), item, pending, sock, reply)
                continue
            self._complete(item, reply, frames[1:])

    def _resend_as_frames(
        self, request_id: str, item: _Pending, pending: dict[str, _Pending], sock: zmq.Socket, reply: Error
    ) -> None:
        """The runtime could not use this request's shared memory (it restarted and does not know the region,
        or refuses it): send the same request with frames, and offer the region again for later ones."""
        assert item.as_frames is not None
        if item.block is not None and self._region is not None:
            self._region.release(item.block)  # answered: the runtime is done with the block
        item.block = None
        item.frames, item.as_frames = item.as_frames(), None
        pending[request_id] = item
        self._mark_unsent(pending, [item])
        log.info("request %s: %s from the runtime; sent again as frames", request_id, reply.code)
        if self._shm_ready:
            self._shm_register(sock)

    def _on_runtime(self, runtime: str, sock: zmq.Socket, pending: dict[str, _Pending]) -> None:
        """A reply from a runtime instance not seen before: resend what the previous one took with it."""
        previous, self.runtime_id = self.runtime_id, runtime
        if previous is None:
            for item in pending.values():
                if item.sent and item.runtime is None:
                    item.runtime = runtime  # sent before the first greeting came back: it went here
            return
        lost = [item for item in pending.values() if item.sent and item.runtime != runtime]
        if lost:
            log.warning(
                "runtime at %s restarted (instance %s -> %s); resending %d unanswered request(s)",
                self.endpoint,
                previous,
                runtime,
                len(lost),
            )
        self._mark_unsent(pending, lost)

    def _complete(self, item: _Pending, reply: Any, frames: Sequence[Any]) -> None:
        block, item.block = item.block, None
        if isinstance(reply, Result):
            rtt = (time.monotonic() - item.sent_mono) * 1e3
            try:
                shared = None
                if block is not None and self._region is not None:
                    shared = self._region.arrays(block, reply.frames)  # the block is free when these are garbage
                    block = None
                item.future.set_result(_remote_result(reply, frames, rtt, shared))
            except (ProtocolError, ValueError) as exc:
                item.future.set_exception(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
        elif isinstance(reply, Error):
            item.future.set_exception(error_for_code(reply.code, reply.message))
        else:  # PONG, STATS_REPLY
            item.future.set_result(reply)
        if block is not None and self._region is not None:
            self._region.release(block)  # answered without a result: the runtime is done with it


class AsyncClient:
    """asyncio front end over :class:`Client`: ``await client.segment(...)``."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        self._client = Client(endpoint, config)

    async def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        """Segment one slice; the same arguments as :meth:`Client.submit`."""
        return await asyncio.wrap_future(self._client.submit(image, **kwargs))

    async def ping(self, timeout: float | None = None) -> Pong:
        """The runtime's PONG, as :meth:`Client.ping`."""
        return await asyncio.wrap_future(self._client.request("PING", timeout))

    async def stats(self, timeout: float | None = None) -> StatsReply:
        """The runtime's counters and histograms, as :meth:`Client.stats`."""
        return await asyncio.wrap_future(self._client.request("STATS", timeout))

    async def close(self) -> None:
        """Close the underlying :class:`Client` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
