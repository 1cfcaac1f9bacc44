"""The transport floor: raw ZeroMQ DEALER/ROUTER echo of slice-sized requests and result-sized replies.

No scanedge code on either side: a child process answers every request with a reply as large as a mask
plus an overlay, after an optional pause that stands in for inference (a socket that has just been busy
is slower than one in a tight loop). Whatever ``edge-bench stream`` reports above this floor is what the
runtime itself costs; what it reports at the floor is the machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import zmq

from scanedge.bench.inprocess import DEFAULT_RUN, RunLength, drive
from scanedge.bench.report import BenchReport
from scanedge.bench.stats import RunMonitor

__all__ = ["bench_echo"]

_PEER = """
import sys, time, zmq
ctx = zmq.Context(); sock = ctx.socket(zmq.ROUTER); port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
reply = bytearray(int(sys.argv[1])); pause = float(sys.argv[2])
while True:
    frames = sock.recv_multipart(copy=False)
    if frames[1].bytes == b"stop":
        break
    t0 = time.perf_counter()
    if pause:
        time.sleep(pause)
    paused_ms = (time.perf_counter() - t0) * 1e3
    sock.send_multipart([frames[0], repr(paused_ms).encode(), reply], copy=False)
"""


def bench_echo(
    request_bytes: int,
    reply_bytes: int,
    *,
    pause_ms: float = 0.0,
    run: RunLength = DEFAULT_RUN,
    progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Round trips minus the time the peer actually paused, in ms."""
    peer = subprocess.Popen(
        [sys.executable, "-c", _PEER, str(reply_bytes), str(pause_ms / 1e3)], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout is not None  # stdout=PIPE
    port = int(peer.stdout.readline())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    payload = np.zeros(request_bytes, np.uint8)
    samples: list[float] = []
    try:
        for _ in range(run.warmup):
            # an ndarray is a buffer; numpy declares __buffer__ only for Python >= 3.12
            sock.send_multipart([b"{}", payload], copy=False)  # type: ignore[list-item]
            sock.recv_multipart(copy=False)
        monitor = RunMonitor()
        start = time.perf_counter()

        def round_trip(_: int) -> None:
            t0 = time.perf_counter()
            # an ndarray is a buffer; numpy declares __buffer__ only for Python >= 3.12
            sock.send_multipart([b"{}", payload], copy=False)  # type: ignore[list-item]
            reply = sock.recv_multipart(copy=False)
            samples.append((time.perf_counter() - t0) * 1e3 - float(reply[0].bytes))  # minus the actual pause

        i, _, _ = drive(run, round_trip, None, progress)
        wall = time.perf_counter() - start
        sock.send_multipart([b"stop", b""])
    finally:
        sock.close(0)
        ctx.term()
        try:
            peer.wait(5)
        except subprocess.TimeoutExpired:
            peer.kill()
    report = BenchReport(
        mode="echo",
        settings={"request_bytes": request_bytes, "reply_bytes": reply_bytes, "pause_ms": pause_ms, "count": i},
        samples={"round_trip": samples},
        throughput_per_s=i / wall,
        wall_s=wall,
    )
    report.warnings.extend(monitor.warnings("round_trip", samples, check_load=False))  # the peer is expected load
    return report
