"""Bounded logging for events a peer can trigger at will (bad requests, failing slices).

A console that sends a flood of malformed messages must not be able to fill the disk with log lines:
each kind of event gets a budget of lines per window, and what is over the budget is counted and summed
up in one line per window. Every event is still counted in STATS.

The long-running commands go further with :func:`configure_logging`: every call site that logs, other
libraries' included (pydicom, pynetdicom, uvicorn, warnings), gets such a budget at the handler
(:class:`CallSiteBudget`), and every line is plain text (:class:`OneLineFormatter`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from scanedge.safe_text import printable

__all__ = ["CallSiteBudget", "LogBudget", "OneLineFormatter", "configure_logging"]

log = logging.getLogger("scanedge.runtime")

#: set on the records a budget writes to sum up what it held back; they are never held back themselves
SUMMARY = "scanedge_budget_summary"
#: at most this many call sites get a budget of their own; the rest share one
_MAX_SITES = 2048
#: libraries whose per-PDU / per-module chatter is off below WARNING unless the log level is debug
_CHATTY = ("pynetdicom", "highdicom")


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
                    "%d more %s in the last %g s, not logged one by one (%s)",
                    total,
                    self.what,
                    self.window_s,
                    detail,
                    extra={SUMMARY: True},
                )
                self._suppressed.clear()
            self._window_end = now + self.window_s
            self._used = 0
        if self._used < self.lines:
            self._used += 1
            return True
        self._suppressed[key] += 1
        return False


class CallSiteBudget(logging.Filter):
    """A handler filter: every place in the code that logs (any library's, scanedge's own included) gets a
    :class:`LogBudget` of ``lines`` per ``window_s``; what is over is counted and summed up.

    A peer that makes a library log on every message (pydicom's decoders log each failed frame with its
    traceback, pynetdicom each refused PDU) costs at most the budget per call site, while a line logged once
    (a start-up or configuration error) always passes: only repetition is held back. Records of other
    libraries than scanedge lose their traceback (its first line is kept in the message) unless
    ``tracebacks``, so one record is one line.
    """

    def __init__(self, lines: int = 20, window_s: float = 10.0, *, tracebacks: bool = False) -> None:
        super().__init__()
        self.lines = lines
        self.window_s = window_s
        self.tracebacks = tracebacks
        self._lock = threading.Lock()
        self._budgets: dict[tuple[str, str], LogBudget] = {}

    def _budget(self, record: logging.LogRecord) -> LogBudget:
        args = record.args
        if record.name == "py.warnings" and isinstance(args, tuple) and args:  # "FILE:LINE: Category: text"
            site = str(args[0]).split(": ", 1)[0]
            key, where = ("py.warnings", site), f"warnings from {site}"
        else:
            key, where = (record.pathname, str(record.lineno)), f"{record.name} ({record.filename}:{record.lineno})"
        budget = self._budgets.get(key)
        if budget is None:
            with self._lock:
                if len(self._budgets) >= _MAX_SITES:
                    key = ("", "")
                    what = "log line(s) from places without a budget of their own"
                else:
                    what = f"line(s) like the last from {where}"
                budget = self._budgets.setdefault(key, LogBudget(what, self.lines, self.window_s))
        return budget

    def filter(self, record: logging.LogRecord) -> bool:
        """True to write ``record`` (made one line if another library's), False when over its budget."""
        if getattr(record, SUMMARY, False):
            return True
        if not self._budget(record).allow(record.levelname):
            return False
        if not self.tracebacks and not record.name.startswith("scanedge") and (record.exc_info or record.stack_info):
            exc = record.exc_info[1] if record.exc_info else None
            note = f" [{type(exc).__name__}; traceback not logged]" if exc is not None else ""
            record.msg, record.args = record.getMessage() + note, None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are one line of plain text (:func:`scanedge.safe_text.printable`): text
    from outside quoted in a message cannot colour or rewrite the terminal, nor forge a line of its own.
    Tracebacks keep their lines, each made plain the same way."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The message made one plain line, in the handler's format."""
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        """The traceback, each line made plain."""
        return "\n".join(printable(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        """The stack, each line made plain."""
        return "\n".join(printable(line) for line in super().formatStack(stack_info).splitlines())


def configure_logging(level: str, *, lines: int = 20, window_s: float = 10.0) -> logging.Handler:
    """The log of a long-running command (``serve``, ``dicom-listen``, ``view``, ``live``): one stderr handler
    with :class:`OneLineFormatter` and :class:`CallSiteBudget`, warnings routed through logging (and so
    through the budget), and the chatty libraries quiet below WARNING unless ``level`` is ``debug``.

    Replaces handlers an earlier call installed, so it may be called more than once in a process.
    """
    debug = level.lower() == "debug"
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CallSiteBudget(lines, window_s, tracebacks=debug))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "scanedge_configured", False)]:
        root.removeHandler(old)
    handler.scanedge_configured = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.captureWarnings(False)  # on a second call, take over from whatever shows warnings now
    logging.captureWarnings(True)
    return handler
