"""End-to-end measurement against a running runtime, the way a console sees it.

Each simulated console has its own connection and its own series. ``rate`` sends at a fixed rate per
console and measures latency from the *intended* send time, so a stall that delays later sends shows up
in their latency instead of disappearing (coordinated omission). Without a rate each console runs closed
loop ("flat out"): the next slice goes as soon as the previous answer is back.

``--spawn`` starts ``scanedge serve`` in a separate process (as in production: no shared interpreter
lock with the load generator) and samples its resident memory during the run; ``runtimes`` > 1 spawns
several, and console ``k`` talks to runtime ``k % runtimes`` (with a remote engine: one runtime per
console next to its scanner, all sharing one inference server). ``versus`` spawns one more runtime with
other engine settings (e.g. the local engine against the remote one) and drives it in alternating blocks
with the same slices in the same run, so that the difference is the engines', not the machine's mood.
The spawned runtime's CPU time is sampled too.

``vs_flat_out`` measures a paced stream against flat out on the same runtime and connection in one run:
blocks of :data:`VS_FLAT_BLOCK` slices at ``rate`` alternate with blocks of as many slices flat out, so
both see the same machine at the same time (the flat-out figures are the report's baseline).

A multi-input model (PONG ``roles``, manifest ``inputs``) is streamed as a console streams a study: each
bench slice is a reference slice, and every other role gets a partner made on its grid
(:func:`~scanedge.bench.inputs.role_sets`). For each reference slice the console sends the partner roles'
SEGMENTs, then the reference's (:func:`~scanedge.runtime.console.replay.submit_set`, what ``scanedge replay
--roles`` sends), each console in a study of its own; ``total`` runs from the first SEGMENT of the set (its
intended time when paced) to the reference's RESULT, so it holds the partners' sending and holding too. The
partners' own replies (``held``) are counted apart; a reference answered ``MISSING_INPUT`` is an error by code.

Variants: one run can drive the same runtime over several transports (tcp, ipc) and payloads (frames, or
shared memory: docs/protocol.md section 12), each from its own connection, in alternating blocks with the
in-process baseline, so that every variant and the baseline see the same machine noise.

One run, in order: the runtimes are spawned or probed (:func:`bench_stream`), the connections opened
(``_Consoles``, and ``_InProcessBaseline`` for ``baseline``), the consoles driven by the measuring loop the
settings call for (``_measure``: warm-up, ``_drive``, ``_drain``; Ctrl-C only sets a polled flag,
:mod:`scanedge.bench.interrupt`), and the report assembled from the recorders (``_report``). A new way of
driving consoles is one more loop chosen in ``_drive``; a new figure or comparison goes in ``_report``'s parts.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanedge._moved import forward_names
from scanedge.bench.inprocess import RunLength, baseline_block, drive
from scanedge.bench.inputs import role_sets
from scanedge.bench.interrupt import StoppableRun, polled_interrupts
from scanedge.bench.report import BenchReport
from scanedge.bench.stats import RunMonitor, summarize
from scanedge.engines import EngineConfig, RemoteConfig
from scanedge.errors import BusyError, ConfigError, ExpiredError, MissingInputError, ScanedgeError, SupersededError
from scanedge.imaging.dicom import encode_dicom
from scanedge.imaging.slices import Slice
from scanedge.runtime.console.client import Client, ClientConfig, RemoteResult
from scanedge.runtime.console.replay import RoleSlice, submit_set
from scanedge.runtime.wire.protocol import Pong

if TYPE_CHECKING:  # imported lazily where used: only the baseline needs a local pipeline
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = ["PAYLOADS", "TRANSPORTS", "SpawnedRuntime", "StreamConfig", "bench_stream", "die_with_parent"]

Progress = Callable[[int, int], None]
SERVER_STAGES = ("queue", "decode", "preprocess", "infer", "postprocess", "overlay", "encode", "series")
#: how a spawned runtime is reached: tcp on a loopback port, ipc on a socket file
TRANSPORTS = ("tcp", "ipc")
#: how pixels and outputs travel: as frames on the socket, or in shared memory
PAYLOADS = ("frames", "shm")


@dataclass(frozen=True)
class StreamConfig:
    """What ``edge-bench stream`` drives, and how.

    Attributes:
        model: the model a spawned runtime serves (and the baseline runs); None: the demo model.
        workers: inference workers of a spawned runtime.
        consoles: simulated consoles, each with its own connection and series.
        outputs: what each request asks for (``mask``, ``overlay``, ``probabilities``).
        overlay_encoding: how the overlay comes back: ``raw``, ``jpeg`` or ``png``.
        deadline_ms: each request's deadline; None: none.
        dicom: send DICOM objects instead of raw pixels (adds the runtime's DICOM decoding).
        run: how long to measure.
        baseline: also time the in-process pipeline on the same slices, so the runtime's own cost shows.
        transports: how a spawned runtime is reached, each measured: ``tcp`` (loopback) and/or ``ipc``
            (with ``endpoint``, its own scheme is the one transport).
        payloads: ``frames`` and/or ``shm`` (shared memory), each measured on every transport.
    """

    endpoint: str | None = None  # None: spawn a runtime
    model: Path | None = None
    #: engine settings of a spawned runtime and of the in-process baseline (spinning off, as the server)
    engine: EngineConfig = EngineConfig(spinning=False)
    workers: int = 1
    rate: float | None = None  # slices per second per console; None: closed loop
    consoles: int = 1
    outputs: tuple[str, ...] = ("mask", "overlay")
    overlay_encoding: str = "raw"
    deadline_ms: float | None = None
    dicom: bool = False
    run: RunLength = field(default_factory=RunLength)
    baseline: bool = False
    #: spawned runtimes; console k talks to runtime k % runtimes
    runtimes: int = 1
    #: engine settings of one more spawned runtime driven side by side (alternating blocks), or None
    versus: EngineConfig | None = None
    #: a spawned runtime keeps its inference path warm between paced slices (``scanedge serve`` default)
    keep_warm: bool = True
    #: alternate paced blocks with flat-out blocks on one connection (needs ``rate``, one console)
    vs_flat_out: bool = False
    transports: tuple[str, ...] = ("tcp",)
    payloads: tuple[str, ...] = ("frames",)

    def __post_init__(self) -> None:
        if self.consoles < 1 or (self.rate is not None and self.rate <= 0):
            raise ValueError("consoles must be >= 1 and rate > 0")
        if self.runtimes < 1 or (self.endpoint is not None and self.runtimes != 1):
            raise ValueError("runtimes must be >= 1, and more than one only when they are spawned")
        if self.versus is not None and (
            self.endpoint is not None or self.consoles != 1 or self.rate is not None or self.baseline
        ):
            raise ValueError("a side-by-side runtime needs --spawn, one console, no --rate and no --baseline")
        if self.vs_flat_out and (self.rate is None or self.consoles != 1 or self.baseline):
            raise ValueError("--vs-flat-out needs --rate and one console, and replaces --baseline")
        if not self.transports or not set(self.transports) <= set(TRANSPORTS):
            raise ConfigError(f"transports are {', '.join(TRANSPORTS)}; got {', '.join(self.transports) or 'none'}")
        if not self.payloads or not set(self.payloads) <= set(PAYLOADS):
            raise ConfigError(f"payloads are {', '.join(PAYLOADS)}; got {', '.join(self.payloads) or 'none'}")
        if not self.variants:
            raise ConfigError("shared memory is measured over ipc:// only (--transport ipc): tcp consoles send frames")
        if len(self.variants) > 1 and (self.consoles != 1 or self.rate is not None):
            raise ConfigError("several transports or payloads are compared with one console, flat out")
        if len(self.variants) > 1 and (self.runtimes != 1 or self.versus is not None or self.vs_flat_out):
            raise ConfigError(
                "several transports or payloads are compared on one runtime, without --versus-local or --vs-flat-out"
            )

    @property
    def variants(self) -> list[tuple[str, str]]:
        """Every (transport, payload) measured, in order; the first is reported under the plain figure names."""
        transports = self.transports if self.endpoint is None else (self.endpoint.split("://", 1)[0],)
        pairs = itertools.product(dict.fromkeys(transports), dict.fromkeys(self.payloads))
        # shared memory only over ipc://, where the runtime knows the console's user (docs/protocol.md 12)
        return [(t, p) for t, p in pairs if p != "shm" or t == "ipc"]


def variant_name(transport: str, payload: str) -> str:
    """``tcp``, ``tcp+shm``, ``ipc``, ``ipc+shm``: how figures of a variant are suffixed (``total[ipc+shm]``)."""
    return transport if payload == "frames" else f"{transport}+{payload}"


_LINUX = sys.platform.startswith("linux")


def die_with_parent() -> None:
    """In a child process (``preexec_fn``): ask Linux to send it SIGTERM when its parent dies, so a benchmark
    killed outright (SIGKILL, a crash) never leaves an orphan runtime holding a port and a CPU."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SpawnedRuntime:
    """``scanedge serve`` in a child process on a free loopback port (and an ipc socket when asked), with its
    memory sampled. ``endpoints`` maps each transport to its endpoint; ``endpoint`` is the first."""

    def __init__(
        self,
        model: Path | None,
        engine: EngineConfig = EngineConfig(spinning=False),
        workers: int = 1,
        keep_warm: bool = True,
        transports: Sequence[str] = ("tcp",),
    ) -> None:
        """Start it; ``engine``'s backend, threads and spinning become ``scanedge serve`` flags."""
        self._ipc_dir = tempfile.mkdtemp(prefix="scanedge-bench-") if "ipc" in transports else None
        self.endpoints = {
            t: f"tcp://127.0.0.1:{_free_port()}" if t == "tcp" else f"ipc://{self._ipc_dir}/runtime.ipc"
            for t in dict.fromkeys(transports)
        }
        self.endpoint = next(iter(self.endpoints.values()))
        cmd = [
            sys.executable,
            "-m",
            "scanedge",
            "serve",
            "--bind",
            self.endpoint,
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--stats-interval",
            "3600",
        ]
        for also in list(self.endpoints.values())[1:]:
            cmd += ["--also-bind", also]
        if model is not None:
            cmd += ["--model", str(model)]
        cmd += ["--backend", engine.backend]
        if engine.threads is not None:
            cmd += ["--threads", str(engine.threads)]
        if engine.spinning:
            cmd += ["--spinning"]
        if engine.remote is not None:
            cmd += _remote_flags(engine.remote)
        if not keep_warm:
            cmd += ["--no-keep-warm"]
        # its log goes to a file: a pipe nobody reads fills up and stalls the runtime mid-run
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=self._log, preexec_fn=die_with_parent if _LINUX else None
        )
        self.rss_mb: list[float] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def wait_ready(self, timeout: float = 120.0) -> Pong:
        """Block until the runtime answers PING (its PONG is returned), then start sampling its memory.

        RuntimeError when it exits first or does not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with Client(self.endpoint, ClientConfig(timeout_s=1.0, retries=0)) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the spawned runtime exited: {self.log_tail()}")
                try:
                    pong = probe.ping(timeout=1.0)
                    break
                except ScanedgeError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the spawned runtime did not answer PING in time") from None
        self._sampler.start()
        return pong

    def _sample(self) -> None:
        path = f"/proc/{self.proc.pid}/status"
        while not self._stop.wait(0.1):
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.rss_mb.append(int(line.split()[1]) / 1024)
            except OSError:
                return

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the runtime has used so far (None once it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the runtime logged."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    def close(self) -> int | None:
        """Stop it with SIGTERM (SIGKILL after 30 s) and return its exit status."""
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> SpawnedRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_flags(remote: RemoteConfig) -> list[str]:
    """``scanedge serve`` flags that stand for ``remote``."""
    url = f"{'grpcs' if remote.tls else 'grpc'}://{remote.address}"
    if remote.model:
        url += f"/{remote.model}" + (f"/{remote.version}" if remote.version else "")
    flags = ["--remote", url, "--remote-timeout", str(remote.timeout_s), "--remote-retries", str(remote.retries)]
    for flag, path in (
        ("--remote-ca", remote.tls_ca),
        ("--remote-cert", remote.tls_cert),
        ("--remote-key", remote.tls_key),
    ):
        if path is not None:
            flags += [flag, str(path)]
    return flags + (["--remote-insecure"] if remote.insecure else [])


class _Recorder:
    """Collects per-request outcomes from the clients' I/O threads.

    An ``ok`` reply that reached the console after its deadline (``late_after_ms``) is counted ``late_ok``
    too: the runtime only expires requests that waited past the deadline *before* inference, so a result
    can be computed in time and still arrive too late to show.
    """

    def __init__(self, late_after_ms: float | None = None) -> None:
        self.lock = threading.Lock()
        figures = ("total", "server", "transport", "outside_model", *SERVER_STAGES)
        self.samples: dict[str, list[float]] = {k: [] for k in figures}
        self.timeline: list[float] = []
        self.counts = {"ok": 0, "superseded": 0, "expired": 0, "busy": 0, "error": 0}
        self.errors: dict[str, int] = {}
        self.done = 0
        self.submitted = 0
        self.late_after_ms = late_after_ms
        #: a multi-input model's partner SEGMENTs: sent, answered held, failed (and why, by code)
        self.partners = {"sent": 0, "held": 0, "error": 0}
        self.partner_errors: dict[str, int] = {}

    def partner_callback(self) -> Callable[[Future[RemoteResult]], None]:
        """Count a partner SEGMENT sent; the callback counts its reply (held for pairing, or an error by code)."""
        with self.lock:
            self.partners["sent"] += 1

        def record(future: Future[RemoteResult]) -> None:
            with self.lock:
                exc = future.exception()
                if exc is None:
                    self.partners["held"] += 1
                else:
                    self.partners["error"] += 1
                    code = getattr(exc, "code", type(exc).__name__)
                    self.partner_errors[code] = self.partner_errors.get(code, 0) + 1

        return record

    def partners_pending(self) -> int:
        """Partner SEGMENTs not answered yet."""
        with self.lock:
            return self.partners["sent"] - self.partners["held"] - self.partners["error"]

    def callback(self, intended: float, sent: float, start: float) -> Callable[[Future[RemoteResult]], None]:
        with self.lock:
            self.submitted += 1

        def record(future: Future[RemoteResult]) -> None:
            now = time.perf_counter()
            with self.lock:
                self.done += 1
                exc = future.exception()
                if exc is None:
                    r: RemoteResult = future.result()
                    server_ms = r.timings_ms.get("total", 0.0)
                    self.samples["total"].append((now - intended) * 1e3)
                    self.samples["server"].append(server_ms)
                    self.samples["transport"].append(max(0.0, (now - sent) * 1e3 - server_ms))
                    # everything but the inference, as the console sees it: robust to the model's own noise
                    self.samples["outside_model"].append((now - intended) * 1e3 - r.timings_ms.get("infer", 0.0))
                    for stage in SERVER_STAGES:
                        self.samples[stage].append(r.timings_ms.get(stage, 0.0))
                    self.timeline.append(intended - start)
                    self.counts["ok"] += 1
                    if self.late_after_ms is not None and (now - sent) * 1e3 > self.late_after_ms:
                        self.counts["late_ok"] = self.counts.get("late_ok", 0) + 1
                elif isinstance(exc, SupersededError):
                    self.counts["superseded"] += 1
                elif isinstance(exc, ExpiredError):
                    self.counts["expired"] += 1
                elif isinstance(exc, BusyError):
                    self.counts["busy"] += 1
                else:
                    self.counts["error"] += 1
                    code = getattr(exc, "code", type(exc).__name__)
                    self.errors[code] = self.errors.get(code, 0) + 1

        return record


def _payloads(slices: Sequence[Slice], dicom: bool) -> list[Any]:
    return [encode_dicom(s) for s in slices] if dicom else list(slices)


@dataclass(frozen=True, eq=False)
class _Paired:
    """One reference slice of a multi-input model with a partner per role, as each series key sends it.

    Attributes:
        by_series: per series key (``console-0``, ...; ``""`` for the warm-up and the in-process baseline), the
            reference and its partners, reference first, each in the key's own study, partners in series
            ``KEY-ROLE`` (the SEGMENT's ``series``), every slice with a SOP Instance UID of its own (a partner
            sent again replaces itself in the runtime's pairing buffer instead of piling up).
    """

    by_series: dict[str, tuple[RoleSlice, ...]]

    def sources(self) -> dict[str, Slice | bytes]:
        """Every role's slice (or DICOM bytes), for :meth:`Pipeline.run_inputs`."""
        return {str(r.role): r.image for r in self.by_series[""]}


def _role_payloads(slices: Sequence[Slice], roles: Sequence[str], keys: Sequence[str], dicom: bool) -> list[_Paired]:
    """Each of ``slices`` as a reference slice with partners made on its grid, per series key (see :class:`_Paired`)."""
    from pydicom.uid import generate_uid

    studies = {key: generate_uid(entropy_srcs=["scanedge edge-bench stream", key]) for key in keys}
    out = []
    for i, item in enumerate(role_sets(slices, roles)):
        by_series: dict[str, tuple[RoleSlice, ...]] = {}
        for key in keys:
            parts = []
            for role, s in item.items():
                series = key if role == roles[0] else f"{key}-{role}"
                sop = generate_uid(entropy_srcs=["scanedge edge-bench stream", key, role, str(i)])
                uid = generate_uid(entropy_srcs=["scanedge edge-bench stream", key, role])  # a DICOM object's own
                ident = replace(s.identity, study_uid=studies[key], series_uid=uid, sop_instance_uid=sop)
                sent = replace(s, identity=ident)
                parts.append(RoleSlice(role, encode_dicom(sent) if dicom else sent, sent, series))
            by_series[key] = tuple(parts)
        out.append(_Paired(by_series))
    return out


def _series_keys(settings: StreamConfig) -> list[str]:
    """Every series key a run sends under: the warm-up's, each console's, each variant's."""
    consoles = [f"console-{k}" for k in range(settings.consoles)]
    variants = [f"console-{variant_name(t, p)}" for t, p in settings.variants]
    return list(dict.fromkeys(["", *consoles, *variants]))


def _ignore_reply(future: Future[RemoteResult]) -> None:
    """Collect a warm-up partner's reply (its outcome is not measured)."""
    if not future.cancelled():
        future.exception()


def _submit(
    client: Client, payload: Any, series: str, kw: dict[str, Any], rec: _Recorder | None
) -> Future[RemoteResult]:
    """Send one slice, or a multi-input model's set (partners, then the reference, on this connection); the
    future is the slice's (the reference's) RESULT. ``rec`` counts the partners' replies (None: not counted)."""
    if not isinstance(payload, _Paired):
        return client.submit(payload, series=series, **kw)
    partners, reference = submit_set(client, payload.by_series[series], **kw)
    for future in partners:
        future.add_done_callback(rec.partner_callback() if rec is not None else _ignore_reply)
    return reference


def bench_stream(slices: Sequence[Slice], settings: StreamConfig, progress: Progress | None = None) -> BenchReport:
    """Stream ``slices`` (cycled) to ``settings.endpoint``, or to runtimes spawned for the run, and report
    end-to-end latency per request with the runtime's own stage timings and the transport between them;
    with ``settings.versus`` a second runtime on another backend is measured side by side in the same run.

    ``progress(done, expected)`` is called as requests complete.
    """
    spawned: list[SpawnedRuntime] = []
    versus = None
    endpoints: list[dict[str, str]] = []
    if settings.endpoint is not None:
        endpoints = [{settings.endpoint.split("://", 1)[0]: settings.endpoint}]
    try:
        if settings.endpoint is None:
            spawned = [
                SpawnedRuntime(
                    settings.model, settings.engine, settings.workers, settings.keep_warm, settings.transports
                )
                for _ in range(settings.runtimes)
            ]
            endpoints = [r.endpoints for r in spawned]
            if settings.versus is not None:
                versus = SpawnedRuntime(settings.model, settings.versus, settings.workers, settings.keep_warm)
            pongs = [r.wait_ready() for r in spawned]
            pong = pongs[0]
            if versus is not None:
                versus.wait_ready()
        else:
            with Client(settings.endpoint, ClientConfig(timeout_s=5.0, retries=0)) as probe:
                pong = probe.ping()
        target = _Target(endpoints, pong, spawned[0] if spawned else None, versus, _served_roles(pong))
        report = _run(slices, settings, target, progress)
    finally:
        codes = [r.close() for r in spawned]
        if versus is not None:
            codes.append(versus.close())
    if spawned:
        report.settings["spawned_exit_code"] = next((c for c in codes if c), codes[0])
    return report


def _served_roles(pong: Pong) -> tuple[str, ...]:
    """The input roles of the model streamed to (PONG ``roles``, reference first); () for a one-input model."""
    served = next((m for m in pong.models if m.name == pong.default_model), pong.models[0] if pong.models else None)
    return tuple(served.roles) if served is not None and served.roles else ()


def _variant_clients(settings: StreamConfig, endpoints: dict[str, str]) -> dict[str, Client]:
    """One connection per variant, each with shared memory acknowledged by the runtime when it uses it."""
    clients: dict[str, Client] = {}
    try:
        for transport, payload in settings.variants:
            shm = payload == "shm"
            client = Client(endpoints[transport], ClientConfig(timeout_s=30.0, shared_memory=shm))
            clients[variant_name(transport, payload)] = client
            end = time.monotonic() + 10
            while shm and not client.shared_memory_active:
                if time.monotonic() > end:
                    raise ConfigError(f"the runtime at {endpoints[transport]} did not accept shared memory")
                client.ping()
    except BaseException:
        for c in clients.values():
            c.close()
        raise
    return clients


@dataclass(frozen=True)
class _Target:
    """The runtime(s) a run measures, as found before it began.

    Attributes:
        endpoints: per runtime, its endpoint by transport (console ``k`` talks to runtime ``k % len``).
        pong: the first runtime's answer to PING (engine, models).
        spawned: the first runtime when it was spawned for the run (its CPU and memory are sampled).
        versus: the side-by-side runtime, or None.
        roles: the input roles of the model streamed to (a multi-input model), reference first; () for one input.
    """

    endpoints: list[dict[str, str]]
    pong: Pong
    spawned: SpawnedRuntime | None = None
    versus: SpawnedRuntime | None = None
    roles: tuple[str, ...] = ()


@dataclass(eq=False)
class _Consoles:
    """Every connection of one run and the recorder of what came back on it.

    Attributes:
        variants: one connection per measured (transport, payload), by :func:`variant_name`; the first is
            also console 0.
        recs: per variant, its recorder (the first variant's records console 0 and every other console).
        clients: console ``k``'s connection (``k % runtimes``'s runtime, on its first transport).
        versus_client: the connection to the side-by-side runtime, or None.
        versus_rec: what the side-by-side runtime answered.
        flat: what the flat-out blocks of ``vs_flat_out`` measured.
    """

    variants: dict[str, Client]
    recs: dict[str, _Recorder]
    clients: list[Client]
    versus_client: Client | None
    versus_rec: _Recorder
    flat: _Recorder = field(default_factory=_Recorder)

    @classmethod
    def open(cls, settings: StreamConfig, target: _Target) -> _Consoles:
        """Connect every variant, every further console and the side-by-side runtime (all closed again if
        one of them fails)."""
        endpoints, versus = target.endpoints, target.versus
        variants = _variant_clients(settings, endpoints[0])
        recs = {name: _Recorder(settings.deadline_ms) for name in variants}
        clients = [next(iter(variants.values()))]
        versus_client = None
        try:
            for k in range(1, settings.consoles):  # console k talks to runtime k % runtimes, on its first transport
                runtime = endpoints[k % len(endpoints)]
                clients.append(Client(next(iter(runtime.values())), ClientConfig(timeout_s=30.0)))
            if versus is not None:
                versus_client = Client(versus.endpoint, ClientConfig(timeout_s=30.0))
        except BaseException:
            for c in [*clients, *variants.values()]:
                c.close()
            raise
        return cls(variants, recs, clients, versus_client, _Recorder(settings.deadline_ms))

    @property
    def names(self) -> list[str]:
        """The variants' names, in order; the first is reported under the plain figure names."""
        return list(self.variants)

    @property
    def rec(self) -> _Recorder:
        """The first variant's recorder: console 0's and every other console's."""
        return self.recs[self.names[0]]

    def recorders(self) -> list[_Recorder]:
        """Every recorder of the run: the variants', the flat-out blocks' and the side-by-side runtime's."""
        return [*self.recs.values(), self.flat, self.versus_rec]

    def others(self) -> list[Client]:
        """The connections of the variants after the first."""
        return [self.variants[name] for name in self.names[1:]]

    def close(self) -> None:
        for c in [*self.clients, *self.others()]:
            c.close()
        if self.versus_client is not None:
            self.versus_client.close()


@dataclass(eq=False)
class _InProcessBaseline:
    """The in-process pipeline timed on the same slices in the same run (``--baseline``), and its figures.

    Attributes:
        pipe: the pipeline, or None without a baseline.
        totals: its total milliseconds per slice.
        outside_model: its milliseconds outside the model per slice.
    """

    pipe: Pipeline | None = None
    totals: list[float] = field(default_factory=list)
    outside_model: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, settings: StreamConfig) -> _InProcessBaseline:
        """With ``settings.baseline``, the pipeline on the runtime's engine settings (spinning off), so that
        the difference is the runtime itself; without, none."""
        if not settings.baseline:
            return cls()
        from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig

        return cls(Pipeline.open(settings.model, options=settings.engine, config=PipelineConfig(ignore_scope=True)))

    @property
    def figures(self) -> tuple[list[float], list[float]]:
        """Where the measuring loops put what they time: (totals, outside the model)."""
        return self.totals, self.outside_model

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()


