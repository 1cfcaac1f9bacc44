"""The streaming runtime: models, configuration and lifecycle around the I/O loop and the workers.

A :class:`Server` loads its models, opens one pipeline per model for each worker (so a model that cannot
load fails the start-up, not a worker), binds its sockets, and then runs the :class:`IoLoop` (the only
thread that touches sockets) in front of a :class:`WorkerPool`. Threads and sockets:

- the **I/O thread** (:mod:`scanedge.runtime.serving.io_loop`) owns the ROUTER (consoles), the PUB (viewers)
  and the ROUTER's monitor; it validates, schedules, answers PING/STATS, sweeps deadlines, supervises
  workers and sends every reply;
- **workers** (:mod:`scanedge.runtime.serving.workers`) each own one pipeline per model, take jobs from the
  :class:`LatestSliceScheduler` and hand outcomes back through a deque plus a wake-up pipe.

Pixel frames are never copied on the way in (numpy views over the received ZeroMQ frames) or out (numpy
arrays sent with ``copy=False``). Every request gets exactly one reply; no message takes the runtime down.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from scanedge.engines import Engine, EngineConfig
from scanedge.errors import ConfigError, RuntimeStateError
from scanedge.imaging.heads import head_labels
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import DEFAULT_LIMITS, SliceLimits
from scanedge.log_budget import LogBudget
from scanedge.manifest import Manifest, load_manifest
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig, default_model_path
from scanedge.runtime.serving.io_loop import IoLoop, LoopConfig
from scanedge.runtime.serving.keep_warm import KeepWarmConfig
from scanedge.runtime.serving.multi_input import MultiInputServing
from scanedge.runtime.serving.scheduler import Job, LatestSliceScheduler
from scanedge.runtime.serving.series_completion import SeriesCompletions
from scanedge.runtime.serving.series_store import SeriesStore, SeriesStoreConfig
from scanedge.runtime.serving.shm import SHM_MODES, RegionTable, ShmMode
from scanedge.runtime.serving.stats import RuntimeStats
from scanedge.runtime.serving.workers import Outcome, WorkerPool, run_job
from scanedge.runtime.wire.endpoints import parse_endpoint
from scanedge.runtime.wire.protocol import (
    PONG_HEAD_CLASS_CHARS,
    EngineStatus,
    MaskHeadInfo,
    ModelInfo,
    ModelInput,
    SeriesModelInfo,
)
from scanedge.runtime.wire.security import CurveServerKeys
from scanedge.safe_text import printable

if TYPE_CHECKING:  # the follow-up needs scipy and SimpleITK: imported only when a prior provider is given
    from scanedge.runtime.core.followup import LiveConfig, PriorProvider, SeriesFollowups

__all__ = ["Server", "ServerConfig"]

log = logging.getLogger("scanedge.runtime")

PipelineFactory = Callable[["ModelSpec", Manifest, PipelineConfig], Pipeline]


@dataclass(frozen=True)
class ServerConfig:
    """How a runtime listens, schedules and protects itself. Every limit is reported in PONG ``limits``.

    Attributes:
        bind: ROUTER endpoint for consoles: ``tcp://HOST:PORT`` (``*`` port: any free one), ``ipc://PATH``.
            Loopback by default; anything else needs ``curve`` or ``insecure``.
        publish: optional PUB endpoint on which every RESULT is also published by series, for viewers.
        workers: inference workers, each with its own engine per model.
        engine: how each worker's engine runs (backend, threads per worker, ...); ONNX Runtime's
            spinning is off because it measured slower beside the I/O thread (see EngineConfig.spinning).
        max_message_bytes: larger requests are answered TOO_LARGE (ZeroMQ drops peers sending twice this).
        max_inflight_bytes: payload bytes accepted and not yet answered before new SEGMENTs get BUSY.
        limits: per-slice pixel and size limits (IMAGE_TOO_LARGE past them).
        overlay: the default overlay drawing; requests may override parts of it.
        hwm: ZeroMQ high-water marks (messages queued per peer).
        curve: CurveZMQ server keys and client allow-list; required for a non-loopback bind.
        insecure: allow a non-loopback bind without CurveZMQ (logged as a warning every 10 minutes).
        job_timeout_s: a worker still in one inference after this long is declared wedged, its request is
            answered ENGINE_TIMEOUT and a replacement worker starts.
        shutdown_grace_s: after a stop request, how long requests in flight may take before they are
            answered SHUTTING_DOWN and the runtime exits anyway.
        stats_log_interval_s: seconds between the stats log lines.
        sweep_interval_s: how often deadlines are swept and workers supervised.
        linger_ms: how long unsent replies are kept when the runtime closes.
        series: how much per-series lesion-load state is kept (idle time, series and slice caps).
        keep_warm: keep-warm passes between slices at a scanner's pace (:mod:`scanedge.runtime.serving.keep_warm`).
        shared_memory: which consoles may register shared-memory regions (docs/protocol.md section 12):
            ``ipc`` (default: consoles on ipc://, where the kernel reports the console's user, whose
            objects alone it may name; ``local`` is its earlier name) or ``off``. Never tcp: a loopback
            console could be any user of the host.
        shm_max_regions: shared-memory regions one connection may register.
        also_bind: further endpoints the same ROUTER listens on (e.g. an ``ipc://`` path beside the tcp
            port, for consoles on this host), under the same rules as ``bind``.
    """

    bind: str = "tcp://127.0.0.1:5555"
    publish: str | None = None
    workers: int = 1
    engine: EngineConfig = EngineConfig(spinning=False)
    max_message_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    limits: SliceLimits = DEFAULT_LIMITS
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    hwm: int = 1000
    curve: CurveServerKeys | None = None
    insecure: bool = False
    job_timeout_s: float = 60.0
    shutdown_grace_s: float = 10.0
    stats_log_interval_s: float = 60.0
    sweep_interval_s: float = 0.05
    linger_ms: int = 2000
    series: SeriesStoreConfig = field(default_factory=SeriesStoreConfig)
    keep_warm: KeepWarmConfig = field(default_factory=KeepWarmConfig)
    shared_memory: ShmMode = "ipc"
    shm_max_regions: int = 16
    also_bind: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.shared_memory not in SHM_MODES:
            raise ConfigError(f"shared_memory must be one of {', '.join(SHM_MODES)}, got {self.shared_memory!r}")
        if self.shm_max_regions < 1:
            raise ConfigError(f"shm_max_regions must be >= 1, got {self.shm_max_regions}")
        if self.max_inflight_bytes < 1 or self.max_message_bytes < 1:
            raise ConfigError("byte limits must be positive")
        for name in ("job_timeout_s", "shutdown_grace_s", "stats_log_interval_s", "sweep_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if isinstance(self.also_bind, str):
            raise TypeError("ServerConfig.also_bind is a tuple of endpoints, not one string")
        for endpoint in filter(None, (self.bind, self.publish, *self.also_bind)):
            if not parse_endpoint(endpoint).is_loopback and self.curve is None and not self.insecure:
                raise ConfigError(
                    f"refusing to expose {endpoint} beyond this machine without encryption: configure CurveZMQ "
                    "(--curve-secret and --curve-clients; keys from `scanedge keys generate`), or pass --insecure "
                    "if the network is otherwise protected"
                )

    @property
    def security(self) -> str:
        """How consoles are protected, in words, for the start-up log line."""
        if self.curve is not None:
            return "CurveZMQ"
        local = all(parse_endpoint(e).is_loopback for e in (self.bind, *self.also_bind))
        return "loopback" if local else "INSECURE, unencrypted"


def _model_info(m: Manifest, engine: dict[str, Any] | None = None) -> ModelInfo:
    engine = engine or {}
    auto = engine.get("threads_auto")
    return ModelInfo(
        name=m.name,
        version=m.version,
        classes=tuple(c.name for c in m.classes),
        input=ModelInput(
            channels=m.input.channels,
            height=m.size.height if m.size.mode == "fixed" else None,
            width=m.size.width if m.size.mode == "fixed" else None,
        ),
        precision=m.precision,
        onnx_sha256=m.onnx_sha256,
        output_kind=m.output.kind if m.output is not None else "none",  # "none": a classifier, no mask output
        activation=m.output.activation if m.output is not None else "",
        threads=engine.get("threads"),
        threads_probe_ms=auto["probe_ms"] if auto and auto.get("probe_ms") else None,
        roles=m.roles,
        mask_heads=_mask_head_infos(m),
        series_model=_series_model_info(m),
    )


def _series_model_info(m: Manifest) -> SeriesModelInfo | None:
    """PONG's view of a score head's 3-D series model: the head (one printable line) and the model's input."""
    head = m.series_model_head
    if head is None or head.series_model is None:
        return None
    spec = head.series_model
    return SeriesModelInfo(printable(head.name, 64), (spec.depth, spec.height, spec.width))


