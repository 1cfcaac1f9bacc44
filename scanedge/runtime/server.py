"""The streaming runtime: a ZeroMQ ROUTER front end, latest-slice scheduling, inference workers.

Threads and sockets (pyzmq sockets are not thread-safe, so each has exactly one owner):

- the **I/O thread** owns the ROUTER (consoles), the PUB (viewers) and a PULL (results from workers). It
  parses and validates headers, answers PING/STATS at once, applies back-pressure, schedules SEGMENTs,
  sweeps deadlines, and forwards every reply. It also does all the bookkeeping (in-flight bytes,
  counters, histograms), so none of that needs a lock.
- **workers** each own one :class:`Pipeline` per model and a PUSH socket; they take jobs from the
  :class:`LatestSliceScheduler`, run the pipeline and push the finished reply frames to the I/O thread.

Pixel frames are never copied on the way in (numpy views over the received ZeroMQ frames) or out
(numpy arrays sent with ``copy=False``). Every request gets exactly one reply; a bad message gets an
ERROR with a code, a log line and a counter, and never takes the runtime down.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from scanedge import __version__
from scanedge.engines import EngineOptions
from scanedge.errors import (
    BadFramesError,
    BusyError,
    ScanedgeError,
    ShuttingDownError,
    UnknownMessageTypeError,
    UnknownModelError,
)
from scanedge.imaging.encode import encode_image
from scanedge.imaging.overlay import OverlayOptions
from scanedge.imaging.slices import DEFAULT_LIMITS, SliceLimits
from scanedge.manifest import Manifest, load_manifest
from scanedge.runtime.pipeline import Pipeline, PipelineConfig, default_model_path
from scanedge.runtime.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    SegmentRequest,
    check_message_size,
    check_raw_payload,
    decode_header,
    encode_header,
    error_header,
    parse_segment,
    safe_id,
    slice_from_request,
)
from scanedge.runtime.scheduler import Job, LatestSliceScheduler
from scanedge.runtime.security import CurveServerKeys, is_loopback_endpoint
from scanedge.runtime.stats import RuntimeStats

__all__ = ["ModelSpec", "Server", "ServerConfig"]

log = logging.getLogger("scanedge.runtime")
_job_ids = itertools.count(1)


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve; its name is the manifest's ``name``."""

    path: Path
    manifest: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    publish: str | None = None
    workers: int = 1
    #: how each worker's engine runs (backend, threads per worker, ...); spinning is off because it was
    #: measured faster in the server (see EngineOptions.spinning)
    engine: EngineOptions = EngineOptions(spinning=False)
    max_message_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    limits: SliceLimits = DEFAULT_LIMITS
    overlay: OverlayOptions = field(default_factory=OverlayOptions)
    hwm: int = 1000
    curve: CurveServerKeys | None = None
    insecure: bool = False
    stats_log_interval_s: float = 60.0
    sweep_interval_s: float = 0.05
    linger_ms: int = 2000

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.max_inflight_bytes < 1 or self.max_message_bytes < 1:
            raise ValueError("byte limits must be positive")
        for endpoint in filter(None, (self.bind, self.publish)):
            if not is_loopback_endpoint(endpoint) and self.curve is None and not self.insecure:
                raise ValueError(
                    f"refusing to expose {endpoint} beyond this machine without encryption: configure CurveZMQ "
                    "(--curve-secret and --curve-clients; keys from `scanedge keys generate`), or pass --insecure "
                    "if the network is otherwise protected"
                )


@dataclass
class _Model:
    spec: ModelSpec
    manifest: Manifest

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "classes": [c.name for c in m.classes],
            "input": {"channels": m.input.channels, "height": m.size.height, "width": m.size.width},
            "precision": m.precision,
            "onnx_sha256": m.onnx_sha256,
        }


def _expired(job: Job, now: float) -> dict[str, Any]:
    """The EXPIRED reply, whether the I/O thread's sweep or a worker finds the deadline passed."""
    waited = (now - job.received_mono) * 1e3
    req = job.request
    return error_header(
        req.id,
        "EXPIRED",
        f"deadline of {req.deadline_ms} ms passed after {waited:.1f} ms in the queue",
        req,
        job.received_at,
    )


