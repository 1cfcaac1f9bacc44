"""Who may hold a connection to the DICOM node, for how long, and how many bytes one message may carry.

pynetdicom's server starts an association (two threads) for every TCP connection it accepts and waits up
to its ACSE timeout for the A-ASSOCIATE-RQ, so a handful of idle sockets fill its association limit and
hundreds of them mean hundreds of threads. Here a *gate* stands in front of it:

- **pending** connections (accepted, their A-ASSOCIATE-RQ not yet complete) cost no thread: one gate
  thread watches them all. At most ``max_pending`` are kept; a new connection past that closes the oldest
  pending connection of the address that holds the most of them. A connection whose request is not
  complete within ``associate_timeout_s`` of its accept is closed (the ARTIM timer of PS3.8, from accept).
- once a connection's whole A-ASSOCIATE-RQ has arrived (at most :data:`MAX_REQUEST_BYTES`), the gate reads
  its AE titles: a wrong Called AE title, or a Calling AE title outside the allow-list, is rejected there
  (A-ASSOCIATE-RJ, permanent) and closed; otherwise it takes one of ``max_associations`` *association*
  slots (a full house is rejected transient, "local limit exceeded") and only then is handed to
  pynetdicom, on a thread of its own. The slot is freed when that association's thread has ended.
- any one address holds at most ``max_per_address`` connections, pending and associated together; more
  are closed as soon as they are accepted.

So connections that never negotiate cannot take an association slot, and with ``--allow-calling-ae``
nobody but the named scanners can: an allow-listed scanner finds a slot free unless its own associations
(or a peer using its AE title) hold them all. Open connections are at most ``max_pending +
max_associations``, and threads at most three per association slot (the handler waiting on the
association, pynetdicom's association and its DUL reactor) plus the gate's and the accept loop's.

Within an association, every PDU is refused past :data:`MAX_PDU_BYTES` before pynetdicom gathers it (its
socket is wrapped), and :class:`MessageMeter` counts the fragments of each DIMSE message so that no
sequence of PDVs can reset the per-message byte cap (see its docstring).

The gate reads plain DICOM upper-layer PDUs; with DICOM TLS (not configured by the node) it would have to
complete the handshake first, on its own thread-free loop.
"""

from __future__ import annotations

import errno
import logging
import select
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scanedge.errors import ConfigError, redacted_traceback

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_PDU_BYTES",
    "MAX_REQUEST_BYTES",
    "AdmissionPolicy",
    "AdmissionStats",
    "Gate",
    "MessageMeter",
    "start_gated_server",
    "stop_reading",
]

log = logging.getLogger("scanedge.dicomnet")

#: the longest A-ASSOCIATE-RQ PDU accepted (its variable part; a request proposing every storage class
#: with a dozen transfer syntaxes each takes ~30 KB). It is read in place from the socket's buffer.
MAX_REQUEST_BYTES = 64 * 1024
#: the longest PDU read on an association. The node offers 16 382-byte PDUs; a peer may send somewhat more,
#: never a gigabyte that pynetdicom would gather whole before looking at it.
MAX_PDU_BYTES = 1024 * 1024
#: the largest DIMSE command set (a C-STORE request's is about 200 bytes).
MAX_COMMAND_BYTES = 16 * 1024
#: how often a pending connection whose request has only partly arrived is looked at again
_STALLED_POLL_S = 0.05
#: how often the gate sums up, in one log line, the connections it closed without an association
_SUMMARY_EVERY_S = 10.0
_ACCEPT_BATCH = 64