def _mask_head_infos(m: Manifest) -> tuple[MaskHeadInfo, ...]:
    """PONG's view of the further mask heads: each head's label and class names (one printable line of at
    most 64 characters each), at most :data:`PONG_HEAD_CLASS_CHARS` characters of names over all heads."""
    heads = m.mask_heads
    budget = PONG_HEAD_CLASS_CHARS
    out = []
    for head, label in zip(heads, head_labels([h.name for h in heads])):
        names = []
        for c in head.classes:
            name = printable(c.name, 64)
            if len(name) > budget:
                break
            budget -= len(name)
            names.append(name)
        out.append(MaskHeadInfo(label, tuple(names), head.activation, len(head.classes) - len(names)))
    return tuple(out)


def _bind(socket: zmq.Socket, endpoint: str) -> str:
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot listen on {endpoint}: {exc.strerror} (is another runtime running there?)") from exc
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


class _WakePipe:
    """How workers hand outcomes to the I/O thread: a deque, and a non-blocking pipe whose read end the I/O
    loop polls (a byte written wakes it; :meth:`Server.request_stop` writes one too)."""

    def __init__(self) -> None:
        self.finished: deque[tuple[Job, Outcome]] = deque()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def emit(self, job: Job, outcome: Outcome) -> None:
        """Called by workers; never raises."""
        self.finished.append((job, outcome))
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass  # pipe full: a wake-up is already pending (or the runtime is gone)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


