"""The DIMSE side of the node: pynetdicom's event handlers, and the checks and refusals they answer with.

Each association runs in its own pynetdicom thread and segments what it receives in that thread
(:class:`~scanedge.dicomnet.intake.Intake`). Waiting for a free pipeline is the back-pressure a sending
device feels: it gets each C-STORE response only once its image has been segmented, so the images held in
memory are bounded by the number of associations. An image that is not taken gets a failure status
(:mod:`scanedge.dicomnet.statuses`) and a log line saying why, and the association carries on; a
handler's own bug is answered 0x0110 and logged, never raised into pynetdicom.

Where new things go:

- a new DIMSE service (C-FIND, say): a method ``on_find`` here and its event in :meth:`AssociationHandlers.events`,
  its presentation contexts in :mod:`scanedge.dicomnet.contexts` (C-ECHO, :meth:`AssociationHandlers.on_echo`,
  is the precedent);
- a new refusal: raise a typed :mod:`scanedge.errors` error from a check (:func:`check_referenceable` and its
  ``NoFrameGeometryError`` are the precedent) and map its code to a status in
  :data:`~scanedge.dicomnet.statuses.STATUS_FOR_CODE`; a status with no scanedge error behind it (a DIMSE
  matter) is a :class:`Refusal` (:func:`check_uids` is the precedent).

The node's life cycle (pools, server, completion) is :mod:`scanedge.dicomnet.listener`'s.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from typing import Any

from scanedge.dicomnet.admission import MessageMeter, stop_reading
from scanedge.dicomnet.config import ListenerConfig
from scanedge.dicomnet.contexts import SEGMENTED_SOP_CLASSES, sop_class_name
from scanedge.dicomnet.intake import Intake, ReceivedImage
from scanedge.dicomnet.series import OpenSeriesBuffer
from scanedge.dicomnet.stats import ListenerStats
from scanedge.dicomnet.statuses import SUCCESS, status_dataset, status_for
from scanedge.errors import NoFrameGeometryError, ScanedgeError, SopClassError, redacted_traceback
from scanedge.imaging.dicom import read_dataset, slices_from_dicom
from scanedge.imaging.dicom.quiet import pydicom_quiet  # its records and warnings quote values

__all__ = ["AssociationHandlers", "Refusal", "check_referenceable", "check_uids", "peer", "valid_uid"]

log = logging.getLogger("scanedge.dicomnet")

_UID = re.compile(r"[0-9][0-9.]{0,63}")


class Refusal(Exception):
    """A C-STORE answered with a status of its own (not from a scanedge error code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AssociationHandlers:
    """The handlers bound to every association (:meth:`events`); they share the node's parts.

    Args:
        config: the node's configuration (limits, the per-message byte cap).
        store: the open series (released and aborted associations end their part in them).
        intake: what takes in an image that passed the checks.
        stats: the node's counters, updated under ``lock``.
    """

    def __init__(
        self,
        config: ListenerConfig,
        store: OpenSeriesBuffer,
        intake: Intake,
        stats: ListenerStats,
        lock: threading.Lock,
    ) -> None:
        self.config = config
        self.store = store
        self.intake = intake
        self.stats = stats
        self.lock = lock
        self._incoming: dict[int, MessageMeter] = {}  # association -> the message it is sending now
        self._aborting: weakref.WeakSet[Any] = weakref.WeakSet()  # associations aborted for what they sent

    def events(self) -> list[Any]:
        """(event, handler) pairs for pynetdicom's ``start_server``."""
        from pynetdicom import evt

        return [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_DATA_RECV, self.on_data),
        ]

    def on_echo(self, event: Any) -> int:
        """C-ECHO: Success."""
        log.debug("C-ECHO from %s", peer(event))
        return SUCCESS

    def on_released(self, event: Any) -> None:
        """A released association has ended the series it sent (for ``complete_on_release``)."""
        self._incoming.pop(id(event.assoc), None)
        self.store.released(id(event.assoc))

    def on_aborted(self, event: Any) -> None:
        """An aborted association no longer counts as sending anything."""
        self._incoming.pop(id(event.assoc), None)
        self.store.closed(id(event.assoc))

    def on_data(self, event: Any) -> None:
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
        with self.lock:
            self.stats.oversized += 1
        log.warning("association from %s aborted: it sent %s", peer(event), why)
        event.assoc.abort(block=False)
        stop_reading(event.assoc)

    def on_store(self, event: Any) -> Any:
        """C-STORE: Success once the image is segmented, spooled and held; else the status its failure maps to."""
        received_at, received_mono = time.time(), time.monotonic()
        with self.lock:
            self.stats.received += 1
        instance_uid = valid_uid(getattr(event.request, "AffectedSOPInstanceUID", None)) or "?"
        try:
            with pydicom_quiet():
                self._store(event, received_at, received_mono)
        except Refusal as refusal:
            return self._refuse(event, instance_uid, refusal.status, refusal.code, refusal.message)
        except ScanedgeError as exc:
            return self._refuse(event, instance_uid, status_for(exc), exc.code, exc.message)
        except Exception as exc:  # a bug: answer, log where (never the data), keep serving
            log.error("internal error storing instance %s: %s", instance_uid, redacted_traceback(exc))
            return self._refuse(event, instance_uid, 0x0110, "INTERNAL", "internal error in the DICOM node (logged)")
        with self.lock:
            self.stats.stored += 1
        return SUCCESS

    def _refuse(self, event: Any, instance_uid: str, status: int, code: str, message: str) -> Any:
        with self.lock:
            self.stats.refused[status] += 1
        log.warning(
            "C-STORE of instance %s from %s answered 0x%04X: %s %s", instance_uid, peer(event), status, code, message
        )
        return status_dataset(status, f"{code}: {message}")

    def _store(self, event: Any, received_at: float, received_mono: float) -> None:
        """Check, decode, then take in one received instance; raises what its status will say."""
        sop_class = str(event.context.abstract_syntax)
        if sop_class not in SEGMENTED_SOP_CLASSES:
            raise SopClassError(
                f"{sop_class_name(sop_class)} objects are not segmented here; this node segments "
                f"{', '.join(sorted(set(SEGMENTED_SOP_CLASSES.values())))}"
            )
        t0 = time.perf_counter()
        data = event.encoded_dataset(include_meta=True)
        ds = read_dataset(data, limits=self.config.limits)
        uids = check_uids(ds, sop_class)
        slices = slices_from_dicom(ds, limits=self.config.limits)
        check_referenceable(ds, len(slices))
        decode_ms = (time.perf_counter() - t0) * 1e3
        series_uid, instance_uid = uids
        self.intake.hold(
            ReceivedImage(
                ds, data, slices, series_uid, instance_uid, id(event.assoc), received_at, received_mono, decode_ms
            )
        )
        log.debug(
            "stored instance %s of series %s from %s (%d frame(s))", instance_uid, series_uid, peer(event), len(slices)
        )


