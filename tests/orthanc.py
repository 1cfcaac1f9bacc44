"""A real Orthanc PACS for tests (Debian's ``orthanc`` + ``orthanc-dicomweb``; .ci/run installs both).

:func:`orthanc_server` starts ``/usr/sbin/Orthanc`` with a temporary configuration: DICOM and HTTP on free
127.0.0.1 ports, storage in a temporary folder, the DICOMweb plugin, AE title :data:`ORTHANC_AET`, and the
caller's AE registered as a modality (C-FIND, C-GET and C-MOVE allowed). HTTP needs no credentials: it listens
on loopback only. Absent Orthanc, tests skip with the reason on a developer's machine and fail in CI (``CI``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import wait_until

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC_AET", "ORTHANC_BIN", "Orthanc", "free_port", "orthanc_server", "require_orthanc"]

ORTHANC_AET = "ORTHANCTEST"
ORTHANC_BIN = Path(os.environ.get("SCANEDGE_ORTHANC", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port nothing listens on right now (Orthanc takes no port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_orthanc() -> None:
    """Skip (fail in CI) when Orthanc or its DICOMweb plugin is not installed."""
    missing = [str(p) for p in (ORTHANC_BIN, DICOMWEB_PLUGIN) if not p.exists()]
    if missing:
        reason = f"needs Debian's orthanc and orthanc-dicomweb (missing {', '.join(missing)}; .ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"the PACS tests must run in CI: {reason}")
        pytest.skip(reason)


@dataclass(frozen=True)
class Orthanc:
    """Where a running test Orthanc answers."""

    dicom_port: int
    http_port: int
    aet: str = ORTHANC_AET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, data: bytes) -> str:
        """POST one DICOM file over REST; return Orthanc's instance id."""
        req = urllib.request.Request(f"{self.url}/instances", data=data, method="POST")
        req.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["ID"])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/system", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def orthanc_server(client_aet: str, client_port: int) -> Iterator[Orthanc]:
    """Run Orthanc until the block ends; ``client_aet`` at 127.0.0.1:``client_port`` is a known modality."""
    require_orthanc()
    with tempfile.TemporaryDirectory(prefix="scanedge-orthanc-") as tmp:
        # a free port can be taken by another process before Orthanc binds it (tests run beside each other):
        # an Orthanc that exits while starting is started again on fresh ports, twice at most
        for attempt in range(3):
            with _started(tmp, client_aet, client_port) as server:
                if server is None:
                    if attempt == 2:
                        raise AssertionError(f"Orthanc exited three times: {_log_tail(tmp)}")
                    continue
                yield server
                return


def _log_tail(tmp: str) -> str:
    return Path(tmp, "orthanc.log").read_text(errors="replace")[-2000:]


@contextmanager
def _started(tmp: str, client_aet: str, client_port: int) -> Iterator[Orthanc | None]:
    """One Orthanc run on fresh ports; None when it exited while starting (its log kept for the message)."""
    dicom_port = free_port()
    http_port = free_port()
    while http_port == dicom_port:
        http_port = free_port()
    server = Orthanc(dicom_port=dicom_port, http_port=http_port)
    config = {
        "Name": "scanedge-test",
        "StorageDirectory": str(Path(tmp, "db")),
        "IndexDirectory": str(Path(tmp, "db")),
        "DicomAet": server.aet,
        "DicomPort": server.dicom_port,
        "HttpPort": server.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomModalities": {
            "scanedge": {
                "AET": client_aet,
                "Host": "127.0.0.1",
                "Port": client_port,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": True,
                "AllowStore": True,
            }
        },
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = Path(tmp, "orthanc.json")
    cfg.write_text(json.dumps(config))
    log = open(Path(tmp, "orthanc.log"), "wb")
    proc = subprocess.Popen([str(ORTHANC_BIN), str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(server.url) or proc.poll() is not None, timeout=60, interval=0.1, what="Orthanc")
        yield None if proc.poll() is not None else server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(Path(tmp, "db"), ignore_errors=True)
