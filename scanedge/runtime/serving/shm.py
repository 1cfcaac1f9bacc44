"""Shared-memory payloads, the runtime's side (docs/protocol.md section 12).

A console on the same host puts a slice's pixels into a POSIX shared-memory object it created, registers
the object with the runtime once per connection, and then sends SEGMENTs that say where the pixels are and
where the mask and overlay should go, instead of carrying them as frames. No pixel crosses the socket.

Ownership. The console creates, sizes and unlinks its objects. The runtime opens a registered object by
name (``O_RDWR``, or read-only when that is all it may do; never ``O_CREAT``), keeps one file descriptor
per region, and closes it when the region is unregistered, when the console's connection closes, or when
the runtime stops. It never creates, truncates, maps or unlinks a console's object.

Descriptors, and mappings only of memory that cannot shrink: a mapping of memory another process can
shrink (``ftruncate``) turns every access past the new end into SIGBUS, which kills the runtime, and no
check before the access closes that race. So a region is read and written with ``pread``/``pwrite`` on its
descriptor, which return a short count instead (a typed ``BAD_REGION``). They cost a copy each way: 13 us
for 512 KiB of pixels and ~60 us per MiB of outputs measured alone, two to four times that inside a busy
runtime. A console on ipc:// can avoid them by registering a *memfd sealed against shrinking*
(``F_SEAL_SHRINK``): the kernel then refuses any shrink, so the runtime maps it, reads the pixels where
they lie and writes the outputs with one memory copy. The runtime opens such a memfd through
``/proc/PID/fd/FD`` with the PID the kernel reports for the connection, and only if it is a memfd, owned
by the console's user, and sealed.

Why not :mod:`multiprocessing.shared_memory`: before Python 3.13, attaching to an existing object
(``SharedMemory(name)``) registers it with the attaching process's resource tracker, which *unlinks* it
when that process exits and warns about a "leak": a runtime built on it would destroy every console's
region when it stops. The runtime opens ``/dev/shm/NAME`` itself (Linux's home of POSIX shared memory).

Lifetime and concurrency. Regions belong to the connection that registered them. A SEGMENT's ranges are
lent to the runtime from the moment it is sent until its reply (RESULT or ERROR) arrives: the runtime reads
the pixels when a worker starts the job and writes the outputs just before the reply, under a per-job lock
that the reply closes, so nothing is written after the console was answered (even by a worker that was
declared wedged and replaced). A region in use by queued or running jobs stays open until they are
answered, even after its connection closed; then its descriptor is closed, and the kernel frees the memory
once the console has unlinked the name and unmapped it (or died). A name the owner unlinks while registered
keeps working: the runtime's descriptor keeps the object alive.

Who may use it. Regions are refused on connections that are not local (:class:`Peer`): a tcp peer whose
address is not loopback. An object is opened only for a console whose user the kernel reports: on ipc
connections (SO_PEERCRED) the object must belong to that user (or the console runs as root), and inproc
consoles are this process itself. A tcp console, even on loopback, could be any user of the host: the
runtime, which may run as root, would otherwise open on its behalf an object that user cannot open (read
another user's images through the ``image`` output, write into it through ``outputs_at``). So a tcp
console is refused (``SHM_REFUSED``) and sends frames; the Python client falls back by itself. Names must
start with ``/scanedge-``, so a console can never point the runtime at other software's shared memory.
"""

from __future__ import annotations

import fcntl
import ipaddress
import mmap
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np
import zmq

from scanedge.errors import (
    BadRegionError,
    MessageTooLargeError,
    SharedMemoryError,
    SharedMemoryRefusedError,
    UnknownRegionError,
)
from scanedge.imaging.slices import SliceLimits
from scanedge.runtime.wire.payloads import check_raw_payload
from scanedge.runtime.wire.protocol import NAME_PATTERN, SHM_DIR, FrameInfo, RegionInfo, RegionSlice, Segment

__all__ = [
    "NAME_PATTERN",
    "SHM_DIR",
    "SHM_MODES",
    "Peer",
    "Region",
    "RegionTable",
    "ShmJob",
    "ShmMode",
    "peer_of",
]