def check_uids(ds: Any, sop_class: str) -> tuple[str, str]:
    """(series, instance) UIDs after checking the dataset is what it was sent as (a :class:`Refusal` if not)."""
    claimed = str(ds.get("SOPClassUID", "") or "").strip().rstrip("\0")
    if claimed != sop_class:
        raise Refusal(
            0xA900,
            "SOP_CLASS_MISMATCH",
            f"the dataset's SOP Class UID ({sop_class_name(claimed)}) is not the class it was sent as "
            f"({sop_class_name(sop_class)})",
        )
    series_uid = valid_uid(ds.get("SeriesInstanceUID"))
    instance_uid = valid_uid(ds.get("SOPInstanceUID"))
    if series_uid is None or instance_uid is None:
        raise Refusal(
            0xA900,
            "MISSING_UID",
            "the dataset has no valid Series Instance UID or SOP Instance UID (type 1 attributes)",
        )
    return series_uid, instance_uid


def check_referenceable(ds: Any, frames: int) -> None:
    """A multi-frame image needs patient coordinates per frame (plane position and orientation functional
    groups) for a SEG to reference its frames; highdicom takes one frame only from an image without them."""
    if frames <= 1:
        return
    from highdicom.spatial import get_image_coordinate_system

    if get_image_coordinate_system(ds) is None:
        raise NoFrameGeometryError(
            f"a {frames}-frame image without plane position/orientation per frame: no SEG can reference its frames"
        )


def valid_uid(value: Any) -> str | None:
    """A UID from outside when it has the form of one (digits and dots, at most 64), else None: only such
    strings reach logs, file names and the feed's topics."""
    text = str(value or "").strip().rstrip("\0")
    return text if _UID.fullmatch(text) else None


def peer(event: Any) -> str:
    """The calling AE title and address, for logs."""
    try:
        req = event.assoc.requestor
        title = "".join(c for c in str(req.ae_title) if c.isprintable())[:16]
        return f"{title}@{req.address}"
    except Exception:
        return "?"
