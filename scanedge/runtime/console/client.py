"""Console-side client: send slices, get futures; many requests in flight on one connection.

This module is the API a console programs against: :class:`Client` builds requests (raw pixels, a
:class:`Slice` with its geometry, or DICOM bytes; with shared memory, places the pixels in the region),
applies back-pressure (``hwm``) and hands each request to the connection's I/O thread
(:mod:`scanedge.runtime.console.client_io`, which owns the sockets, reconnects, resends and matches replies);
:class:`AsyncClient` is the asyncio front end over it. Any thread may call :meth:`Client.submit`. Messages
are built and read by :mod:`scanedge.runtime.wire.protocol`, the same module the runtime uses. A new request
option goes here; a new reliability rule goes in the I/O module.

With ``ClientConfig(shared_memory=True)`` and a runtime on the same host, pixels and the mask and raw
overlay travel through a shared-memory region the client creates (docs/protocol.md section 12,
:mod:`scanedge.runtime.console.shm_client`) instead of frames. Until the runtime has acknowledged the region, and
whenever it refuses it or no longer knows it (after a restart), requests go as frames, so nothing fails
for want of shared memory.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanedge.errors import BusyError, ClientClosedError, ConfigError, ScanedgeError, UnauthorizedError
from scanedge.imaging.followup import SeriesChange
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest import CODE_STRING
from scanedge.runtime.console.client_io import ClientIo
from scanedge.runtime.console.shm_client import Block, ConsoleRegion
from scanedge.runtime.wire.endpoints import parse_endpoint
from scanedge.runtime.wire.payloads import (
    arrays_from_frames,
    geometry_from_slice,
    head_masks_from_arrays,
    wire_array,
)
from scanedge.runtime.wire.protocol import (
    Pong,
    Result,
    StatsReply,
    encode,
    ping_request,
    segment_request,
    stats_request,
)
from scanedge.runtime.wire.security import CurveClientKeys

__all__ = ["AsyncClient", "Client", "ClientConfig", "RemoteResult"]


@dataclass(frozen=True)
class ClientConfig:
    """How patient a console is with its runtime.

    Attributes:
        timeout_s: default time a request may take, from submit to reply (per call: ``timeout=``).
        heartbeat_s: with requests outstanding and nothing heard for this long, the client sends PING.
        liveness: heartbeats of silence after which the connection is reopened and requests resent.
        retries: reopenings before the outstanding requests fail with RuntimeUnavailableError.
        curve: this console's CurveZMQ keys (required by a networked runtime).
        hwm: most requests outstanding on this connection; more fail at once with BusyError.
        shared_memory: send pixels and receive the mask and raw overlay through shared memory (a runtime on
            this host over ipc:// only: a tcp runtime refuses it and the client sends frames); requests the
            region cannot take go as frames.
        shared_memory_mb: size of the client's shared-memory region (a 512x512 int16 slice with mask and
            overlay takes 1.5 MiB of it while in flight, and while its result's arrays are alive).
    """

    timeout_s: float = 10.0
    heartbeat_s: float = 1.0
    liveness: int = 3
    retries: int = 3
    curve: CurveClientKeys | None = None
    hwm: int = 1000
    shared_memory: bool = False
    shared_memory_mb: int = 64

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.heartbeat_s > 0) or self.liveness < 1 or self.retries < 0 or self.hwm < 1:
            raise ConfigError("timeouts must be > 0, liveness >= 1, retries >= 0, hwm >= 1")
        if self.shared_memory_mb < 1:
            raise ConfigError(f"shared_memory_mb must be >= 1, got {self.shared_memory_mb}")


@dataclass(frozen=True, eq=False)
class RemoteResult:
    """A RESULT from the runtime. Arrays are read-only views over the received frames.

    Attributes:
        id: the request id it answers.
        series: the request's series, else the DICOM object's Series Instance UID ("" when neither).
        instance: the request's instance, else the DICOM object's SOP Instance UID ("" when neither).
        index: the request's index, else the DICOM Instance Number; None when neither.
        model: ``name@version`` of the model that ran.
        engine: the backend that ran it (``ort``, ``tensorrt``).
        findings: per foreground class, what was found.
        timings_ms: the runtime's milliseconds per stage (``queue``, ``decode``, ..., ``total``).
        mask: (rows, cols) uint8 labels on the slice's grid, when requested.
        overlay: (rows, cols, 3) uint8 RGB, when requested raw.
        probabilities: (classes, h, w) float32 on the model's grid, when requested.
        change: the series against its prior so far (status, counts, loads), from a runtime or DICOM node
            that compares series with their priors; None otherwise.
        change_image: (rows, cols) uint8 change codes of this slice (``scanedge.imaging.followup.CHANGE_CODES``;
            0: no tracked lesion), when ``change`` was requested and the series has been compared.
        head_masks: per further mask head of the model, by its label (PONG ``models[].mask_heads``), its
            (rows, cols) uint8 labels on the slice's grid, when ``head_masks`` was requested; empty otherwise.
        round_trip_ms: send to reply as this client measured it.
        header: the RESULT header as received.
    """

    id: Any
    series: str
    instance: str
    index: int | None
    model: str
    engine: str
    findings: tuple[ClassFindings, ...]
    timings_ms: dict[str, float]
    mask: np.ndarray | None
    overlay: np.ndarray | None
    overlay_encoded: bytes | None  # JPEG/PNG bytes when the overlay was requested encoded
    probabilities: np.ndarray | None
    round_trip_ms: float
    header: Result
    image: np.ndarray | None = None  # the windowed 8-bit slice the overlay is drawn on (output "image")
    position_mm: float | None = None  # the slice's place along its normal, when its geometry says
    series_load: LesionLoad | None = None  # the series' 3-D lesion load after this slice
    saliency: np.ndarray | None = None  # the model's saliency map, 0-1 on the slice's grid (output "saliency")
    change: SeriesChange | None = None
    change_image: np.ndarray | None = None
    head_masks: dict[str, np.ndarray] = field(default_factory=dict)  # further mask heads by label (output "head_masks")

    def finding(self, name: str) -> ClassFindings:
        """The findings of the class called ``name`` (KeyError if the model has no such class)."""
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(name)


def _remote_result(
    header: Result, frames: Sequence[Any], rtt_ms: float, shared: dict[str, Any] | None = None
) -> RemoteResult:
    arrays = {**arrays_from_frames(header.frames, frames), **(shared or {})}
    t = header.timings_ms
    return RemoteResult(
        id=header.id,
        series=header.series,
        instance=header.instance,
        index=header.index,
        model=header.model,
        engine=header.engine,
        findings=tuple(
            ClassFindings(
                label=f.label,
                name=f.name,
                pixels=f.pixels,
                area_mm2=f.area_mm2,
                components=f.components,
                max_probability=f.max_probability,
                mean_probability=f.mean_probability,
            )
            for f in header.findings
        ),
        timings_ms={k: getattr(t, k) for k in t.__struct_fields__},
        mask=arrays.get("mask"),
        overlay=arrays.get("overlay"),
        overlay_encoded=arrays.get("overlay_encoded"),
        probabilities=arrays.get("probabilities"),
        round_trip_ms=rtt_ms,
        header=header,
        image=arrays.get("image"),
        position_mm=header.position_mm,
        series_load=header.series_load,
        saliency=arrays.get("saliency"),
        change=header.change,
        change_image=arrays.get("change"),
        head_masks=head_masks_from_arrays(arrays),
    )


def _pairing_fields(s: Slice) -> dict[str, str]:
    """What pairs a slice with the other series of its study (sent only when the slice knows it)."""
    ident = s.identity
    pairs = (("study", ident.study_uid), ("frame_of_reference", ident.frame_of_reference_uid))
    return {k: v for k, v in pairs if v}


class Client:
    """A connection to one runtime. Thread-safe; close() when done (or use ``with``)."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        """Connect (in the background) to the runtime at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""
        parse_endpoint(endpoint)
        self.endpoint = endpoint
        self.config = config or ClientConfig()
        self._outstanding = 0
        self._count_lock = threading.Lock()
        self._region: ConsoleRegion | None = None
        if self.config.shared_memory:
            self._region = self._create_region(endpoint)
        self._io = ClientIo(endpoint, self.config, self._region, _remote_result)

    def _create_region(self, endpoint: str) -> ConsoleRegion:
        if not parse_endpoint(endpoint).is_loopback:
            raise ConfigError(
                f"shared memory needs a runtime on this host (ipc:// or tcp to a loopback address), not {endpoint}"
            )
        try:  # over ipc:// the runtime knows this process, so it can take (and map) a sealed memfd
            memfd = parse_endpoint(endpoint).scheme == "ipc" and hasattr(os, "memfd_create")
            return ConsoleRegion(self.config.shared_memory_mb * 1024 * 1024, memfd=memfd)
        except OSError as exc:
            raise ConfigError(f"cannot create a shared-memory region on this host ({exc.strerror})") from exc

    @property
    def shared_memory_active(self) -> bool:
        """Whether requests go through shared memory now (the runtime acknowledged this client's region)."""
        return self._io.shm_ready

    @property
    def runtime_id(self) -> str | None:
        """The runtime instance last heard from (None before its first reply)."""
        return self._io.runtime_id

    @property
    def reconnects(self) -> int:
        """How often the connection was reopened after the runtime fell silent."""
        return self._io.reconnects

    @property
    def resent(self) -> int:
        """Requests sent again (after a reconnect, or to a restarted runtime)."""
        return self._io.resent

    # --- public API ----------------------------------------------------------------------------------

    def submit(
        self,
        image: np.ndarray | bytes | bytearray | memoryview | Slice,
        *,
        series: str = "",
        instance: str = "",
        index: int | None = None,
        model: str | None = None,
        geometry: SliceGeometry | None = None,
        rescale: tuple[float, float] | None = None,
        window: tuple[float, float] | None = None,
        deadline_ms: float | None = None,
        outputs: Sequence[str] = ("mask", "overlay"),
        overlay_encoding: str = "raw",
        overlay_options: OverlayConfig | None = None,
        publish: bool = True,
        timeout: float | None = None,
        ignore_scope: bool = False,
        role: str | None = None,
        last: bool = False,
    ) -> Future[RemoteResult]:
        """Send one slice; the future holds its :class:`RemoteResult`.

        Args:
            image: a numpy array (grey ``(rows, cols)`` or RGB ``(rows, cols, 3)``), a :class:`Slice`
                (its geometry, rescale, window and identity are sent along), or the bytes of one DICOM object.
            series: the stream key (Series Instance UID): per series only the newest waiting slice is computed.
            instance, index: echoed back (SOP Instance UID, instance number).
            model: which served model to run (default: the runtime's default).
            geometry, rescale, window: override what a Slice carries (raw pixels only).
            deadline_ms: after this long in the runtime's queue the request is answered EXPIRED.
            outputs: payload frames wanted back: ``mask``, ``overlay``, ``probabilities``, ``image`` (the
                windowed 8-bit slice, for viewers that draw the overlay themselves), ``change`` (the slice's
                change codes, once its series has been compared with a prior; absent before), ``head_masks``
                (each further mask head's labels, in ``RemoteResult.head_masks``).
            overlay_encoding: ``raw`` (fastest), ``jpeg`` or ``png``.
            overlay_options: how the overlay is drawn (default: the runtime's).
            publish: also publish the result on the runtime's PUB socket.
            timeout: seconds before the future fails with RequestTimeoutError (default: the config's).
            ignore_scope: segment the slice even when it is outside the model's scope (research use only;
                the result's ``header.scope`` then says ``outside``). A Slice's modality, body part and
                photometric interpretation are sent along so that raw pixels are checked like DICOM.
            role: which input of a multi-input model this slice is (``flair``, ``t1``; docs/protocol.md
                section 3.2). A Slice's Study and Frame of Reference UIDs are sent along for pairing.
            last: this is the series' last slice: the series is complete, and the reply's ``series_scores``
                carry the score of a score head's 3-D series model (docs/protocol.md section 4).

        The future raises the runtime's error as the same scanedge exception class as in-process code
        (e.g. :class:`NotDicomError`), :class:`SupersededError` / :class:`ExpiredError` /
        :class:`BusyError` for scheduling outcomes, :class:`RequestTimeoutError` after ``timeout``.
        """
        fields: dict[str, Any] = {}
        if isinstance(image, Slice):
            s = image
            geometry = geometry or s.geometry
            rescale = rescale or (s.rescale_slope, s.rescale_intercept)
            if window is None and s.window_center is not None and s.window_width is not None:
                window = (s.window_center, s.window_width)
            series = series or s.identity.series_uid
            instance = instance or s.identity.sop_instance_uid
            index = index if index is not None else s.identity.instance_number
            scope_fields = {
                "modality": s.identity.modality.strip().upper(),
                "body_part": s.acquisition.body_part,
                "photometric": "RGB" if s.is_color else "MONOCHROME2",  # decoding made it one of these
            }
            fields.update({k: v for k, v in scope_fields.items() if CODE_STRING.fullmatch(v)})
            fields.update(_pairing_fields(s))
            image = s.pixels
        if isinstance(image, np.ndarray):
            pixels = wire_array(image)
            fields.update(encoding="raw", dtype=pixels.dtype.name, shape=list(pixels.shape))
            payload: Any = pixels
        else:
            fields["encoding"] = "dicom"
            payload = image
            pixels = None
        fields.update(series=series, instance=instance, outputs=list(outputs), publish=publish)
        if index is not None:
            fields["index"] = int(index)
        if model:
            fields["model"] = model
        geo = geometry_from_slice(geometry) if geometry is not None else None
        if geo:
            fields["geometry"] = geo
        if rescale is not None and tuple(rescale) != (1.0, 0.0):
            fields["rescale"] = {"slope": float(rescale[0]), "intercept": float(rescale[1])}
        if window is not None:
            fields["window"] = {"center": float(window[0]), "width": float(window[1])}
        if deadline_ms is not None:
            fields["deadline_ms"] = float(deadline_ms)
        if overlay_encoding != "raw":
            fields["overlay_encoding"] = overlay_encoding
        if overlay_options is not None:
            fields["overlay_options"] = {
                k: getattr(overlay_options, k) for k in ("alpha", "fill", "contours", "heatmap")
            }
        if ignore_scope:
            fields["ignore_scope"] = True
        if role is not None:
            fields["role"] = role
        if last:
            fields["last"] = True
        fields["sent_at"] = time.time()
        request_id = self._next_id()
        shared = self._place(request_id, fields, payload, pixels)
        if shared is not None:
            return self._enqueue(request_id, shared[0], timeout, shared[1], shared[2])
        header = segment_request(request_id, **fields)
        return self._enqueue(request_id, [encode(header), payload], timeout)

    def _place(
        self, request_id: str, fields: dict[str, Any], payload: Any, pixels: np.ndarray | None
    ) -> tuple[list[Any], Block, Callable[[], list[Any]]] | None:
        """The request with its pixels copied into a block of the shared-memory region and the mask and raw
        overlay asked there (frames, block, the frames-only version); None when it goes as frames."""
        region = self._region
        if region is None or not self._io.shm_ready:
            return None
        nbytes = pixels.nbytes if pixels is not None else memoryview(payload).nbytes
        parts = [("pixels", nbytes)]
        if pixels is not None:
            rows, cols = pixels.shape[:2]
            if "mask" in fields["outputs"]:
                parts.append(("mask", rows * cols))
            if "overlay" in fields["outputs"] and fields.get("overlay_encoding", "raw") == "raw":
                parts.append(("overlay", rows * cols * 3))
        block = region.allocate(parts)
        if block is None:
            return None  # the region is full (results still alive): this one goes as frames
        region.write(block, "pixels", payload)

        def at(name: str) -> dict[str, Any]:
            offset, size = block.ranges[name]
            return {"region": region.name, "offset": offset, "nbytes": size}

        shm_fields: dict[str, Any] = {"pixels_at": at("pixels")}
        outputs_at = {name: at(name) for name, _ in parts[1:]}
        if outputs_at:
            shm_fields["outputs_at"] = outputs_at
        header = segment_request(request_id, **fields, **shm_fields)
        return [encode(header)], block, lambda: [encode(segment_request(request_id, **fields)), payload]

    def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        """``submit(...).result()``."""
        return self.submit(image, **kwargs).result()

    def ping(self, timeout: float | None = None) -> Pong:
        """The runtime's PONG: version, models, engine, queue depth, worker health, limits."""
        return self.request("PING", timeout).result()

    def stats(self, timeout: float | None = None) -> StatsReply:
        """The runtime's counters and latency histograms (STATS_REPLY)."""
        return self.request("STATS", timeout).result()

    def request(self, kind: str, timeout: float | None = None) -> Future[Any]:
        """Send a payload-less request (``PING`` or ``STATS``); the future holds the reply."""
        builders = {"PING": ping_request, "STATS": stats_request}
        if kind not in builders:
            raise ValueError(f"request() sends PING or STATS, not {kind!r}")
        request_id = self._next_id()
        return self._enqueue(request_id, [encode(builders[kind](request_id))], timeout)

    def close(self) -> None:
        """Stop the I/O thread; unanswered futures fail with :class:`ClientClosedError`. The shared-memory
        region is unlinked (result arrays viewing it stay valid until they are garbage)."""
        if self._io.closing:
            return
        self._io.close()
        if self._region is not None:
            self._region.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return self._io.next_id()

    def _enqueue(
        self,
        request_id: str,
        frames: list[Any],
        timeout: float | None,
        block: Block | None = None,
        as_frames: Callable[[], list[Any]] | None = None,
    ) -> Future[Any]:
        try:
            if self._io.closing:
                raise ClientClosedError("the client is closed")
            refused = self._io.refused
            if refused is not None:
                raise UnauthorizedError(refused.message)
            with self._count_lock:
                if self._outstanding >= self.config.hwm:
                    raise BusyError(f"{self._outstanding} requests are already outstanding on this connection (hwm)")
                self._outstanding += 1
        except ScanedgeError:
            if block is not None and self._region is not None:
                self._region.release(block)
            raise
        future: Future[Any] = Future()
        future.add_done_callback(self._done)
        wait = self.config.timeout_s if timeout is None else timeout
        self._io.send(request_id, frames, future, time.monotonic() + wait, block, as_frames)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._count_lock:
            self._outstanding -= 1


class AsyncClient:
    """asyncio front end over :class:`Client`: ``await client.segment(...)``."""

    def __init__(self, endpoint: str, config: ClientConfig | None = None) -> None:
        self._client = Client(endpoint, config)

    async def segment(self, image: Any, **kwargs: Any) -> RemoteResult:
        """Segment one slice; the same arguments as :meth:`Client.submit`."""
        return await asyncio.wrap_future(self._client.submit(image, **kwargs))

    async def ping(self, timeout: float | None = None) -> Pong:
        """The runtime's PONG, as :meth:`Client.ping`."""
        return await asyncio.wrap_future(self._client.request("PING", timeout))

    async def stats(self, timeout: float | None = None) -> StatsReply:
        """The runtime's counters and histograms, as :meth:`Client.stats`."""
        return await asyncio.wrap_future(self._client.request("STATS", timeout))

    async def close(self) -> None:
        """Close the underlying :class:`Client` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