@dataclass(frozen=True)
class AdmissionPolicy:
    """How many connections the node keeps, and which association requests it takes.

    Attributes:
        max_associations: associations served at once (slots held from a complete, acceptable request
            until the association's thread ends).
        max_pending: connections kept while their A-ASSOCIATE-RQ has not fully arrived; a new one past it
            closes the oldest pending connection of the address holding the most.
        max_per_address: connections (pending and associated) from one IP address.
        associate_timeout_s: a connection whose A-ASSOCIATE-RQ is not complete this long after its accept
            is closed.
        ae_title: this node's AE title.
        require_called_ae: reject requests whose Called AE title is not ``ae_title``.
        allowed_calling_aes: accept requests only from these Calling AE titles; empty: from any.
    """

    max_associations: int = 8
    max_pending: int = 16
    max_per_address: int = 4
    associate_timeout_s: float = 5.0
    ae_title: str = "SCANEDGE"
    require_called_ae: bool = True
    allowed_calling_aes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_associations", "max_pending", "max_per_address"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.associate_timeout_s > 0:
            raise ConfigError(f"associate_timeout_s must be > 0, got {self.associate_timeout_s}")


@dataclass
class AdmissionStats:
    """What the gate has done since the node started (the gate thread and association threads update them).

    Attributes:
        accepted: TCP connections accepted.
        associations: requests handed to pynetdicom (an association slot taken).
        over_address_cap: connections closed at once, their address already holding ``max_per_address``.
        evicted: pending connections closed to make room for a newer one.
        timed_out: pending connections closed after ``associate_timeout_s`` without a complete request.
        closed_by_peer: pending connections the peer closed before its request was complete.
        malformed: first PDUs that were not an A-ASSOCIATE-RQ, or one longer than ``MAX_REQUEST_BYTES``.
        rejected: requests answered A-ASSOCIATE-RJ by the gate, by reason (``called-ae``, ``calling-ae``,
            ``busy``).
        oversized_pdus: associations closed for a PDU longer than ``MAX_PDU_BYTES``.
    """

    accepted: int = 0
    associations: int = 0
    over_address_cap: int = 0
    evicted: int = 0
    timed_out: int = 0
    closed_by_peer: int = 0
    malformed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    oversized_pdus: int = 0


@dataclass
class _Pending:
    sock: socket.socket
    address: tuple[Any, ...]
    accepted: float
    deadline: float


