"""Ctrl-C and SIGTERM while a stream is measured: a flag the measuring loops poll, not an exception.

Python raises KeyboardInterrupt in the main thread wherever it happens to be. Between taking a lock and
entering the block that releases it (a recorder's lock, a client's queue lock), that leaves the lock held
for good; the client's I/O thread, whose reply callbacks take the same lock, then blocks forever, and the
benchmark hangs on its way out instead of printing its partial report. So while consoles are driven, the
two signals only set an event; every loop ends at its next iteration and the run reports as interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from scanedge.bench.inprocess import RunLength

__all__ = ["StoppableRun", "polled_interrupts"]


@dataclass(frozen=True)
class StoppableRun(RunLength):
    """A :class:`RunLength` that is also done once ``stop`` is set.

    Attributes:
        stop: set by :func:`polled_interrupts` (or any caller) to end the run at the next iteration.
    """

    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def of(cls, run: RunLength, stop: threading.Event) -> StoppableRun:
        """``run``'s length, ended early by ``stop``."""
        return cls(run.count, run.duration_s, run.warmup, stop)

    def stopped(self) -> bool:
        """Whether the run was stopped before its length was reached."""
        return self.stop.is_set()

    def done(self, i: int, elapsed: float) -> bool:
        """Finished by its length, or stopped."""
        return self.stop.is_set() or super().done(i, elapsed)


@contextlib.contextmanager
def polled_interrupts() -> Iterator[threading.Event]:
    """Within the block, SIGINT and SIGTERM set the event it yields instead of raising. Signal handlers
    belong to the main thread: called from another thread, the event is yielded and never set by a signal."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: object) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