@dataclass(eq=False)
class _Serving:
    """What one :meth:`Server.serve` opens, recorded as it is opened, so that a failed start-up closes
    exactly what it had opened and a finished run closes all of it."""

    ctx: zmq.Context
    wake: _WakePipe
    pipelines: list[dict[str, Pipeline]] = field(default_factory=list)  # per worker, per model
    auth: Any = None  # the CurveZMQ authenticator, when configured
    router: zmq.Socket | None = None
    pub: zmq.Socket | None = None
    pool: WorkerPool | None = None
    loop: IoLoop | None = None
    completions: SeriesCompletions | None = None  # series model runs at a series' last slice
    multi: MultiInputServing | None = None  # pairing for models with several inputs

    def backend(self, model: str) -> str:
        """The backend of ``model``'s engine (as the first worker opened it)."""
        return self.pipelines[0][model].engine.backend


class Server:
    """Serve one or more models. ``start()`` runs in a background thread; ``serve()`` in the caller's."""

    def __init__(
        self,
        models: Sequence[str | Path | ModelSpec] = (),
        config: ServerConfig | None = None,
        *,
        pipeline_factory: PipelineFactory | None = None,
        prior_provider: PriorProvider | None = None,
        followup: LiveConfig | None = None,
    ) -> None:
        """Read every model's manifest (a bad model fails here, before anything listens).

        Args:
            models: model files or :class:`ModelSpec`; the first is the default. None: the shipped demo.
            config: sockets, limits and workers (:class:`ServerConfig`).
            pipeline_factory: builds a worker's pipeline for a model (default: open it from its file);
                embedders use it to supply their own engines, tests to inject faults.
            prior_provider: finds the prior of a series (given by the command line or the embedder): with it,
                every slice of a series is compared live with its prior and each RESULT carries ``change``
                (and the ``change`` frame when asked for); None: no follow-up.
            followup: when and how series are compared (:class:`~scanedge.runtime.core.followup.LiveConfig`).
        """
        self.config = config or ServerConfig()
        self._pipeline_factory = pipeline_factory or self._open_from_file
        specs = [m if isinstance(m, ModelSpec) else ModelSpec(Path(m)) for m in models] or [
            ModelSpec(default_model_path())
        ]
        self._models: dict[str, tuple[ModelSpec, Manifest]] = {}
        for spec in specs:
            manifest, _ = load_manifest(spec.path, spec.manifest)
            if manifest.name in self._models:
                raise ConfigError(f"two models are named {manifest.name!r}; each served model needs its own name")
            self._models[manifest.name] = (spec, manifest)
        self.default_model = next(iter(self._models))
        self.runtime_id = secrets.token_hex(8)
        self.stats = RuntimeStats()
        self.series_store = SeriesStore(self.config.series)
        self.followups: SeriesFollowups | None = None
        if prior_provider is not None:
            from scanedge.runtime.core.followup import SeriesFollowups

            self.followups = SeriesFollowups(
                prior_provider,
                followup,
                max_series=min(16, self.config.series.max_series),  # each may hold up to LiveConfig.max_voxels
                idle_s=self.config.series.idle_s,
            )
        self._scheduler = LatestSliceScheduler()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None
        self._endpoints: tuple[str, ...] = ()
        self._publish_endpoint: str | None = None
        self._pool: WorkerPool | None = None
        self._loop: IoLoop | None = None
        self.wedged_workers: list[str] = []
        self._wake: int | None = None
        self._engines: list[tuple[str, Engine]] = []  # (model, engine) of every worker, for PONG's health
        self._engines_lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The ROUTER's actual endpoint (resolves ``tcp://127.0.0.1:*`` to the port chosen)."""
        if self._endpoint is None:
            raise RuntimeStateError("the server is not running")
        return self._endpoint

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint the ROUTER listens on: ``bind``'s, then ``also_bind``'s (resolved like :attr:`endpoint`)."""
        if self._endpoint is None:
            raise RuntimeStateError("the server is not running")
        return self._endpoints

    @property
    def publish_endpoint(self) -> str | None:
        """The PUB's actual endpoint, or None without ``publish``."""
        return self._publish_endpoint

    def start(self, timeout: float = 120.0) -> Server:
        """Load the models, bind, and serve in a background thread; return once ready to answer.

        Raises the start-up failure itself (e.g. :class:`ConfigError` for an address in use, a
        :class:`ModelError`), or :class:`RuntimeStateError` if it is not ready within ``timeout`` s.
        """
        self._thread = threading.Thread(target=self.serve, name="scanedge-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.request_stop()
            raise RuntimeStateError(f"the runtime did not become ready within {timeout:g} s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def request_stop(self) -> None:
        """Stop accepting; answer everything in flight; then ``serve()`` returns. Signal-handler safe."""
        self._stop.set()
        wake = self._wake
        if wake is not None:
            try:
                os.write(wake, b"\0")  # wake the I/O loop now rather than at its next poll timeout
            except OSError:
                pass

    def stop(self, timeout: float | None = None) -> None:
        """Request a stop and wait for it: requests in flight are answered (within the grace period).

        Raises :class:`RuntimeStateError` when the I/O thread has not finished within ``timeout`` (default:
        the grace period plus 10 s) or a worker is still wedged in inference (named in the message).
        """
        self.request_stop()
        if self.followups is not None:
            self.followups.close()
        wait = self.config.shutdown_grace_s + 10.0 if timeout is None else timeout
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                raise RuntimeStateError(f"the runtime's I/O thread did not finish within {wait:g} s")
        if self.wedged_workers:
            raise RuntimeStateError(
                f"stopped, but {len(self.wedged_workers)} worker(s) are still stuck in inference: "
                + ", ".join(self.wedged_workers)
            )

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve(self) -> None:
        """Run the runtime in this thread until :meth:`request_stop` (or a signal handler calling it)."""
        serving = _Serving(zmq.Context(), _WakePipe())
        self._wake = serving.wake.write_fd
        try:
            self._start_up(serving)
        except BaseException as exc:  # report to start(), close everything opened so far
            self._abandon_start(serving, exc)
            if threading.current_thread() is not self._thread:
                raise
            return
        assert serving.pool is not None and serving.loop is not None
        self._pool, self._loop = serving.pool, serving.loop
        serving.pool.start(serving.pipelines)
        self._log_serving(serving)
        self._ready.set()
        try:
            serving.loop.run()
        finally:
            self._shut_down(serving)

    def _start_up(self, serving: _Serving) -> None:
        """Open every worker's pipelines, the sockets, the worker pool and the I/O loop, in that order, each
        recorded in ``serving`` as soon as it is open."""
        cfg = self.config
        for _ in range(cfg.workers):
            serving.pipelines.append(self._open_pipelines())
        self._open_sockets(serving)
        failure_log = LogBudget("failed slice(s)")
        serving.multi = multi = self._multi_input(serving, failure_log)
        serving.completions = completions = SeriesCompletions(serving.wake.emit)
        serving.pool = WorkerPool(
            cfg.workers,
            self._scheduler,
            self._open_pipelines,
            lambda job, pipe: (
                multi.process(job, pipe)
                if multi is not None and multi.serves(job.model)
                else run_job(
                    job,
                    pipe,
                    cfg.limits,
                    cfg.overlay,
                    self.runtime_id,
                    failure_log,
                    self.series_store,
                    self.followups,
                    completions,
                )
            ),
            serving.wake.emit,
            job_timeout_s=cfg.job_timeout_s,
            keep_warm=cfg.keep_warm,
        )
        serving.loop = self._io_loop(serving, serving.pool)

    def _multi_input(self, serving: _Serving, failure_log: LogBudget) -> MultiInputServing | None:
        """The pairing state of the models with several inputs; None when every model has one."""
        manifests = {name: m for name, (_, m) in self._models.items() if m.inputs is not None}
        if not manifests:
            return None
        cfg = self.config
        return MultiInputServing(
            manifests,
            serving.wake.emit,
            limits=cfg.limits,
            overlay=cfg.overlay,
            runtime=self.runtime_id,
            failure_log=failure_log,
            series_store=self.series_store,
        )

    def _open_sockets(self, serving: _Serving) -> None:
        """The CurveZMQ authenticator (when configured), the ROUTER on every endpoint, and the PUB."""
        cfg = self.config
        if cfg.curve is not None:
            serving.auth = cfg.curve.start_authenticator(serving.ctx)
        router = serving.router = serving.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.RCVHWM, cfg.hwm)
        router.setsockopt(zmq.SNDHWM, cfg.hwm)
        router.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes)
        router.setsockopt(zmq.LINGER, cfg.linger_ms)
        if cfg.curve is not None:
            cfg.curve.apply(router)
        self._endpoint = _bind(router, cfg.bind)
        self._endpoints = (self._endpoint, *(_bind(router, e) for e in cfg.also_bind))
        if cfg.publish:
            pub = serving.pub = serving.ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, cfg.hwm)
            pub.setsockopt(zmq.LINGER, 0)
            if cfg.curve is not None:
                cfg.curve.apply(pub)
            self._publish_endpoint = _bind(pub, cfg.publish)

    def _io_loop(self, serving: _Serving, pool: WorkerPool) -> IoLoop:
        """The I/O loop over the bound sockets, answering PONG from the first worker's engines."""
        cfg = self.config
        assert serving.router is not None
        first = serving.pipelines[0]
        return IoLoop(
            serving.router,
            serving.pub,
            LoopConfig(
                max_message_bytes=cfg.max_message_bytes,
                max_inflight_bytes=cfg.max_inflight_bytes,
                limits=cfg.limits,
                sweep_interval_s=cfg.sweep_interval_s,
                stats_log_interval_s=cfg.stats_log_interval_s,
                shutdown_grace_s=cfg.shutdown_grace_s,
                insecure_warning=None
                if cfg.security != "INSECURE, unencrypted"
                else f"serving UNENCRYPTED on {self._endpoint} (--insecure): patient images cross the network in clear",
            ),
            models={name: _model_info(m, first[name].engine.describe()) for name, (_, m) in self._models.items()},
            default_model=self.default_model,
            engine=serving.backend(self.default_model),
            runtime_id=self.runtime_id,
            scheduler=self._scheduler,
            pool=pool,
            stats=self.stats,
            finished=serving.wake.finished,
            wake_fd=serving.wake.read_fd,
            stop_requested=self._stop.is_set,
            engine_health=self.engine_health,
            series_store=self.series_store,
            regions=RegionTable(cfg.shared_memory, cfg.shm_max_regions),
        )

    def _abandon_start(self, serving: _Serving, exc: BaseException) -> None:
        """Start-up failed: keep the error for start(), close whatever was opened, and say ready (to fail)."""
        self._startup_error = exc
        self._endpoint = self._publish_endpoint = None
        for pipes in serving.pipelines:
            for pipe in pipes.values():
                pipe.close()
        for sock in (serving.router, serving.pub):
            if sock is not None:
                sock.close(0)
        if serving.auth is not None:
            serving.auth.stop()
        serving.ctx.term()
        self._wake = None
        serving.wake.close()
        self._ready.set()

    def _log_serving(self, serving: _Serving) -> None:
        cfg = self.config
        log.info(
            "serving %s on %s (%s, %d worker(s), engine %s, runtime %s)%s",
            ", ".join(f"{m.name}@{m.version}" for _, m in self._models.values()),
            ", ".join(self._endpoints),
            cfg.security,
            cfg.workers,
            serving.backend(self.default_model),
            self.runtime_id,
            f", publishing on {self._publish_endpoint}" if serving.pub is not None else "",
        )

    def _shut_down(self, serving: _Serving) -> None:
        """After the loop: stop the workers (within the grace period), then close the sockets and the context.
        A worker still stuck in inference is named in :attr:`wedged_workers` and keeps the wake-up pipe open."""
        cfg = self.config
        assert serving.pool is not None and serving.loop is not None and serving.router is not None
        self._scheduler.close()
        stuck = serving.pool.join(max(1.0, cfg.shutdown_grace_s))
        if serving.multi is not None:
            serving.multi.close()
        if serving.completions is not None:
            serving.completions.close()  # the runs still pending are answered first
        self.wedged_workers = [w.thread.name for w in stuck]
        if stuck:
            log.error("%d worker(s) still stuck in inference at exit: %s", len(stuck), ", ".join(self.wedged_workers))
        log.info("stopped; %s", self.stats.summary_line())
        serving.loop.close()
        serving.router.close(cfg.linger_ms)
        if serving.pub is not None:
            serving.pub.close(0)
        if serving.auth is not None:
            serving.auth.stop()
        serving.ctx.term()
        if not stuck:  # a stuck worker may still write to the pipe: never let its fd be reused
            self._wake = None
            serving.wake.close()

    # --- models ------------------------------------------------------------------------------------------

    def _open_from_file(self, spec: ModelSpec, manifest: Manifest, config: PipelineConfig) -> Pipeline:
        return Pipeline.open(spec.path, manifest=manifest, options=self.config.engine, config=config)

    def _open_pipelines(self) -> dict[str, Pipeline]:
        pconf = PipelineConfig(limits=self.config.limits, overlay=self.config.overlay)
        opened: dict[str, Pipeline] = {}
        try:
            for name, (spec, manifest) in self._models.items():
                opened[name] = self._pipeline_factory(spec, manifest, pconf)
        except BaseException:
            for pipe in opened.values():
                pipe.close()
            raise
        with self._engines_lock:  # forget the engines of workers that are gone; add this worker's
            self._engines = [(n, e) for n, e in self._engines if e.is_active]
            self._engines.extend((name, pipe.engine) for name, pipe in opened.items())
        return opened

    def engine_health(self) -> dict[str, EngineStatus]:
        """Per served model, the least healthy of the workers' engines (PONG ``engine_health``). Never blocks
        on an engine: a remote engine's health is what its last call and its background probe found."""
        with self._engines_lock:
            engines = list(self._engines)
        rank = {"ok": 0, "inactive": 1}
        out: dict[str, EngineStatus] = {}
        for model in self._models:
            reports = [e.health() for name, e in engines if name == model and e.is_active]
            if not reports:
                out[model] = EngineStatus("inactive", message="no worker has this model open")
                continue
            worst = max(reports, key=lambda h: rank.get(h.status, 2))
            out[model] = EngineStatus(worst.status, worst.code, worst.message, worst.since, worst.target)
        return out
