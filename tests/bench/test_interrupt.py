"""Ctrl-C during a stream measurement sets a flag the loops poll; it never raises inside their locks."""

import os
import signal
import threading

from scanedge.bench.inprocess import RunLength
from scanedge.bench.interrupt import StoppableRun, polled_interrupts
from tests.waiting import wait_until


def test_sigint_and_sigterm_set_the_flag_instead_of_raising_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with polled_interrupts() as stop:
            lock = threading.Lock()
            with lock:  # where a raised KeyboardInterrupt could leave a lock held for good
                os.kill(os.getpid(), sig)
                wait_until(stop.is_set, timeout=10, what="the signal to set the flag")
            assert not lock.locked()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stopped_run_is_done_at_its_next_iteration_whatever_its_length():
    stop = threading.Event()
    run = StoppableRun.of(RunLength(count=1_000_000, warmup=3), stop)
    assert (run.count, run.warmup) == (1_000_000, 3)
    assert not run.done(10, 1.0) and not run.stopped()
    stop.set()
    assert run.done(10, 1.0) and run.stopped()


def test_outside_the_main_thread_no_handler_is_installed():
    seen = []

    def other() -> None:
        with polled_interrupts() as stop:
            seen.append((signal.getsignal(signal.SIGINT), stop.is_set()))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [(signal.getsignal(signal.SIGINT), False)]
