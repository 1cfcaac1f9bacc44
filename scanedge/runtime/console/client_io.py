"""The console client's connection: the one I/O thread that owns its sockets, and everything only it touches.

pyzmq sockets are not thread-safe, so one thread owns the DEALER and its monitor from open to close and
does all the talking: it takes requests from :class:`scanedge.runtime.console.client.Client` (any thread) through a
queue plus a one-byte inproc wake-up (the PUSH end, used under a lock), sends them (pixel frames with
``copy=False``), receives and matches replies to their futures, heartbeats, reconnects, resends and
registers the shared-memory region. The API side (building requests, back-pressure, asyncio) stays in
:mod:`scanedge.runtime.console.client`; a new reliability rule or connection-level message goes here.

Reliability, after the ZeroMQ guide's Lazy Pirate pattern, plus restart detection:

- every PONG and reply names the runtime *instance* that sent it; each new connection is greeted with a
  PING, so when a runtime is killed and another one takes its port, the first PONG shows a new instance
  and every request still unanswered is resent at once (the new runtime never saw them);
- when the runtime has been silent for ``heartbeat_s * liveness`` while requests are outstanding, the
  socket is closed, a new one opened and the requests resent, up to ``retries`` times; then they fail
  with :class:`RuntimeUnavailableError`;
- replies are matched by id and each future completes once, so a request answered twice (before and
  after a restart, or after a resend) is delivered to its caller once;
- a runtime that refuses this console's CurveZMQ key (or speaks another security mechanism) fails the
  outstanding requests with :class:`UnauthorizedError` instead of letting them time out.

With a shared-memory region (docs/protocol.md section 12), the region is registered on every new
connection; a request whose block the runtime cannot use (it restarted, or refuses the region) is sent
again as frames, so nothing fails for want of shared memory.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
import zmq.utils.monitor

from scanedge.errors import (
    ClientClosedError,
    ProtocolError,
    RequestTimeoutError,
    RuntimeUnavailableError,
    ScanedgeError,
    UnauthorizedError,
    error_for_code,
)
from scanedge.runtime.console.shm_client import Block, ConsoleRegion
from scanedge.runtime.wire.protocol import (
    Error,
    Result,
    ShmRegions,
    decode_reply,
    encode,
    ping_request,
    shm_register_request,
)

if TYPE_CHECKING:  # the API module imports this one; the config is only a type here
    from scanedge.runtime.console.client import ClientConfig

__all__ = ["ClientIo", "ResultFactory"]

log = logging.getLogger("scanedge.client")

_MONITORED = (
    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
#: error codes that mean "this request's shared memory is not usable here": it is sent again as frames
_SHM_CODES = frozenset({"SHM_UNAVAILABLE", "SHM_REFUSED", "UNKNOWN_REGION", "BAD_REGION"})

#: turns a RESULT (header, payload frames, round trip in ms, arrays read from shared memory) into what the
#: caller's future holds; it may raise ProtocolError or ValueError for a RESULT it cannot read
ResultFactory = Callable[[Result, Sequence[Any], float, "dict[str, Any] | None"], Any]


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


class ClientIo:
    """One connection to a runtime and the background thread that owns it; :meth:`send` from any thread.

    What the thread learns is readable from any thread: ``runtime_id`` (the runtime instance last heard),
    ``reconnects`` and ``resent`` (counters), ``refused`` (set once the runtime refused this console's
    keys), ``shm_ready`` (the runtime acknowledged the region on the current connection) and
    ``shm_refusal`` (the runtime's last reason for refusing it).
    """

    def __init__(
        self, endpoint: str, config: ClientConfig, region: ConsoleRegion | None, make_result: ResultFactory
    ) -> None:
        """Open the context and the wake-up pair and start the thread, which connects to ``endpoint``."""
        self.endpoint = endpoint
        self.config = config
        self.reconnects = 0
        self.resent = 0
        self.runtime_id: str | None = None
        self.refused: UnauthorizedError | None = None
        self.shm_ready = False
        self.shm_refusal: str | None = None
        self._region = region
        self._make_result = make_result
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
        self._unsent: deque[str] = deque()  # ids waiting to be (re)sent, in order; owned by the I/O thread
        self._shm_register_id: str | None = None
        self._thread = threading.Thread(target=self._run, name="scanedge-client", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing.is_set()

    def next_id(self) -> str:
        """A request id unique on this connection."""
        return f"{self._prefix}-{next(self._ids)}"

    def send(
        self,
        request_id: str,
        frames: list[Any],
        future: Future[Any],
        deadline: float,
        block: Block | None = None,
        as_frames: Callable[[], list[Any]] | None = None,
    ) -> None:
        """Hand a request to the I/O thread: ``future`` completes with its reply, or fails at ``deadline``
        (monotonic). ``block``: its part of the region; ``as_frames``: the same request with frames."""
        self._outbox.put((request_id, _Pending(frames, future, deadline, block=block, as_frames=as_frames)))
        self._poke()

    def close(self) -> None:
        """Stop the thread (unanswered futures fail with :class:`ClientClosedError`) and end the context."""
        self._closing.set()
        self._poke()
        self._thread.join(10)
        with self._wake_lock:
            self._wake.close(0)
        self._ctx.term()

    def _poke(self) -> None:
        with self._wake_lock:
            if not self._wake.closed:
                try:
                    self._wake.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # wake-ups are already queued; the I/O thread will see this request too

    # --- the I/O thread ------------------------------------------------------------------------------------

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
        """The thread: poll, take new requests, receive, send, expire, heartbeat, reconnect; until closed."""
        cfg = self.config
        pending: dict[str, _Pending] = {}
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
                if sock in events and self._receive(sock, pending):
                    last_heard = time.monotonic()
                    attempts = 0
                if self._unsent:
                    self._send_unsent(sock, pending)
                now = time.monotonic()
                self._expire(pending, now)
                if pending and now - last_heard > cfg.heartbeat_s and now - last_ping > cfg.heartbeat_s:
                    self._ping(sock, "hb")
                    last_ping = now
                if pending and now - last_heard > cfg.heartbeat_s * cfg.liveness:
                    sock, monitor, attempts = self._reconnect(
                        poller, sock, monitor, pending, attempts + 1, now - last_heard
                    )
                    last_heard = time.monotonic()
        finally:
            self._shut_down(pending, sock, monitor)

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

    def _expire(self, pending: dict[str, _Pending], now: float) -> None:
        """Drop what is answered; fail what is past its deadline with :class:`RequestTimeoutError`."""
        for request_id in [k for k, p in pending.items() if now > p.deadline or p.future.done()]:
            item = pending.pop(request_id)
            if not item.future.done():
                waited = now - (item.sent_mono or now)
                item.future.set_exception(RequestTimeoutError(f"no reply from {self.endpoint} within {waited:.2f} s"))

    def _reconnect(
        self,
        poller: zmq.Poller,
        sock: zmq.Socket,
        monitor: zmq.Socket,
        pending: dict[str, _Pending],
        attempts: int,
        silent_s: float,
    ) -> tuple[zmq.Socket, zmq.Socket, int]:
        """The runtime has been silent too long: close the socket, fail everything once ``retries`` reopenings
        did not help, open a new one and queue what is pending to be resent. Returns the new socket and
        monitor and the attempts so far (0 after giving up)."""
        cfg = self.config
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
                silent_s,
                len(pending),
                attempts,
            )
        self.reconnects += 1
        sock, monitor = self._open()
        for s in (sock, monitor):
            poller.register(s, zmq.POLLIN)
        self._mark_unsent(pending, pending.values())
        return sock, monitor, attempts

    def _shut_down(self, pending: dict[str, _Pending], sock: zmq.Socket, monitor: zmq.Socket) -> None:
        """Fail everything unanswered or not yet taken with :class:`ClientClosedError`; close the sockets."""
        self._fail_all(pending, ClientClosedError("the client was closed before the reply arrived"))
        while True:
            try:
                _, item = self._outbox.get_nowait()
            except queue.Empty:
                break
            item.future.set_exception(ClientClosedError("the client was closed"))
        self._close_socket(sock, monitor)
        self._wake_pull.close(0)

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

    def _mark_unsent(self, pending: dict[str, _Pending], items: Iterable[_Pending]) -> None:
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
                self.shm_ready = False
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
                self.refused = UnauthorizedError(f"{self.endpoint}: {reason}")
                self._fail_all(pending, self.refused)

    def _shm_register(self, sock: zmq.Socket) -> None:
        """Offer the region to the runtime on this connection; requests use it once it is acknowledged."""
        self.shm_ready = False
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
            self.shm_ready = True
            self.shm_refusal = None
        elif isinstance(reply, Error) and reply.message != self.shm_refusal:
            self.shm_refusal = reply.message
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
                self._on_runtime(reply.runtime, pending)
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
        if self.shm_ready:
            self._shm_register(sock)

    def _on_runtime(self, runtime: str, pending: dict[str, _Pending]) -> None:
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
                item.future.set_result(self._make_result(reply, frames, rtt, shared))
            except (ProtocolError, ValueError) as exc:
                item.future.set_exception(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
        elif isinstance(reply, Error):
            item.future.set_exception(error_for_code(reply.code, reply.message))
        else:  # PONG, STATS_REPLY
            item.future.set_result(reply)
        if block is not None and self._region is not None:
            self._region.release(block)  # answered without a result: the runtime is done with it
