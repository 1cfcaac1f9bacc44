"""``edge-bench soak``: hours of overload and bad input, and proof that nothing leaks or goes unanswered.

Several consoles, each with its own connection and series, send at a multiple of the runtime's measured
capacity (so latest-slice scheduling supersedes most slices), and a fraction of their messages are
malformed in every way :mod:`scanedge.fuzz.traffic` knows. Per window the report gives messages sent and
replies received, outcomes, end-to-end p50/p99 of the slices that were computed, and the runtime's
resident memory, open file descriptors and threads. The run passes when every message got exactly one
reply, the runtime lived, and memory, descriptors and threads stayed flat.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from scanedge._moved import forward_names
from scanedge.bench.report import machine_info, versions
from scanedge.bench.stream import SpawnedRuntime
from scanedge.engines import EngineConfig
from scanedge.errors import ConfigError
from scanedge.fuzz.traffic import HostileTraffic
from scanedge.runtime.console.client import Client, ClientConfig

__all__ = ["SoakConfig", "SoakReport", "SoakWindow", "bench_soak", "process_sample"]

Progress = Callable[[int, int], None]
#: resident-memory changes below this (allocator pools, caches warming up) are not growth
RSS_NOISE_MB = 16.0


@dataclass(frozen=True)
class SoakConfig:
    """What to run: a spawned runtime (``endpoint`` None) or a running one, and how hard to push it.

    Attributes:
        endpoint: a running runtime to soak; None spawns ``scanedge serve`` and watches its process.
        model: the model a spawned runtime serves; None: the demo model.
        engine: engine settings of a spawned runtime.
        workers: inference workers of a spawned runtime.
        duration_s: how long the consoles send, in seconds.
        consoles: simulated consoles, each with its own connection and series.
        overload: offered load as a multiple of the capacity measured at the start (2.0: twice).
        malformed: fraction of messages that are malformed (0.05: one in twenty).
        size: (rows, cols) of the good slices sent.
        window_s: the report's time resolution.
        rss_slope_limit_mb_h: resident-memory growth (least-squares slope after the first fifth of the
            run) above which the run fails.
        seed: seed of the traffic generators, so a failing run can be replayed.
    """

    endpoint: str | None = None
    model: Path | None = None
    engine: EngineConfig = EngineConfig(spinning=False)
    workers: int = 1
    duration_s: float = 120.0
    consoles: int = 3
    overload: float = 2.0
    malformed: float = 0.05
    size: tuple[int, int] = (256, 256)
    window_s: float = 10.0
    rss_slope_limit_mb_h: float = 60.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.window_s <= 0 or self.consoles < 1 or self.overload <= 0:
            raise ConfigError("duration, window, consoles and overload must be positive")
        if not 0.0 <= self.malformed <= 1.0:
            raise ConfigError(f"malformed must be a fraction 0..1, got {self.malformed}")


@dataclass
class SoakWindow:
    """One time window of the run (``start_s`` from the start of sending).

    Attributes:
        start_s: seconds from the start of sending to the start of this window.
        sent: messages sent in the window.
        replies: replies received in the window.
        outcomes: replies by outcome: ``ok``, ``control`` (PONG, STATS_REPLY) or the error code.
        p50_ms: median end-to-end latency of the slices computed in the window; None when there were none.
        p99_ms: their 99th percentile.
        rss_mb: the runtime's resident memory at the window's last sample (spawned runtimes only).
        fds: the runtime's open file descriptors at that sample.
        threads: the runtime's threads at that sample.
    """

    start_s: float
    sent: int = 0
    replies: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_mb: float | None = None
    fds: int | None = None
    threads: int | None = None


@dataclass
class SoakReport:
    """The soak's verdict and the evidence for it; it passed when ``failures`` is empty.

    Attributes:
        settings: the :class:`SoakConfig` the run used, as plain values.
        capacity_per_s: slices per second the runtime computed flat out before the soak.
        offered_per_s: the rate all consoles together sent at (capacity times overload).
        messages: messages sent, good and malformed.
        replies: replies received, including those with id null.
        null_id_replies: replies with id null (allowed only for messages with an unreadable id).
        duplicates: surplus replies to a request id answered more than once.
        missing: request ids never answered.
        good_failed: well-formed slices answered with an error other than SUPERSEDED.
        runtime_alive: whether a spawned runtime was still running at the end, before it was stopped (always
            True for one the soak did not start).
        runtime_exit_code: a spawned runtime's exit status once stopped; None for one the soak did not start.
        rss_slope_mb_h: least-squares growth of resident memory after the first fifth of the run, MB per hour.
        fd_growth: open file descriptors gained over the same stretch.
        thread_growth: threads gained over the same stretch.
        windows: the run window by window.
        machine: :func:`~scanedge.bench.report.machine_info` of the machine that ran the soak.
        versions: :func:`~scanedge.bench.report.versions` of the libraries involved.
        failures: why the run failed, one sentence per reason; empty when it passed.
    """

    settings: dict[str, Any]
    capacity_per_s: float
    offered_per_s: float
    messages: int
    anonymous: int  # messages whose id was deliberately unreadable
    replies: int
    null_id_replies: int
    duplicates: int
    missing: int
    good_failed: int
    runtime_alive: bool
    runtime_exit_code: int | None
    rss_slope_mb_h: float | None
    fd_growth: int | None
    thread_growth: int | None
    windows: list[SoakWindow]
    machine: dict[str, Any] = field(default_factory=machine_info)
    versions: dict[str, str] = field(default_factory=versions)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every message was answered once and memory, descriptors and threads stayed flat."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The ``scanedge.soak/1`` JSON document: every field, plus ``passed``."""
        data = asdict(self)
        data["schema"] = "scanedge.soak/1"
        data["passed"] = self.passed
        return data

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def render(self, console: Any) -> None:
        """The per-window table, the totals and the verdict on a rich console."""
        from scanedge.console import print_table

        columns = (
            "t s",
            "sent",
            "replies",
            "ok",
            "superseded",
            "errors",
            "p50 ms",
            "p99 ms",
            "RSS MB",
            "fds",
            "threads",
        )
        rows = []
        for w in self.windows:
            errors = sum(n for k, n in w.outcomes.items() if k not in ("ok", "SUPERSEDED", "control"))
            rows.append(
                [
                    f"{w.start_s:.0f}",
                    str(w.sent),
                    str(w.replies),
                    str(w.outcomes.get("ok", 0)),
                    str(w.outcomes.get("SUPERSEDED", 0)),
                    str(errors),
                    _fmt(w.p50_ms),
                    _fmt(w.p99_ms),
                    _fmt(w.rss_mb, 0),
                    _fmt(w.fds, 0),
                    _fmt(w.threads, 0),
                ]
            )
        print_table(console, "soak, per window", columns, rows, left=0)
        slope = "n/a" if self.rss_slope_mb_h is None else f"{self.rss_slope_mb_h:+.1f} MB/h"
        console.print(
            f"capacity {self.capacity_per_s:.1f} slices/s, offered {self.offered_per_s:.1f}/s; "
            f"{self.messages} messages ({self.anonymous} with an unreadable id), {self.replies} replies "
            f"({self.null_id_replies} with id null), {self.duplicates} duplicated, {self.missing} missing; "
            f"RSS slope {slope}, fd growth {self.fd_growth}, thread growth {self.thread_growth}"
        )
        if self.passed:
            console.print("[green]PASS[/]: every message answered once; memory, descriptors and threads flat")
        else:
            from rich.markup import escape

            console.print("[red]FAIL[/]: " + escape("; ".join(self.failures)))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def process_sample(pid: int) -> tuple[float, int, int] | None:
    """(resident MB, open file descriptors, threads) of a process, from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


class _Console(threading.Thread):
    """One console: its own DEALER, its own series, paced sends, every reply accounted for."""

    def __init__(self, index: int, endpoint: str, settings: SoakConfig, rate: float, dicom: Sequence[bytes]) -> None:
        super().__init__(name=f"soak-console-{index}", daemon=True)
        self.endpoint = endpoint
        self.settings = settings
        self.rate = rate
        self.series = f"soak-{index}"
        self.traffic = HostileTraffic(settings.seed * 1000 + index, dicom, prefix=f"c{index}")
        self.stop_sending = threading.Event()
        self.start_mono = 0.0
        self.sent_at: dict[str, float] = {}
        self.good: set[str] = set()
        self.replies: Counter[str] = Counter()
        self.anonymous = 0
        self.null_replies = 0
        self.good_failed = 0
        self.events: list[tuple[float, str, float | None]] = []  # (t, outcome, latency ms for ok)
        self.sends: list[float] = []
        self.drain_deadline = float("inf")  # set when sending stops: how long to wait for the last replies

    def run(self) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(self.endpoint)
        interval = 1.0 / self.rate
        next_send = self.start_mono
        try:
            while not self.stop_sending.is_set() or len(self.replies) + self.null_replies < len(self.sends):
                now = time.monotonic()
                if not self.stop_sending.is_set() and now >= next_send:
                    self._send_one(sock, now)
                    next_send += interval
                    if next_send < now - 1.0:  # fell far behind (a stall): do not burst to catch up
                        next_send = now
                timeout = max(0.0, next_send - time.monotonic()) if not self.stop_sending.is_set() else 0.1
                if sock.poll(int(timeout * 1000)):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_reply(frames[0])
                if self.stop_sending.is_set() and time.monotonic() > self.drain_deadline:
                    return
        finally:
            sock.close(0)

    def _send_one(self, sock: zmq.Socket, now: float) -> None:
        s = self.settings
        if self.traffic.rng.random() < s.malformed:
            message = self.traffic.hostile()
        else:
            message = self.traffic.good(s.size, series=self.series)
        if message.request_id is None:
            self.anonymous += 1
        else:
            self.sent_at[message.request_id] = now
            if message.good:
                self.good.add(message.request_id)
        sock.send_multipart(message.frames, copy=False)
        self.sends.append(now - self.start_mono)

    def _on_reply(self, head: bytes) -> None:
        now = time.monotonic()
        try:
            reply = json.loads(head)
        except ValueError:
            self.events.append((now - self.start_mono, "UNPARSABLE", None))
            return
        rid = reply.get("id")
        if rid is None:
            self.null_replies += 1
            self.events.append((now - self.start_mono, reply.get("code") or "?", None))
            return
        rid = str(rid)
        self.replies[rid] += 1
        if reply.get("type") == "RESULT":
            latency = (now - self.sent_at[rid]) * 1e3 if rid in self.sent_at else None
            self.events.append((now - self.start_mono, "ok", latency))
        elif reply.get("type") in ("PONG", "STATS_REPLY"):
            self.events.append((now - self.start_mono, "control", None))
        else:
            code = reply.get("code") or reply.get("type", "?")
            self.events.append((now - self.start_mono, code, None))
            if rid in self.good and code != "SUPERSEDED":
                self.good_failed += 1


def _capacity(endpoint: str, size: tuple[int, int], seconds: float = 3.0) -> float:
    """Slices per second the runtime computes flat out, one console, closed loop."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size, dtype=np.uint8)
    with Client(endpoint, ClientConfig(timeout_s=30)) as client:
        for _ in range(5):
            client.segment(img, outputs=("mask",))
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            client.segment(img, outputs=("mask",))
            n += 1
        return n / (time.monotonic() - start)


