"""Delivering written DICOM objects by C-STORE, from an outbox folder, retried until they arrive.

An object to forward is first linked (or copied) into ``OUT/outbox/`` and only removed from there once
the destination has answered its C-STORE with success (or a warning status). A failure (no association,
a refused one, a failure status) is logged with the attempt number and retried with exponential backoff
(1 s doubling to ``retry_max_s``), for as long as the listener runs; whatever is still in the outbox when
it stops is logged as pending and sent first when it starts again. Nothing is lost silently.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scanedge.dicomnet.spool import private_folder
from scanedge.errors import ConfigError, DicomNetworkError, redacted_traceback

__all__ = ["ForwardTarget", "Forwarder", "parse_forward_target"]

log = logging.getLogger("scanedge.dicomnet")

_AE_TITLE = re.compile(r"[ -~]{1,16}")


def check_ae_title(title: str, what: str) -> str:
    """``title`` when it is a valid AE title (1-16 printable ASCII characters, not all spaces, no backslash)."""
    if not _AE_TITLE.fullmatch(title) or not title.strip() or "\\" in title:
        raise ConfigError(f"{what} {title!r} is not an AE title: 1-16 printable ASCII characters, no backslash")
    return title


@dataclass(frozen=True)
class ForwardTarget:
    """Where results are sent on by C-STORE.

    Attributes:
        ae_title: the destination's AE title (the Called AE).
        host: its host name or IP address.
        port: its TCP port.
    """

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "forward AE title")
        if not self.host or not 1 <= self.port <= 65535:
            raise ConfigError(f"forward destination {self.host}:{self.port} needs a host and a port 1-65535")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_forward_target(text: str) -> ForwardTarget:
    """``AE@HOST:PORT`` (``[IPv6]`` in brackets) as a :class:`ForwardTarget`; ConfigError when malformed."""
    ae, at, rest = text.rpartition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not port.isdigit():
        raise ConfigError(f"--forward takes AE@HOST:PORT (e.g. PACS@10.0.0.5:104), got {text!r}")
    return ForwardTarget(ae, host[1:-1] if host.startswith("[") and host.endswith("]") else host, int(port))


class Forwarder:
    """A thread that C-STOREs the files in an outbox to one destination, with retries.

    ``calling_ae`` is this node's AE title; ``timeout_s`` bounds each association's steps.
    """

    def __init__(
        self,
        target: ForwardTarget,
        outbox: Path,
        *,
        calling_ae: str = "SCANEDGE",
        retry_initial_s: float = 1.0,
        retry_max_s: float = 300.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.target = target
        self.outbox = outbox
        self.calling_ae = calling_ae
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.delivered = 0
        self.failed_attempts = 0
        self._queue: list[tuple[float, int, Path, int]] = []  # (due, order, path, attempts so far)
        self._order = 0
        self._sending = 0  # an object taken from the queue and being sent now
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="scanedge-forward", daemon=True)

    def start(self) -> Forwarder:
        """Queue what an earlier run left in the outbox, and start sending."""
        private_folder(self.outbox)
        left = sorted(p for p in self.outbox.glob("*.dcm") if p.is_file())
        if left:
            log.warning("%d object(s) left in %s by an earlier run are sent first", len(left), self.outbox)
        for path in left:
            self._push(path, 0, time.monotonic())
        self._thread.start()
        return self

    def submit(self, path: Path) -> Path:
        """Put a written file into the outbox (a hard link where possible) and queue it; returns its outbox path."""
        private_folder(self.outbox)
        queued = self.outbox / path.name
        try:
            os.link(path, queued)
        except OSError:
            shutil.copyfile(path, queued)
        self._push(queued, 0, time.monotonic())
        return queued

    @property
    def pending(self) -> int:
        """Objects waiting in the outbox (not yet delivered)."""
        with self._cond:
            return len(self._queue) + self._sending

    def stop(self, grace_s: float = 5.0) -> int:
        """Try what is due within ``grace_s``, then stop; returns how many objects stay in the outbox."""
        end = time.monotonic() + grace_s
        with self._cond:
            while (self._sending or (self._queue and self._queue[0][0] <= end)) and time.monotonic() < end:
                self._cond.wait(max(0.0, min(0.1, end - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=self.timeout_s + 1)
        left = self.pending
        if left:
            log.warning(
                "%d object(s) not yet delivered to %s stay in %s; they are sent when the listener starts again",
                left,
                self.target,
                self.outbox,
            )
        return left

    # --- the thread --------------------------------------------------------------------------------------

    def _push(self, path: Path, attempts: int, due: float) -> None:
        with self._cond:
            self._order += 1
            heapq.heappush(self._queue, (due, self._order, path, attempts))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._queue or self._queue[0][0] > time.monotonic()):
                    wait = None if not self._queue else max(0.0, self._queue[0][0] - time.monotonic())
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, path, attempts = heapq.heappop(self._queue)
                self._sending = 1
            try:
                self._send(path)
            except DicomNetworkError as exc:
                attempts += 1
                self.failed_attempts += 1
                delay = min(self.retry_max_s, self.retry_initial_s * 2 ** min(attempts - 1, 30))
                log.warning(
                    "forwarding %s to %s failed (attempt %d): %s; retrying in %.0f s, kept in %s",
                    path.name,
                    self.target,
                    attempts,
                    exc.message,
                    delay,
                    self.outbox,
                )
                self._requeue(path, attempts, time.monotonic() + delay)
                continue
            except Exception as exc:  # a bug must not end the thread: keep the file, retry later
                log.error("forwarding %s: internal error %s; retrying later", path.name, redacted_traceback(exc))
                self._requeue(path, attempts + 1, time.monotonic() + self.retry_max_s)
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            with self._cond:
                self._sending = 0
                self.delivered += 1
                self._cond.notify_all()
            log.info("forwarded %s to %s", path.name, self.target)

    def _requeue(self, path: Path, attempts: int, due: float) -> None:
        with self._cond:
            self._sending = 0
        self._push(path, attempts, due)

    def _send(self, path: Path) -> None:
        """One C-STORE of ``path``; DicomNetworkError naming what failed."""
        from pydicom import dcmread
        from pynetdicom import AE

        from scanedge.imaging.dicom.quiet import pydicom_quiet  # its records quote values

        try:
            with pydicom_quiet():
                ds = dcmread(path)
        except FileNotFoundError:
            return  # removed by hand from the outbox: nothing left to deliver
        except Exception as exc:
            raise DicomNetworkError(f"{path.name} cannot be read back ({type(exc).__name__})") from exc
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise DicomNetworkError(f"association {why}")
        try:
            status = assoc.send_c_store(ds)
        except Exception as exc:
            raise DicomNetworkError(f"C-STORE failed ({type(exc).__name__})") from exc
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(getattr(status, "Status", -1)) if status is not None and "Status" in status else None
        if code is None:
            raise DicomNetworkError("no C-STORE response (connection lost or timed out)")
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF or code == 0x0107:
            if code:
                log.warning("%s answered %s with warning status 0x%04X", self.target, path.name, code)
            return
        raise DicomNetworkError(f"C-STORE answered with failure status 0x{code:04X}")