@dataclass(frozen=True)
class _Measured:
    """What the measuring loops leave behind besides the recorders' samples."""

    sent: int
    wall_s: float
    interrupted: bool
    monitor: RunMonitor
    cpu_start: float | None  # the spawned runtime's CPU seconds when measuring began; None without one
    cpu_end: float | None


def _request_options(settings: StreamConfig) -> dict[str, Any]:
    """What every request of the run asks for, as :meth:`Client.submit` arguments."""
    return {
        "ignore_scope": True,  # speed, not validity: resized demo slices may fall outside the model's scope
        "outputs": settings.outputs,
        "overlay_encoding": settings.overlay_encoding,
        "deadline_ms": settings.deadline_ms,
        "publish": False,
    }


def _run(slices: Sequence[Slice], settings: StreamConfig, target: _Target, progress: Progress | None) -> BenchReport:
    """Connect the consoles, measure, close them, and report."""
    if target.roles:
        payloads: list[Any] = _role_payloads(slices, target.roles, _series_keys(settings), settings.dicom)
    else:
        payloads = _payloads(slices, settings.dicom)
    consoles = _Consoles.open(settings, target)
    baseline = _InProcessBaseline()
    try:
        baseline = _InProcessBaseline.open(settings)
        measured = _measure(consoles, baseline, payloads, settings, target.spawned, progress)
    finally:
        consoles.close()
        baseline.close()
    return _report(slices, settings, target, consoles, baseline, measured)


