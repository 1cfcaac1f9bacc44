"""Delivering written DICOM objects by C-STORE or DICOMweb STOW-RS, from an outbox folder, retried until they arrive.

An object to forward is first linked (or copied) into ``OUT/outbox/`` and only removed from there once
the destination has answered its C-STORE with success (or a warning status), or its STOW-RS request with
the object stored (a :class:`DicomwebTarget`: one HTTP request per object, bounded by the timeout, never
retried inside the HTTP client). A failure (no association, a refused one, a failure status, no HTTP
answer, an HTTP error, the object in the answer's Failed SOP Sequence) is logged with the attempt number
and retried with exponential backoff
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
from typing import Any

from scanedge.dicomnet.spool import private_folder
from scanedge.errors import ConfigError, DicomNetworkError, redacted_traceback

__all__ = ["DicomwebTarget", "ForwardTarget", "Forwarder", "parse_dicomweb_target", "parse_forward_target"]

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


@dataclass(frozen=True)
class DicomwebTarget:
    """Where results are sent on by DICOMweb STOW-RS.

    Attributes:
        url: the server's DICOMweb root (``http://pacs:8042/dicom-web``); STOW-RS posts to ``URL/studies``.
    """

    url: str

    def __post_init__(self) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(self.url) > 2048:
            raise ConfigError(
                f"--forward-dicomweb takes an http(s) URL, e.g. http://pacs:8042/dicom-web, got {self.url!r}"
            )
        try:
            import dicomweb_client  # noqa: F401
        except ImportError:
            raise ConfigError("--forward-dicomweb needs dicomweb-client: pip install 'scanedge[priors]'") from None

    def __str__(self) -> str:
        return f"DICOMweb {self.url}"


def parse_dicomweb_target(text: str) -> DicomwebTarget:
    """A DICOMweb root URL as a :class:`DicomwebTarget` (no trailing slash); ConfigError when malformed."""
    return DicomwebTarget(text.rstrip("/"))


class Forwarder:
    """A thread that sends the files in an outbox to one destination (C-STORE or STOW-RS), with retries.

    ``calling_ae`` is this node's AE title; ``timeout_s`` bounds each association's steps.
    """

    def __init__(
        self,
        target: ForwardTarget | DicomwebTarget,
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
        """One C-STORE (or STOW-RS) of ``path``; DicomNetworkError naming what failed."""
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
        if isinstance(self.target, DicomwebTarget):
            self._stow(ds, self.target)
            return
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

    def _stow(self, ds: Any, target: DicomwebTarget) -> None:
        """One STOW-RS request with ``ds``; DicomNetworkError unless the server answers that it stored it."""
        from dicomweb_client.api import DICOMwebClient

        # one request, bounded; dicomweb-client would otherwise retry a failure itself, up to minutes
        client = DICOMwebClient(url=target.url, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)
        try:
            answer = client.store_instances([ds])
        except Exception as exc:  # requests' errors (connection, timeout, HTTP status): their messages name URLs
            status = getattr(getattr(exc, "response", None), "status_code", None)
            raise DicomNetworkError(
                f"STOW-RS failed ({type(exc).__name__}{f', HTTP {status}' if status else ''})"
            ) from exc
        failed = [str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("FailedSOPSequence", [])]
        if str(ds.SOPInstanceUID) in failed:
            item = next(
                i
                for i in answer.FailedSOPSequence
                if str(i.get("ReferencedSOPInstanceUID", "")) == str(ds.SOPInstanceUID)
            )
            reason = item.get("FailureReason")
            raise DicomNetworkError(
                "STOW-RS refused the object" + (f" (failure reason 0x{int(reason):04X})" if reason is not None else "")
            )
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])}
        if str(ds.SOPInstanceUID) not in stored:
            raise DicomNetworkError("STOW-RS answer does not list the object as stored")
