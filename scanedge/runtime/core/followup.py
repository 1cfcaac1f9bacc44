"""The live follow-up comparison of one series, while its slices arrive: the engine the DICOM node and the
ZeroMQ runtime share (it knows no networking).

A :class:`LiveComparison` per series takes each slice and its lesion mask as they arrive (any order; a slice
re-sent at a position already held replaces it), is told the prior (:meth:`~LiveComparison.set_prior`) or why
there is none (:meth:`~LiveComparison.no_prior`) once the lookup ends, and compares in a background thread
(:func:`scanedge.imaging.followup.compare_series`) once ``min_slices`` contiguous slices are held, again at
most every ``reregister_every`` new slices, and once on the whole series at :meth:`~LiveComparison.complete`.
:meth:`~LiveComparison.answer` says, for one slice, where the comparison stands (``searching`` while the prior
is looked up, ``registering`` while it is aligned, then the comparison's summary) and, once the slice lies in
a compared volume, its plane of change codes (:func:`~scanedge.imaging.followup.change_image`).

Partial volumes: the comparison runs on the longest run of contiguous slices held (a gap larger than 1.5
slice steps ends a run), so a slab compares consistently: the prior's lesions are resampled onto the current
grid and only those with voxels in it are compared.

Bounds: one comparison at a time per series; at most ``gate``'s count at once over all series (a shared
semaphore); each registration within :class:`~scanedge.imaging.registration.RegistrationConfig`'s time
budget; at most ``max_voxels`` held per series (a series past it stops holding slices and says so in
``reason``). Nothing here raises into the caller for a failed lookup, registration or comparison: the answer
says ``withheld`` or ``no_prior`` with the reason. Thread-safe: :meth:`add`, :meth:`answer` and the rest may be
called from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scanedge.errors import ConfigError
from scanedge.imaging.followup import (
    PriorVolume,
    SeriesChange,
    SeriesComparison,
    change_image,
    compare_series,
    require_followup_extra,
    volume_from_slices,
)
from scanedge.imaging.lesion_change import ChangeConfig
from scanedge.imaging.registration import RegistrationConfig
from scanedge.imaging.slices import Slice, SliceLimits

if TYPE_CHECKING:
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = [
    "LiveAnswer",
    "LiveComparison",
    "LiveConfig",
    "LiveOutcome",
    "PriorProvider",
    "SeriesFollowups",
    "folder_prior",
    "slice_key",
]

_log = logging.getLogger("scanedge.followup")


@dataclass(frozen=True)
class LiveConfig:
    """When and how a series is compared live.

    Attributes:
        min_slices: contiguous slices held before the first comparison; 0: only at completion.
        reregister_every: new slices after which a series is compared again (at most one at a time).
        max_voxels: voxels held per series; a larger series is not compared (its answers say why).
        complete_wait_s: at completion, how long to wait for the prior lookup and a comparison in flight.
        registration: registration bounds (time budget, thresholds).
        change: change-classification thresholds.
    """

    min_slices: int = 8
    reregister_every: int = 8
    max_voxels: int = 48 * 1024 * 1024
    complete_wait_s: float = 60.0
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    change: ChangeConfig = field(default_factory=ChangeConfig)

    def __post_init__(self) -> None:
        if self.min_slices < 0 or self.reregister_every < 1 or self.max_voxels < 1:
            raise ConfigError("min_slices must be >= 0, reregister_every and max_voxels >= 1")
        if not self.complete_wait_s >= 0:
            raise ConfigError("complete_wait_s must be >= 0")


@dataclass(frozen=True)
class LiveAnswer:
    """Where one slice's comparison stands.

    Attributes:
        change: what its RESULT carries (``SeriesChange``).
        plane: the slice's change codes (uint8, its grid), or None while no compared volume holds it.
    """

    change: SeriesChange
    plane: np.ndarray | None = None


@dataclass(frozen=True)
class LiveOutcome:
    """The comparison of a completed series.

    Attributes:
        comparison: the comparison of the whole series (None when the series was past ``max_voxels`` or
            could not be stacked; ``change`` says why).
        slices: the (SOP Instance UID, frame index from 0) of the slice behind each z plane of the comparison.
        change: its summary, as a RESULT would carry it.
        volume: the intensities compared (z, y, x, float32, the comparison's z order), to keep as the prior of
            a later study; None without a comparison.
    """

    comparison: SeriesComparison | None
    slices: tuple[tuple[str, int], ...]
    change: SeriesChange
    volume: np.ndarray | None = None


#: finds the prior of a series from its Series Instance UID and first slice: the prior, or why there is none
#: (a reason without patient identifiers); it may take its time (it runs in a lookup thread) and may raise
PriorProvider = Callable[[str, Slice], "PriorVolume | str"]


def slice_key(slice_: Slice) -> Hashable:
    """Where a slice sits: its position along the normal (to 1 µm), else its instance and frame."""
    position = slice_.geometry.position_along_normal
    if position is not None and slice_.geometry.image_position is not None:
        return round(position, 3)
    return (slice_.identity.sop_instance_uid, slice_.identity.frame_index)


@dataclass(frozen=True)
class _Held:
    slice_: Slice
    mask: np.ndarray  # bool, the slice's grid


@dataclass(frozen=True)
class _Done:
    comparison: SeriesComparison
    keys: tuple[Hashable, ...]  # the key of each z plane
    version: int  # the held set it was computed from


class LiveComparison:
    """One series compared with its prior as its slices arrive (see the module docstring).

    Args:
        series_uid: the series (for log lines).
        config: when and how to compare.
        gate: shared bound on comparisons running at once over all series; None: one of its own.
    """

    def __init__(
        self, series_uid: str, config: LiveConfig | None = None, gate: threading.Semaphore | None = None
    ) -> None:
        self.series_uid = series_uid
        self.config = config or LiveConfig()
        self._gate = gate or threading.Semaphore(1)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._held: dict[Hashable, _Held] = {}
        self._voxels = 0
        self._version = 0  # bumped by every change to what is held
        self._shape: tuple[int, int] | None = None
        self._orientation: tuple[float, ...] | None = None
        self._prior: PriorVolume | None = None
        self._no_prior: str | None = None
        self._prior_known = threading.Event()
        self._over: str | None = None  # why the series is not compared (memory bound)
        self._running = False
        self._done: _Done | None = None
        self._failure: str | None = None
        self._last_start = 0  # slices held when the last comparison started
        self._closed = False
        #: called (no argument, in the comparison's background thread, before the next comparison may start)
        #: each time a live comparison ends, compared or not: the node republishes the slices' change with it
        self.on_compared: Callable[[], None] | None = None

    # --- input ---------------------------------------------------------------------------------------

    def add(self, slice_: Slice, mask: np.ndarray) -> None:
        """Hold one slice and its lesion mask (non-zero: lesion); a slice at a held position replaces it.

        Slices that cannot join the volume (colour, another orientation or size, no geometry) are skipped."""
        geometry = slice_.geometry
        if slice_.is_color or geometry.image_orientation is None or geometry.pixel_spacing is None:
            return
        if np.asarray(mask).shape[:2] != slice_.shape:
            return
        with self._lock:
            if self._closed or self._over is not None:
                return
            if self._shape is None:
                self._shape, self._orientation = slice_.shape, tuple(geometry.image_orientation)
            if slice_.shape != self._shape or not np.allclose(
                geometry.image_orientation, self._orientation or (), atol=1e-4
            ):
                return
            key = slice_key(slice_)
            old = self._held.get(key)
            voxels = self._voxels + (0 if old is not None else slice_.shape[0] * slice_.shape[1])
            if voxels > self.config.max_voxels:
                self._over = f"series larger than the follow-up bound of {self.config.max_voxels} voxels; not compared"
                self._held.clear()
                self._voxels = 0
                _log.warning("series %s: %s", self.series_uid, self._over)
                return
            self._held[key] = _Held(slice_, np.asarray(mask) > 0)
            self._voxels = voxels
            self._version += 1
            self._maybe_start()

    def set_prior(self, prior: PriorVolume) -> None:
        """The prior was found: compare against it (from now on, in the background)."""
        with self._lock:
            if self._prior_known.is_set():
                return
            self._prior = prior
            self._prior_known.set()
            self._maybe_start()

    def no_prior(self, reason: str) -> None:
        """The lookup ended without a prior (``reason`` says why; never a patient identifier)."""
        with self._lock:
            if self._prior_known.is_set():
                return
            self._no_prior = reason or "no prior study found"
            self._prior_known.set()

    # --- output --------------------------------------------------------------------------------------

    @property
    def slices(self) -> int:
        """Slices held now."""
        with self._lock:
            return len(self._held)

    def answer(self, slice_: Slice) -> LiveAnswer:
        """Where the comparison stands for ``slice_``, and its change plane once a compared volume holds it."""
        return self.answer_at(slice_key(slice_))

    def answer_at(self, key: Hashable) -> LiveAnswer:
        """:meth:`answer` for the slice at ``key`` (:func:`slice_key`), held or not."""
        with self._lock:
            status = self._status()
            if status is not None:
                return LiveAnswer(status)
            done = self._done
        if done is None:  # prior known, nothing compared yet
            return LiveAnswer(SeriesChange(status="registering"))
        try:
            z = done.keys.index(key)
        except ValueError:
            return LiveAnswer(done.comparison.summary())
        report = done.comparison.report
        plane = change_image(report.tracking[z], report) if done.comparison.status == "compared" else None
        return LiveAnswer(done.comparison.summary(z), plane)

    def complete(self, timeout_s: float | None = None) -> LiveOutcome:
        """The comparison of the whole series as held now: waits (``timeout_s``, default ``complete_wait_s``) for
        the prior lookup and a comparison in flight, then compares unless the last comparison already covered
        every slice. No slice is taken after it; never raises."""
        wait = self.config.complete_wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait  # one wait for both: the lookup, then a comparison in flight
        if not self._prior_known.wait(wait):
            self.no_prior(f"the prior lookup did not finish within {wait:g} s")
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.monotonic()))
            if self._over is not None:
                return LiveOutcome(None, (), self._status() or SeriesChange(status="withheld", reason=self._over))
            done = self._done if self._done is not None and self._done.version == self._version else None
            held = dict(self._held)
            prior, reason = self._prior, self._no_prior
            running, version = self._running, self._version
        if done is None or len(done.keys) != len(held):
            if running:
                reason = "a comparison of this series was still running at completion"
                return LiveOutcome(None, (), SeriesChange(status="withheld", reason=reason))
            done, failure = self._compare(held, prior, reason or "no prior study found", version=version, whole=True)
            if done is None:
                return LiveOutcome(None, (), SeriesChange(status="withheld", reason=failure))
            with self._lock:
                self._done = done
        ids = tuple((held[k].slice_.identity.sop_instance_uid, held[k].slice_.identity.frame_index) for k in done.keys)
        volume = np.stack([np.asarray(held[k].slice_.pixels, dtype=np.float32) for k in done.keys])
        return LiveOutcome(done.comparison, ids, done.comparison.summary(), volume)

    # --- under the lock --------------------------------------------------------------------------------

    def _status(self) -> SeriesChange | None:
        """The answer that does not depend on a comparison, or None."""
        if self._over is not None:
            if self._no_prior is not None:
                return SeriesChange(status="no_prior", reason=self._no_prior)
            return SeriesChange(status="withheld", reason=self._over)
        if not self._prior_known.is_set():
            return SeriesChange(status="searching")
        if self._no_prior is not None:
            return SeriesChange(status="no_prior", reason=self._no_prior)
        if self._failure is not None and self._done is None:
            return SeriesChange(status="withheld", reason=self._failure)
        return None

    def _maybe_start(self) -> None:
        cfg = self.config
        if self._running or self._closed or self._prior is None or self._over is not None or cfg.min_slices == 0:
            return
        count = len(self._held)
        if count < cfg.min_slices:
            return
        if self._done is not None and count - self._last_start < cfg.reregister_every:
            return
        self._running = True
        self._last_start = count
        held, prior, version = dict(self._held), self._prior, self._version
        threading.Thread(
            target=self._background, args=(held, prior, version), name=f"followup-{self.series_uid[-12:]}", daemon=True
        ).start()

    # --- the comparison ------------------------------------------------------------------------------

    def _background(self, held: dict[Hashable, _Held], prior: PriorVolume, version: int) -> None:
        try:
            done, failure = self._compare(held, prior, "", version=version, whole=False)
        except BaseException as exc:  # a background thread must never die silently
            done, failure = None, f"comparison failed ({type(exc).__name__})"
        with self._lock:
            if done is not None:
                self._done = done
                self._failure = None
            elif failure and self._done is None:
                self._failure = failure
            listener = self.on_compared
        if listener is not None:  # still "running": the next comparison's listener call comes after this one
            try:
                listener()
            except Exception as exc:
                _log.warning("series %s: the comparison listener failed (%s)", self.series_uid, type(exc).__name__)
        with self._lock:
            self._running = False
            self._idle.notify_all()
            self._maybe_start()  # slices that came meanwhile

    def _compare(
        self, held: dict[Hashable, _Held], prior: PriorVolume | None, no_prior_reason: str, *, version: int, whole: bool
    ) -> tuple[_Done | None, str]:
        """compare_series over the longest contiguous run held (``whole``: every slice held); never raises."""
        if not held:
            return None, "no slice of this series could be compared"
        keys = list(held)
        try:
            run = keys if whole else _longest_run(held)
            if len(run) < max(1, self.config.min_slices if not whole else 1):
                return None, ""
            slices = [held[k].slice_ for k in run]
            volume, geometry, order = volume_from_slices(slices)
            mask = np.stack([held[run[i]].mask for i in order]).astype(np.uint8)
            with self._gate:
                comparison = compare_series(
                    volume,
                    geometry,
                    mask,
                    prior,
                    registration=self.config.registration,
                    change=self.config.change,
                    no_prior_reason=no_prior_reason,
                )
        except Exception as exc:
            _log.warning("series %s: follow-up comparison failed (%s)", self.series_uid, type(exc).__name__)
            return None, f"comparison failed ({type(exc).__name__}: {str(exc)[:200]})"
        _log.info(
            "series %s: %s over %d slices (%s)", self.series_uid, comparison.status, len(run), comparison.reason or "ok"
        )
        return _Done(comparison, tuple(run[i] for i in order), version), ""


def _longest_run(held: dict[Hashable, _Held]) -> list[Hashable]:
    """The keys of the longest run of contiguous slices (a gap over 1.5 steps ends a run), in position order."""
    positions = {k: k for k in held if isinstance(k, float)}
    if len(positions) != len(held):  # no positions: the series as it is (volume_from_slices decides)
        return list(held)
    values = sorted(positions)
    ordered: list[Hashable] = list(values)
    if len(ordered) < 3:
        return ordered
    gaps = np.diff(values)
    step = float(np.min(gaps[gaps > 1e-3])) if np.any(gaps > 1e-3) else 1.0
    best: list[Hashable] = []
    start = 0
    for i, gap in enumerate([*gaps.tolist(), np.inf]):
        if gap > 1.5 * step:
            if i + 1 - start > len(best):
                best = ordered[start : i + 1]
            start = i + 1
    return best


class SeriesFollowups:
    """The live comparisons of every series a runtime serves, by (series, model); the prior of each comes from an
    injected :data:`PriorProvider` (the runtime knows no PACS: its command line gives the provider).

    Bounded: at most ``lookups`` provider calls at once, ``max_series`` series followed (the least recently
    used forgotten first), a series without a slice for ``idle_s`` forgotten, and the comparisons' own bounds
    (:class:`LiveConfig`, one shared gate of ``registrations``). Thread-safe; never raises for the provider.
    """

    def __init__(
        self,
        provider: PriorProvider,
        config: LiveConfig | None = None,
        *,
        lookups: int = 2,
        registrations: int = 1,
        max_series: int = 16,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lookups < 1 or registrations < 1 or max_series < 1 or not idle_s > 0:
            raise ConfigError("follow-up lookups, registrations and max_series must be >= 1, idle_s > 0")

        require_followup_extra("follow-up")
        self.provider = provider
        self.config = config or LiveConfig()
        self.max_series = max_series
        self.idle_s = idle_s
        self._clock = clock
        self._gate = threading.Semaphore(registrations)
        self._lookups = ThreadPoolExecutor(lookups, thread_name_prefix="scanedge-prior")
        self._lock = threading.Lock()
        self._series: OrderedDict[tuple[str, str], tuple[float, LiveComparison]] = OrderedDict()

    def add(self, series: str, model: str, slice_: Slice, mask: np.ndarray) -> LiveAnswer:
        """Hold one slice's lesion mask (non-zero: lesion) and answer where its series' comparison stands."""
        now = self._clock()
        key = (series, model)
        with self._lock:
            for old in [k for k, (seen, _) in self._series.items() if now - seen > self.idle_s]:
                del self._series[old]
            held = self._series.get(key)
            engine = held[1] if held is not None else LiveComparison(series, self.config, self._gate)
            self._series[key] = (now, engine)
            self._series.move_to_end(key)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
        if held is None:
            try:
                self._lookups.submit(self._lookup, engine, series, slice_)
            except RuntimeError:  # closed
                engine.no_prior("the runtime is stopping")
        engine.add(slice_, mask)
        return engine.answer(slice_)

    def close(self) -> None:
        """Stop taking lookups (those running finish on their own)."""
        self._lookups.shutdown(wait=False, cancel_futures=True)

    def _lookup(self, engine: LiveComparison, series: str, slice_: Slice) -> None:
        try:
            found = self.provider(series, slice_)
        except Exception as exc:
            _log.warning("series %s: the prior provider failed (%s)", series, type(exc).__name__)
            engine.no_prior(f"the prior provider failed ({type(exc).__name__})")
            return
        if isinstance(found, PriorVolume):
            engine.set_prior(found)
        else:
            engine.no_prior(str(found) or "no prior study found")


def folder_prior(
    folder: Path, pipeline: Pipeline, *, max_voxels: int = 48 * 1024 * 1024, limits: SliceLimits | None = None
) -> PriorVolume:
    """The prior in a folder of DICOM images of one series (``scanedge serve --prior DIR``): stacked, its lesions
    segmented with ``pipeline`` (every foreground class) and given fresh Tracking UIDs."""
    import pydicom

    from scanedge.errors import InputError
    from scanedge.imaging.files import load_slices
    from scanedge.imaging.followup import volume_from_slices
    from scanedge.imaging.lesion_change import initial_tracking
    from scanedge.imaging.series import context_window

    loaded = load_slices([folder], **({"limits": limits} if limits is not None else {}))
    if not loaded:
        raise InputError(f"no DICOM image in {folder}")
    if len({item.slice.identity.series_uid for item in loaded}) != 1:
        raise InputError(f"{folder} holds images of more than one series; a prior is one series")
    slices = [item.slice for item in loaded]
    if len(slices) * slices[0].shape[0] * slices[0].shape[1] > max_voxels:
        raise InputError(f"the prior in {folder} has more than {max_voxels} voxels")
    volume, geometry, order = volume_from_slices(slices)
    ordered = [slices[i] for i in order]
    k = pipeline.manifest.input.context_slices
    masks = [
        pipeline.run(s, context=context_window(ordered, i, k) if k else (), overlay=False).mask > 0
        for i, s in enumerate(ordered)
    ]
    tracking, uids = initial_tracking(np.stack(masks), geometry.spacing)
    header = pydicom.dcmread(loaded[0].path, stop_before_pixels=True)
    return PriorVolume(
        study_uid=str(header.get("StudyInstanceUID", "")),
        series_uid=str(header.get("SeriesInstanceUID", "")),
        study_date=str(header.get("StudyDate", "")),
        volume=volume,
        geometry=geometry,
        tracking=tracking,
        uids=uids,
        source=f"folder {folder.name}, lesions segmented by {pipeline.manifest.name}",
        rules="given on the command line",
    )
