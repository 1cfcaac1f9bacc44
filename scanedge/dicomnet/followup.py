"""The DICOM node's follow-up: each series compared live with the patient's prior study.

On the first instance of a series the prior is looked up in the background (a bounded pool of lookup
threads): first in the local prior store (:mod:`scanedge.dicomnet.prior_store`), then in the PACS
(:func:`~scanedge.dicomnet.priors.find_prior_dimse` or :func:`~scanedge.dicomnet.priors.find_prior_dicomweb`
with the configured :class:`~scanedge.dicomnet.priors.PriorRules`). A prior from the PACS brings its lesions
from a scanedge lesion SEG of the prior study when there is one (its segments' Tracking UIDs carry over, so
a lesion keeps its UID from study to study through the PACS); otherwise its images are segmented with the
node's own model and the lesions get fresh Tracking UIDs. Meanwhile every frame's lesion mask goes to the
series' :class:`~scanedge.runtime.core.followup.LiveComparison`, whose answer each published RESULT carries
(``change``, and the ``change`` frame once the slice has been compared).

At completion, before the outputs are built, the whole series is compared
(:attr:`OpenSeries.comparisons <scanedge.dicomnet.series.OpenSeries.comparisons>`) and, with a prior store
configured, the series is put in it as the prior of the patient's next study.

Nothing here fails a series: an unreachable PACS, a lookup past its time, a registration that does not
converge or a series past the memory bound leaves the series segmented as usual, its RESULTs saying
``no_prior`` or ``withheld`` with the reason. Reasons and log lines name UIDs and sources, never the patient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge.dicomnet.prior_store import PriorRecord, PriorStore, PriorStoreConfig
from scanedge.dicomnet.priors import (
    CurrentStudy,
    DicomwebSource,
    DimseSource,
    PriorLimits,
    PriorResult,
    PriorRules,
    find_prior_dicomweb,
    find_prior_dimse,
)
from scanedge.errors import ConfigError, InputError
from scanedge.imaging.followup import require_followup_extra
from scanedge.imaging.lesion_seg import LESION_SEG_DESCRIPTION, is_lesion_seg_dataset, lesion_seg_from_dataset
from scanedge.imaging.registration import RegistrationConfig, VolumeGeometry
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceLimits

if TYPE_CHECKING:  # scipy and SimpleITK (the followup extra) are imported only when follow-up is configured
    from scanedge.dicomnet.series import OpenSeries
    from scanedge.imaging.followup import PriorVolume, SeriesChange
    from scanedge.manifest import Manifest
    from scanedge.runtime.core.followup import LiveComparison
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = [
    "LESION_SEG_DESCRIPTION",
    "ChangeUpdate",
    "FollowupConfig",
    "NodeFollowup",
    "lesion_mask",
    "prior_from_record",
    "read_lesion_seg",
    "with_manifest_rules",
]

_log = logging.getLogger("scanedge.dicomnet")


@dataclass(frozen=True)
class FollowupConfig:
    """Where the node looks for priors and how it compares (``scanedge dicom-listen --prior-...``).

    Attributes:
        pacs: the PACS asked over DIMSE (C-FIND, C-GET), or None.
        dicomweb: the PACS asked over DICOMweb (QIDO-RS, WADO-RS), or None (used when ``pacs`` is None).
        store: the local prior store (every completed series is put in it), or None.
        rules: which earlier series is a prior.
        limits: bounds on a PACS lookup (per-step timeout, instance count and size).
        registration: registration bounds (time budget, quality thresholds).
        min_slices: contiguous slices held before the first live comparison; 0: only at completion.
        reregister_every: new slices after which a series is compared again.
        max_voxels: voxels held per series for the comparison; larger series are not compared.
        wait_s: at completion, how long the outputs wait for the lookup and a comparison in flight.
        lookups: prior lookups at once (threads).
        registrations: comparisons at once over all series.
        model: the model whose masks are compared (manifest name, a one-input model); None: the first one-input
            model.
        lesion_class: the class compared (a class name of that model); None: every foreground class.
        updates_per_comparison: after a live comparison, at most this many slices already published are
            republished with their new change plane (the rest follow after the next comparison); the
            comparison at completion republishes every slice whose plane changed.
    """

    pacs: DimseSource | None = None
    dicomweb: DicomwebSource | None = None
    store: PriorStoreConfig | None = None
    rules: PriorRules = field(default_factory=PriorRules)
    limits: PriorLimits = field(default_factory=PriorLimits)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    min_slices: int = 8
    reregister_every: int = 8
    max_voxels: int = 48 * 1024 * 1024
    wait_s: float = 120.0
    lookups: int = 2
    registrations: int = 1
    model: str | None = None
    lesion_class: str | None = None
    updates_per_comparison: int = 64

    def __post_init__(self) -> None:
        if self.updates_per_comparison < 1:
            raise ConfigError("follow-up updates_per_comparison must be >= 1")
        if self.pacs is None and self.dicomweb is None and self.store is None:
            raise ConfigError("follow-up needs a prior source: a PACS (DIMSE or DICOMweb) or a prior store")
        if self.lookups < 1 or self.registrations < 1 or self.reregister_every < 1 or self.min_slices < 0:
            raise ConfigError("follow-up lookups, registrations and reregister_every must be >= 1, min_slices >= 0")
        if not self.wait_s > 0 or self.max_voxels < 1:
            raise ConfigError("follow-up wait_s must be > 0 and max_voxels >= 1")

    def describe(self) -> str:
        """The sources in words, for the start-up log line."""
        parts = []
        if self.store is not None:
            parts.append(f"prior store {self.store.root}")
        if self.pacs is not None:
            parts.append(self.pacs.describe())
        elif self.dicomweb is not None:
            parts.append(self.dicomweb.describe())
        return " then ".join(parts) + f" ({self.rules.describe()})"


def with_manifest_rules(config: FollowupConfig, manifest: Manifest) -> FollowupConfig:
    """``config`` with what the model's manifest declares (its ``followup`` section) where the node was given
    nothing: the prior-matching rules when ``config.rules`` are the defaults, the compared class when none
    was named. The node's own flags always win."""
    spec = manifest.followup
    if spec is None:
        return config
    changes: dict[str, Any] = {}
    if config.rules == PriorRules():
        changes["rules"] = PriorRules(
            same_modality=spec.same_modality,
            same_body_part=spec.same_body_part,
            description_regex=spec.prior_description,
        )
    if config.lesion_class is None and spec.lesion_class is not None:
        changes["lesion_class"] = spec.lesion_class
    return dataclasses.replace(config, **changes) if changes else config


