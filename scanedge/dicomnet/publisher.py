"""The PUB socket the listener publishes RESULTs on, owned by one thread as pyzmq sockets must be.

Association threads hand complete multipart messages (topic, RESULT header, payload frames) to a bounded
queue; the publisher thread sends them without blocking. A full queue or a PUB at its high-water mark
drops the message and counts it (``dropped``): a slow viewer never slows the DICOM node, as with the
runtime's own PUB (docs/protocol.md section 9).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import zmq

from scanedge.errors import ConfigError, redacted_traceback

__all__ = ["ResultPublisher"]

log = logging.getLogger("scanedge.dicomnet")


class ResultPublisher:
    """Bind a PUB socket at ``endpoint`` (in its own thread) and send what :meth:`publish` is given."""

    def __init__(self, endpoint: str, *, hwm: int = 1000) -> None:
        self.requested = endpoint
        self.hwm = hwm
        self.endpoint: str | None = None  # the bound endpoint (the actual port for tcp://...:*)
        self.published = 0
        self.dropped = 0
        self._queue: queue.Queue[Sequence[Any] | None] = queue.Queue(maxsize=hwm)
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="scanedge-publish", daemon=True)

    def start(self, timeout: float = 10.0) -> ResultPublisher:
        """Bind and start; ConfigError when the endpoint cannot be bound."""
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise ConfigError(self._error)
        return self

    def publish(self, frames: Sequence[Any]) -> bool:
        """Queue one multipart message; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(frames)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self) -> None:
        """Send what is queued, then close the socket and end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.hwm)
        pub.setsockopt(zmq.LINGER, 0)
        try:
            pub.bind(self.requested)
            self.endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = f"cannot publish on {self.requested}: {exc.strerror}"
            pub.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                frames = self._queue.get()
                if frames is None:
                    return
                try:
                    pub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    self.published += 1
                except zmq.Again:
                    self.dropped += 1
        except Exception as exc:  # the feed stops; the DICOM node keeps storing and writing SEGs
            log.error("the result feed stopped: %s", redacted_traceback(exc))
        finally:
            pub.close()