def bench_soak(settings: SoakConfig, progress: Progress | None = None, dicom: Sequence[bytes] = ()) -> SoakReport:
    """Run the soak and judge it; ``dicom``: real DICOM objects to mutate (default: the demo series)."""
    if not dicom:
        from scanedge.demo.series import demo_series_dir

        dicom = [p.read_bytes() for p in sorted(demo_series_dir().glob("*.dcm"))[:8]]
    spawned = None
    endpoint = settings.endpoint
    if endpoint is None:
        spawned = SpawnedRuntime(settings.model, settings.engine, settings.workers)
        endpoint = spawned.endpoint
    try:
        if spawned is not None:
            spawned.wait_ready()
        capacity = _capacity(endpoint, settings.size)
        offered = settings.overload * capacity
        consoles = [
            _Console(i, endpoint, settings, offered / settings.consoles, dicom) for i in range(settings.consoles)
        ]
        samples: list[tuple[float, float, int, int]] = []
        start = time.monotonic()
        for c in consoles:
            c.start_mono = start
            c.start()
        end = start + settings.duration_s
        while (now := time.monotonic()) < end:
            if spawned is not None:
                sample = process_sample(spawned.proc.pid)
                if sample is not None:
                    samples.append((now - start, *sample))
            if progress is not None:
                progress(int(now - start), int(settings.duration_s))
            time.sleep(min(1.0, max(0.0, end - now)))  # sampling period of the process metrics
        for c in consoles:
            c.drain_deadline = time.monotonic() + 60.0
            c.stop_sending.set()
        for c in consoles:
            c.join(90)
        if spawned is not None:
            sample = process_sample(spawned.proc.pid)
            if sample is not None:
                samples.append((time.monotonic() - start, *sample))
        alive = spawned is None or spawned.proc.poll() is None
    finally:
        code = spawned.close() if spawned is not None else None
    return _judge(settings, capacity, offered, consoles, samples, alive, code)


