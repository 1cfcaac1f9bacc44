"""The Storage SCP: images in by C-STORE, results out live on the PUB feed, one SEG per series and model.

Each association runs in its own pynetdicom thread and segments what it receives in that thread, with a
pipeline borrowed from a fixed pool (``workers`` per model; pipelines are not thread-safe). Waiting for
a free pipeline is the back-pressure a sending device feels: it gets each C-STORE response only once its
image has been segmented, so the images held in memory are bounded by the number of associations. An
image that is not taken gets a failure status (:mod:`scanedge.dicomnet.statuses`) and a log line saying
why, and the association carries on.

Durability: an image is answered Success only once it is fsync'd into ``OUT/spool/``
(:mod:`scanedge.dicomnet.spool`); a spool that cannot be written answers 0xA700. Spooled images leave
the spool only when their series' SEGs are durably written; on start the node segments what an earlier
run left there again and completes those series, and a SEG that cannot be built or written is retried
with backoff, counted in :class:`ListenerStats` and reported in ``OUT/status.json``.

Every frame's RESULT is built by the protocol's own builders (:func:`~scanedge.runtime.wire.protocol.result_reply`,
:func:`~scanedge.runtime.wire.payloads.result_frames`) and published as docs/protocol.md section 9 says; the
``id`` is a number the listener counts up. A completion thread writes the SEGs of series that are
complete (:mod:`scanedge.dicomnet.series`) into ``OUT/seg/`` and hands them to the forwarder.

Nothing is written outside ``out``; logs name UIDs, AE titles and codes, never patient attributes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanedge.dicomnet.admission import AdmissionPolicy, Gate, MessageMeter, start_gated_server, stop_reading
from scanedge.dicomnet.contexts import SEGMENTED_SOP_CLASSES, add_supported_contexts, sop_class_name
from scanedge.dicomnet.forward import Forwarder, ForwardTarget, check_ae_title
from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.dicomnet.segmentation import SegmentationConfig, SegmentationKind, build_segmentations
from scanedge.dicomnet.series import HeldFrame, HeldInstance, OpenSeries, SeriesLimits, SeriesStore, pack
from scanedge.dicomnet.spool import Spool, fsync_dir, private_folder, write_durably
from scanedge.dicomnet.statuses import SUCCESS, status_dataset, status_for
from scanedge.engines import EngineConfig
from scanedge.errors import (
    CapacityError,
    ConfigError,
    NoFrameGeometryError,
    ScanedgeError,
    SopClassError,
    redacted_traceback,
)
from scanedge.imaging.dicom import read_dataset, slices_from_dicom
from scanedge.imaging.dicom.quiet import pydicom_quiet  # its records and warnings quote values
from scanedge.imaging.overlay import OverlayConfig, display_image
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceLimits
from scanedge.manifest import Manifest
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig, SliceResult
from scanedge.runtime.wire.endpoints import is_loopback_host, parse_endpoint
from scanedge.runtime.wire.payloads import pipeline_reply, result_frames
from scanedge.runtime.wire.protocol import Echo, encode, publish_topic

__all__ = ["STATUS_FILE", "DicomListener", "ListenerConfig", "ListenerStats", "read_status"]

log = logging.getLogger("scanedge.dicomnet")

_UID = re.compile(r"[0-9][0-9.]{0,63}")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
#: the frames each published RESULT carries (section 4's names)
PUBLISHED_OUTPUTS = ("mask", "overlay", "image")
#: the node's state for the operator, rewritten atomically under ``out`` (``scanedge dicom-listen --status``)
STATUS_FILE = "status.json"
_RECOVERY = 0  # the "association" that spooled instances recovered at start are held under


@dataclass(frozen=True)
class ListenerConfig:
    """How the DICOM node listens, segments, completes series and delivers SEGs.

    Attributes:
        ae_title: this node's AE title; associations must call it (``require_called_ae``).
        bind: the address to listen on; loopback by default. DICOM associations are not encrypted: bind a
            scanner-facing address only on a protected network.
        port: the TCP port (0: any free one, see :attr:`DicomListener.port`).
        out: the only folder anything is written to: ``spool/`` (received images until their SEG is durable),
            ``seg/`` (SEGs), ``outbox/`` (waiting to be forwarded) and ``status.json``.
        forward: where SEGs are also sent by C-STORE; None: written only.
        publish: PUB endpoint for the live feed (docs/protocol.md section 9); None: no feed.
        insecure: allow a non-loopback ``publish`` endpoint (the feed is not encrypted).
        series_timeout_s: a series with no new instance for this long is complete.
        complete_on_release: a series is also complete once every association that sent it is released.
        segmentation: ``binary`` or ``fractional`` SEGs.
        workers: pipelines per model: how many images are segmented at once.
        engine: how each pipeline's engine runs.
        limits: per-image pixel and decoded-size limits (larger images are refused, 0xA700).
        overlay: how the published overlays are drawn.
        series_limits: bounds on what is held while series are open (see :mod:`scanedge.dicomnet.series`).
        max_associations: associations served at once (more are rejected at negotiation).
        require_called_ae: reject associations whose Called AE title is not ``ae_title``.
        allowed_calling_aes: accept associations only from these Calling AE titles (the scanners' own);
            empty: from any. An allow-list of peers, for a node bound to a scanner-facing address.
        ignore_scope: segment images outside a model's ``applies_to`` too (research use; results say so).
        busy_timeout_s: how long an image waits for a free pipeline before it is refused (0xA700).
        network_timeout_s: ACSE, DIMSE and network timeouts of each association.
        retry_max_s: the longest wait between two attempts to forward a SEG, or to build and write one.
        retry_initial_s: the first wait before building and writing a failed SEG again (doubling).
        stop_grace_s: on stop, how long open associations may still finish.
        max_object_bytes: the most bytes one DIMSE message may carry; a peer sending more is aborted while
            it sends (pynetdicom would gather any amount in memory). None: the decoded-size limit plus
            16 MiB for the header.
        max_pending: connections kept while their association request has not arrived (the oldest of the
            busiest address is closed for a new one; :mod:`scanedge.dicomnet.admission`).
        max_per_address: connections, associated or not, from one IP address.
        associate_timeout_s: a connection without a complete association request this long after it was
            accepted is closed (and the ACSE timeout).
    """

    ae_title: str = "SCANEDGE"
    bind: str = "127.0.0.1"
    port: int = 11112
    out: Path = Path("scanedge-dicom-out")
    forward: ForwardTarget | None = None
    publish: str | None = None
    insecure: bool = False
    series_timeout_s: float = 10.0
    complete_on_release: bool = False
    segmentation: SegmentationKind = "binary"
    workers: int = 1
    engine: EngineConfig = EngineConfig(spinning=False)
    limits: SliceLimits = DEFAULT_LIMITS
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    series_limits: SeriesLimits = field(default_factory=SeriesLimits)
    max_associations: int = 8
    require_called_ae: bool = True
    allowed_calling_aes: tuple[str, ...] = ()
    ignore_scope: bool = False
    busy_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    retry_max_s: float = 300.0
    retry_initial_s: float = 1.0
    stop_grace_s: float = 10.0
    max_object_bytes: int | None = None
    max_pending: int = 16
    max_per_address: int = 4
    associate_timeout_s: float = 5.0

    @property
    def admission_policy(self) -> AdmissionPolicy:
        """Who may hold a connection, and which association requests are taken."""
        return AdmissionPolicy(
            max_associations=self.max_associations,
            max_pending=self.max_pending,
            max_per_address=self.max_per_address,
            associate_timeout_s=self.associate_timeout_s,
            ae_title=self.ae_title,
            require_called_ae=self.require_called_ae,
            allowed_calling_aes=self.allowed_calling_aes,
        )

    @property
    def object_byte_limit(self) -> int:
        """``max_object_bytes``, or its default."""
        if self.max_object_bytes is not None:
            return self.max_object_bytes
        return self.limits.max_decoded_bytes + 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "--ae-title")
        for title in self.allowed_calling_aes:
            check_ae_title(title, "--allow-calling-ae")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0-65535")
        if self.segmentation not in ("binary", "fractional"):
            raise ConfigError(f"segmentation must be binary or fractional, got {self.segmentation!r}")
        if self.workers < 1 or self.max_associations < 1:
            raise ConfigError("workers and max_associations must be >= 1")
        for name in ("series_timeout_s", "busy_timeout_s", "network_timeout_s", "retry_max_s", "retry_initial_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.publish is not None and not parse_endpoint(self.publish).is_loopback and not self.insecure:
            raise ConfigError(
                f"refusing to publish patient images on {self.publish} beyond this machine without encryption; "
                "publish on loopback, or pass --insecure if the network is otherwise protected"
            )
        _ = self.admission_policy  # a ConfigError for connection limits that cannot work


@dataclass
class ListenerStats:
    """What the listener has done since it started (read them; the listener updates them).

    Attributes:
        received: C-STORE requests received.
        stored: images segmented, spooled durably and held for their series' SEG (answered Success).
        spool_failures: images refused because the spool could not be written (0xA700).
        recovered: spooled images an earlier run left, segmented again at start.
        unrecoverable: spooled files that could not be read back at start (left in the spool, logged).
        refused: C-STORE failure statuses sent, by status code.
        results: RESULTs built (one per frame and model), published when there is a feed.
        oversized: associations aborted for sending a message over ``max_object_bytes`` (or PDVs that break
            the message framing, which could otherwise hide one).
        series_completed: series whose SEGs were built.
        segs_written: SEG files written to ``out/seg``.
        seg_failures: SEGs that could not be built or written (logged; the series is retried).
        seg_retries: attempts to build and write a series' SEGs again after a failure.
        series_pending: completed series whose SEGs are not all durable yet (waiting for a retry).
        last_error: the latest SEG or spool failure, for the status file ("" when none).
    """

    received: int = 0
    stored: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    results: int = 0
    oversized: int = 0
    series_completed: int = 0
    segs_written: int = 0
    seg_failures: int = 0
    spool_failures: int = 0
    recovered: int = 0
    unrecoverable: int = 0
    seg_retries: int = 0
    series_pending: int = 0
    last_error: str = ""


@dataclass(eq=False)
class _Pending:
    """A completed series whose SEGs are being written: retried with backoff until all are durable."""

    series: OpenSeries
    why: str
    attempts: int = 0
    due: float = 0.0
    done: set[str] = field(default_factory=set)  # SEG SOP Instance UIDs already durable (and handed on)
    last_error: str = ""


class _Refusal(Exception):
    """A C-STORE answered with a status of its own (not from a scanedge error code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class DicomListener:
    """A DICOM Storage SCP that segments what it receives. ``start()``/``stop()``, or ``serve()`` until
    :meth:`request_stop`; also a context manager."""

    def __init__(self, models: Sequence[ModelSpec], config: ListenerConfig | None = None) -> None:
        self.config = config or ListenerConfig()
        self.models = list(models) or [ModelSpec(_default_model())]
        self.stats = ListenerStats()
        self.runtime_id = secrets.token_hex(8)
        self.store = SeriesStore(self.config.series_limits)
        self.written: list[Path] = []  # SEG files written, in order
        self._manifests: dict[str, Manifest] = {}
        self._pools: dict[str, queue.Queue[Pipeline]] = {}
        self._pipelines: list[Pipeline] = []
        self._ids = itertools.count(1)
        self._incoming: dict[int, MessageMeter] = {}  # association -> the message it is sending now
        self._gate: Gate | None = None
        self._aborting: weakref.WeakSet[Any] = weakref.WeakSet()  # associations aborted for what they sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False
        self._server: Any = None
        self._ae: Any = None
        self._publisher: ResultPublisher | None = None
        self.forwarder: Forwarder | None = None
        self._completer = threading.Thread(target=self._complete_loop, name="scanedge-series", daemon=True)
        self.seg_dir = self.config.out / "seg"
        self.spool = Spool(self.config.out / "spool")
        self._spooled_at_start: list[Path] = []
        self._pending: list[_Pending] = []
        self._status_path = self.config.out / STATUS_FILE
        self._status_at = 0.0
        self._status_lock = threading.Lock()  # one writer of the status file at a time (start, completer, stop)

    # --- life cycle ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the listener accepts associations on."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    @property
    def admission(self) -> Gate:
        """The connection gate (its ``stats``, ``pending`` and ``associated`` counts)."""
        if self._gate is None:
            raise RuntimeError("the listener is not started")
        return self._gate

    @property
    def publish_endpoint(self) -> str | None:
        """The PUB feed's bound endpoint, or None without one."""
        return None if self._publisher is None else self._publisher.endpoint

    def start(self) -> DicomListener:
        """Open the models, the output folder, the feed and the forwarder, then accept associations."""
        cfg = self.config
        _check_installed()
        try:
            self._open_models()
            self._prepare_out()
            if cfg.publish is not None:
                self._publisher = ResultPublisher(cfg.publish).start()
            if cfg.forward is not None:
                self.forwarder = Forwarder(
                    cfg.forward, cfg.out / "outbox", calling_ae=cfg.ae_title, retry_max_s=cfg.retry_max_s
                ).start()
            self._start_server()
        except BaseException:
            self._close_parts()
            raise
        self._completer.start()
        self._write_status("running")
        where = f"{cfg.bind}:{self.port}"
        log.info(
            "DICOM node %s listening on %s (%s); models %s; %s SEGs to %s%s%s; series complete after %g s idle%s",
            cfg.ae_title,
            where,
            ("loopback only" if is_loopback_host(cfg.bind) else "reachable from the network, unencrypted")
            + (f"; calling AE titles {', '.join(cfg.allowed_calling_aes)} only" if cfg.allowed_calling_aes else ""),
            ", ".join(f"{m.name}@{m.version}" for m in self._manifests.values()),
            cfg.segmentation,
            self.seg_dir,
            f", forwarded to {cfg.forward}" if cfg.forward else "",
            f", results published on {self.publish_endpoint}" if self._publisher else "",
            cfg.series_timeout_s,
            " or when released" if cfg.complete_on_release else "",
        )
        return self

    def request_stop(self) -> None:
        """Ask :meth:`serve` to stop (from a signal handler or another thread)."""
        self._stop.set()

    def serve(self) -> None:
        """Start, run until :meth:`request_stop`, then stop."""
        self.start()
        try:
            self._stop.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, let open associations finish (``stop_grace_s``), write the SEGs of every open
        series, try to forward what is due, and release everything."""
        self._stop.set()
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.shutdown()
            end = time.monotonic() + self.config.stop_grace_s
            while self._server.active_associations and time.monotonic() < end:
                time.sleep(0.02)
            for assoc in self._server.active_associations:
                assoc.abort()
            self._server = None
        if self._completer.is_alive():
            self._completer.join()
        for series in self.store.drain():
            self._pending.append(_Pending(series, "the listener is stopping"))
        for item in list(self._pending):  # one more try each; what fails stays spooled for the next start
            self._attempt(item, time.monotonic())
        if self._pending:
            log.warning(
                "%d series still without durable SEGs stay in %s; they are completed when the node starts again",
                len(self._pending),
                self.spool.folder,
            )
        self._write_status("stopped")
        self._close_parts()

    def __enter__(self) -> DicomListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_parts(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
        if self.forwarder is not None:
            self.forwarder.stop(grace_s=min(5.0, self.config.stop_grace_s))
        if self._publisher is not None:
            self._publisher.close()
        for pipe in self._pipelines:
            pipe.close()
        self._pipelines.clear()

    def _open_models(self) -> None:
        cfg = self.config
        pconf = PipelineConfig(limits=cfg.limits, overlay=cfg.overlay, ignore_scope=cfg.ignore_scope)
        for spec in self.models:
            pipes = []
            for _ in range(cfg.workers):
                pipe = Pipeline.open(spec.path, manifest=spec.manifest, options=cfg.engine, config=pconf)
                self._pipelines.append(pipe)
                pipes.append(pipe)
            name = pipes[0].manifest.name
            if name in self._manifests:
                raise ConfigError(f"two models are named {name!r}; each model needs its own manifest name")
            self._manifests[name] = pipes[0].manifest
            pool: queue.Queue[Pipeline] = queue.Queue()
            for pipe in pipes:
                pool.put(pipe)
            self._pools[name] = pool
            uncoded = [c.name for c in pipes[0].manifest.classes[1:] if c.property_type is None]
            if uncoded:
                log.warning(
                    "model %s: class(es) %s have no coded concepts in the manifest; their SEG segments are "
                    "described generically as SCT 85756007 Tissue (see docs/manifest.md)",
                    name,
                    ", ".join(uncoded),
                )

    def _prepare_out(self) -> None:
        out = self.config.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        try:
            private_folder(self.seg_dir)
        except OSError as exc:
            raise ConfigError(f"cannot create the output folder {self.seg_dir}: {exc.strerror}") from None
        if not os.access(self.seg_dir, os.W_OK):
            raise ConfigError(f"the output folder {self.seg_dir} is not writable")
        try:
            self._spooled_at_start = self.spool.open()
        except OSError as exc:
            raise ConfigError(f"cannot open the spool folder {self.spool.folder}: {exc.strerror}") from None
        if self._spooled_at_start:
            log.warning(
                "%d image(s) an earlier run answered Success for are still in %s: segmenting them again to "
                "complete their series",
                len(self._spooled_at_start),
                self.spool.folder,
            )

    def _start_server(self) -> None:
        from pynetdicom import AE, evt

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.require_called_aet = cfg.require_called_ae
        ae.require_calling_aet = list(cfg.allowed_calling_aes)  # empty: any peer (pynetdicom's default)
        ae.dimse_timeout = ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = min(cfg.associate_timeout_s, cfg.network_timeout_s)
        add_supported_contexts(ae)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_DATA_RECV, self._on_data),
        ]
        self._ae = ae
        try:
            self._server, self._gate = start_gated_server(
                ae, (cfg.bind, cfg.port), handlers, cfg.admission_policy, pdu_timeout_s=cfg.network_timeout_s
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DICOM on {cfg.bind}:{cfg.port}: {exc.strerror} (is another node running there?)"
            ) from None
        log.info(
            "admission: %d association(s) at once, %d connection(s) waiting for their association request "
            "(closed after %g s), %d per address",
            cfg.max_associations,
            cfg.max_pending,
            cfg.associate_timeout_s,
            cfg.max_per_address,
        )

    # --- association events (pynetdicom's threads) ---------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        log.debug("C-ECHO from %s", _peer(event))
        return SUCCESS

    def _on_released(self, event: Any) -> None:
        self._incoming.pop(id(event.assoc), None)
        self.store.released(id(event.assoc))

    def _on_aborted(self, event: Any) -> None:
        self._incoming.pop(id(event.assoc), None)
        self.store.closed(id(event.assoc))

    def _on_data(self, event: Any) -> None:
        """Count the bytes of the DIMSE message being received (each raw PDU, before pynetdicom decodes it;
        :class:`~scanedge.dicomnet.admission.MessageMeter`); abort the association once one message passes
        ``max_object_bytes`` or its PDVs break the protocol."""
        if event.assoc in self._aborting:  # PDUs already on their way when it was aborted
            return
        key = id(event.assoc)
        meter = self._incoming.get(key)
        if meter is None:
            meter = self._incoming[key] = MessageMeter(self.config.object_byte_limit)
        why = meter.feed(event.data)
        if why is None:
            return
        self._aborting.add(event.assoc)
        with self._lock:
            self.stats.oversized += 1
        log.warning("association from %s aborted: it sent %s", _peer(event), why)
        event.assoc.abort(block=False)
        stop_reading(event.assoc)

    def _on_store(self, event: Any) -> Any:
        received_at, received_mono = time.time(), time.monotonic()
        with self._lock:
            self.stats.received += 1
        instance_uid = _uid(getattr(event.request, "AffectedSOPInstanceUID", None)) or "?"
        try:
            with pydicom_quiet():
                self._store(event, received_at, received_mono)
        except _Refusal as refusal:
            return self._refuse(event, instance_uid, refusal.status, refusal.code, refusal.message)
        except ScanedgeError as exc:
            return self._refuse(event, instance_uid, status_for(exc), exc.code, exc.message)
        except Exception as exc:  # a bug: answer, log where (never the data), keep serving
            log.error("internal error storing instance %s: %s", instance_uid, redacted_traceback(exc))
            return self._refuse(event, instance_uid, 0x0110, "INTERNAL", "internal error in the DICOM node (logged)")
        with self._lock:
            self.stats.stored += 1
        return SUCCESS

    def _refuse(self, event: Any, instance_uid: str, status: int, code: str, message: str) -> Any:
        with self._lock:
            self.stats.refused[status] += 1
        log.warning(
            "C-STORE of instance %s from %s answered 0x%04X: %s %s", instance_uid, _peer(event), status, code, message
        )
        return status_dataset(status, f"{code}: {message}")

    def _store(self, event: Any, received_at: float, received_mono: float) -> None:
        """Decode, segment, publish and hold one received instance; raises what its status will say."""
        sop_class = str(event.context.abstract_syntax)
        if sop_class not in SEGMENTED_SOP_CLASSES:
            raise SopClassError(
                f"{sop_class_name(sop_class)} objects are not segmented here; this node segments "
                f"{', '.join(sorted(set(SEGMENTED_SOP_CLASSES.values())))}"
            )
        t0 = time.perf_counter()
        data = event.encoded_dataset(include_meta=True)
        ds = read_dataset(data, limits=self.config.limits)
        uids = self._uids(ds, sop_class)
        slices = slices_from_dicom(ds, limits=self.config.limits)
        _check_referenceable(ds, len(slices))
        decode_ms = (time.perf_counter() - t0) * 1e3
        series_uid, instance_uid = uids
        self._hold(ds, data, slices, series_uid, instance_uid, id(event.assoc), received_at, received_mono, decode_ms)
        log.debug(
            "stored instance %s of series %s from %s (%d frame(s))", instance_uid, series_uid, _peer(event), len(slices)
        )

    def _hold(
        self,
        ds: Any,
        data: bytes,
        slices: list[Slice],
        series_uid: str,
        instance_uid: str,
        association: int,
        received_at: float,
        received_mono: float,
        decode_ms: float,
        *,
        spooled: Path | None = None,
    ) -> None:
        """Segment (publishing live), spool durably (unless ``spooled`` already is), then hold for the SEG.

        Raises what the C-STORE status will say; a spooled copy of an instance that is not held is removed."""
        self.store.begin(series_uid, association, _identity(ds))
        path = spooled
        try:
            frames = self._segment(
                slices, series_uid, instance_uid, received_at, received_mono, decode_ms, publish=spooled is None
            )
            if path is None:
                try:
                    path = self.spool.write(instance_uid, data)
                except ScanedgeError as exc:
                    with self._lock:
                        self.stats.spool_failures += 1
                        self.stats.last_error = f"{exc.code}: {exc.message}"
                    raise
            header_bytes = len(data) - _drop_pixels(ds)
            held = HeldInstance(instance_uid, ds, max(0, header_bytes), frames, spooled=path)
        except BaseException:
            self.store.finish(series_uid, None)
            if path is not None and spooled is None:
                self.spool.remove([path])
            raise
        try:
            replaced = self.store.finish(series_uid, held)
        except BaseException:
            if spooled is None:
                self.spool.remove([path])
            raise
        if replaced is not None and replaced.spooled is not None:  # the earlier of two copies: as in the SEG
            self.spool.remove([replaced.spooled])

    @staticmethod
    def _uids(ds: Any, sop_class: str) -> tuple[str, str]:
        """(series, instance) UIDs after checking the dataset is what it was sent as."""
        claimed = str(ds.get("SOPClassUID", "") or "").strip().rstrip("\0")
        if claimed != sop_class:
            raise _Refusal(
                0xA900,
                "SOP_CLASS_MISMATCH",
                f"the dataset's SOP Class UID ({sop_class_name(claimed)}) is not the class it was sent as "
                f"({sop_class_name(sop_class)})",
            )
        series_uid = _uid(ds.get("SeriesInstanceUID"))
        instance_uid = _uid(ds.get("SOPInstanceUID"))
        if series_uid is None or instance_uid is None:
            raise _Refusal(
                0xA900,
                "MISSING_UID",
                "the dataset has no valid Series Instance UID or SOP Instance UID (type 1 attributes)",
            )
        return series_uid, instance_uid

    def _segment(
        self,
        slices: list[Slice],
        series_uid: str,
        instance_uid: str,
        received_at: float,
        received_mono: float,
        decode_ms: float,
        *,
        publish: bool = True,
    ) -> tuple[HeldFrame, ...]:
        """Every frame through every model, each RESULT published as soon as it is ready (``publish``)."""
        fractional = self.config.segmentation == "fractional"
        masks: list[dict[str, bytes]] = [{} for _ in slices]
        probabilities: list[dict[str, bytes]] = [{} for _ in slices]
        for name, pool in self._pools.items():
            try:
                pipe = pool.get(timeout=self.config.busy_timeout_s)
            except queue.Empty:
                raise CapacityError(
                    f"no {name} pipeline came free within {self.config.busy_timeout_s:g} s; the node is busy"
                ) from None
            try:
                queue_ms = (time.monotonic() - received_mono) * 1e3
                k = pipe.manifest.input.context_slices
                for i, slice_ in enumerate(slices):
                    context = context_window(slices, i, k) if k else ()
                    live = publish and self._publisher is not None
                    result = pipe.run(slice_, context=context, overlay=live)
                    masks[i][name] = pack(result.mask)
                    if fractional:
                        probabilities[i][name] = pack(_quantised(result, pipe.manifest))
                    if not publish:
                        continue
                    index = slice_.identity.instance_number if len(slices) == 1 else i + 1
                    self._publish(
                        pipe,
                        result,
                        slice_,
                        series_uid,
                        instance_uid,
                        index,
                        received_at,
                        received_mono,
                        queue_ms,
                        decode_ms,
                    )
            finally:
                pool.put(pipe)
        return tuple(HeldFrame(slice_.shape[:2], masks[i], probabilities[i]) for i, slice_ in enumerate(slices))

    def _publish(
        self,
        pipe: Pipeline,
        result: SliceResult,
        slice_: Slice,
        series_uid: str,
        instance_uid: str,
        index: int | None,
        received_at: float,
        received_mono: float,
        queue_ms: float,
        decode_ms: float,
    ) -> None:
        """One frame's RESULT, built by the protocol's builders and published (section 9)."""
        with self._lock:
            self.stats.results += 1
        if self._publisher is None:
            return
        arrays = {
            "mask": result.mask,
            "overlay": result.overlay,
            "probabilities": result.probabilities,
            "image": display_image(slice_),
        }
        infos, payload, encode_ms = result_frames(PUBLISHED_OUTPUTS, arrays, "raw")
        header = pipeline_reply(
            Echo(next(self._ids), series_uid, instance_uid, index, None),
            result,
            model=pipe.model_label,
            backend=pipe.engine.backend,
            frames=infos,
            queue_ms=queue_ms,
            decode_ms=decode_ms,
            encode_ms=encode_ms,
            received_mono=received_mono,
            received_at=received_at,
            runtime=self.runtime_id,
            position_mm=slice_.geometry.position_along_normal,
        )
        self._publisher.publish([publish_topic(series_uid), encode(header), *payload])

    # --- completing series (the completion thread, and stop()) ---------------------------------------

    def _complete_loop(self) -> None:
        cfg = self.config
        self._recover()
        interval = max(0.02, min(0.25, cfg.series_timeout_s / 4))
        while not self._stop.wait(interval):
            try:
                for series in self.store.complete(cfg.series_timeout_s, on_release=cfg.complete_on_release):
                    self._pending.append(
                        _Pending(series, "completed early to make room" if series.early else "complete")
                    )
                now = time.monotonic()
                for item in [p for p in self._pending if p.due <= now]:
                    if self._stop.is_set():
                        break
                    self._attempt(item, now)
                if time.monotonic() - self._status_at >= 1.0:
                    self._write_status("running")
            except Exception as exc:  # a bug: keep completing the others
                log.error("internal error completing series: %s", redacted_traceback(exc))

    def _recover(self) -> None:
        """Segment again what an earlier run spooled and answered Success for, and hold it in its series
        (completed by the series timeout, as if it had just arrived; its sender may still be sending)."""
        files, self._spooled_at_start = self._spooled_at_start, []
        for path in files:
            if self._stop.is_set():
                return  # left in the spool for the next start
            try:
                with pydicom_quiet():
                    data = path.read_bytes()
                    ds = read_dataset(data, limits=self.config.limits)
                    series_uid, instance_uid = self._uids(ds, str(ds.get("SOPClassUID", "")))
                    slices = slices_from_dicom(ds, limits=self.config.limits)
                    t = time.time()
                    self._hold(
                        ds, data, slices, series_uid, instance_uid, _RECOVERY, t, time.monotonic(), 0.0, spooled=path
                    )
            except Exception as exc:  # left where it is, counted, and named in the status: never removed unread
                with self._lock:
                    self.stats.unrecoverable += 1
                    self.stats.last_error = f"spooled file {path.name} could not be recovered"
                why = exc.message if isinstance(exc, (ScanedgeError, _Refusal)) else redacted_traceback(exc)
                log.error("spooled file %s could not be segmented again; it stays in the spool: %s", path.name, why)
                continue
            with self._lock:
                self.stats.recovered += 1
        if files:
            self.store.closed(_RECOVERY)
            log.info("%d spooled image(s) segmented again; their series complete as usual", len(files))

    def _attempt(self, item: _Pending, now: float) -> None:
        """Build and write the SEGs of a completed series; once all are durable, drop its spooled images,
        else retry later with backoff (1 s doubling to ``retry_max_s``)."""
        if item.attempts == 0:
            with self._lock:
                self.stats.series_completed += 1
        else:
            with self._lock:
                self.stats.seg_retries += 1
        if item not in self._pending:
            self._pending.append(item)
        problems = self._write(item)
        if not problems:
            self._pending.remove(item)
            self.spool.remove([i.spooled for i in item.series.instances.values() if i.spooled is not None])
        else:
            item.attempts += 1
            delay = min(self.config.retry_max_s, self.config.retry_initial_s * 2 ** min(item.attempts - 1, 30))
            item.due, item.last_error = now + delay, problems[0]
            with self._lock:
                self.stats.last_error = f"series {item.series.series_uid}: {problems[0]}"
            log.error(
                "series %s: %d SEG problem(s) (attempt %d), its %d image(s) stay spooled; retrying in %.0f s: %s",
                item.series.series_uid,
                len(problems),
                item.attempts,
                len(item.series.instances),
                delay,
                "; ".join(problems),
            )
        with self._lock:
            self.stats.series_pending = len(self._pending)
        self._write_status("running" if not self._stopped else "stopping")

    def _write(self, item: _Pending) -> list[str]:
        """Build, write and forward the SEGs of a completed series not yet durable; returns what failed."""
        series, why = item.series, item.why
        settings = SegmentationConfig(kind=self.config.segmentation, device_serial_number=self.config.ae_title)
        problems: list[str] = []
        for name, manifest in self._manifests.items():
            try:
                with pydicom_quiet():
                    segs, skipped = build_segmentations(series, name, manifest, settings)
            except Exception as exc:  # highdicom refuses sources it cannot reference; the message may quote them
                with self._lock:
                    self.stats.seg_failures += 1
                problems.append(f"the {name} SEG could not be built ({redacted_traceback(exc)})")
                continue
            for reason in skipped:
                with self._lock:
                    self.stats.seg_failures += 1
                problems.append(f"no {name} SEG for {reason}")
            for seg in segs:
                uid = str(seg.SOPInstanceUID)
                if uid in item.done:
                    continue
                failure = self._save(seg, series, name, why)
                if failure:
                    problems.append(failure)
                else:
                    item.done.add(uid)
        return problems

    def _save(self, seg: Any, series: OpenSeries, model: str, why: str) -> str:
        """Write one SEG durably and hand it to the forwarder; "" when done, else what failed."""
        path = self.seg_dir / f"{seg.SOPInstanceUID}.dcm"
        try:
            with pydicom_quiet():
                write_durably(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
            # already in the outbox: an earlier run wrote this same SEG (same UID) and queued it at start
            if self.forwarder is not None and not (self.forwarder.outbox / path.name).exists():
                self.forwarder.submit(path)
                fsync_dir(self.forwarder.outbox)
        except OSError as exc:
            with self._lock:
                self.stats.seg_failures += 1
            return f"the {model} SEG could not be written to {path}: {exc.strerror or type(exc).__name__}"
        with self._lock:
            self.stats.segs_written += 1
            self.written.append(path)
        log.info(
            "series %s %s: %d instance(s), %d frame(s); %s SEG written to %s",
            series.series_uid,
            why,
            len(series.instances),
            series.frames,
            model,
            path,
        )
        return ""

    # --- the status file -----------------------------------------------------------------------------

    def status(self, state: str = "running") -> dict[str, Any]:
        """What ``OUT/status.json`` says: counters, series waiting for durable SEGs, the spool's size."""
        now = time.monotonic()
        with self._lock:
            stats = self.stats
            pending = [
                {
                    "series_uid": p.series.series_uid,
                    "instances": len(p.series.instances),
                    "attempts": p.attempts,
                    "next_attempt_in_s": round(max(0.0, p.due - now), 1),
                    "last_error": p.last_error,
                }
                for p in list(self._pending)
            ]
            counters = {
                "received": stats.received,
                "stored": stats.stored,
                "refused": {f"0x{code:04X}": n for code, n in sorted(stats.refused.items())},
                "spool_failures": stats.spool_failures,
                "recovered": stats.recovered,
                "unrecoverable": stats.unrecoverable,
                "series_completed": stats.series_completed,
                "segs_written": stats.segs_written,
                "seg_failures": stats.seg_failures,
                "seg_retries": stats.seg_retries,
            }
            last_error = stats.last_error
        return {
            "state": state,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
            "ae_title": self.config.ae_title,
            "port": self.port if self._server is not None else None,
            "series_open": len(self.store.open_series()),
            "series_pending": len(pending),
            "pending": pending,
            "spool": {"folder": str(self.spool.folder), "files": self.spool.files, "bytes": self.spool.bytes},
            "forward_pending": self.forwarder.pending if self.forwarder is not None else 0,
            "last_error": last_error,
            **counters,
        }

    def _write_status(self, state: str) -> None:
        """Rewrite ``OUT/status.json`` atomically (readers never see half of it); a full disk keeps the last
        one, whose ``updated`` time then says it is stale (the log says why)."""
        with self._status_lock:
            self._status_at = time.monotonic()
            text = json.dumps(self.status(state), indent=2) + "\n"
            tmp = self._status_path.with_name(f".{STATUS_FILE}.partial")
            try:
                tmp.write_text(text)
                os.chmod(tmp, 0o600)  # series UIDs and error texts: this user's, as the rest of --out
                os.replace(tmp, self._status_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                log.debug("status file %s not updated: %s", self._status_path, exc.strerror)


def read_status(out: Path) -> dict[str, Any]:
    """The status a node writing to ``out`` last wrote; ConfigError when there is none."""
    path = out / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {STATUS_FILE} in {out}: no DICOM node has run with --out {out}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__})") from None
    if not isinstance(status, dict):
        raise ConfigError(f"{path} is not a status object")
    return status


def _check_installed() -> None:
    """The ``dicomnet`` extra's libraries are there, or a ConfigError that says how to install them."""
    import importlib.util

    missing = [name for name in ("pynetdicom", "highdicom") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the DICOM node needs {' and '.join(missing)}; install them with: pip install 'scanedge[dicomnet]'"
        )


def _default_model() -> Path:
    from scanedge.runtime.core.pipeline import default_model_path

    return default_model_path()


def _uid(value: Any) -> str | None:
    """A UID from outside when it has the form of one (digits and dots, at most 64), else None: only such
    strings reach logs, file names and the feed's topics."""
    text = str(value or "").strip().rstrip("\0")
    return text if _UID.fullmatch(text) else None


def _peer(event: Any) -> str:
    """The calling AE title and address, for logs."""
    try:
        req = event.assoc.requestor
        title = "".join(c for c in str(req.ae_title) if c.isprintable())[:16]
        return f"{title}@{req.address}"
    except Exception:
        return "?"


def _identity(ds: Any) -> tuple[str, str]:
    """(Patient ID, Study Instance UID): what every instance of one series must share (compared, never logged)."""
    return (str(ds.get("PatientID", "") or "").strip(), str(ds.get("StudyInstanceUID", "") or "").strip())


def _check_referenceable(ds: Any, frames: int) -> None:
    """A multi-frame image needs patient coordinates per frame (plane position and orientation functional
    groups) for a SEG to reference its frames; highdicom takes one frame only from an image without them."""
    if frames <= 1:
        return
    from highdicom.spatial import get_image_coordinate_system

    if get_image_coordinate_system(ds) is None:
        raise NoFrameGeometryError(
            f"a {frames}-frame image without plane position/orientation per frame: no SEG can reference its frames"
        )


def _drop_pixels(ds: Any) -> int:
    """Remove the pixel data from ``ds`` (the SEG needs only the header); returns its length in bytes."""
    dropped = 0
    for tag in _PIXEL_TAGS:
        if tag in ds:
            value = ds[tag].value
            dropped += len(value) if isinstance(value, (bytes, bytearray)) else 0
            del ds[tag]
    return dropped


def _quantised(result: SliceResult, manifest: Manifest) -> Any:
    """The foreground classes' probabilities on the slice's grid, as uint8 (x 255), for FRACTIONAL SEGs."""
    import numpy as np

    planes = result.probabilities_on_slice(1 if manifest.output.activation == "softmax" else 0)
    return np.rint(np.clip(planes, 0.0, 1.0) * 255).astype(np.uint8)
