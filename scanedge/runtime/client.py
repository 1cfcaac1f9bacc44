"""Console-side client: send slices, get futures; many requests in flight on one connection.

One background I/O thread owns the DEALER socket (pyzmq sockets are not thread-safe); any thread may
call :meth:`Client.submit`. Requests are handed to the I/O thread through a queue plus a one-byte
inproc wake-up, and pixel arrays go out with ``copy=False``.

Reliability follows the ZeroMQ guide's Lazy Pirate pattern: when the runtime has been silent for
``heartbeat_s * liveness`` while requests are outstanding, the client closes the socket, opens a new
one and resends every unanswered request under its original id, up to ``retries`` times; then it fails
them with :class:`RuntimeUnavailableError`. Replies are matched by id and each future completes once,
so a request answered both before and after a runtime restart is delivered to its caller once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from scanedge.errors import (
    BusyError,
    RequestTimeoutError,
    RuntimeUnavailableError,
    ScanedgeError,
    error_for_code,
)
from scanedge.imaging.overlay import OverlayOptions
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.runtime.protocol import PROTOCOL_VERSION, WIRE_DTYPES, encode_header
from scanedge.runtime.security import CurveClientKeys

__all__ = ["AsyncClient", "Client", "ClientConfig", "RemoteResult"]

log = logging.getLogger("scanedge.client")


@dataclass(frozen=True)
class ClientConfig:
    timeout_s: float = 10.0  # default per-request timeout
    heartbeat_s: float = 1.0
    liveness: int = 3  # heartbeats of silence before reconnecting
    retries: int = 3  # reconnects before giving up on outstanding requests
    curve: CurveClientKeys | None = None
    hwm: int = 1000

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.heartbeat_s <= 0 or self.liveness < 1 or self.retries < 0:
            raise ValueError("timeouts must be > 0, liveness >= 1, retries >= 0")


@dataclass(frozen=True, eq=False)
class RemoteResult:
    """A RESULT from the runtime. Arrays are read-only views over the received frames."""

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
    header: dict[str, Any]

    def finding(self, name: str) -> ClassFindings:
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(name)


def _parse_result(header: dict[str, Any], frames: Sequence[zmq.Frame], rtt_ms: float) -> RemoteResult:
    arrays: dict[str, Any] = {}
    for meta, frame in zip(header.get("frames", []), frames):
        if meta.get("encoding", "raw") == "raw":
            arrays[meta["name"]] = np.frombuffer(frame.buffer, dtype=WIRE_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        else:
            arrays[meta["name"] + "_encoded"] = frame.bytes
    findings = tuple(ClassFindings(**f) for f in header.get("findings", []))
    return RemoteResult(
        id=header["id"],
        series=header.get("series", ""),
        instance=header.get("instance", ""),
        index=header.get("index"),
        model=header.get("model", ""),
        engine=header.get("engine", ""),
        findings=findings,
        timings_ms=header.get("timings_ms", {}),
        mask=arrays.get("mask"),
        overlay=arrays.get("overlay"),
        overlay_encoded=arrays.get("overlay_encoded"),
        probabilities=arrays.get("probabilities"),
        round_trip_ms=rtt_ms,
        header=header,
    )


@dataclass(eq=False)
class _Pending:
    frames: list[Any]
    future: Future
    deadline: float
    sent_mono: float = 0.0


class Client:
    """A connection to one runtime. Thread-safe; close() when done (or use ``with``)."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        self.endpoint = endpoint
        self.config = config or ClientConfig()
        self._ctx = zmq.Context()
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._outbox: queue.SimpleQueue[tuple[str, _Pending]] = queue.SimpleQueue()
        self._wake_endpoint = f"inproc://scanedge-client-{self._prefix}"
        self._wake_lock = threading.Lock()
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_endpoint)
        self._wake = self._ctx.socket(zmq.PUSH)
        self._wake.connect(self._wake_endpoint)
        self._closing = threading.Event()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="scanedge-client", daemon=True)
        self._thread.start()

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
    ) -> Future[RemoteResult]:
        """Send one slice (a numpy array, a :class:`Slice`, or DICOM bytes); the future holds the result.

        The future raises the runtime's error as the same scanedge exception class as in-process code
        (e.g. :class:`NotDicomError`), :class:`SupersededError` / :class:`ExpiredError` / :class:`BusyError`
        for scheduling outcomes, :class:`RequestTimeoutError` after ``timeout`` seconds.
        """
        if self._closing.is_set():
            raise RuntimeError("client is closed")
        header: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "type": "SEGMENT",
            "id": f"{self._prefix}-{next(self._ids)}",
        }
        if isinstance(image, Slice):
            s = image
            geometry = geometry or s.geometry
            rescale = rescale or (s.rescale_slope, s.rescale_intercept)
            if window is None and s.window_center is not None:
                window = (s.window_center, s.window_width)  # type: ignore[assignment]
            series = series or s.identity.series_uid
            instance = instance or s.identity.sop_instance_uid
            index = index if index is not None else s.identity.instance_number
            image = s.pixels
        if isinstance(image, np.ndarray):
            pixels = image
            if pixels.dtype.name not in WIRE_DTYPES or pixels.ndim not in (2, 3):
                raise ValueError(f"cannot send a {pixels.dtype} array of shape {pixels.shape}")
            if pixels.dtype.byteorder == ">" or not pixels.flags.c_contiguous:
                pixels = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<"))
            header.update(encoding="raw", dtype=pixels.dtype.name, shape=list(pixels.shape))
            payload: Any = pixels
        else:
            header["encoding"] = "dicom"
            payload = image
        if series:
            header["series"] = series
        if instance:
            header["instance"] = instance
        if index is not None:
            header["index"] = int(index)
        if model:
            header["model"] = model
        if geometry is not None:
            geo = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in (
                    ("pixel_spacing", geometry.pixel_spacing),
                    ("slice_thickness", geometry.slice_thickness),
                    ("image_position", geometry.image_position),
                    ("image_orientation", geometry.image_orientation),
                )
                if v is not None
            }
            if geo:
                header["geometry"] = geo
        if rescale is not None and tuple(rescale) != (1.0, 0.0):
            header["rescale"] = {"slope": float(rescale[0]), "intercept": float(rescale[1])}
        if window is not None:
            header["window"] = {"center": float(window[0]), "width": float(window[1])}
        if deadline_ms is not None:
            header["deadline_ms"] = float(deadline_ms)
        header["outputs"] = list(outputs)
        if overlay_encoding != "raw":
            header["overlay_encoding"] = overlay_encoding
        if overlay_options is not None:
            header["overlay_options"] = {
                k: getattr(overlay_options, k) for k in ("alpha", "fill", "contours", "heatmap")
            }
        if not publish:
            header["publish"] = False
        header["sent_at"] = time.time()
        return self._enqueue(header, [payload], timeout)

    def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        """``submit(...).result()``."""
        return self.submit(image, **kwargs).result()

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        """The runtime's PONG: version, models, engine, queue depth."""
        return self.request("PING", timeout).result()

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """The runtime's counters and latency histograms (STATS_REPLY)."""
        return self.request("STATS", timeout).result()

    def request(self, kind: str, timeout: float | None = None) -> Future[dict[str, Any]]:
        """Send a payload-less request (PING or STATS); the future holds the reply header."""
        return self._enqueue(
            {"version": PROTOCOL_VERSION, "type": kind, "id": f"{self._prefix}-{next(self._ids)}"}, [], timeout
        )

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._poke()
        self._thread.join(10)
        with self._wake_lock:
            self._wake.close(0)
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------------

    def _enqueue(self, header: dict[str, Any], payload: list[Any], timeout: float | None) -> Future:
        future: Future = Future()
        wait = self.config.timeout_s if timeout is None else timeout
        pending = _Pending([encode_header(header), *payload], future, time.monotonic() + wait)
        self._outbox.put((header["id"], pending))
        self._poke()
        return future

    def _poke(self) -> None:
        with self._wake_lock:
            if not self._wake.closed:
                try:
                    self._wake.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # wake-ups are already queued; the I/O thread will see this request too

    def _open(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        if self.config.curve is not None:
            self.config.curve.apply(sock)
        sock.connect(self.endpoint)
        return sock

    def _run(self) -> None:
        import json

        cfg = self.config
        pending: dict[str, _Pending] = {}
        sock = self._open()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        last_heard = last_ping = time.monotonic()
        attempts = 0
        try:
            while not self._closing.is_set():
                events = dict(poller.poll(int(cfg.heartbeat_s * 250)))
                now = time.monotonic()
                if self._wake_pull in events:
                    while True:
                        try:
                            self._wake_pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                while True:
                    try:
                        request_id, item = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if not pending:
                        last_heard = now  # silence only counts while something is outstanding
                    item.sent_mono = now
                    pending[request_id] = item
                    if not self._send(sock, item):
                        del pending[request_id]
                if sock in events:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        last_heard = time.monotonic()
                        attempts = 0
                        try:
                            header = json.loads(frames[0].bytes)
                        except (ValueError, IndexError):
                            log.warning("ignoring an unparsable message from the runtime")
                            continue
                        item = pending.pop(header.get("id"), None)  # type: ignore[arg-type]
                        if item is None or item.future.done():
                            continue  # a heartbeat PONG, or a late duplicate after a resend: never delivered twice
                        self._complete(item, header, frames[1:])
                now = time.monotonic()
                for request_id in [k for k, p in pending.items() if now > p.deadline]:
                    item = pending.pop(request_id)
                    waited = now - item.sent_mono
                    item.future.set_exception(
                        RequestTimeoutError(f"no reply from {self.endpoint} within {waited:.2f} s")
                    )
                if pending and now - last_heard > cfg.heartbeat_s and now - last_ping > cfg.heartbeat_s:
                    self._heartbeat(sock)
                    last_ping = now
                if pending and now - last_heard > cfg.heartbeat_s * cfg.liveness:
                    attempts += 1
                    poller.unregister(sock)
                    sock.close(0)
                    if attempts > cfg.retries:
                        for item in pending.values():
                            item.future.set_exception(
                                RuntimeUnavailableError(
                                    f"runtime at {self.endpoint} did not answer after {cfg.retries} reconnect(s)"
                                )
                            )
                        pending.clear()
                        attempts = 0
                    log.warning(
                        "runtime at %s silent for %.1f s; reconnecting (attempt %d)",
                        self.endpoint,
                        now - last_heard,
                        attempts,
                    )
                    self.reconnects += 1
                    sock = self._open()
                    poller.register(sock, zmq.POLLIN)
                    for item in pending.values():
                        self._send(sock, item)
                    last_heard = time.monotonic()
        finally:
            for item in pending.values():
                if not item.future.done():
                    item.future.set_exception(RuntimeUnavailableError("client closed before the reply arrived"))
            while True:
                try:
                    _, item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                item.future.set_exception(RuntimeUnavailableError("client closed"))
            sock.close(0)
            self._wake_pull.close(0)

    def _send(self, sock: zmq.Socket, item: _Pending) -> bool:
        try:
            sock.send_multipart(item.frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            item.future.set_exception(BusyError("too many requests queued on this connection (high-water mark)"))
            return False

    def _heartbeat(self, sock: zmq.Socket) -> None:
        ping = encode_header(
            {"version": PROTOCOL_VERSION, "type": "PING", "id": f"{self._prefix}-hb-{next(self._ids)}"}
        )
        try:
            sock.send(ping, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _complete(self, item: _Pending, header: dict[str, Any], frames: Sequence[zmq.Frame]) -> None:
        kind = header.get("type")
        if kind == "RESULT":
            rtt = (time.monotonic() - item.sent_mono) * 1e3
            try:
                item.future.set_result(_parse_result(header, frames, rtt))
            except (KeyError, TypeError, ValueError) as exc:
                item.future.set_exception(ScanedgeError(f"malformed RESULT from the runtime: {exc}"))
        elif kind == "ERROR":
            item.future.set_exception(error_for_code(str(header.get("code")), str(header.get("message", ""))))
        else:  # PONG, STATS_REPLY
            item.future.set_result(header)


class AsyncClient:
    """asyncio front end over :class:`Client`: ``await client.segment(...)``."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        self._client = Client(endpoint, config)

    async def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        return await asyncio.wrap_future(self._client.submit(image, **kwargs))

    async def ping(self, timeout: float | None = None) -> dict[str, Any]:
        return await asyncio.wrap_future(self._client.request("PING", timeout))

    async def stats(self, timeout: float | None = None) -> dict[str, Any]:
        return await asyncio.wrap_future(self._client.request("STATS", timeout))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