#: who may register regions: nobody, or consoles on ipc:// (whose uid the kernel reports). ``local`` is the
#: earlier name of ``ipc``, kept so that existing command lines work (it once let tcp loopback consoles in too)
ShmMode = Literal["off", "ipc", "local"]
SHM_MODES: tuple[str, ...] = ("off", "ipc", "local")
#: regions open at once across all connections (each holds a file descriptor)
MAX_TOTAL_REGIONS = 1024


@dataclass(frozen=True)
class Peer:
    """What the runtime knows of a connection's other end.

    Attributes:
        transport: ``ipc``, ``tcp``, ``inproc`` (same process), or ``unknown``.
        local: True when the peer is on this host: ipc, inproc, or tcp from a loopback address.
        uid: the peer process's user id (ipc only: the kernel reports it), else None.
        pid: the peer's process id (ipc only), else None.
    """

    transport: str
    local: bool
    uid: int | None = None
    pid: int | None = None


_IPC_CREDENTIALS = re.compile(r"localhost:(\d{1,10}):(\d{1,10}):(\d{1,10})")


def peer_of(frame: Any) -> Peer:
    """The peer of the connection a received ZeroMQ frame came on, from libzmq's ``Peer-Address`` property.

    libzmq reports a tcp peer's IP address, and for ipc the peer's credentials as ``localhost:UID:GID:PID``
    (SO_PEERCRED); inproc frames have no socket (and no such property): the peer is this process.
    """
    if frame is None:
        return Peer("unknown", False)
    try:
        frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return Peer("inproc", True)
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:  # a libzmq without the property: nothing to go by (refused, not trusted)
        return Peer("unknown", False)
    match = _IPC_CREDENTIALS.fullmatch(address) if isinstance(address, str) else None
    if match is not None:
        return Peer("ipc", True, int(match.group(1)), int(match.group(3)))
    try:
        ip = ipaddress.ip_address(str(address).strip("[]"))
    except ValueError:
        return Peer("unknown", False)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Peer("tcp", ip.is_loopback)


_buffers = threading.local()


def _scratch(nbytes: int) -> memoryview:
    """This thread's reusable read buffer, at least ``nbytes`` long (allocated once per size class)."""
    buf: np.ndarray | None = getattr(_buffers, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 1 << 16), np.uint8)
        _buffers.buf = buf
    return buf.data[:nbytes]