def _judge(
    settings: SoakConfig,
    capacity: float,
    offered: float,
    consoles: list[_Console],
    samples: list[tuple[float, float, int, int]],
    alive: bool,
    exit_code: int | None,
) -> SoakReport:
    messages = sum(len(c.sends) for c in consoles)
    anonymous = sum(c.anonymous for c in consoles)
    replies = sum(sum(c.replies.values()) for c in consoles) + sum(c.null_replies for c in consoles)
    null_replies = sum(c.null_replies for c in consoles)
    duplicates = sum(sum(n - 1 for n in c.replies.values() if n > 1) for c in consoles)
    missing = sum(sum(1 for rid in c.sent_at if c.replies[rid] == 0) for c in consoles)
    good_failed = sum(c.good_failed for c in consoles)
    windows = _windows(settings, consoles, samples)
    slope = rss_growth = fd_growth = thread_growth = None
    steady = [s for s in samples if s[0] >= settings.duration_s / 5]
    if len(steady) >= 3:
        t = np.array([s[0] for s in steady]) / 3600.0
        slope = float(np.polyfit(t, np.array([s[1] for s in steady]), 1)[0])
        rss_growth = steady[-1][1] - steady[0][1]
        fd_growth = int(steady[-1][2] - steady[0][2])
        thread_growth = int(steady[-1][3] - steady[0][3])
    failures = []
    if replies != messages:
        failures.append(f"{messages} messages but {replies} replies")
    if duplicates or missing:
        failures.append(f"{duplicates} duplicated and {missing} missing replies")
    if null_replies > anonymous:
        failures.append(f"{null_replies} replies with id null for {anonymous} unreadable ids")
    if good_failed:
        failures.append(f"{good_failed} good slices failed")
    internal = sum(w.outcomes.get("INTERNAL", 0) for w in windows)
    if internal:
        failures.append(f"{internal} INTERNAL replies: bugs reached by this traffic (the runtime's log says where)")
    if not alive:
        failures.append("the runtime died")
    if exit_code not in (None, 0):
        failures.append(f"the runtime exited with status {exit_code} at the end")
    # a slope from a short run extrapolates noise to an hour: it counts once the growth itself is real
    if slope is not None and slope > settings.rss_slope_limit_mb_h and (rss_growth or 0) > RSS_NOISE_MB:
        failures.append(
            f"resident memory grew {rss_growth:.1f} MB, {slope:.1f} MB/h (limit {settings.rss_slope_limit_mb_h:g})"
        )
    if fd_growth is not None and fd_growth > 8:
        failures.append(f"open file descriptors grew by {fd_growth}")
    if thread_growth is not None and thread_growth > 4:
        failures.append(f"threads grew by {thread_growth}")
    return SoakReport(
        settings={
            **{k: getattr(settings, k) for k in settings.__dataclass_fields__ if k not in ("engine", "model")},
            "model": str(settings.model or "demo"),
            "engine": {"backend": settings.engine.backend, "threads": settings.engine.threads},
        },
        capacity_per_s=capacity,
        offered_per_s=offered,
        messages=messages,
        anonymous=anonymous,
        replies=replies,
        null_id_replies=null_replies,
        duplicates=duplicates,
        missing=missing,
        good_failed=good_failed,
        runtime_alive=alive,
        runtime_exit_code=exit_code,
        rss_slope_mb_h=slope,
        fd_growth=fd_growth,
        thread_growth=thread_growth,
        windows=windows,
        failures=failures,
    )


def _windows(
    settings: SoakConfig, consoles: list[_Console], samples: list[tuple[float, float, int, int]]
) -> list[SoakWindow]:
    n = max(1, int(np.ceil(settings.duration_s / settings.window_s)))
    windows = [SoakWindow(start_s=i * settings.window_s) for i in range(n)]

    def index(t: float) -> int:
        return min(n - 1, max(0, int(t // settings.window_s)))

    latencies: list[list[float]] = [[] for _ in range(n)]
    for c in consoles:
        for t in c.sends:
            windows[index(t)].sent += 1
        for t, outcome, latency in c.events:
            w = windows[index(t)]
            w.replies += 1
            w.outcomes[outcome] = w.outcomes.get(outcome, 0) + 1
            if latency is not None:
                latencies[index(t)].append(latency)
    for w, lat in zip(windows, latencies):
        if lat:
            w.p50_ms, w.p99_ms = (float(v) for v in np.percentile(lat, (50, 99)))
    for t, rss, fds, threads in samples:
        w = windows[index(t)]
        w.rss_mb, w.fds, w.threads = rss, fds, threads
    return windows


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "SoakSettings": ("scanedge.bench.soak", "SoakConfig"),
    },
)
