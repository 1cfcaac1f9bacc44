"""Latest-slice-first scheduling: per series, only the newest waiting slice is worth computing.

During acquisition a console can send slices faster than a CPU segments them. Queueing them all would
show the radiographer findings that lag further and further behind the scan. Instead, each series has at
most one *waiting* request: a newer slice replaces it, and the replaced one is handed back so the server
answers it SUPERSEDED (never silently dropped). A series is keyed with its model: a runtime serving a
classifier beside a segmentation model runs both on each slice, neither replacing the other. Series are
served in the order they first queued, so one busy series cannot starve another. Requests without a
series key queue plainly.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scanedge.runtime.wire.protocol import Echo, Segment

__all__ = ["Job", "LatestSliceScheduler"]


@dataclass(eq=False)
class Job:
    """One accepted SEGMENT, from the I/O thread to a worker; answered exactly once, by the I/O thread.

    Attributes:
        request: the SEGMENT header as decoded.
        model: the name of the model to run (the request's, or the runtime's default).
        nbytes: size of the pixel frame; counts against the runtime's cap on bytes in flight.
        received_at: wall-clock arrival time (epoch seconds), echoed in the reply.
        received_mono: monotonic arrival time, for queue time and deadlines.
        deadline_mono: monotonic time after which the job is answered EXPIRED instead of computed; None: none.
    """

    request: Segment
    identity: bytes  # ZeroMQ routing id of the console
    payload: Any  # the pixel frame (kept alive, never copied)
    model: str
    nbytes: int
    received_at: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.monotonic)
    deadline_mono: float | None = None
    seq: int = 0  # the I/O thread's key for this job until it is answered
    shm: Any = None  # its shared-memory ranges (scanedge.runtime.serving.shm.ShmJob), when the console uses them
    # latest slice wins in its series; False for a multi-input model's slices: a partner dropped from the
    # queue would leave its reference slice without input (docs/protocol.md section 3.2)
    latest: bool = True

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline has passed at monotonic time ``now`` (default: the current time)."""
        return self.deadline_mono is not None and (now or time.monotonic()) > self.deadline_mono

    @property
    def echo(self) -> Echo:
        """What the reply echoes from the request (id, series, instance, index, sent_at)."""
        return Echo.of(self.request)


class LatestSliceScheduler:
    """Thread-safe queue: ``submit`` from the I/O thread, ``take`` from workers."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._waiting: OrderedDict[Any, Job] = OrderedDict()  # key: series, or a unique token
        self._anonymous = itertools.count()
        self._closed = False

    def submit(self, job: Job) -> Job | None:
        """Queue ``job``; return the waiting job of the same series and model it supersedes, if any."""
        series = job.request.series
        key: Any = ("series", series, job.model) if series and job.latest else ("anonymous", next(self._anonymous))
        with self._lock:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            replaced = self._waiting.get(key)
            self._waiting[key] = job  # a replacement keeps the series' place in line
            self._lock.notify()
        return replaced

    def take(self, timeout: float | None = None) -> Job | None:
        """The oldest waiting job; None on timeout or once closed and empty."""
        with self._lock:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._waiting:
                if self._closed:
                    return None
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._lock.wait(remaining)
            _, job = self._waiting.popitem(last=False)
            return job

    def remove(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Remove and return every waiting job for which ``predicate`` holds."""
        with self._lock:
            gone = [k for k, j in self._waiting.items() if predicate(j)]
            return [self._waiting.pop(k) for k in gone]

    def expire(self, now: float | None = None) -> list[Job]:
        """Remove and return every waiting job whose deadline has passed."""
        now = now or time.monotonic()
        return self.remove(lambda j: j.expired(now))

    def drain(self) -> list[Job]:
        """Remove and return everything still waiting."""
        return self.remove(lambda j: True)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: ``submit`` then raises ``RuntimeError``, and a None from
        ``take`` means no work is left rather than a timeout."""
        return self._closed

    def depth(self) -> int:
        """How many jobs are waiting for a worker."""
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        """Wake all workers; ``take`` returns what is left, then None."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