class Region:
    """One registered object: its descriptor and how many in-flight jobs use it.

    ``retain``/``release``/``drop`` are called by the I/O thread only; ``read``/``write`` by a worker
    holding a job that retains the region (so the descriptor is open for the whole call).
    """

    def __init__(self, name: str, size: int, fd: int, writable: bool, *, sealed: bool = False) -> None:
        self.name = name
        self.size = size
        self.fd = fd
        self.writable = writable
        self.users = 0
        self.dropped = False
        self._map: mmap.mmap | None = None
        self.mapped: np.ndarray | None = None  # the bytes, mapped: only when the object cannot shrink
        if sealed:
            try:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            except (OSError, ValueError) as exc:  # e.g. a hugetlb memfd whose size is no whole number of pages
                raise SharedMemoryError(
                    f"{name} cannot be mapped ({getattr(exc, 'strerror', None) or exc}); register a plain memfd"
                ) from None
            self.mapped = np.frombuffer(self._map, np.uint8)

    def retain(self) -> None:
        """One more in-flight job uses the region."""
        self.users += 1

    def release(self) -> None:
        """A job that used the region was answered; close the descriptor if the region was dropped meanwhile."""
        self.users -= 1
        if self.dropped and self.users == 0:
            self._close()

    def drop(self) -> None:
        """No new job may use the region; its descriptor closes when the last job using it is answered."""
        self.dropped = True
        if self.users == 0:
            self._close()

    def _close(self) -> None:
        if self._map is not None:
            self.mapped = None
            try:
                self._map.close()
            except BufferError:
                pass  # a view of it is still referenced somewhere: unmapped when that is garbage
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, nbytes: int) -> memoryview:
        """``nbytes`` from ``offset``: a read-only view of a mapped region, else a copy into this thread's
        scratch buffer (valid until its next read)."""
        if self.mapped is not None:
            return self.mapped[offset : offset + nbytes].data.toreadonly()
        out = _scratch(nbytes)
        try:
            got = os.preadv(self.fd, [out], offset) if nbytes else 0
        except OSError as exc:
            raise SharedMemoryError(f"region {self.name}: reading failed ({exc.strerror})") from None
        if got != nbytes:
            raise BadRegionError(
                f"region {self.name} ends before byte {offset + nbytes}: it was shrunk after it was registered"
            )
        return out.toreadonly()

    def write(self, offset: int, data: Sequence[memoryview]) -> None:
        """Write the buffers ``data`` one after the other from ``offset``, in one system call; the object must
        still be large enough (our writes never grow it)."""
        nbytes = sum(d.nbytes for d in data)
        if self.mapped is not None:  # sealed: it cannot have shrunk
            for view in data:
                self.mapped[offset : offset + view.nbytes] = np.frombuffer(view, np.uint8)
                offset += view.nbytes
            return
        try:
            if os.fstat(self.fd).st_size < offset + nbytes:
                raise BadRegionError(
                    f"region {self.name} ends before byte {offset + nbytes}: it was shrunk after it was registered"
                )
            done = os.pwritev(self.fd, data, offset)
        except OSError as exc:
            raise SharedMemoryError(f"region {self.name}: writing failed ({exc.strerror})") from None
        if done != nbytes:
            raise SharedMemoryError(f"region {self.name}: only {done} of {nbytes} bytes could be written")

    def info(self) -> RegionInfo:
        """The region as SHM_REGIONS lists it."""
        return RegionInfo(name=self.name, size=self.size)


@dataclass(frozen=True)
class _Range:
    region: Region
    offset: int
    nbytes: int

    @classmethod
    def of(cls, where: RegionSlice, region: Region, what: str) -> _Range:
        if where.offset + where.nbytes > region.size:
            raise BadRegionError(
                f"{what}: bytes {where.offset}..{where.offset + where.nbytes} lie outside region {region.name} "
                f"of {region.size} bytes"
            )
        return cls(region, where.offset, where.nbytes)

    def overlaps(self, other: _Range) -> bool:
        return (
            self.region is other.region
            and self.offset < other.offset + other.nbytes
            and other.offset < self.offset + self.nbytes
        )


class _Pixels:
    """A job's pixels in shared memory, read by the worker when it starts the job (``buffer``, as a frame)."""

    def __init__(self, job: ShmJob, where: _Range) -> None:
        self._job = job
        self._where = where

    @property
    def buffer(self) -> memoryview:
        with self._job.lock:
            if self._job.closed:
                raise BadRegionError("the request was answered before its pixels were read")
            return self._where.region.read(self._where.offset, self._where.nbytes)