def _measure(
    consoles: _Consoles,
    baseline: _InProcessBaseline,
    payloads: Sequence[Any],
    settings: StreamConfig,
    spawned: SpawnedRuntime | None,
    progress: Progress | None,
) -> _Measured:
    """Warm up, drive the consoles the way ``settings`` asks, and wait for the replies still due. Ctrl-C and
    SIGTERM only set the flag the loops poll (:mod:`scanedge.bench.interrupt`): the run then ends early."""
    kw = _request_options(settings)
    with polled_interrupts() as stop:  # Ctrl-C / SIGTERM end the loops; see scanedge.bench.interrupt
        run = StoppableRun.of(settings.run, stop)
        _warm_up(consoles, payloads, kw, run)
        monitor = RunMonitor()
        cpu_start = spawned.cpu_seconds() if spawned is not None else None
        start = time.perf_counter()
        sent = _drive(consoles, baseline, payloads, kw, settings, run, start, progress)
        interrupted = run.stopped()
        sent = _drain(consoles, sent, interrupted)
    wall = time.perf_counter() - start
    cpu_end = spawned.cpu_seconds() if spawned is not None else None
    return _Measured(sent, wall, interrupted, monitor, cpu_start, cpu_end)


def _warm_up(consoles: _Consoles, payloads: Sequence[Any], kw: dict[str, Any], run: StoppableRun) -> None:
    """Warm up connections and the runtime(s): up to 50 of ``run.warmup`` rounds over every connection."""
    clients = consoles.clients
    for i in range(min(run.warmup, 50)):
        for warm in (clients[i % len(clients)], consoles.versus_client, *consoles.others()):
            if warm is not None and not run.stopped():
                try:
                    _submit(warm, payloads[i % len(payloads)], "", kw, None).result()
                except (ExpiredError, BusyError, MissingInputError):  # a tight --deadline-ms, a busy runtime or
                    pass  # a runtime that cannot pair: warm anyway (the measured run counts them)


