"""Bounded logging for events a peer can trigger at will (bad requests, failing slices).

A console that sends a flood of malformed messages must not be able to fill the disk with log lines:
each kind of event gets a budget of lines per window, and what is over the budget is counted and summed
up in one line per window. Every event is still counted in STATS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

__all__ = ["LogBudget"]

log = logging.getLogger("scanedge.runtime")


class LogBudget:
    """At most ``lines`` log lines per ``window_s`` for one kind of event; the rest are counted and summed
    up once per window, so a peer sending a flood of bad messages cannot fill the disk with logs."""

    def __init__(self, what: str, lines: int = 20, window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.what = what
        self.lines = lines
        self.window_s = window_s
        self._window_end = 0.0
        self._used = 0
        self._suppressed: Counter[str] = Counter()

    def allow(self, key: str) -> bool:
        """True when this event may be logged now; False when it was counted instead."""
        with self._lock:
            return self._allow(key, time.monotonic())

    def _allow(self, key: str, now: float) -> bool:
        if now >= self._window_end:
            if self._suppressed:
                total = sum(self._suppressed.values())
                detail = ", ".join(f"{k} {n}" for k, n in self._suppressed.most_common())
                log.warning(
                    "%d more %s in the last %g s, not logged one by one (%s)", total, self.what, self.window_s, detail
                )
                self._suppressed.clear()
            self._window_end = now + self.window_s
            self._used = 0
        if self._used < self.lines:
            self._used += 1
            return True
        self._suppressed[key] += 1
        return False