class ShmJob:
    """A SEGMENT's shared-memory ranges while it is in flight.

    The worker reads ``pixels.buffer`` and calls :meth:`place` with the outputs; the I/O thread calls
    :meth:`close` when it answers the request. Both hold ``lock``, so no byte is read or written for a
    request after its reply.

    Attributes:
        pixels: the pixels (with a ``buffer`` property, like a ZeroMQ frame), or None when they came as a frame.
        nbytes: bytes of the pixels in shared memory (0 when they came as a frame).
        lock: held while reading or writing the console's memory for this job.
        closed: set by :meth:`close`; nothing is read or written afterwards.
    """

    def __init__(self, pixels: _Range | None, outputs: dict[str, _Range]) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.pixels = None if pixels is None else _Pixels(self, pixels)
        self.nbytes = 0 if pixels is None else pixels.nbytes
        self._outputs = outputs
        self._regions = [r.region for r in ([pixels] if pixels else []) + list(outputs.values())]
        for region in self._regions:
            region.retain()

    def place(self, infos: Sequence[FrameInfo], payload: Sequence[Any]) -> tuple[tuple[FrameInfo, ...], list[Any]]:
        """Write the outputs the console asked into shared memory; return the RESULT's ``frames`` entries
        (those written say where) and the frames still to send."""
        out_infos: list[FrameInfo] = []
        frames: list[Any] = []
        writes: list[tuple[_Range, memoryview]] = []
        for info, data in zip(infos, payload):
            target = self._outputs.get(info.name)
            if target is None:
                out_infos.append(info)
                frames.append(data)
                continue
            view = (np.ascontiguousarray(data).data if isinstance(data, np.ndarray) else memoryview(data)).cast("B")
            if view.nbytes > target.nbytes:
                raise BadRegionError(
                    f"the {info.name} takes {view.nbytes} bytes, but outputs_at.{info.name} gives {target.nbytes}"
                )
            writes.append((target, view))
            out_infos.append(
                msgspec.structs.replace(info, region=target.region.name, offset=target.offset, bytes=view.nbytes)
            )
        if writes:
            with self.lock:
                if not self.closed:  # answered already (a wedged worker finishing late): write nothing
                    for region, offset, views in _runs(writes):
                        region.write(offset, views)
        return tuple(out_infos), frames

    def close(self) -> None:
        """The request is answered: no more reads or writes; its regions may close (I/O thread only)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for region in self._regions:
            region.release()


#: Linux's F_SEAL_FUTURE_WRITE (5.1+; not in every Python's fcntl): no new writable mapping, no write()
_F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


def _checked(fd: int, name: str, size: int, peer: Peer, writable: bool) -> Region:
    """The region of an opened object, once it is a plain shared-memory object the console's user owns, at
    least ``size`` bytes long; mapped when sealed against shrinking. Closes ``fd`` when it is refused."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SharedMemoryError(f"{name} is not a shared-memory object")
        uid = os.geteuid() if peer.transport == "inproc" else peer.uid
        if uid is None:  # see the module's docstring: nobody can tell whose the object is for such a console
            raise SharedMemoryRefusedError(
                f"{name}: shared memory is opened only for consoles whose user the kernel reports (ipc://); "
                f"over {peer.transport} send the pixels as frames, or connect over ipc://"
            )
        if uid not in (0, st.st_uid):
            raise SharedMemoryError(f"{name} belongs to another user than the console's")
        if uid != 0:  # the runtime, often root, could open it regardless: the owner's own bits bound it
            if not st.st_mode & stat.S_IRUSR:
                raise SharedMemoryError(f"{name} may not be read by its owner (mode {st.st_mode & 0o777:o})")
            writable = writable and bool(st.st_mode & stat.S_IWUSR)
        if st.st_size < size:
            raise SharedMemoryError(f"{name} has {st.st_size} bytes, fewer than the {size} registered")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:  # objects in /dev/shm cannot be sealed
            seals = 0
        # sealed against writing (now, or for every new mapping and write): a region the runtime only reads
        writable = writable and not seals & (fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE)
        if writable and not seals & fcntl.F_SEAL_SHRINK:  # written with pwrite: probe that it can be
            try:
                os.pwrite(fd, b"", 0)  # writes nothing; fails where write() is not supported (hugetlbfs)
            except OSError as exc:
                raise SharedMemoryError(
                    f"{name} cannot be written byte-wise ({exc.strerror}; a MFD_HUGETLB memfd?): register a "
                    "memfd without MFD_HUGETLB or a /dev/shm object"
                ) from None
        return Region(name, size, fd, writable, sealed=bool(seals & fcntl.F_SEAL_SHRINK))
    except BaseException:
        os.close(fd)
        raise


def _runs(writes: list[tuple[_Range, memoryview]]) -> list[tuple[Region, int, list[memoryview]]]:
    """Writes grouped into runs that continue one another in the same region (the mask and the overlay
    usually do): one ``pwritev`` per run."""
    runs: list[tuple[Region, int, list[memoryview]]] = []
    end = -1
    for target, view in sorted(writes, key=lambda w: (id(w[0].region), w[0].offset)):
        if runs and runs[-1][0] is target.region and target.offset == end:
            runs[-1][2].append(view)
        else:
            runs.append((target.region, target.offset, [view]))
        end = target.offset + view.nbytes
    return runs