def _drive(
    consoles: _Consoles,
    baseline: _InProcessBaseline,
    payloads: Sequence[Any],
    kw: dict[str, Any],
    settings: StreamConfig,
    run: StoppableRun,
    start: float,
    progress: Progress | None,
) -> int:
    """The measuring loop ``settings`` calls for; returns the requests it sent."""
    client, rec, pipe = consoles.clients[0], consoles.rec, baseline.pipe
    if consoles.versus_client is not None:
        return _closed_loop_side_by_side(
            client, consoles.versus_client, payloads, kw, rec, consoles.versus_rec, run, start, progress
        )
    if settings.vs_flat_out:
        return _paced_vs_flat_out(client, payloads, kw, rec, consoles.flat, settings, run, start, progress)
    if len(consoles.variants) > 1:
        return _closed_loop_variants(
            consoles.variants, payloads, kw, consoles.recs, run, start, pipe, baseline.figures, progress
        )
    if settings.rate is None and settings.consoles == 1 and pipe is not None:
        return _closed_loop_with_baseline(client, payloads, kw, rec, run, start, pipe, baseline.figures, progress)
    if pipe is not None:  # fixed rate or several consoles: the baseline goes first
        for i in range(min(len(payloads) * 4, 200)):
            if run.stopped():
                break
            t = _in_process_step(pipe, payloads[i % len(payloads)], kw, baseline.outside_model)
            baseline.totals.append(t.total_ms)
    total = run.count if run.duration_s is None else None
    return _drive_consoles(consoles.clients, payloads, kw, rec, settings, run, start, total, progress)


