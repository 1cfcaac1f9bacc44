"""Flood a ``scanedge dicom-listen`` process with connections that never associate, and measure it.

    python -m tests.dicomnet.flood --connections 400 --addresses 100

starts the node (allow-listing the Calling AE title SCANNER), opens the connections from 127.0.3.x
(each address its own peer), reads the node's threads and resident memory from /proc meanwhile, then sends
a C-ECHO and a C-STORE as SCANNER (dcmtk) and times them. ``--pythonpath`` runs another checkout's node
(e.g. main's, without the gate: pass ``--no-gate-options``) for a comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

from tests.dicomnet.conftest import free_port, responses, storescu
from tests.dicomnet.rawdicom import connect, process_status
from tests.waiting import wait_until


def flood_node(
    workdir: Path,
    connections: int = 400,
    addresses: int = 100,
    pythonpath: str | None = None,
    gate_options: bool = True,
    settle_s: float = 3.0,
) -> dict[str, Any]:
    """Start the node, flood it, try the scanner; returns the figures."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=pythonpath or str(Path(__file__).resolve().parents[2]))
    args = [sys.executable, "-m", "scanedge", "dicom-listen", "--port", str(port), "--out", str(workdir / "out")]
    args += ["--allow-calling-ae", "SCANNER", "--series-timeout", "1", "--log-level", "warning"]
    if gate_options:
        args += ["--associate-timeout", "60"]  # long: the flood is measured while it is held, not after
    # cwd: -m puts the working directory first on sys.path, before PYTHONPATH
    node = subprocess.Popen(args, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        wait_until(lambda: _echo(port) == 0, timeout=120, interval=0.2, what="the node answering C-ECHO")
        idle = process_status(node.pid)
        peak = idle["Threads"]
        started = time.monotonic()
        for i in range(connections):
            try:
                socks.append(connect(port, f"127.0.3.{i % addresses + 1}", timeout=5))
            except OSError:
                pass  # refused or timed out: the node's backlog was full
            if i % 20 == 0:
                peak = max(peak, process_status(node.pid)["Threads"])
        flood_s = time.monotonic() - started
        # the node takes the flood in at its own pace: watch it until its accept queue is empty, and for
        # settle_s at least (a node that starts threads per connection reaches its peak within a second)
        settle_end = time.monotonic() + settle_s
        while time.monotonic() < settle_end or _accept_queue(port):
            peak = max(peak, process_status(node.pid)["Threads"])
            time.sleep(0.05)
        during = process_status(node.pid)
        t0 = time.monotonic()
        echo_rc = _echo(port)
        echo_s = time.monotonic() - t0
        t0 = time.monotonic()
        store = responses(storescu(port, get_testdata_file("MR_small.dcm"), args=("-aet", "SCANNER", "-to", "20")))
        store_s = time.monotonic() - t0
        after = process_status(node.pid)
        peak = max(peak, during["Threads"], after["Threads"])
        return {
            "connections": connections,
            "addresses": addresses,
            "connected": len(socks),
            "flood_s": round(flood_s, 2),
            "threads_idle": idle["Threads"],
            "threads_peak": peak,
            "rss_idle_mb": round(idle["VmRSS"] / 1024, 1),
            "rss_flooded_mb": round(during["VmRSS"] / 1024, 1),
            "rss_peak_mb": round(after["VmHWM"] / 1024, 1),
            "echo_rc": echo_rc,
            "echo_s": round(echo_s, 2),
            "store": store,
            "store_s": round(store_s, 2),
        }
    finally:
        for sock in socks:
            sock.close()
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def _accept_queue(port: int) -> int:
    """Connections waiting in the kernel for the node to accept them (the listening socket's rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    return 0


def _echo(port: int) -> int:
    return subprocess.run(
        ["echoscu", "-aet", "SCANNER", "-aec", "SCANEDGE", "-to", "20", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=120,
    ).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--addresses", type=int, default=100)
    parser.add_argument("--pythonpath", default=None, help="the checkout whose node to run (default: this one)")
    parser.add_argument("--no-gate-options", action="store_true", help="for a node without --associate-timeout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = flood_node(Path(tmp), args.connections, args.addresses, args.pythonpath, not args.no_gate_options)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