class Gate:
    """The pending pool, the association slots and the per-address counts, run by one thread (:meth:`run`).

    ``hand_over(sock, address)`` starts pynetdicom on a connection whose request is complete and accepted;
    whoever runs that association calls :meth:`released` with the same address once its thread has ended.
    """

    def __init__(
        self,
        policy: AdmissionPolicy,
        listening: socket.socket,
        hand_over: Callable[[socket.socket, tuple[Any, ...]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.stats = AdmissionStats()
        self._listening = listening
        self._hand_over = hand_over
        self._clock = clock
        self._pending: dict[socket.socket, _Pending] = {}  # in accept order
        self._stalled: set[socket.socket] = set()  # partly arrived requests, polled rather than selected
        self._per_address: Counter[str] = Counter()
        self._associated = 0
        self._lock = threading.Lock()  # _per_address, _associated and stats: released() runs elsewhere
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._summary: Counter[str] = Counter()
        self._summary_at = clock()

    # --- what others see ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Connections waiting for their A-ASSOCIATE-RQ."""
        return len(self._pending)

    @property
    def associated(self) -> int:
        """Association slots taken."""
        return self._associated

    def connections_from(self, host: str) -> int:
        """Connections (pending and associated) from ``host``."""
        with self._lock:
            return self._per_address[host]

    def released(self, address: tuple[Any, ...]) -> None:
        """An association handed over has ended: free its slot and its address's share."""
        with self._lock:
            self._associated -= 1
            self._forget(address)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the gate thread (it closes every pending connection) and wait for it."""
        self._stopping.set()
        self._wake()
        self._done.wait(timeout_s)

    # --- the gate thread -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Accept, watch pending connections, hand complete requests over; until :meth:`stop`."""
        try:
            self._listening.setblocking(False)
            self._selector.register(self._listening, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            next_poll = self._clock()
            while not self._stopping.is_set():
                now = self._clock()
                wait = min([p.deadline for p in self._pending.values()], default=now + 1.0) - now
                if self._stalled:
                    wait = min(wait, next_poll - now)
                for key, _ in self._selector.select(max(0.0, min(wait, 1.0))):
                    if key.fileobj is self._listening:
                        self._accept_some()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._examine_safely(key.fileobj)  # type: ignore[arg-type]
                now = self._clock()
                if self._stalled and now >= next_poll:
                    next_poll = now + _STALLED_POLL_S
                    for sock in list(self._stalled):
                        self._examine_safely(sock)
                self._expire(now)
                self._maybe_summarise(now)
        except Exception as exc:  # a bug outside any one connection: the node stops accepting, and says so
            log.error("internal error in the DICOM node's gate, no new connections: %s", redacted_traceback(exc))
        finally:
            for sock in list(self._pending):
                self._drop(sock, None)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self._done.set()

    def _examine_safely(self, sock: socket.socket) -> None:
        """:meth:`_examine`, where a bug met on one connection closes that connection, never the gate."""
        try:
            self._examine(sock)
        except Exception as exc:
            log.error("internal error examining a DICOM connection, closed: %s", redacted_traceback(exc))
            try:
                self._drop(sock, None)
            except Exception:  # already half-forgotten: make sure the descriptor goes
                _close(sock)

    def _accept_some(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self._listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or a connection reset while queued
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept DICOM connections: %s", exc.strerror)
                    self._stopping.wait(0.1)
                return
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        host = str(address[0])
        with self._lock:
            self.stats.accepted += 1
            if self._per_address[host] >= self.policy.max_per_address:
                self.stats.over_address_cap += 1
                self._summary["over the per-address cap"] += 1
                full = True
            else:
                self._per_address[host] += 1
                full = False
        if full:
            _close(sock)
            return
        if len(self._pending) >= self.policy.max_pending:
            self._drop(self._eviction_victim(), "evicted")
        sock.setblocking(False)
        now = self._clock()
        self._pending[sock] = _Pending(sock, address, now, now + self.policy.associate_timeout_s)
        self._selector.register(sock, selectors.EVENT_READ)

    def _eviction_victim(self) -> socket.socket:
        """The oldest pending connection of the address with the most pending connections: a scanner that
        connects and asks at once is the last to go, one busy address the first."""
        counts = Counter(str(p.address[0]) for p in self._pending.values())
        heaviest = max(counts.values())
        return next(s for s, p in self._pending.items() if counts[str(p.address[0])] == heaviest)

    def _examine(self, sock: socket.socket) -> None:
        """Look (without reading) at what a pending connection has sent; act once its request is whole."""
        pending = self._pending.get(sock)
        if pending is None:
            return
        try:
            head = sock.recv(6 + MAX_REQUEST_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sock, "closed by the peer")
            return
        if not head:
            self._drop(sock, "closed by the peer")
            return
        if head[0] != 0x01:  # not an A-ASSOCIATE-RQ: not a DICOM peer, or one out of step
            self._drop(sock, "malformed")
            return
        if len(head) < 6:
            self._stall(sock)
            return
        length = int.from_bytes(head[2:6], "big")
        if length > MAX_REQUEST_BYTES or length < 68:  # 68: version, reserved, the two AE titles, reserved
            self._drop(sock, "malformed")
            return
        if len(head) < 6 + length:
            self._stall(sock)
            return
        self._decide(pending, head[: 6 + length])

    def _decide(self, pending: _Pending, request: bytes) -> None:
        called = _ae_title(request[10:26])
        calling = _ae_title(request[26:42])
        policy = self.policy
        reason = None
        if policy.require_called_ae and called != policy.ae_title:
            reason, rsd = "called-ae", (0x01, 0x01, 0x07)  # permanent; service user; called AE not recognised
        elif policy.allowed_calling_aes and calling not in policy.allowed_calling_aes:
            reason, rsd = "calling-ae", (0x01, 0x01, 0x03)  # permanent; service user; calling AE not recognised
        else:
            with self._lock:
                if self._associated >= policy.max_associations:
                    reason, rsd = "busy", (0x02, 0x03, 0x02)  # transient; presentation; local limit exceeded
                else:
                    self._associated += 1
                    self.stats.associations += 1
        sock = pending.sock
        self._unwatch(sock)
        if reason is not None:
            with self._lock:
                self.stats.rejected[reason] += 1
                self._summary[f"rejected ({reason})"] += 1
                self._forget(pending.address)
            _reject(sock, len(request), *rsd)
            return
        try:
            sock.setblocking(True)
            self._hand_over(sock, pending.address)
        except Exception as exc:  # e.g. no thread could be started: give the slot back
            log.error("could not start an association for %s: %s", pending.address[0], exc.__class__.__name__)
            _close(sock)
            self.released(pending.address)

    def _stall(self, sock: socket.socket) -> None:
        """A request that has partly arrived: polled from now on, until it is whole, its peer hangs up (the
        bytes already sent stay readable, so only the hang-up tells), or it times out."""
        if _hung_up(sock):
            self._drop(sock, "closed by the peer")
            return
        if sock not in self._stalled:
            self._stalled.add(sock)
            self._selector.unregister(sock)  # level-triggered: it would be "readable" on every select

    def _expire(self, now: float) -> None:
        for sock, pending in list(self._pending.items()):
            if pending.deadline > now:
                break  # deadlines follow accept order
            self._drop(sock, "timed out")

    def _drop(self, sock: socket.socket, why: str | None) -> None:
        pending = self._pending.get(sock)
        if pending is None:
            return
        self._unwatch(sock)
        with self._lock:  # counted before the peer can see the close
            self._forget(pending.address)
            if why == "evicted":
                self.stats.evicted += 1
            elif why == "timed out":
                self.stats.timed_out += 1
            elif why == "closed by the peer":
                self.stats.closed_by_peer += 1
            elif why == "malformed":
                self.stats.malformed += 1
            if why is not None:
                self._summary[why] += 1
        _close(sock)

    def _unwatch(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        if sock in self._stalled:
            self._stalled.discard(sock)
        else:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass

    def _forget(self, address: tuple[Any, ...]) -> None:
        """One connection fewer from ``address`` (the caller holds the lock)."""
        host = str(address[0])
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]

    def _maybe_summarise(self, now: float) -> None:
        """One log line per interval for what peers caused, however many connections: a flood cannot
        fill the log."""
        if now - self._summary_at < _SUMMARY_EVERY_S:
            return
        self._summary_at = now
        with self._lock:
            summary, self._summary = self._summary, Counter()
        quiet = {"closed by the peer"}  # port scans and health checks: not worth a warning
        if any(k not in quiet for k in summary):
            log.warning(
                "DICOM connections closed without an association in the last %g s: %s",
                _SUMMARY_EVERY_S,
                ", ".join(f"{n} {why}" for why, n in sorted(summary.items())),
            )

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass


class MessageMeter:
    """Counts the bytes of the DIMSE message an association is receiving, from its raw P-DATA-TF PDUs.

    A message is a command set (fragments flagged *command*) and then, unless the command's Command Data
    Set Type (0000,0800) is 0x0101, a data set. The command set is capped at :data:`MAX_COMMAND_BYTES` and
    its own count; the data set counts toward ``limit``. A message ends only when its data set's last
    fragment arrives, or when its command says no data set follows. A command fragment while a data set
    is due, a command without a readable Command Data Set Type, a data fragment before any command and a
    malformed PDV are protocol errors: so no run of PDVs (an empty "last command" fragment between data
    fragments, say) can start the count again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._command = bytearray()
        self._data_due = False
        self._data_bytes = 0
        self.broken: str | None = None

    def feed(self, pdu: bytes) -> str | None:
        """Account for one received PDU; returns why the association must be aborted (once: PDUs already on
        their way after that are ignored), or None."""
        if pdu[:1] != b"\x04" or self.broken is not None:  # only P-DATA-TF carries messages
            return None
        self.broken = self._feed(pdu)
        return self.broken

    def _feed(self, pdu: bytes) -> str | None:
        end = min(len(pdu), 6 + int.from_bytes(pdu[2:6], "big"))
        pos = 6
        while pos < end:
            if pos + 6 > end:
                return "a malformed presentation data value"
            length = int.from_bytes(pdu[pos : pos + 4], "big")  # context ID + control header + fragment
            if length < 2 or pos + 4 + length > end:
                return "a malformed presentation data value"
            control = pdu[pos + 5]
            fragment = memoryview(pdu)[pos + 6 : pos + 4 + length]
            if control & 0x01:
                why = self._command_fragment(fragment, control)
            else:
                why = self._data_fragment(fragment, control)
            if why is not None:
                return why
            pos += 4 + length
        return None

    def _command_fragment(self, fragment: memoryview, control: int) -> str | None:
        if self._data_due:
            return "a command fragment while a data set was due"
        if len(self._command) + len(fragment) > MAX_COMMAND_BYTES:
            return f"a command set of more than {MAX_COMMAND_BYTES} bytes"
        self._command += fragment
        if not control & 0x02:
            return None
        data_set_type = _command_data_set_type(bytes(self._command))
        self._command.clear()
        if data_set_type is None:
            return "a command set without a readable Command Data Set Type"
        self._data_due = data_set_type != 0x0101
        self._data_bytes = 0
        return None

    def _data_fragment(self, fragment: memoryview, control: int) -> str | None:
        if not self._data_due:
            return "a data set fragment without a command announcing one"
        self._data_bytes += len(fragment)
        if self._data_bytes > self.limit:
            return f"a message of more than {self.limit} bytes (max_object_bytes)"
        if control & 0x02:
            self._data_due = False
            self._data_bytes = 0
        return None


def _command_data_set_type(command: bytes) -> int | None:
    """(0000,0800) of a command set (always implicit VR little endian), or None if it cannot be read."""
    pos = 0
    while pos + 8 <= len(command):
        group = int.from_bytes(command[pos : pos + 2], "little")
        element = int.from_bytes(command[pos + 2 : pos + 4], "little")
        length = int.from_bytes(command[pos + 4 : pos + 8], "little")
        if group != 0x0000 or pos + 8 + length > len(command):
            return None
        if element == 0x0800:
            return int.from_bytes(command[pos + 8 : pos + 10], "little") if length == 2 else None
        if element > 0x0800:  # elements are in ascending order
            return None
        pos += 8 + length
    return None


class _BoundedSocket(socket.socket):
    """The socket pynetdicom reads an association from: it refuses a PDU longer than ``max_pdu`` as soon
    as its header is read (pynetdicom would gather any length in memory first), and a PDU that takes
    longer than ``pdu_timeout_s`` to arrive (a byte now and then keeps no thread forever).

    Refusing is reading nothing more: ``recv`` returns end-of-stream, which pynetdicom takes for a closed
    connection without logging a traceback, and the unread bytes make the final close a reset.
    """

    max_pdu: int
    pdu_timeout_s: float
    on_oversize: Callable[[int], None]

    def _begin(self, max_pdu: int, pdu_timeout_s: float, on_oversize: Callable[[int], None]) -> None:
        self.max_pdu, self.pdu_timeout_s, self.on_oversize = max_pdu, pdu_timeout_s, on_oversize
        self._header = bytearray()
        self._body_left = 0
        self._pdu_deadline: float | None = None
        self.refusing = False

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.refusing:
            return b""
        deadline = self._pdu_deadline
        self.settimeout(self.pdu_timeout_s if deadline is None else max(0.001, deadline - time.monotonic()))
        try:
            data = super().recv(bufsize, flags)
        except TimeoutError:  # end-of-stream for pynetdicom, which would log a traceback for the timeout
            self.refusing = True
            return b""
        if not flags & socket.MSG_PEEK:
            length = self._follow(data)
            if length is not None:
                self.refusing = True
                self.on_oversize(length)
                return b""
        return data

    def _follow(self, data: bytes) -> int | None:
        """Track PDU boundaries through the byte stream; returns the length of a PDU over ``max_pdu``."""
        pos = 0
        while pos < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - pos)
                self._body_left -= step
                pos += step
                if not self._body_left:
                    self._pdu_deadline = None
                continue
            if not self._header:
                self._pdu_deadline = time.monotonic() + self.pdu_timeout_s
            step = min(6 - len(self._header), len(data) - pos)
            self._header += data[pos : pos + step]
            pos += step
            if len(self._header) == 6:
                length = int.from_bytes(self._header[2:6], "big")
                self._header.clear()
                if length > self.max_pdu:
                    return length
                self._body_left = length
                if not length:
                    self._pdu_deadline = None
        return None


def stop_reading(assoc: Any) -> None:
    """After aborting ``assoc`` for what it sent: read nothing more from its peer (pynetdicom would go on
    reading, and dropping, whatever it still sends until its ARTIM timer runs out)."""
    dul_socket = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(dul_socket, "socket", None)
    if isinstance(sock, _BoundedSocket):
        sock.refusing = True


def _bounded(sock: socket.socket, pdu_timeout_s: float, on_oversize: Callable[[int], None]) -> _BoundedSocket:
    bounded = _BoundedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    bounded._begin(MAX_PDU_BYTES, pdu_timeout_s, on_oversize)
    return bounded


def start_gated_server(
    ae: Any, address: tuple[str, int], handlers: list[Any], policy: AdmissionPolicy, pdu_timeout_s: float
) -> tuple[Any, Gate]:
    """pynetdicom's threaded association server for ``ae`` behind a :class:`Gate`; returns (server, gate).

    The server's ``shutdown()`` stops the gate and closes the listening socket; associations already
    handed over run on until they end (or are aborted by whoever stops the node).
    """
    from pynetdicom import evt
    from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

    class _Handler(RequestHandler):
        def handle(self) -> None:
            """pynetdicom's own, then wait for the association to end so its slot is freed after it."""
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()

    class _GatedServer(ThreadedAssociationServer):
        daemon_threads = True
        block_on_close = False  # stopping must not wait for associations (the node aborts them itself)
        request_queue_size = 128  # a SYN flood past the gate's pace is dropped by the kernel, not queued here

        gate: Gate

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            self.gate.run()

        def shutdown(self) -> None:
            self.gate.stop()
            self.server_close()
            if self in self.ae._servers:
                self.ae._servers.remove(self)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.gate.released(client_address)

        def hand_over(self, sock: socket.socket, client_address: tuple[Any, ...]) -> None:
            bounded = _bounded(sock, pdu_timeout_s, lambda n: self._oversized(n, client_address))
            try:
                super().process_request(bounded, client_address)  # ThreadingMixIn: one thread, started now
            except BaseException:
                _close(bounded)
                raise

        def _oversized(self, length: int, client_address: tuple[Any, ...]) -> None:
            with self.gate._lock:
                self.gate.stats.oversized_pdus += 1
            log.warning(
                "association from %s closed: it sent a PDU of %d bytes (at most %d are read)",
                client_address[0],
                length,
                MAX_PDU_BYTES,
            )

    server = ae.make_server(address, evt_handlers=handlers, server_class=_GatedServer, request_handler=_Handler)
    server.gate = Gate(policy, server.socket, server.hand_over)
    ae._servers.append(server)  # pynetdicom's AE.shutdown() stops the servers it lists
    thread = threading.Thread(target=server.serve_forever, name="scanedge-dicom-gate", daemon=True)
    thread.start()
    return server, server.gate


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer has closed its side (Linux's POLLRDHUP; elsewhere the timeout closes it)."""
    rdhup = getattr(select, "POLLRDHUP", 0)
    if not rdhup or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(sock, rdhup | select.POLLHUP)
    return bool(poller.poll(0))


def _ae_title(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \0")


def _reject(sock: socket.socket, request_bytes: int, result: int, source: int, reason: int) -> None:
    """Read the request, answer A-ASSOCIATE-RJ and close (reading first: closing on unread bytes would
    reset the connection before the peer reads the answer)."""
    try:
        sock.setblocking(True)
        sock.settimeout(1.0)
        left = request_bytes
        while left:
            chunk = sock.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        sock.sendall(bytes([0x03, 0, 0, 0, 0, 4, 0, result, source, reason]))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