def _drain(consoles: _Consoles, sent: int, interrupted: bool) -> int:
    """Wait for the replies still due; returns the requests sent. Interrupted: what was submitted, each
    recorder waited for only briefly, so that what was measured is reported."""
    if interrupted:
        sent = sum(r.submitted for r in consoles.recs.values())
        for r in consoles.recs.values():
            _wait_all(r, r.submitted, timeout=3)
    else:
        rec = consoles.rec
        _wait_all(rec, sent if len(consoles.variants) == 1 else rec.done, timeout=60)
    end = time.monotonic() + (3 if interrupted else 30)  # partners are answered at once: their count is complete
    while any(r.partners_pending() for r in consoles.recorders()) and time.monotonic() < end:
        time.sleep(0.005)
    return sent


def _report(
    slices: Sequence[Slice],
    settings: StreamConfig,
    target: _Target,
    consoles: _Consoles,
    baseline: _InProcessBaseline,
    measured: _Measured,
) -> BenchReport:
    """The report of a measured run: figures, what was run, the baselines, the runtime's use and warnings."""
    rec, wall, model = consoles.rec, measured.wall_s, target.pong.models[0]
    samples = _stream_samples(consoles)
    report = BenchReport(
        mode="stream",
        settings=_run_settings(slices, settings, target, consoles.names, measured.sent),
        samples=samples,
        engine=_engine_section(target.pong),
        model={
            "name": model.name,
            "version": model.version,
            "sha256": model.onnx_sha256,
            **({"roles": list(target.roles)} if target.roles else {}),
        },
        counts=dict(rec.counts),
        throughput_per_s=rec.counts["ok"] / wall if wall > 0 else None,
        wall_s=wall,
        timeline=rec.timeline,
    )
    _merge_variant_counts(report, consoles)
    _add_partners(report, consoles, target.roles)
    _add_server_cpu(report, measured)
    _add_baselines(report, settings, samples, consoles, baseline)
    _add_server_rss(report, target.spawned)
    _add_warnings(report, settings, samples, target.spawned, rec, measured)
    return report