class RegionTable:
    """The registered regions of every connection (I/O thread only).

    Args:
        mode: ``off``, ``ipc`` or ``local`` (:data:`ShmMode`).
        max_per_connection: regions one connection may register.
        shm_dir: where POSIX shared-memory objects live (tests may point it elsewhere).
    """

    def __init__(self, mode: ShmMode = "ipc", max_per_connection: int = 16, shm_dir: str = SHM_DIR) -> None:
        if mode not in SHM_MODES:
            raise ValueError(f"shared-memory mode must be one of {SHM_MODES}, got {mode!r}")
        self.mode = mode
        self.max_per_connection = max_per_connection
        self.shm_dir = shm_dir
        self._by_connection: dict[bytes, dict[str, Region]] = {}
        self._total = 0

    def allows(self, peer: Peer) -> bool:
        """Whether a connection to ``peer`` may use shared memory under this runtime's mode: a local console
        whose user the kernel reports (ipc, inproc), never tcp (see the module's docstring)."""
        if self.mode == "off" or not peer.local:
            return False
        return peer.transport in ("ipc", "inproc")

    def _check_peer(self, peer: Peer) -> None:
        if self.allows(peer):
            return
        if self.mode == "off":
            raise SharedMemoryRefusedError("this runtime does not accept shared memory (--shm off)")
        if not peer.local:
            raise SharedMemoryRefusedError(
                "shared memory is for consoles on the runtime's own host; this connection is not local "
                "(send the pixels as frames)"
            )
        raise SharedMemoryRefusedError(
            f"shared memory is for consoles on ipc:// connections, whose user the kernel reports; this one is "
            f"{peer.transport}, where any user of this host could be the console (send the pixels as frames)"
        )

    def register(self, identity: bytes, peer: Peer, name: str, size: int, fd: int | None = None) -> None:
        """Open the console's object ``name`` for this connection (again: replace the earlier registration);
        with ``fd``, the console's memfd of that number, registered as ``name``."""
        self._check_peer(peer)
        if NAME_PATTERN.fullmatch(name) is None:
            raise SharedMemoryError(
                "region names are shm_open names of the form /scanedge-NAME (NAME: 1-200 of A-Z a-z 0-9 . _ -)"
            )
        regions = self._by_connection.setdefault(identity, {})
        old = regions.get(name)
        if old is None and len(regions) >= self.max_per_connection:
            raise SharedMemoryError(f"this connection already has {len(regions)} regions, the most it may register")
        if old is None and self._total >= MAX_TOTAL_REGIONS:
            raise SharedMemoryError(f"the runtime has {self._total} regions open, the most it keeps")
        region = self._open(name, size, peer) if fd is None else self._open_memfd(name, size, peer, fd)
        if old is not None:
            old.drop()
        else:
            self._total += 1
        regions[name] = region

    def _open(self, name: str, size: int, peer: Peer) -> Region:
        path = os.path.join(self.shm_dir, name[1:])
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        writable = True
        try:
            try:
                fd = os.open(path, os.O_RDWR | flags)
            except PermissionError:
                fd, writable = os.open(path, os.O_RDONLY | flags), False
        except FileNotFoundError:
            raise SharedMemoryError(f"there is no shared-memory object {name} on this host") from None
        except OSError as exc:
            raise SharedMemoryError(f"shared-memory object {name} cannot be opened ({exc.strerror})") from None
        return _checked(fd, name, size, peer, writable)

    def _open_memfd(self, name: str, size: int, peer: Peer, number: int) -> Region:
        if peer.transport != "ipc" or peer.pid is None:
            raise SharedMemoryRefusedError(
                "a console's memfd can be registered over ipc:// only, where the kernel names the console's process"
            )
        path = f"/proc/{peer.pid}/fd/{number}"
        try:
            if not os.readlink(path).startswith("/memfd:"):
                raise SharedMemoryError(f"file descriptor {number} of the console is not a memfd")
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SharedMemoryError(
                f"the console's file descriptor {number} cannot be opened ({exc.strerror})"
            ) from None
        return _checked(fd, name, size, peer, True)

    def unregister(self, identity: bytes, name: str | None) -> None:
        """Forget region ``name`` of this connection (every region when None); jobs using it finish first."""
        regions = self._by_connection.get(identity, {})
        if name is None:
            self.drop(identity)
            return
        region = regions.pop(name, None)
        if region is None:
            raise UnknownRegionError(f"this connection has no region {name} registered")
        self._total -= 1
        region.drop()

    def listing(self, identity: bytes) -> tuple[RegionInfo, ...]:
        """This connection's regions, in registration order."""
        return tuple(r.info() for r in self._by_connection.get(identity, {}).values())

    def drop(self, identity: bytes) -> int:
        """The connection closed (or unregistered everything): forget its regions; returns how many."""
        regions = self._by_connection.pop(identity, {})
        for region in regions.values():
            region.drop()
        self._total -= len(regions)
        return len(regions)

    def close(self) -> None:
        """The runtime stops: forget every region (descriptors of regions still in use close with their jobs)."""
        for identity in list(self._by_connection):
            self.drop(identity)

    @property
    def open_regions(self) -> int:
        """Regions registered across all connections."""
        return self._total

    def bind(
        self, identity: bytes, peer: Callable[[], Peer], req: Segment, limits: SliceLimits, max_bytes: int
    ) -> ShmJob | None:
        """The shared-memory ranges of a SEGMENT, checked against its connection's regions (None without any).
        ``peer`` says who sent it; asked only when the SEGMENT names shared memory (most carry frames).

        Raises the typed error a bad range deserves: UNKNOWN_REGION, BAD_REGION, SHM_REFUSED, TOO_LARGE
        (pixels over ``max_bytes``), BAD_PAYLOAD (pixels that contradict dtype x shape).
        """
        if req.pixels_at is None and req.outputs_at is None:
            return None
        self._check_peer(peer())
        regions = self._by_connection.get(identity, {})

        def region_of(where: RegionSlice, what: str) -> Region:
            region = regions.get(where.region)
            if region is None:
                raise UnknownRegionError(
                    f"{what} names region {where.region}, which this connection has not registered"
                )
            return region

        pixels = None
        if req.pixels_at is not None:
            pixels = _Range.of(req.pixels_at, region_of(req.pixels_at, "pixels_at"), "pixels_at")
            if pixels.nbytes > max_bytes:
                raise MessageTooLargeError(
                    f"pixels_at holds {pixels.nbytes} bytes; the runtime takes at most {max_bytes} per slice"
                )
            if req.encoding == "raw":
                check_raw_payload(req, pixels.nbytes, limits)
        outputs: dict[str, _Range] = {}
        if req.outputs_at is not None:
            for name in ("mask", "overlay", "probabilities"):
                where = getattr(req.outputs_at, name)
                if where is None:
                    continue
                if name not in req.outputs:
                    raise BadRegionError(f"outputs_at.{name} is given, but '{name}' is not among the outputs asked")
                region = region_of(where, f"outputs_at.{name}")
                if not region.writable:
                    raise BadRegionError(f"region {region.name} may only be read by the runtime (no write access)")
                target = _Range.of(where, region, f"outputs_at.{name}")
                for other_name, other in ([("pixels_at", pixels)] if pixels else []) + list(outputs.items()):
                    if target.overlaps(other):
                        raise BadRegionError(f"outputs_at.{name} overlaps {other_name}")
                outputs[name] = target
            _check_room(req, outputs)
        return ShmJob(pixels, outputs)


def _check_room(req: Segment, outputs: dict[str, _Range]) -> None:
    """For raw pixels the mask and raw overlay sizes are known already: refuse too little room at once."""
    if req.encoding != "raw" or req.shape is None:
        return
    rows, cols = req.shape[:2]
    needed = {"mask": rows * cols, "overlay": rows * cols * 3 if req.overlay_encoding == "raw" else 0}
    for name, size in needed.items():
        target = outputs.get(name)
        if target is not None and target.nbytes < size:
            raise BadRegionError(f"the {name} takes {size} bytes, but outputs_at.{name} gives {target.nbytes}")