def _bind(socket: zmq.Socket, endpoint: str) -> None:
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ValueError(f"cannot listen on {endpoint}: {exc.strerror} (is another runtime running there?)") from exc


class Server:
    """Serve one or more models. ``start()`` runs in a background thread; ``serve()`` in the caller's."""

    def __init__(
        self,
        models: Sequence[str | Path | ModelSpec] = (),
        config: ServerConfig | None = None,
        *,
        pipeline_factory: Callable[[ModelSpec, Manifest, PipelineConfig], Pipeline] | None = None,
    ) -> None:
        """``pipeline_factory`` builds each worker's pipeline for a model (default: open it from its file);
        embedders use it to supply their own engines."""
        self.config = config or ServerConfig()
        self._pipeline_factory = pipeline_factory or self._open_from_file
        specs = [m if isinstance(m, ModelSpec) else ModelSpec(Path(m)) for m in models] or [
            ModelSpec(default_model_path())
        ]
        self._models: dict[str, _Model] = {}
        for spec in specs:
            manifest, _ = load_manifest(spec.path, spec.manifest)
            if manifest.name in self._models:
                raise ValueError(f"two models are named {manifest.name!r}; each served model needs its own name")
            self._models[manifest.name] = _Model(spec, manifest)
        self.default_model = next(iter(self._models))
        self.stats = RuntimeStats()
        self._scheduler = LatestSliceScheduler()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None
        self._publish_endpoint: str | None = None
        self._inflight: dict[int, Job] = {}
        self._inflight_bytes = 0
        self._results_endpoint = f"inproc://scanedge-results-{id(self)}"
        self._finished: deque[tuple[int, dict[str, Any], bytes, list[Any]]] = deque()
        self._engine_kind = "ort"

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The ROUTER's actual endpoint (resolves ``tcp://127.0.0.1:*`` to the port chosen)."""
        if self._endpoint is None:
            raise RuntimeError("the server is not running")
        return self._endpoint

    @property
    def publish_endpoint(self) -> str | None:
        return self._publish_endpoint

    def start(self, timeout: float = 120.0) -> Server:
        """Load the models, bind, and serve in a background thread; returns once ready."""
        self._thread = threading.Thread(target=self.serve, name="scanedge-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the runtime did not become ready in time")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def request_stop(self) -> None:
        """Stop accepting; answer everything in flight; then ``serve()`` returns. Signal-handler safe."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the I/O thread ------------------------------------------------------------------------------

    def serve(self) -> None:
        cfg = self.config
        ctx = zmq.Context()
        auth = None
        workers: list[threading.Thread] = []
        router = pub = pull = None
        try:
            pipelines = [self._open_pipelines() for _ in range(cfg.workers)]
            self._engine_kind = pipelines[0][self.default_model].engine.backend
            if cfg.curve is not None:
                auth = cfg.curve.start_authenticator(ctx)
            router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.RCVHWM, cfg.hwm)
            router.setsockopt(zmq.SNDHWM, cfg.hwm)
            router.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes)
            router.setsockopt(zmq.LINGER, cfg.linger_ms)
            if cfg.curve is not None:
                cfg.curve.apply(router)
            _bind(router, cfg.bind)
            self._endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            if cfg.publish:
                pub = ctx.socket(zmq.PUB)
                pub.setsockopt(zmq.SNDHWM, cfg.hwm)
                pub.setsockopt(zmq.LINGER, 0)
                if cfg.curve is not None:
                    cfg.curve.apply(pub)
                _bind(pub, cfg.publish)
                self._publish_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            pull = ctx.socket(zmq.PULL)
            pull.bind(self._results_endpoint)
            for i, pipes in enumerate(pipelines):
                t = threading.Thread(target=self._work, args=(ctx, pipes), name=f"scanedge-worker-{i}", daemon=True)
                t.start()
                workers.append(t)
        except BaseException as exc:  # report to start(), then clean up
            self._startup_error = exc
            self._ready.set()
            for s in (router, pub, pull):
                if s is not None:
                    s.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            if threading.current_thread() is not self._thread:
                raise
            return
        security = (
            "CurveZMQ" if cfg.curve else ("INSECURE, unencrypted" if not is_loopback_endpoint(cfg.bind) else "loopback")
        )
        log.info(
            "serving %s on %s (%s, %d worker(s), engine %s)%s",
            ", ".join(f"{m.manifest.name}@{m.manifest.version}" for m in self._models.values()),
            self._endpoint,
            security,
            cfg.workers,
            self._engine_kind,
            f", publishing on {self._publish_endpoint}" if pub is not None else "",
        )
        self._ready.set()
        try:
            self._loop(router, pub, pull)
        finally:
            self._scheduler.close()
            for t in workers:
                t.join(30)
            log.info("stopped; %s", self.stats.summary_line())
            router.close(cfg.linger_ms)
            if pub is not None:
                pub.close(0)
            pull.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()

    def _open_from_file(self, spec: ModelSpec, manifest: Manifest, config: PipelineConfig) -> Pipeline:
        return Pipeline.open(spec.path, manifest=manifest, options=self.config.engine, config=config)

    def _open_pipelines(self) -> dict[str, Pipeline]:
        pconf = PipelineConfig(limits=self.config.limits, overlay=self.config.overlay)
        return {name: self._pipeline_factory(m.spec, m.manifest, pconf) for name, m in self._models.items()}

    def _loop(self, router: zmq.Socket, pub: zmq.Socket | None, pull: zmq.Socket) -> None:
        cfg = self.config
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        interval_ms = max(1, int(cfg.sweep_interval_s * 1000))
        next_sweep = next_stats = time.monotonic()
        next_stats += cfg.stats_log_interval_s
        next_insecure = time.monotonic() + 600
        while True:
            stopping = self._stop.is_set()
            if stopping and not self._inflight:
                return
            events = dict(poller.poll(interval_ms))
            if pull in events:
                self._drain_results(pull, router, pub)
            if router in events:
                self._drain_requests(router, stopping)
            now = time.monotonic()
            if now >= next_sweep:
                for job in self._scheduler.expire(now):
                    self._reply(router, pub, job, _expired(job, now))
                next_sweep = now + cfg.sweep_interval_s
            if now >= next_stats:
                log.info("stats: %s", self.stats.summary_line())
                next_stats = now + cfg.stats_log_interval_s
            if cfg.insecure and not is_loopback_endpoint(cfg.bind) and now >= next_insecure:
                log.warning(
                    "serving UNENCRYPTED on %s (--insecure): patient images cross the network in clear", self._endpoint
                )
                next_insecure = now + 600

    def _drain_requests(self, router: zmq.Socket, stopping: bool) -> None:
        for _ in range(256):  # bounded, so results are forwarded between bursts
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(router, frames, stopping)

    def _handle(self, router: zmq.Socket, frames: list[zmq.Frame], stopping: bool) -> None:
        identity = frames[0].bytes
        self.stats.counters["received"] += 1
        if len(frames) < 2:
            self._send_error(router, identity, None, BadFramesError("empty message: a header frame is required"))
            return
        header_frame = frames[1]
        try:
            check_message_size(frames[1:], self.config.max_message_bytes)
            header = decode_header(header_frame.buffer)
            kind = header["type"]
            if kind == "SEGMENT":
                self._accept(router, identity, header, frames[2:], stopping)
            elif kind in ("PING", "STATS"):
                if len(frames) != 2:
                    raise BadFramesError(f"{kind} carries no payload frames")
                reply = (
                    self._pong(header)
                    if kind == "PING"
                    else {
                        "version": PROTOCOL_VERSION,
                        "type": "STATS_REPLY",
                        "id": header["id"],
                        **self.stats.to_dict(),
                    }
                )
                self._send(router, identity, [encode_header(reply)])
            else:
                raise UnknownMessageTypeError(f"{kind} is a reply type; a runtime accepts SEGMENT, PING and STATS")
        except ScanedgeError as exc:
            self._send_error(router, identity, safe_id(header_frame.bytes), exc)

    def _pong(self, header: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "type": "PONG",
            "id": header["id"],
            "server": __version__,
            "protocols": list(SUPPORTED_VERSIONS),
            "models": [m.describe() for m in self._models.values()],
            "default_model": self.default_model,
            "engine": self._engine_kind,
            "queue_depth": self._scheduler.depth(),
            "in_flight_bytes": self._inflight_bytes,
        }

    def _accept(
        self, router: zmq.Socket, identity: bytes, header: dict[str, Any], payload: list[zmq.Frame], stopping: bool
    ) -> None:
        req = parse_segment(header, len(payload))
        try:
            if stopping:
                raise ShuttingDownError("the runtime is shutting down and accepts no new slices")
            model = req.model or self.default_model
            if model not in self._models:
                raise UnknownModelError(f"model {model!r} is not served here; models: {sorted(self._models)}")
            nbytes = len(payload[0])
            if req.encoding == "raw":
                check_raw_payload(req, nbytes, self.config.limits)
            if self._inflight_bytes + nbytes > self.config.max_inflight_bytes:
                raise BusyError(
                    f"{self._inflight_bytes} bytes already in flight; accepting {nbytes} more would pass the cap "
                    f"of {self.config.max_inflight_bytes}; retry shortly"
                )
        except ScanedgeError as exc:
            self._send_error(router, identity, req.id, exc, req)
            return
        now = time.monotonic()
        job = Job(
            request=req,
            identity=identity,
            payload=payload[0],
            model=model,
            nbytes=nbytes,
            received_mono=now,
            deadline_mono=None if req.deadline_ms is None else now + req.deadline_ms / 1e3,
            seq=next(_job_ids),
        )
        self._inflight[job.seq] = job
        self._inflight_bytes += nbytes
        replaced = self._scheduler.submit(job)
        if replaced is not None:
            self._reply(
                router,
                None,
                replaced,
                error_header(
                    replaced.request.id,
                    "SUPERSEDED",
                    f"a newer slice of series {req.series} arrived before this one started",
                    replaced.request,
                    replaced.received_at,
                ),
            )

    # --- replies ---------------------------------------------------------------------------------------

    def _send(self, router: zmq.Socket, identity: bytes, frames: list[Any]) -> bool:
        try:
            router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.stats.counters["client_gone"] += 1
                log.warning("console %s disconnected before its reply could be sent", identity.hex()[:12])
            elif exc.errno == zmq.EAGAIN:
                self.stats.counters["reply_dropped"] += 1
                log.warning(
                    "console %s is not reading its replies (high-water mark); reply dropped", identity.hex()[:12]
                )
            else:
                raise
            return False

    def _send_error(
        self,
        router: zmq.Socket,
        identity: bytes,
        request_id: Any,
        exc: ScanedgeError,
        req: SegmentRequest | None = None,
    ) -> None:
        self.stats.record_error(exc.code)
        log.warning(
            "request %r%s rejected: %s %s",
            request_id,
            f" (series {req.series})" if req and req.series else "",
            exc.code,
            exc.message,
        )
        self._send(router, identity, [encode_header(error_header(request_id, exc, req=req, received_at=time.time()))])

    def _reply(
        self,
        router: zmq.Socket,
        pub: zmq.Socket | None,
        job: Job,
        header: dict[str, Any],
        payload: Sequence[Any] = (),
        encoded: bytes | None = None,
    ) -> None:
        """Send a job's reply (built here or by a worker), publish it, and release its in-flight bytes."""
        self._inflight.pop(job.seq, None)
        self._inflight_bytes -= job.nbytes
        if header["type"] == "RESULT":
            t = header["timings_ms"]
            self.stats.record_result(job.model, t["total"], t["queue"])
        else:
            self.stats.record_error(header["code"])
            log.debug("request %r (series %s) answered %s", job.request.id, job.request.series or "-", header["code"])
        head = encoded or encode_header(header)
        self._send(router, job.identity, [head, *payload])
        if pub is not None and header["type"] == "RESULT" and job.request.publish:
            try:
                pub.send_multipart([job.request.series.encode(), head, *payload], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.stats.counters["publish_dropped"] += 1

    def _drain_results(self, pull: zmq.Socket, router: zmq.Socket, pub: zmq.Socket | None) -> None:
        while True:  # wake-ups carry nothing; the finished replies wait in the deque
            try:
                pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self._finished:
            seq, header, encoded, payload = self._finished.popleft()
            job = self._inflight.get(seq)
            if job is None:  # cannot happen; never crash the loop over it
                log.error("worker returned an unknown job %d", seq)
                continue
            self._reply(router, pub, job, header, payload, encoded)

    # --- workers -----------------------------------------------------------------------------------------

    def _work(self, ctx: zmq.Context, pipelines: dict[str, Pipeline]) -> None:
        """Replies go to the I/O thread as Python objects through a deque (measured: handing ~1 MB of
        frames through an inproc socket costs ~0.1 ms more); the inproc PUSH only wakes it up."""
        wake = ctx.socket(zmq.PUSH)
        wake.setsockopt(zmq.LINGER, 1000)
        wake.connect(self._results_endpoint)
        try:
            while True:
                job = self._scheduler.take()
                if job is None:
                    return
                header, payload = self._process(job, pipelines[job.model])
                self._finished.append((job.seq, header, encode_header(header), payload))
                wake.send(b"")
        finally:
            for p in pipelines.values():
                p.close()
            wake.close()

    def _process(self, job: Job, pipe: Pipeline) -> tuple[dict[str, Any], list[Any]]:
        req = job.request
        start = time.monotonic()
        queue_ms = (start - job.received_mono) * 1e3
        if job.expired(start):
            return _expired(job, start), []
        try:
            t0 = time.perf_counter()
            slice_ = slice_from_request(req, job.payload.buffer, self.config.limits)
            decode_ms = (time.perf_counter() - t0) * 1e3
            want_overlay = "overlay" in req.outputs
            result = pipe.run(slice_, overlay=(req.overlay_options or True) if want_overlay else False)
            frames_meta, payload = [], []
            t1 = time.perf_counter()
            for name in req.outputs:
                if name == "mask":
                    arr = result.mask
                elif name == "probabilities":
                    arr = result.probabilities
                else:
                    arr = result.overlay
                    if req.overlay_encoding != "raw":
                        data = encode_image(arr, req.overlay_encoding)  # type: ignore[arg-type]
                        frames_meta.append({"name": name, "encoding": req.overlay_encoding, "bytes": len(data)})
                        payload.append(data)
                        continue
                frames_meta.append({"name": name, "encoding": "raw", "dtype": arr.dtype.name, "shape": list(arr.shape)})
                payload.append(arr)
            encode_ms = (time.perf_counter() - t1) * 1e3
        except ScanedgeError as exc:
            log.warning("request %r (series %s) failed: %s %s", req.id, req.series or "-", exc.code, exc.message)
            return error_header(req.id, exc, req=req, received_at=job.received_at), []
        except Exception:
            log.exception("internal error on request %r; the runtime carries on", req.id)
            return error_header(
                req.id, "INTERNAL", "internal error in the runtime (logged there)", req, job.received_at
            ), []
        t = result.timings
        header = {
            "version": PROTOCOL_VERSION,
            "type": "RESULT",
            "id": req.id,
            "status": "ok",
            "code": None,
            "message": "",
            "series": req.series or slice_.identity.series_uid,
            "instance": req.instance or slice_.identity.sop_instance_uid,
            "index": req.index if req.index is not None else slice_.identity.instance_number,
            "model": pipe.model_label,
            "engine": pipe.engine.backend,
            "timings_ms": {
                "queue": round(queue_ms, 4),
                "decode": round(decode_ms + t.decode_ms, 4),
                "preprocess": round(t.preprocess_ms, 4),
                "infer": round(t.infer_ms, 4),
                "postprocess": round(t.postprocess_ms, 4),
                "overlay": round(t.overlay_ms, 4),
                "encode": round(encode_ms, 4),
                "total": round((time.monotonic() - job.received_mono) * 1e3, 4),
            },
            "findings": [f.to_dict() for f in result.findings],
            "frames": frames_meta,
            "sent_at": req.sent_at,
            "received_at": job.received_at,
            "replied_at": time.time(),
        }
        return header, payload
