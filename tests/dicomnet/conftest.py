"""Real DICOM software around the listener: dcmtk's echoscu, storescu, storescp and dcmdump (Debian's
``dcmtk``; .ci/run installs it), real files from pydicom's test data and pydicom-data, the demo series."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scanedge.dicomnet import DicomListener, ListenerConfig
from scanedge.runtime.core.model_spec import ModelSpec

DCMTK = ("echoscu", "storescu", "storescp", "dcmdump")
needs_dcmtk = pytest.mark.skipif(
    not all(shutil.which(t) for t in DCMTK), reason="dcmtk (echoscu, storescu, storescp, dcmdump) is not installed"
)


def free_port() -> int:
    """A TCP port nothing listens on right now (for dcmtk's storescp, which takes no port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storescu(
    port: int, *files: Path | str, args: tuple[str, ...] = (), ae: str = "SCANEDGE"
) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending ``files`` to the listener, verbose (each C-STORE response is printed), going on
    after a failure status (``-nh``)."""
    return subprocess.run(
        ["storescu", "-v", "-nh", *args, "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def responses(proc: subprocess.CompletedProcess) -> list[str]:
    """The C-STORE responses storescu printed, in order, e.g. ``Success``, ``Refused: SOPClassNotSupported``."""
    out = proc.stdout + proc.stderr
    return [
        line.split("Received Store Response (", 1)[1].rstrip(")")
        for line in out.splitlines()
        if "Received Store Response (" in line
    ]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Callable[..., DicomListener]]:
    """Start a listener on a free port writing under ``tmp_path/out``; every one started is stopped after the test."""
    started: list[DicomListener] = []

    def start(models: list[Any] | None = None, **changes: Any) -> DicomListener:
        config = replace(ListenerConfig(port=0, out=tmp_path / "out", series_timeout_s=30.0), **changes)
        node = DicomListener([ModelSpec(Path(m)) for m in models or []], config).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
