"""The DICOM node's life cycle: models, pools, output folder, feed, forwarder, server, completion; one class.

:class:`DicomListener` opens its parts on :meth:`~DicomListener.start` and releases them on
:meth:`~DicomListener.stop`: a pool of pipelines per model (``workers`` each; pipelines are not
thread-safe), the spool and one folder per output under ``out``, the PUB feed, the forwarder, and the
gated pynetdicom server (:mod:`scanedge.dicomnet.admission`) whose associations are answered by
:mod:`scanedge.dicomnet.handlers`. A completion thread completes series (:mod:`scanedge.dicomnet.series`)
and has every configured output written for them (:mod:`scanedge.dicomnet.outputs`); ``stop()`` writes
the outputs of every series still open.

Durability: an image is answered Success only once it is fsync'd into ``OUT/spool/``
(:mod:`scanedge.dicomnet.spool`); a spool that cannot be written answers 0xA700. Spooled images leave
the spool only when their series' outputs are durably written; on start the node segments what an earlier
run left there again and completes those series, and an output that cannot be built or written is retried
with backoff, counted in :class:`~scanedge.dicomnet.stats.ListenerStats` and reported in ``OUT/status.json``.

What goes here is what the node does as a whole over its life; what answers one association goes in
:mod:`scanedge.dicomnet.handlers`, what is made of a completed series in :mod:`scanedge.dicomnet.outputs`.

Nothing is written outside ``out``; logs name UIDs, AE titles and codes, never patient attributes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanedge._moved import forward_names
from scanedge.dicomnet import config as node_config
from scanedge.dicomnet import stats as node_stats
from scanedge.dicomnet.admission import Gate, start_gated_server
from scanedge.dicomnet.contexts import add_supported_contexts
from scanedge.dicomnet.followup import NodeFollowup
from scanedge.dicomnet.forward import Forwarder
from scanedge.dicomnet.handlers import AssociationHandlers, Refusal, check_uids
from scanedge.dicomnet.intake import Intake, ReceivedImage
from scanedge.dicomnet.outputs import OutputStats, make_outputs
from scanedge.dicomnet.outputs.scores import series_head_scores
from scanedge.dicomnet.outputs.writer import OutputWriter
from scanedge.dicomnet.pairing_intake import PairingIntake, check_multi_input_models
from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.dicomnet.series import OpenSeries, OpenSeriesBuffer
from scanedge.dicomnet.spool import Spool, private_folder
from scanedge.errors import ConfigError, ScanedgeError, redacted_traceback
from scanedge.imaging.dicom import read_dataset, slices_from_dicom
from scanedge.imaging.dicom.quiet import pydicom_quiet  # its records and warnings quote values
from scanedge.imaging.series_model import SeriesModel
from scanedge.manifest import Manifest
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig
from scanedge.runtime.wire.endpoints import is_loopback_host

if TYPE_CHECKING:  # at run time these names are served by __getattr__ below, with the warning
    from scanedge.dicomnet.config import ListenerConfig

__all__ = ["DicomListener"]

log = logging.getLogger("scanedge.dicomnet")

_RECOVERY = 0  # the "association" that spooled instances recovered at start are held under


class DicomListener:
    """A DICOM Storage SCP that segments what it receives. ``start()``/``stop()``, or ``serve()`` until
    :meth:`request_stop`; also a context manager."""

    def __init__(self, models: Sequence[ModelSpec], config: ListenerConfig | None = None) -> None:
        self.config = config or node_config.ListenerConfig()
        self.models = list(models) or [ModelSpec(_default_model())]
        self.outputs = make_outputs(self.config)
        self.stats = node_stats.ListenerStats(outputs={o.name: OutputStats() for o in self.outputs})
        self.runtime_id = secrets.token_hex(8)
        self.store = OpenSeriesBuffer(self.config.series_limits)
        self.spool = Spool(self.config.out / "spool")
        self._lock = threading.Lock()  # the stats'
        self._writer = OutputWriter(
            self.outputs,
            self.config.out,
            self.spool,
            self.stats,
            self._lock,
            retry_initial_s=self.config.retry_initial_s,
            retry_max_s=self.config.retry_max_s,
            on_attempt=lambda: self._write_status("running" if not self._stopped else "stopping"),
        )
        self.written: list[Path] = self._writer.written  # output files written, in order
        self._manifests: dict[str, Manifest] = {}  # by model name, filled by start()
        self._writer.models = self._manifests
        self._pools: dict[str, queue.Queue[Pipeline]] = {}
        self._series_models: dict[str, SeriesModel] = {}  # by model name: score heads' 3-D models
        self._pipelines: list[Pipeline] = []
        self._gate: Gate | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._server: Any = None
        self._ae: Any = None
        self._publisher: ResultPublisher | None = None
        self._intake: Intake | None = None
        self.followup: NodeFollowup | None = None
        self.forwarder: Forwarder | None = None
        self._completer = threading.Thread(target=self._complete_loop, name="scanedge-series", daemon=True)
        self._spooled_at_start: list[Path] = []
        self._status_path = self.config.out / node_stats.STATUS_FILE
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
    def folders(self) -> dict[str, Path]:
        """Each output's folder under ``out``, by output name."""
        return dict(self._writer.folders)

    @property
    def seg_dir(self) -> Path:
        """Deprecated: ``folders["seg"]``."""
        warnings.warn("DicomListener.seg_dir moved to DicomListener.folders['seg']", DeprecationWarning, 2)
        return self._writer.folders["seg"]

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
                self._writer.forwarder = self.forwarder
            if cfg.followup is not None:
                self.followup = NodeFollowup(
                    cfg.followup,
                    self._manifests,
                    self._pools,
                    busy_timeout_s=cfg.busy_timeout_s,
                    limits=cfg.limits,
                    max_series=cfg.series_limits.max_series * 2,
                )
            self._intake = Intake(
                self._pools,
                self.store,
                self.spool,
                self._publisher,
                self.stats,
                self._lock,
                runtime_id=self.runtime_id,
                busy_timeout_s=cfg.busy_timeout_s,
                probabilities=any(o.needs_probabilities for o in self.outputs),
                followup=self.followup,
            )
            self._pair_multi_input(self._intake)
            self._start_server(self._intake)
        except BaseException:
            self._close_parts()
            raise
        self._completer.start()
        self._write_status("running")
        where = f"{cfg.bind}:{self.port}"
        log.info(
            "DICOM node %s listening on %s (%s); models %s; %s%s%s; series complete after %g s idle%s",
            cfg.ae_title,
            where,
            ("loopback only" if is_loopback_host(cfg.bind) else "reachable from the network, unencrypted")
            + (f"; calling AE titles {', '.join(cfg.allowed_calling_aes)} only" if cfg.allowed_calling_aes else ""),
            ", ".join(f"{m.name}@{m.version}" for m in self._manifests.values()),
            ", ".join(f"{o.describe()} to {self._writer.folders[o.name]}" for o in self.outputs),
            f", forwarded to {cfg.forward}" if cfg.forward else "",
            (f", results published on {self.publish_endpoint}" if self._publisher else "")
            + (f"; follow-up against priors from {self.followup.config.describe()}" if self.followup else ""),
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
        """Stop accepting, let open associations finish (``stop_grace_s``), write the outputs of every open
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
        if self._intake is not None and self._intake.pairing is not None:
            self._intake.pairing.stop()
        for series in self.store.drain():
            self._completed(series, "the listener is stopping" + self._pairing_note(series.series_uid))
        for item in list(self._writer.pending):  # one more try each; what fails stays spooled for the next start
            self._writer.attempt(item, time.monotonic())
        if self._writer.pending:
            log.warning(
                "%d series still without durable %ss stay in %s; they are completed when the node starts again",
                len(self._writer.pending),
                self._writer.label,
                self.spool.folder,
            )
        self._write_status("stopped")
        self._close_parts()

    def __enter__(self) -> DicomListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_parts(self) -> None:
        if self.followup is not None:
            self.followup.close()
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
            if pipes[0].series_model is not None:  # run by the completion thread only
                self._series_models[name] = pipes[0].series_model
            for output in self.outputs:
                output.check_model(name, pipes[0].manifest)

    def _pair_multi_input(self, intake: Intake) -> None:
        """A multi-input model (manifest ``inputs``; one per node) has its images paired across the series of a
        study, beside the one-input models every image also goes through (:mod:`scanedge.dicomnet.pairing_intake`)."""
        name = check_multi_input_models(self._manifests)
        if name is not None:
            intake.pairing = PairingIntake(intake, name, self._manifests[name], idle_s=self.config.series_timeout_s)
            beside = intake.pairing.beside
            log.info(
                "model %s takes roles %s: series of one study are paired%s",
                name,
                ", ".join(self._manifests[name].roles),
                f"; every image also goes through {', '.join(beside)}" if beside else "",
            )

    def _pairing_note(self, series_uid: str) -> str:
        pairing = self._intake.pairing if self._intake is not None else None
        return pairing.completion_note(series_uid) if pairing is not None else ""

    def _prepare_out(self) -> None:
        out = self.config.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        for folder in self._writer.folders.values():
            try:
                private_folder(folder)
            except OSError as exc:
                raise ConfigError(f"cannot create the output folder {folder}: {exc.strerror}") from None
            if not os.access(folder, os.W_OK):
                raise ConfigError(f"the output folder {folder} is not writable")
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

    def _start_server(self, intake: Intake) -> None:
        from pynetdicom import AE

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.require_called_aet = cfg.require_called_ae
        ae.require_calling_aet = list(cfg.allowed_calling_aes)  # empty: any peer (pynetdicom's default)
        ae.dimse_timeout = ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = min(cfg.associate_timeout_s, cfg.network_timeout_s)
        add_supported_contexts(ae)
        handlers = AssociationHandlers(cfg, self.store, intake, self.stats, self._lock).events()
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

    # --- completing series (the completion thread, and stop()) ---------------------------------------

    def _complete_loop(self) -> None:
        cfg = self.config
        self._recover()
        interval = max(0.02, min(0.25, cfg.series_timeout_s / 4))
        while not self._stop.wait(interval):
            try:
                for series in self.store.complete(cfg.series_timeout_s, on_release=cfg.complete_on_release):
                    why = "completed early to make room" if series.early else "complete"
                    self._completed(series, why + self._pairing_note(series.series_uid))
                if self._intake is not None and self._intake.pairing is not None:
                    self._intake.pairing.expire_due()
                self._writer.attempt_due(self._stop)
                if time.monotonic() - self._status_at >= 1.0:
                    self._write_status("running")
            except Exception as exc:  # a bug: keep completing the others
                log.error("internal error completing series: %s", redacted_traceback(exc))

    def _completed(self, series: OpenSeries, why: str) -> None:
        """A completed series: compared with its prior (follow-up on), its series models run, then its outputs
        are due."""
        if self.followup is not None:
            self.followup.complete(series)
        for name, model in self._series_models.items():
            try:
                self._run_series_model(series, name, model)
                if self._intake is not None:  # the live feed's series score turns final (or failed)
                    self._intake.publish_series_scores(series, name)
            except Exception as exc:  # a bug: the outputs are still written, with the provisional scores
                log.error("series model of %s on series %s: %s", name, series.series_uid, redacted_traceback(exc))
        self._writer.add(series, why)

    def _run_series_model(self, series: OpenSeries, name: str, model: SeriesModel) -> None:
        """``model`` (model ``name``'s score head's 3-D model) on the planes the series' frames hold; its answer, or
        the typed failure with the provisional score, goes into ``series.series_scores`` for the outputs."""
        provisional, _ = series_head_scores(series, name, self._manifests[name])
        if not provisional:  # the model scored no frame of this series (refused, or another model's series)
            return
        volume = model.volume()
        for inst in series.instances.values():
            for frame in inst.frames:
                held = frame.planes.get(name)
                if held is not None:
                    volume.add_plane(held[1], held[0])
        series.series_scores[name] = scores = model.complete(volume, provisional)
        run = next(s.series_model for s in scores if s.series_model is not None)
        log.info(
            "series %s: %s series model %s on %d frame(s)%s",
            series.series_uid,
            name,
            run.status,
            run.slices,
            f" ({run.code})" if run.code else f" in {run.ms:.1f} ms",
        )

    def _recover(self) -> None:
        """Segment again what an earlier run spooled and answered Success for, and hold it in its series
        (completed by the series timeout, as if it had just arrived; its sender may still be sending)."""
        files, self._spooled_at_start = self._spooled_at_start, []
        intake = self._intake
        assert intake is not None, "recovery runs after start()"
        for path in files:
            if self._stop.is_set():
                return  # left in the spool for the next start
            try:
                with pydicom_quiet():
                    data = path.read_bytes()
                    ds = read_dataset(data, limits=self.config.limits)
                    series_uid, instance_uid = check_uids(ds, str(ds.get("SOPClassUID", "")))
                    slices = slices_from_dicom(ds, limits=self.config.limits)
                    t = time.time()
                    intake.hold(
                        ReceivedImage(
                            ds,
                            data,
                            slices,
                            series_uid,
                            instance_uid,
                            _RECOVERY,
                            t,
                            time.monotonic(),
                            0.0,
                            spooled=path,
                        )
                    )
            except Exception as exc:  # left where it is, counted, and named in the status: never removed unread
                with self._lock:
                    self.stats.unrecoverable += 1
                    self.stats.last_error = f"spooled file {path.name} could not be recovered"
                why = exc.message if isinstance(exc, (ScanedgeError, Refusal)) else redacted_traceback(exc)
                log.error("spooled file %s could not be segmented again; it stays in the spool: %s", path.name, why)
                continue
            with self._lock:
                self.stats.recovered += 1
        if files:
            self.store.closed(_RECOVERY)
            log.info("%d spooled image(s) segmented again; their series complete as usual", len(files))

    # --- the status file -----------------------------------------------------------------------------

    def status(self, state: str = "running") -> dict[str, Any]:
        """What ``OUT/status.json`` says: counters, series waiting for durable outputs, the spool's size."""
        now = time.monotonic()
        with self._lock:
            pending = self._writer.status(now)
            counters = self.stats.counters(self.outputs)
            if self._intake is not None and self._intake.pairing is not None:  # a multi-input model's
                counters["missing_input"] = self.stats.missing_input
            last_error = self.stats.last_error
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
            tmp = self._status_path.with_name(f".{node_stats.STATUS_FILE}.partial")
            try:
                tmp.write_text(text)
                os.chmod(tmp, 0o600)  # series UIDs and error texts: this user's, as the rest of --out
                os.replace(tmp, self._status_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                log.debug("status file %s not updated: %s", self._status_path, exc.strerror)


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


__getattr__ = forward_names(
    __name__,
    {
        "ListenerConfig": ("scanedge.dicomnet.config", "ListenerConfig"),
        "ListenerStats": ("scanedge.dicomnet.stats", "ListenerStats"),
        "STATUS_FILE": ("scanedge.dicomnet.stats", "STATUS_FILE"),
        "read_status": ("scanedge.dicomnet.stats", "read_status"),
    },
)