def _stream_samples(consoles: _Consoles) -> dict[str, list[float]]:
    """The first variant's figures under their plain names, the others' end to end, runtime and transport
    figures as ``total[NAME]``, ..."""
    samples = {k: v for k, v in consoles.rec.samples.items() if v}
    for name in consoles.names[1:]:
        for figure in ("total", "server", "transport", "outside_model"):
            if consoles.recs[name].samples[figure]:
                samples[f"{figure}[{name}]"] = consoles.recs[name].samples[figure]
    return samples


def _run_settings(
    slices: Sequence[Slice], settings: StreamConfig, target: _Target, variants: list[str], sent: int
) -> dict[str, Any]:
    """What was run, as the report's ``settings``."""
    return {
        "endpoint": settings.endpoint or "spawned",
        "rate_per_console": settings.rate,
        "consoles": settings.consoles,
        "outputs": list(settings.outputs),
        "overlay_encoding": settings.overlay_encoding,
        "input": "dicom" if settings.dicom else "raw",
        "slice_shapes": [list(s) for s in sorted({s.shape for s in slices})],
        "deadline_ms": settings.deadline_ms,
        "sent": sent,
        "warmup": settings.run.warmup,
        "threads": settings.engine.threads,
        "workers": settings.workers,
        "baseline": settings.baseline,
        "runtimes": len(target.endpoints),
        "versus": None if settings.versus is None else settings.versus.backend,
        "keep_warm": settings.keep_warm if target.spawned is not None else None,
        "vs_flat_out": settings.vs_flat_out,
        "variants": variants,  # the first under the plain figure names, the others as total[NAME], ...
    }


def _engine_section(pong: Pong) -> dict[str, Any]:
    """The engine as the runtime reports it in PONG."""
    model = pong.models[0]
    return {
        "backend": pong.engine,
        "server": pong.server,
        **(
            {"targets": sorted({h.target for h in pong.engine_health.values() if h.target})}
            if pong.engine_health
            else {}
        ),
        "threads": model.threads,  # as the runtime reports it in PONG (what --threads auto chose)
        **({"threads_probe_ms": model.threads_probe_ms} if model.threads_probe_ms else {}),
    }


def _merge_variant_counts(report: BenchReport, consoles: _Consoles) -> None:
    """Add the other variants' outcomes to the report's counts (and their errors to the first recorder's),
    then every error code as ``error.CODE``."""
    rec = consoles.rec
    for name in consoles.names[1:]:
        for outcome, n in consoles.recs[name].counts.items():
            report.counts[outcome] = report.counts.get(outcome, 0) + n
        for code, n in consoles.recs[name].errors.items():
            rec.errors[code] = rec.errors.get(code, 0) + n
    if rec.errors:
        report.counts.update({f"error.{k}": v for k, v in rec.errors.items()})


def _add_partners(report: BenchReport, consoles: _Consoles, roles: Sequence[str]) -> None:
    """A multi-input model's run: the roles and what was timed (settings), the partner SEGMENTs' replies (held,
    failed by code), and a warning when any partner failed."""
    if not roles:
        return
    partners = {"sent": 0, "held": 0, "error": 0}
    errors: dict[str, int] = {}
    for rec in consoles.recorders():
        with rec.lock:
            for k in partners:
                partners[k] += rec.partners[k]
            for code, n in rec.partner_errors.items():
                errors[code] = errors.get(code, 0) + n
    report.settings["roles"] = list(roles)
    report.settings["partners"] = "synthetic, on the reference grid; sent before each reference slice"
    report.settings["latency"] = "from the first SEGMENT of each reference slice's set to the reference's RESULT"
    report.settings["partner_replies"] = {**partners, "errors": errors}
    report.counts["partners_held"] = partners["held"]
    report.counts.update({f"partner_error.{code}": n for code, n in errors.items()})
    if partners["error"]:
        report.warnings.append(f"{partners['error']} of {partners['sent']} partner SEGMENT(s) failed: {errors}")


