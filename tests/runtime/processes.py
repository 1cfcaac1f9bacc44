"""`scanedge serve` in child processes for the tests that need a real, separate runtime (kill -9, SIGTERM,
a console written from the spec alone). No scanedge imports: what these tests see is what a console sees.

A child's log goes to a file, never to a pipe nobody reads: a pipe that fills up would stall the runtime
mid-test.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_runtime(endpoint: str, *extra: str, log_level: str = "warning") -> subprocess.Popen:
    """Start `scanedge serve` on ``endpoint`` (one inference thread); read its log with :func:`runtime_log`."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanedge",
            "serve",
            "--bind",
            endpoint,
            "--threads",
            "1",
            "--log-level",
            log_level,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def runtime_log(proc: subprocess.Popen) -> str:
    """Everything the child has logged so far."""
    log = proc.log_file  # type: ignore[attr-defined]
    log.seek(0)
    return log.read().decode(errors="replace")


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def start_runtime(*extra: str, log_level: str = "warning") -> tuple[subprocess.Popen, zmq.Socket, dict]:
    """`scanedge serve` on a free port, and a DEALER that has seen its PONG (section 5: PING until PONG)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = spawn_runtime(endpoint, *extra, log_level=log_level)
    sock = dealer(endpoint)
    deadline = time.monotonic() + 60
    while True:
        sock.send(json.dumps({"version": 1, "type": "PING", "id": "hello"}).encode())
        if sock.poll(1000):
            return proc, sock, json.loads(sock.recv())
        assert proc.poll() is None, runtime_log(proc)
        assert time.monotonic() < deadline, "runtime did not start"
        sock.close(0)  # a DEALER whose PING went nowhere: start over with a fresh one (Lazy Pirate)
        sock = dealer(endpoint)


def stop_runtime(proc: subprocess.Popen, sock: zmq.Socket | None = None) -> int:
    """SIGTERM (as a service manager would) and wait; kill only if it does not end."""
    if sock is not None:
        sock.close(0)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
