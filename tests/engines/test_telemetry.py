"""A console service must never phone home: ONNX Runtime's telemetry stays off wherever scanedge runs it.

Since 1.29 the Linux wheels of ONNX Runtime initialise Microsoft's 1DS telemetry on ``import onnxruntime``:
a device id and an event store under ``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime``, a session
file ``$TMPDIR/.ses``, and, seconds later, DNS lookups of the collector, retried while the process lives.
These files are written synchronously when the uploader is set up, so "nothing written" proves that no
uploader exists (ONNX Runtime's opt-out creates none); the upload itself starts too late (about 9 s) to
be watched for in a test without a fixed sleep.

Each check runs in a fresh interpreter (the opt-out is read once per process) with a minimal
environment: HOME, the XDG folders and TMPDIR point into an empty folder, and variables that would
switch telemetry off by themselves (``CI``, ``ORT_DISABLE_TELEMETRY``) are not inherited.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SERVE_AND_SEGMENT = """
import numpy as np
from scanedge.engines import EngineConfig, OrtSessionLoader
from scanedge.runtime.core.pipeline import Pipeline, default_model_path
from scanedge.runtime.serving.server import Server, ServerConfig

config = ServerConfig(bind="tcp://127.0.0.1:*")
server = Server(config=config).start()  # what `scanedge serve` runs: models loaded, sockets bound
server.stop()
with Pipeline.open(options=config.engine) as pipe:  # a worker's pipeline, segmenting a slice
    pipe.run(np.zeros((128, 128), np.int16))
OrtSessionLoader(default_model_path(), EngineConfig(optimization="basic"))()
import onnxruntime  # whoever imports it later in the process gets the same opt-out
print("done")
"""

IMPORTED_BEFORE_SCANEDGE = """
import logging
import onnxruntime
from scanedge.engines.ort_session import import_onnxruntime

logging.basicConfig()
import_onnxruntime()
"""


def run_isolated(code: str, root: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``code`` in a fresh interpreter whose home, XDG and temp folders lie under the empty ``root``."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "TMPDIR": str(tmp),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p not in (home, tmp))
    return proc, written


def test_serving_and_segmenting_write_nothing_under_home_xdg_or_tmp(tmp_path):
    proc, written = run_isolated(SERVE_AND_SEGMENT, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-3000:]
    assert written == []


def test_onnx_runtime_imported_before_scanedge_is_detected_and_warned_about(tmp_path):
    """The control: without scanedge's opt-out in time, this ONNX Runtime does write its telemetry state
    (so the check above can fail), and scanedge says so instead of pretending telemetry is off."""
    import onnxruntime

    if tuple(int(v) for v in onnxruntime.__version__.split(".")[:2]) < (1, 29):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} predates Linux telemetry (1.29)")
    proc, written = run_isolated(IMPORTED_BEFORE_SCANEDGE, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ORT_DISABLE_TELEMETRY=1" in proc.stderr and "telemetry uploader runs" in proc.stderr
    assert any("Microsoft/DeveloperTools/.onnxruntime/deviceid" in p for p in written), written