def _add_server_cpu(report: BenchReport, measured: _Measured) -> None:
    """The spawned runtime's CPU time over the run, as a share of one core."""
    cpu_start, cpu_end, wall = measured.cpu_start, measured.cpu_end, measured.wall_s
    if cpu_start is not None and cpu_end is not None and wall > 0:
        report.settings["server_cpu"] = {
            "seconds": round(cpu_end - cpu_start, 3),
            "wall_s": round(wall, 3),
            "percent_of_one_core": round(100 * (cpu_end - cpu_start) / wall, 2),
        }


def _add_baselines(
    report: BenchReport,
    settings: StreamConfig,
    samples: dict[str, list[float]],
    consoles: _Consoles,
    baseline: _InProcessBaseline,
) -> None:
    """What the stream is compared with: flat out (``vs_flat_out``), the in-process pipeline
    (``baseline``) or the side-by-side runtime (``versus``); settings allow one of them."""
    flat, versus_rec, names = consoles.flat, consoles.versus_rec, consoles.names
    if settings.vs_flat_out and flat.samples["total"] and samples.get("total"):
        report.baseline = baseline_block(
            flat.samples["total"],
            samples["total"],
            f"flat out, same runtime and connection, alternating blocks of {VS_FLAT_BLOCK} with the paced ones",
            "flat out",
        )
        for stage in ("server", "transport", *SERVER_STAGES):
            if flat.samples[stage]:
                report.baseline["samples"][f"flat out {stage}"] = [round(v, 4) for v in flat.samples[stage]]
    if baseline.totals and samples.get("total"):
        report.baseline = baseline_block(
            baseline.totals,
            samples["total"],
            "the in-process pipeline, same slices, outputs and engine settings, same run",
            "in-process",
        )
        if baseline.outside_model:  # the same comparison without the model: inference noise left out of both
            outside = baseline.outside_model
            report.baseline["samples"]["in-process outside_model"] = [round(v, 4) for v in outside]
            ref = summarize(outside).median
            report.baseline["outside_model_added_p50"] = {
                name: summarize(samples["outside_model" if i == 0 else f"outside_model[{name}]"]).median - ref
                for i, name in enumerate(names)
            }
        if len(names) > 1:
            report.baseline["variants"] = {
                name: baseline_block(baseline.totals, samples["total" if i == 0 else f"total[{name}]"], "")[
                    "overhead_ms"
                ]
                for i, name in enumerate(names)
            }
    if versus_rec.samples["total"] and samples.get("total"):
        backend = settings.versus.backend  # type: ignore[union-attr]
        report.baseline = baseline_block(
            versus_rec.samples["total"],
            samples["total"],
            f"a second spawned runtime on the {backend} engine, same slices and outputs, "
            f"alternating blocks of {STREAM_BASELINE_BLOCK}, same run",
            f"{backend} runtime",
        )
        name = f"{backend} runtime: server infer"
        report.baseline["samples"][name] = [round(v, 4) for v in versus_rec.samples["infer"]]
        report.baseline["figures"][name] = summarize(versus_rec.samples["infer"]).to_dict()


