"""Shared-memory payloads, the console's side: one region per client, carved into a block per request.

The console owns its region. Towards a runtime on ipc:// it is a memfd sealed against shrinking and
growing (``memfd`` below): it has no name anywhere, so nothing can leak from ``/dev/shm``, the memory goes
when the last process holding it lets go, and the runtime may map it (no copies on its side). Towards a
runtime on tcp (which cannot tell the console's process) it is a POSIX shared-memory object
(``/scanedge-c<pid>-<random>``, mode 0600, ``O_EXCL``), unlinked when the client closes; so that a crash
does not leave it in ``/dev/shm``, its name is also registered with :mod:`multiprocessing`'s resource
tracker, a helper process that unlinks what its parent registered and never released when the parent
dies (this is the tracker's proper use: by the object's creator; see :mod:`scanedge.runtime.serving.shm` for the
misuse the runtime avoids).

Each request takes one block: the pixels, then room for the mask and the raw overlay. A block is lent
to the runtime until the reply. After an ERROR it is free again at once; after a RESULT, the result's
arrays are read-only views of the block, and the block is free again when the last of those arrays is
garbage (a ``weakref.finalize`` on the block's own base array). A request that timed out keeps its block
until the client closes: the runtime may still write into it until it answers, which the client would
no longer see. When the region is full, requests simply go as frames.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanedge.runtime.wire.protocol import SHM_DIR, FrameInfo

__all__ = ["Block", "ConsoleRegion"]

_ALIGN = 64  # every range starts on a cache line


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class Block:
    """One request's part of the region.

    Attributes:
        offset: where the block starts in the region.
        size: its length in bytes (a multiple of 64).
        ranges: where each part lies, as ``{name: (offset, nbytes)}`` in region coordinates: ``pixels``,
            and ``mask`` / ``overlay`` when the runtime is to write them here.
    """

    offset: int
    size: int
    ranges: dict[str, tuple[int, int]]


class ConsoleRegion:
    """A console's shared-memory region: created here, registered with the runtime, gone at :meth:`close`.

    Attributes:
        name: what requests call it (``/scanedge-c<pid>-<random>``; for a POSIX object also its name).
        size: its length in bytes.
        fd: with ``memfd``, the descriptor the runtime opens it by (SHM_REGISTER ``fd``); else None.
    """

    def __init__(self, size: int, shm_dir: str = SHM_DIR, *, memfd: bool = False) -> None:
        """Create and map a new region of ``size`` bytes: a sealed memfd, or a POSIX shared-memory object
        (OSError when the host has neither)."""
        self.size = _aligned(size)
        self.name = f"/scanedge-c{os.getpid()}-{secrets.token_hex(6)}"
        self._path = os.path.join(shm_dir, self.name[1:])
        self._tracked = False
        self.fd: int | None = None
        if memfd:
            fd = os.memfd_create(self.name[1:], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            self._path = ""
        else:
            fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            if not memfd:
                self._tracked = _track(self.name)
            os.ftruncate(fd, self.size)
            if memfd:  # the size is final: the runtime may map it without fearing a shrink
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._mm = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        if memfd:
            self.fd = fd  # kept open: the runtime opens it through /proc/<this pid>/fd/<fd>
        else:
            os.close(fd)  # the mapping keeps the object; the runtime opens it by name
        self._view = memoryview(self._mm)
        self._bytes = np.frombuffer(self._mm, np.uint8)
        self._lock = threading.Lock()
        self._free: list[tuple[int, int]] = [(0, self.size)]  # (offset, size), sorted, coalesced
        self._closed = False

    # --- blocks ---------------------------------------------------------------------------------------------

    def allocate(self, parts: Sequence[tuple[str, int]]) -> Block | None:
        """A block with room for each ``(name, nbytes)`` part in order; None when the region is full."""
        ranges: dict[str, tuple[int, int]] = {}
        total = 0
        for name, nbytes in parts:
            ranges[name] = (total, nbytes)
            total += _aligned(max(nbytes, 1))
        with self._lock:
            if self._closed:
                return None
            for i, (start, size) in enumerate(self._free):
                if size >= total:
                    if size == total:
                        del self._free[i]
                    else:
                        self._free[i] = (start + total, size - total)
                    return Block(start, total, {k: (start + o, n) for k, (o, n) in ranges.items()})
        return None

    def release(self, block: Block) -> None:
        """Give a block back (any thread)."""
        with self._lock:
            free = self._free
            free.append((block.offset, block.size))
            free.sort()
            merged: list[tuple[int, int]] = []
            for start, size in free:
                if merged and merged[-1][0] + merged[-1][1] == start:
                    merged[-1] = (merged[-1][0], merged[-1][1] + size)
                else:
                    merged.append((start, size))
            self._free = merged

    @property
    def free_bytes(self) -> int:
        """Bytes not lent to any request (for tests and diagnostics)."""
        with self._lock:
            return sum(size for _, size in self._free)

    def write(self, block: Block, name: str, data: Any) -> None:
        """Copy ``data`` (an array or bytes) into the block's part ``name``."""
        offset, nbytes = block.ranges[name]
        src = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
        self._bytes[offset : offset + nbytes] = src

    def arrays(self, block: Block, infos: Sequence[FrameInfo]) -> dict[str, np.ndarray]:
        """The outputs the runtime wrote into ``block`` as read-only arrays; the block is free again once
        every one of them is garbage."""
        base = np.frombuffer(self._view[block.offset : block.offset + block.size], np.uint8)
        base.flags.writeable = False
        weakref.finalize(base, self.release, block)
        out: dict[str, np.ndarray] = {}
        for info in infos:
            if info.region != self.name or info.offset is None or info.bytes is None:
                continue
            start = info.offset - block.offset
            if not 0 <= start <= start + info.bytes <= block.size:
                raise ValueError(f"the runtime wrote {info.name} outside the block lent to it")
            data = base[start : start + info.bytes]
            if info.encoding == "raw" and info.dtype is not None and info.shape is not None:
                out[info.name] = data.view(np.dtype(info.dtype).newbyteorder("<")).reshape(info.shape)
            else:
                out[info.name + "_encoded"] = data
        return out

    # --- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Unlink the object (or close the memfd); the mapping goes when the last result array viewing it does."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unlink()
        self._view.release()
        del self._bytes
        try:
            self._mm.close()
        except BufferError:
            pass  # result arrays still view it: it is unmapped when they are garbage (they hold it, not us)
        del self._mm

    def _unlink(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self._path:
            return  # a memfd has no name
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        if self._tracked:
            _untrack(self.name)


def _track(name: str) -> bool:
    """Have the resource tracker unlink ``name`` if this process dies without doing so itself."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.register(name, "shared_memory")
    except Exception:  # no tracker on this platform: a crash leaves the name for the next cleanup
        return False
    return True


def _untrack(name: str) -> None:
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(name, "shared_memory")
    except Exception:
        pass