def lesion_mask(mask: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    """The lesion voxels of a label mask: the given label values, or every foreground label."""
    mask = np.asarray(mask)
    return mask > 0 if labels is None else np.isin(mask, list(labels))


def prior_from_record(record: PriorRecord, source: str, rules: str) -> PriorVolume | None:
    """A stored series as a prior to compare with; None when the entry holds no intensities to register."""
    from scanedge.imaging.followup import PriorVolume

    if record.intensities is None or record.intensities.shape != record.labels.shape:
        return None
    geometry = VolumeGeometry(
        spacing=(record.spacing[2], record.spacing[1], record.spacing[0]),
        origin=record.origin,
        direction=record.direction,
    )
    uids = {n + 1: uid for n, uid in enumerate(record.tracking_uids)}
    tracking = np.asarray(record.labels, dtype=np.int32)
    tracking = np.where(tracking <= len(uids), tracking, 0)  # a label without a UID is not tracked
    return PriorVolume(
        record.study_uid,
        record.series_uid,
        record.study_date,
        np.asarray(record.intensities, dtype=np.float32),
        geometry,
        tracking,
        uids,
        source=source,
        rules=rules,
    )


@dataclass(frozen=True)
class ChangeUpdate:
    """A slice already published, to be published again with where its series' comparison stands now
    (docs/protocol.md section 9, change updates).

    Attributes:
        instance: its SOP Instance UID.
        index: the ``index`` its RESULT carried.
        position_mm: the ``position_mm`` its RESULT carried.
        model: the ``model`` its RESULT carried.
        change: the series against its prior, as this slice's RESULT would carry it now.
        plane: the slice's change codes (the ``change`` frame), or None while it is not compared.
    """

    instance: str
    index: int | None
    position_mm: float | None
    model: str
    change: SeriesChange
    plane: np.ndarray | None


#: receives a series' change updates, in order (called with the series' publication lock held)
UpdateSink = Callable[[str, Sequence[ChangeUpdate]], None]
_MAX_SHOWN = 8192  # slices of one series remembered as published (a longer series' later slices get no update)


@dataclass(frozen=True)
class _Shown:
    instance: str
    index: int | None
    position_mm: float | None
    model: str
    digest: bytes | None  # of the change plane published last; None: no lesion pixel shown (no plane or all 0)


def _digest(plane: np.ndarray | None) -> bytes | None:
    if plane is None or not plane.any():
        return None
    return hashlib.blake2b(np.ascontiguousarray(plane).tobytes(), digest_size=16).digest()


@dataclass
class _Tracked:
    engine: LiveComparison
    patient_id: str  # for the prior store's key only: never logged
    current: CurrentStudy
    # the slices published (by slice key) and their plane; guarded by ``order``, which also orders this series'
    # publications: a live RESULT and the updates after a comparison are handed to the publisher in that order
    shown: OrderedDict[Hashable, _Shown] = field(default_factory=OrderedDict)
    order: threading.Lock = field(default_factory=threading.Lock)


class NodeFollowup:
    """The node's follow-up: prior lookups, one live comparison per open series, the store at completion.

    Args:
        config: sources, rules and bounds.
        manifests: the node's models by name (the compared model and its lesion class are checked here).
        pools: the node's pipelines by model name (a PACS prior without a lesion SEG is segmented with them).
        busy_timeout_s: how long a lookup waits for a free pipeline.
        limits: per-image limits for the prior's images.
        max_series: series followed at once (the oldest is dropped past it).
    """

    def __init__(
        self,
        config: FollowupConfig,
        manifests: Mapping[str, Manifest],
        pools: Mapping[str, queue.Queue[Pipeline]],
        *,
        busy_timeout_s: float = 60.0,
        limits: SliceLimits = DEFAULT_LIMITS,
        max_series: int = 64,
    ) -> None:

        from scanedge.runtime.core.followup import LiveConfig

        require_followup_extra("follow-up")
        one_input = [n for n, m in manifests.items() if m.inputs is None]
        name = config.model or (one_input or list(manifests))[0]
        if name not in manifests:
            raise ConfigError(f"follow-up model {name!r} is not one of the node's models ({', '.join(manifests)})")
        if manifests[name].inputs is not None:  # its masks come from pairs of series, never one series alone
            raise ConfigError(
                f"follow-up compares one series with its prior; model {name!r} takes several series of one study: "
                "serve a one-input model beside it for follow-up"
            )
        self.config = config = with_manifest_rules(config, manifests[name])
        self.model = name
        classes = [c.name for c in manifests[name].classes]
        if config.lesion_class is not None and config.lesion_class not in classes[1:]:
            raise ConfigError(f"follow-up lesion class {config.lesion_class!r} is not a class of model {name!r}")
        self.labels = None if config.lesion_class is None else (classes.index(config.lesion_class),)
        self.pools = pools
        self.busy_timeout_s = busy_timeout_s
        self.limits = limits
        self.max_series = max_series
        self.live = LiveConfig(
            min_slices=config.min_slices,
            reregister_every=config.reregister_every,
            max_voxels=config.max_voxels,
            complete_wait_s=config.wait_s,
            registration=config.registration,
        )
        self.store = PriorStore.open(config.store) if config.store is not None else None
        self._gate = threading.Semaphore(config.registrations)
        self._lookups = ThreadPoolExecutor(config.lookups, thread_name_prefix="scanedge-prior")
        self._lock = threading.Lock()
        self._series: OrderedDict[str, _Tracked] = OrderedDict()
        #: where change updates go (the intake's publisher); None: no updates (nothing is published)
        self.sink: UpdateSink | None = None

    def close(self) -> None:
        """Stop taking lookups; those running end within their own timeouts."""
        self._lookups.shutdown(wait=False, cancel_futures=True)

    # --- per instance (association threads) ----------------------------------------------------------

    def begin(self, series_uid: str, ds: Any) -> None:
        """An instance of ``series_uid`` arrived: on the series' first, start its prior lookup."""
        from scanedge.runtime.core.followup import LiveComparison

        with self._lock:
            if series_uid in self._series:
                return
            current = CurrentStudy(
                patient_id=_text(ds, "PatientID"),
                study_uid=_text(ds, "StudyInstanceUID"),
                study_date=_text(ds, "StudyDate"),
                modality=_text(ds, "Modality"),
                body_part=_text(ds, "BodyPartExamined"),
                series_description=_text(ds, "SeriesDescription"),
            )
            tracked = _Tracked(LiveComparison(series_uid, self.live, self._gate), current.patient_id, current)
            tracked.engine.on_compared = lambda: self._republish(series_uid, tracked, final=False)
            self._series[series_uid] = tracked
            while len(self._series) > self.max_series:
                old, _ = self._series.popitem(last=False)
                _log.warning("follow-up of series %s dropped: more than %d series followed", old, self.max_series)
        try:
            self._lookups.submit(self._lookup, series_uid, tracked)
        except RuntimeError:  # shut down: the node is stopping
            tracked.engine.no_prior("the node is stopping")

    def add(self, series_uid: str, model: str, slice_: Slice, mask: np.ndarray) -> None:
        """One frame's label mask of ``model``, held for the comparison (other models' are not compared)."""
        if model != self.model:
            return
        tracked = self._get(series_uid)
        if tracked is not None:
            tracked.engine.add(slice_, lesion_mask(mask, self.labels))

    def answer(self, series_uid: str, model: str, slice_: Slice) -> tuple[SeriesChange | None, np.ndarray | None]:
        """What the frame's RESULT carries: (``change``, the ``change`` frame or None); (None, None) for another
        model or a series not followed."""
        if model != self.model:
            return None, None
        tracked = self._get(series_uid)
        if tracked is None:
            return None, None
        answer = tracked.engine.answer(slice_)
        return answer.change, answer.plane

    def publish(
        self,
        series_uid: str,
        model: str,
        slice_: Slice,
        shown: tuple[str, int | None, str],
        send: Callable[[SeriesChange | None, np.ndarray | None], None],
    ) -> None:
        """Publish one frame's RESULT: ``send`` is called with what it carries (:meth:`answer`) and the slice is
        remembered as published (``shown``: instance, index, model label), so a later comparison republishes it
        (:class:`ChangeUpdate`). ``send`` runs under the series' publication lock, ordered with its updates."""
        from scanedge.runtime.core.followup import slice_key

        tracked = self._get(series_uid) if model == self.model else None
        if tracked is None:
            send(None, None)
            return
        with tracked.order:
            answer = tracked.engine.answer(slice_)
            send(answer.change, answer.plane)
            key = slice_key(slice_)
            if key in tracked.shown or len(tracked.shown) < _MAX_SHOWN:
                instance, index, label = shown
                position = slice_.geometry.position_along_normal
                tracked.shown[key] = _Shown(instance, index, position, label, _digest(answer.plane))

    # --- at completion (the completion thread) -------------------------------------------------------

    def complete(self, series: OpenSeries) -> None:
        """Compare the whole series (``series.comparisons``) and put it in the prior store; never raises."""
        from scanedge.dicomnet.series import ComparedSeries

        with self._lock:
            tracked = self._series.pop(series.series_uid, None)
        if tracked is None:
            return
        try:
            outcome = tracked.engine.complete(self.config.wait_s)
            self._republish(series.series_uid, tracked, final=True)
            if outcome.comparison is None:
                _log.info("series %s not compared: %s", series.series_uid, outcome.change.reason)
                return
            frames = tuple((sop, frame + 1) for sop, frame in outcome.slices)
            series.comparisons[self.model] = ComparedSeries(outcome.comparison, frames)
            change = outcome.change
            _log.info(
                "series %s compared with its prior: %s%s",
                series.series_uid,
                change.status,
                f" ({change.reason})" if change.reason else "",
            )
            if self.store is not None and outcome.volume is not None:
                self._put(tracked, series.series_uid, outcome)
        except Exception as exc:  # a bug must not keep the series' outputs from being written
            _log.error("series %s: follow-up at completion failed (%s)", series.series_uid, type(exc).__name__)

    # --- change updates (a comparison's thread, or the completion thread) ---------------------------

    def _republish(self, series_uid: str, tracked: _Tracked, *, final: bool) -> None:
        """After a comparison: the published slices whose change plane differs from the one they were last
        published with (at most ``updates_per_comparison`` unless ``final``), and one more (the slice published
        last) so that every subscriber sees the series' status and counts; never raises."""
        sink = self.sink
        if sink is None:
            return
        try:
            with tracked.order:
                keys = list(tracked.shown)
            if not keys:
                return
            answers = {key: tracked.engine.answer_at(key) for key in keys}  # the planes, outside the lock
            limit = None if final else self.config.updates_per_comparison
            with tracked.order:
                updates: list[ChangeUpdate] = []
                last = next(reversed(tracked.shown))
                for key, answer in answers.items():
                    shown = tracked.shown.get(key)
                    if shown is None:
                        continue
                    digest = _digest(answer.plane)
                    if digest == shown.digest and key != last:
                        continue
                    if limit is not None and len(updates) >= limit and key != last:
                        continue  # left for the next comparison: its digest still differs then
                    tracked.shown[key] = _Shown(shown.instance, shown.index, shown.position_mm, shown.model, digest)
                    change = answer.change
                    updates.append(
                        ChangeUpdate(shown.instance, shown.index, shown.position_mm, shown.model, change, answer.plane)
                    )
                sink(series_uid, updates)
        except Exception as exc:  # an update lost must not break the comparison or the outputs
            _log.warning("series %s: change updates not published (%s)", series_uid, type(exc).__name__)

    # --- inside ----------------------------------------------------------------------------------------

    def _get(self, series_uid: str) -> _Tracked | None:
        with self._lock:
            return self._series.get(series_uid)

    def _put(self, tracked: _Tracked, series_uid: str, outcome: Any) -> None:
        assert self.store is not None
        if not tracked.patient_id or not tracked.current.study_date:
            _log.info("series %s not put in the prior store: no Patient ID or Study Date", series_uid)
            return
        report = outcome.comparison.report
        geometry = outcome.comparison.geometry
        uids = [report.uids[n] for n in range(1, len(report.uids) + 1)]
        volume = np.asarray(outcome.volume)
        finite16 = bool(np.all(np.abs(volume) < 60000))
        record = PriorRecord(
            study_uid=tracked.current.study_uid,
            series_uid=series_uid,
            study_date=tracked.current.study_date,
            labels=np.asarray(report.tracking, dtype=np.uint16 if len(uids) < 65535 else np.int32),
            spacing=(geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]),
            origin=geometry.origin,
            direction=geometry.direction,
            lesion_ids=tuple(range(1, len(uids) + 1)),
            intensities=volume.astype(np.float16 if finite16 else np.float32),
            tracking_uids=tuple(uids),
        )
        try:
            self.store.put(tracked.patient_id, record)
        except Exception as exc:
            _log.warning("series %s not put in the prior store (%s)", series_uid, type(exc).__name__)

    def _lookup(self, series_uid: str, tracked: _Tracked) -> None:
        """The prior of one series: the store, then the PACS; tells the engine either way, never raises."""
        reasons: list[str] = []
        try:
            prior = self._from_store(tracked, reasons) or self._from_pacs(tracked, reasons)
        except Exception as exc:
            _log.warning("series %s: prior lookup failed (%s)", series_uid, type(exc).__name__)
            prior, reasons = None, [*reasons, f"prior lookup failed ({type(exc).__name__})"]
        if prior is not None:
            _log.info(
                "series %s: prior series %s of study %s (%s)",
                series_uid,
                prior.series_uid,
                prior.study_uid,
                prior.source,
            )
            tracked.engine.set_prior(prior)
        else:
            tracked.engine.no_prior("; ".join(reasons) or "no prior study found")

    def _from_store(self, tracked: _Tracked, reasons: list[str]) -> PriorVolume | None:
        if self.store is None:
            return None
        current = tracked.current
        if not tracked.patient_id or not current.study_date:
            reasons.append("prior store: the current study has no Patient ID or Study Date")
            return None
        record = self.store.latest(tracked.patient_id, current.study_date, exclude_study_uid=current.study_uid)
        if record is None:
            reasons.append("prior store: no earlier study of this patient")
            return None
        prior = prior_from_record(record, "prior store", self.config.rules.describe())
        if prior is None:
            reasons.append(f"prior store: series {record.series_uid} holds no intensities to register")
        return prior

    def _from_pacs(self, tracked: _Tracked, reasons: list[str]) -> PriorVolume | None:
        cfg = self.config
        if cfg.pacs is not None:
            result = find_prior_dimse(tracked.current, cfg.pacs, cfg.rules, cfg.limits)
        elif cfg.dicomweb is not None:
            result = find_prior_dicomweb(tracked.current, cfg.dicomweb, cfg.rules, cfg.limits)
        else:
            return None
        if not result.found:
            reasons.append(f"{result.source}: {result.reason}")
            return None
        try:
            return self._prior_volume(result)
        except Exception as exc:
            why = getattr(exc, "message", "") or type(exc).__name__
            reasons.append(f"{result.source}: prior series {result.series_uid} could not be used ({why})")
            return None

    def _prior_volume(self, result: PriorResult) -> PriorVolume:
        """The prior's images stacked, and its lesions: from a scanedge lesion SEG of the prior study (its
        Tracking UIDs carry over), else segmented with the node's model (fresh Tracking UIDs)."""
        from scanedge.imaging.dicom import slices_from_dicom
        from scanedge.imaging.dicom.quiet import pydicom_quiet
        from scanedge.imaging.followup import PriorVolume, volume_from_slices
        from scanedge.imaging.lesion_change import initial_tracking

        slices: list[Slice] = []
        with pydicom_quiet():
            for ds in result.instances:
                slices += slices_from_dicom(ds, limits=self.limits)
        volume, geometry, order = volume_from_slices(slices)
        if volume.size > self.config.max_voxels:
            raise ConfigError(f"the prior has more than {self.config.max_voxels} voxels")
        ordered = [slices[i] for i in order]
        found = self._lesions_from_seg(result, ordered)
        if found is not None:
            tracking, uids, seg_series = found
            source = f"PACS {result.source}, lesions from SEG series {seg_series}"
        else:
            tracking, uids = initial_tracking(np.stack(self._segment(ordered)), geometry.spacing)
            source = f"PACS {result.source}, lesions segmented by {self.model}"
        return PriorVolume(
            result.study_uid,
            result.series_uid,
            result.study_date,
            volume,
            geometry,
            tracking,
            uids,
            source=source,
            rules=result.rules,
        )

    def _lesions_from_seg(
        self, result: PriorResult, slices: list[Slice]
    ) -> tuple[np.ndarray, dict[int, str], str] | None:
        """The prior's tracking volume and Tracking UIDs from a scanedge lesion SEG of the prior study that
        references the prior series (docs/dicom-node.md, Follow-up); None when there is none or it cannot be
        read (the reason is logged)."""
        try:
            for seg_series, ds in self._seg_candidates(result):
                found = read_lesion_seg(ds, result.series_uid, slices)
                if found is not None:
                    return (*found, seg_series)
        except Exception as exc:
            _log.info(
                "prior study %s: no usable lesion SEG (%s); its images are segmented instead",
                result.study_uid,
                type(exc).__name__,
            )
        return None

    def _seg_candidates(self, result: PriorResult) -> list[tuple[str, Any]]:
        """(Series Instance UID, dataset) of every scanedge lesion SEG in the prior study (bounded)."""
        cfg = self.config
        if cfg.pacs is not None:
            return _segs_dimse(cfg.pacs, result.study_uid, cfg.limits)
        if cfg.dicomweb is not None:
            return _segs_dicomweb(cfg.dicomweb, result.study_uid, cfg.limits)
        return []

    def _segment(self, slices: list[Slice]) -> list[np.ndarray]:
        """The lesion masks of ``slices`` (in order), with one of the node's pipelines of the compared model."""
        from scanedge.imaging.series import context_window

        pool = self.pools[self.model]
        pipe = pool.get(timeout=self.busy_timeout_s)
        try:
            k = pipe.manifest.input.context_slices
            return [
                lesion_mask(
                    pipe.run(s, context=context_window(slices, i, k) if k else (), overlay=False).mask, self.labels
                )
                for i, s in enumerate(slices)
            ]
        finally:
            pool.put(pipe)