def _add_server_rss(report: BenchReport, spawned: SpawnedRuntime | None) -> None:
    """The spawned runtime's resident memory: at the start, at most, at the end, growth in the second half."""
    if spawned is not None and spawned.rss_mb:
        rss = spawned.rss_mb
        tail = rss[len(rss) // 2 :]
        report.settings["server_rss_mb"] = {
            "start": rss[0],
            "max": max(rss),
            "end": rss[-1],
            "growth_second_half": tail[-1] - tail[0] if tail else 0.0,
        }


def _add_warnings(
    report: BenchReport,
    settings: StreamConfig,
    samples: dict[str, list[float]],
    spawned: SpawnedRuntime | None,
    rec: _Recorder,
    measured: _Measured,
) -> None:
    """Noisy or drifting figures, failed requests, replies too late to show, and an interrupted run."""
    if "total" in samples:  # a spawned runtime's CPU use is expected load, not interference
        report.warnings.extend(measured.monitor.warnings("total", samples["total"], check_load=spawned is None))
    if rec.counts["error"]:
        report.warnings.append(f"{rec.counts['error']} request(s) failed: {rec.errors}")
    if rec.counts.get("late_ok"):
        report.warnings.append(
            f"{rec.counts['late_ok']} of {rec.counts['ok']} ok replies arrived after the {settings.deadline_ms:g} ms "
            "deadline (computed in time, shown too late)"
        )
    if measured.interrupted:
        report.settings["interrupted"] = True
        report.warnings.append(f"interrupted after {measured.sent} request(s): a partial report")


def _wait_all(rec: _Recorder, sent: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with rec.lock:
            if rec.done >= sent:
                return
        time.sleep(0.005)


def _settled(future: Future[RemoteResult]) -> None:
    """Wait for a reply; its outcome, error or not, is the recorder's to count."""
    try:
        future.result(60)
    except ScanedgeError:
        pass


def _one_flat_out(client: Client, payload: Any, series: str, kw: dict[str, Any], rec: _Recorder, start: float) -> None:
    """Send one slice closed loop (intended = sent = now), recorded by ``rec``, and wait for its reply."""
    t = time.perf_counter()
    future = _submit(client, payload, series, kw, rec)
    future.add_done_callback(rec.callback(t, t, start))
    _settled(future)


def _in_process_step(pipe: Pipeline, payload: Any, kw: dict[str, Any], outside_model: list[float]) -> Any:
    """One in-process baseline run; its time outside the model goes to ``outside_model``; returns its timings."""
    overlay = "overlay" in kw["outputs"]
    t = (
        pipe.run_inputs(payload.sources(), overlay=overlay)
        if isinstance(payload, _Paired)
        else pipe.run(payload, overlay=overlay)
    ).timings
    outside_model.append(t.total_ms - t.infer_ms)
    return t


#: stream and in-process baseline alternate in blocks this long: switching every few slices leaves the
#: in-process engine's threads and caches in the way of the client's I/O and inflates the stream figures
STREAM_BASELINE_BLOCK = 250


def _closed_loop_with_baseline(
    client: Client,
    payloads: Sequence[Any],
    kw: dict[str, Any],
    rec: _Recorder,
    run: RunLength,
    start: float,
    pipe: Pipeline,
    baseline: tuple[list[float], list[float]],
    progress: Progress | None,
) -> int:
    """One console, flat out, alternating long blocks with the in-process pipeline on the same slices.
    ``baseline``: where the in-process totals and their time outside the model go."""

    sent, _, samples = drive(
        run,
        lambda i: _one_flat_out(client, payloads[i % len(payloads)], "console-0", kw, rec, start),
        lambda k: _in_process_step(pipe, payloads[k % len(payloads)], kw, baseline[1]),
        progress,
        block=STREAM_BASELINE_BLOCK,
    )
    baseline[0].extend(samples)
    return sent


def _closed_loop_variants(
    clients: dict[str, Client],
    payloads: Sequence[Any],
    kw: dict[str, Any],
    recs: dict[str, _Recorder],
    run: RunLength,
    start: float,
    pipe: Pipeline | None,
    baseline: tuple[list[float], list[float]],
    progress: Progress | None,
) -> int:
    """Every variant flat out from its own connection, in blocks on the same slices, then the in-process
    pipeline on them: each sees the same noise. ``count`` is per variant; returns requests sent in all."""
    block = STREAM_BASELINE_BLOCK
    i = sent = 0
    while not run.done(i, time.perf_counter() - start):
        n = block if run.duration_s is not None else min(block, run.count - i)
        for name, client in clients.items():
            for k in range(i, i + n):
                _one_flat_out(client, payloads[k % len(payloads)], f"console-{name}", kw, recs[name], start)
                sent += 1
        if pipe is not None:
            for k in range(i, i + n):
                t = time.perf_counter()
                _in_process_step(pipe, payloads[k % len(payloads)], kw, baseline[1])
                baseline[0].append((time.perf_counter() - t) * 1e3)
        i += n
        if progress:
            progress(i, run.expected(time.perf_counter() - start, i))
    return sent


def _closed_loop_side_by_side(
    client: Client,
    versus_client: Client,
    payloads: Sequence[Any],
    kw: dict[str, Any],
    rec: _Recorder,
    versus_rec: _Recorder,
    run: RunLength,
    start: float,
    progress: Progress | None,
) -> int:
    """One console, flat out, alternating long blocks between the measured runtime and the versus runtime."""

    sent, _, _ = drive(
        run,
        lambda i: _one_flat_out(client, payloads[i % len(payloads)], "console-0", kw, rec, start),
        lambda k: _one_flat_out(versus_client, payloads[k % len(payloads)], "console-0", kw, versus_rec, start),
        progress,
        block=STREAM_BASELINE_BLOCK,
    )
    _wait_all(versus_rec, sent, timeout=60)
    return sent


#: slices per block when a paced stream is measured against flat out (5 s at 10 slices/s)
VS_FLAT_BLOCK = 50


def _paced_vs_flat_out(
    client: Client,
    payloads: Sequence[Any],
    kw: dict[str, Any],
    paced: _Recorder,
    flat: _Recorder,
    settings: StreamConfig,
    run: StoppableRun,
    start: float,
    progress: Progress | None,
) -> int:
    """One console, one series: a block at ``settings.rate``, then a block flat out, and again. Returns
    the paced slices sent (the flat-out ones are the baseline, each waited for)."""
    assert settings.rate is not None  # StreamConfig requires a rate with vs_flat_out
    period = 1.0 / settings.rate
    n_paced = n_flat = 0

    def send(recorder: _Recorder, intended: float) -> Future[RemoteResult]:
        actual = time.perf_counter()
        future = _submit(client, payloads[(n_paced + n_flat) % len(payloads)], "console-0", kw, recorder)
        future.add_done_callback(recorder.callback(intended, actual, start))
        return future

    while not run.done(n_paced, time.perf_counter() - start):
        t0 = time.perf_counter() + period  # one idle period first: flat out leaves the runtime hot
        futures = []
        for j in range(VS_FLAT_BLOCK):
            if run.done(n_paced, time.perf_counter() - start):
                break
            intended = t0 + j * period
            delay = intended - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(send(paced, intended))
            n_paced += 1
        for future in futures:
            _settled(future)
        for _ in range(VS_FLAT_BLOCK):
            if run.stopped():
                break
            future = send(flat, time.perf_counter())
            n_flat += 1
            _settled(future)
        if progress:
            progress(n_paced, run.expected(time.perf_counter() - start, n_paced))
    _wait_all(flat, n_flat, timeout=10)
    return n_paced


def _drive_consoles(
    clients: Sequence[Client],
    payloads: Sequence[Any],
    kw: dict[str, Any],
    rec: _Recorder,
    settings: StreamConfig,
    run: StoppableRun,
    start: float,
    total: int | None,
    progress: Progress | None,
) -> int:
    per_console = None if total is None else -(-total // len(clients))
    sent = [0] * len(clients)

    def console(k: int) -> None:
        client = clients[k]
        n = 0
        while not run.stopped():
            elapsed = time.perf_counter() - start
            if (per_console is not None and n >= per_console) or (
                run.duration_s is not None and elapsed >= run.duration_s
            ):
                return
            if settings.rate is not None:
                intended = start + n / settings.rate + k / (settings.rate * len(clients))  # stagger consoles
                delay = intended - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            else:
                intended = time.perf_counter()
            actual = time.perf_counter()
            future = _submit(client, payloads[n % len(payloads)], f"console-{k}", kw, rec)
            future.add_done_callback(rec.callback(intended, actual, start))
            n += 1
            sent[k] = n
            if settings.rate is None:
                _settled(future)

    threads = [threading.Thread(target=console, args=(k,), daemon=True) for k in range(len(clients))]
    for t in threads:
        t.start()
    expected = total or 0
    while any(t.is_alive() for t in threads):  # a stopped run ends every console at its next request
        time.sleep(0.05)
        if progress:
            done = sum(sent)
            progress(done, expected if total else run.expected(time.perf_counter() - start, done))
    return sum(sent)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "StreamSettings": ("scanedge.bench.stream", "StreamConfig"),
    },
)