_MAX_SEGS = 4  # lesion SEG series read per prior study


def read_lesion_seg(ds: Any, series_uid: str, slices: Sequence[Slice]) -> tuple[np.ndarray, dict[int, str]] | None:
    """A scanedge lesion SEG (one segment per tracked lesion, each with its Tracking UID) as the tracking volume
    on the grid of ``slices`` (the prior series, in z order) and its UIDs; None when ``ds`` is not a scanedge
    lesion SEG of ``series_uid`` or does not fit the series (logged: the next candidate is tried). Read by
    :func:`scanedge.imaging.lesion_seg.lesion_seg_from_dataset`, the reader batch follow-up uses for files."""
    if not is_lesion_seg_dataset(ds, series_uid):
        return None
    try:
        seg = lesion_seg_from_dataset(ds, slices, name=f"lesion SEG {_text(ds, 'SOPInstanceUID')}")
    except InputError as exc:
        _log.info("%s", exc.message)
        return None
    return seg.tracking, seg.uids


def _segs_dimse(pacs: DimseSource, study_uid: str, limits: PriorLimits) -> list[tuple[str, Any]]:
    """C-FIND the SEG series of the study, C-GET those described as scanedge lesions (bounded)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import SegmentationStorage
    from pynetdicom import AE, build_role, evt

    from scanedge.dicomnet.priors import STUDY_ROOT_FIND, STUDY_ROOT_GET

    def associate(handlers: list[Any] | None = None) -> Any:
        ae = AE(ae_title=pacs.calling_aet)
        for t in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, t, limits.timeout_s)
        ae.add_requested_context(STUDY_ROOT_FIND)
        ae.add_requested_context(STUDY_ROOT_GET)
        ae.add_requested_context(SegmentationStorage)
        roles: list[Any] = [build_role(SegmentationStorage, scp_role=True)]
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.called_aet, ext_neg=roles, evt_handlers=handlers or [])
        if not assoc.is_established:
            raise ConnectionError("no association")
        return assoc

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = "SEG"
    query.SeriesDescription = ""
    found: list[str] = []
    assoc = associate()
    try:
        for status, ident in assoc.send_c_find(query, STUDY_ROOT_FIND):
            if status is None or int(status.get("Status", 0xC000)) not in (0x0000, 0xFF00, 0xFF01):
                break
            if ident is not None and _text(ident, "SeriesDescription").startswith(LESION_SEG_DESCRIPTION):
                found.append(_text(ident, "SeriesInstanceUID"))
                if len(found) >= _MAX_SEGS:
                    break
    finally:
        assoc.release()
    out: list[tuple[str, Any]] = []
    for seg_series in found:
        received: list[Any] = []

        def on_store(event: Any, into: list[Any] = received) -> int:
            if len(into) >= 1 or len(event.request.DataSet.getvalue()) > limits.max_instance_bytes:
                return 0xA700
            ds = event.dataset
            ds.file_meta = event.file_meta
            into.append(ds)
            return 0x0000

        get = Dataset()
        get.QueryRetrieveLevel = "SERIES"
        get.StudyInstanceUID = study_uid
        get.SeriesInstanceUID = seg_series
        assoc = associate([(evt.EVT_C_STORE, on_store)])
        try:
            for _status, _ in assoc.send_c_get(get, STUDY_ROOT_GET):
                pass
        finally:
            assoc.release()
        out += [(seg_series, ds) for ds in received]
    return out


def _segs_dicomweb(pacs: DicomwebSource, study_uid: str, limits: PriorLimits) -> list[tuple[str, Any]]:
    """QIDO-RS the SEG series of the study, WADO-RS those described as scanedge lesions (bounded)."""
    from dicomweb_client.api import DICOMwebClient
    from pydicom.dataset import Dataset

    client = DICOMwebClient(url=pacs.url, timeout=limits.timeout_s)
    client.set_http_retry_params(retry=False)
    listed = client.search_for_series(
        study_instance_uid=study_uid,
        search_filters={"Modality": "SEG"},
        fields=["SeriesDescription"],
        limit=limits.max_series_per_study,
    )
    out: list[tuple[str, Any]] = []
    for item in listed[: limits.max_series_per_study]:
        series = Dataset.from_json(item)
        if not _text(series, "SeriesDescription").startswith(LESION_SEG_DESCRIPTION):
            continue
        seg_series = _text(series, "SeriesInstanceUID")
        instances = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=seg_series, limit=2)
        for inst in instances[:1]:
            sop = _text(Dataset.from_json(inst), "SOPInstanceUID")
            out.append((seg_series, client.retrieve_instance(study_uid, seg_series, sop)))
        if len(out) >= _MAX_SEGS:
            break
    return out


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()
