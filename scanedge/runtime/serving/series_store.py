"""The runtime's series state: per series and model, the lesion load accumulated as its slices are served.

Workers update it after each slice (so every RESULT, and what is published, carries the series' load
so far); a lock makes that safe with several workers. The series' end is not announced on the wire, so
a series that has had no slice for ``idle_s`` seconds is forgotten, and at most ``max_series`` series
are held (least recently updated first out). Memory is therefore bounded by
``max_series x max_slices x classes x rows x cols / 8`` bytes in the worst case (every slice's findings
covering the whole image), and in practice by a few hundred bytes per slice with findings: see
:mod:`scanedge.imaging.lesion_load`. A series forgotten and then continued starts again from its next slice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanedge.errors import ConfigError
from scanedge.imaging.heads import HeadScore, SeriesScore, SeriesScores
from scanedge.imaging.lesion_load import DEFAULT_MAX_SLICES, LesionLoad, SeriesLesionLoad, SliceKey
from scanedge.imaging.series_model import SeriesModel, SeriesVolume
from scanedge.imaging.slices import SliceGeometry
from scanedge.manifest import HeadSpec

__all__ = ["SeriesStore", "SeriesStoreConfig"]


@dataclass(frozen=True)
class SeriesStoreConfig:
    """How much series state the runtime keeps.

    Attributes:
        idle_s: a series with no slice for this long is forgotten (its last RESULT had its final load).
        max_series: most series (per model) held at once; the least recently updated goes first.
        max_slices: most slices held per series (slices at new places past it are counted as dropped).
        max_volumes: most series collecting a series model's volume at once (each up to the model's
            ``max_slices x height x width`` float32 values); the least recently updated one's volume is dropped
            past it, and its series model then answers ``OUT_OF_RESOURCES`` at completion.
    """

    idle_s: float = 600.0
    max_series: int = 64
    max_slices: int = DEFAULT_MAX_SLICES
    max_volumes: int = 8

    def __post_init__(self) -> None:
        if not self.idle_s > 0 or self.max_series < 1 or self.max_slices < 1 or self.max_volumes < 1:
            raise ConfigError("series idle time must be > 0 s, and the series and slice caps at least 1")


class SeriesStore:
    """Thread-safe map (series, model) -> :class:`SeriesLesionLoad` (and, for models with score heads,
    :class:`~scanedge.imaging.heads.SeriesScores`), bounded by idle time and an LRU cap."""

    def __init__(self, config: SeriesStoreConfig | None = None) -> None:
        self.config = config or SeriesStoreConfig()
        self.evicted = 0
        self._lock = threading.Lock()
        # a model without a mask output (a classifier) holds scores only: no lesion load
        self._series: OrderedDict[tuple[str, str], tuple[float, SeriesLesionLoad | None]] = OrderedDict()
        self._scores: dict[tuple[str, str], SeriesScores] = {}  # held and forgotten with the series' entry
        # a series model's planes per series (LRU, at most max_volumes), and the series whose volume was dropped
        self._volumes: OrderedDict[tuple[str, str], SeriesVolume] = OrderedDict()
        self._lost: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.volumes_dropped = 0

    def update(
        self,
        series: str,
        model: str,
        classes: Sequence[str],
        mask: np.ndarray,
        geometry: SliceGeometry | None,
        instance_number: int | None,
        now: float | None = None,
    ) -> LesionLoad:
        """Add one served slice to its series and return the series' load with it."""
        now = time.monotonic() if now is None else now
        key = (series, model)
        with self._lock:
            self._evict_idle(now)
            held = self._series.get(key)
            load = held[1] if held is not None else None
            if load is None:
                load = SeriesLesionLoad(classes, max_slices=self.config.max_slices)
            self._touch(key, load, now)
            return load.add(mask, geometry, instance_number)

    def _touch(self, key: tuple[str, str], load: SeriesLesionLoad | None, now: float) -> None:
        """Mark ``key`` updated now (most recently updated last), then apply the LRU cap."""
        self._series.pop(key, None)
        self._series[key] = (now, load)
        while len(self._series) > self.config.max_series:
            gone, _ = self._series.popitem(last=False)
            self._scores.pop(gone, None)
            self._volumes.pop(gone, None)
            self.evicted += 1

    def update_scores(
        self,
        series: str,
        model: str,
        heads: Sequence[HeadSpec],
        scores: Sequence[HeadScore],
        geometry: SliceGeometry | None,
        instance_number: int | None,
        now: float | None = None,
    ) -> tuple[SeriesScore, ...]:
        """Add one served slice's scores to its series and return the series' scores with it (a model with
        a mask output calls :meth:`update` as well: both keep the series alive)."""
        key = (series, model)
        now = time.monotonic() if now is None else now
        with self._lock:
            self._evict_idle(now)
            held_load = self._series.get(key)
            self._touch(key, None if held_load is None else held_load[1], now)
            held = self._scores.get(key)
            if held is None:
                held = self._scores[key] = SeriesScores(heads, max_slices=self.config.max_slices)
            return held.add(scores, geometry, instance_number)

    def add_plane(
        self, series: str, model: str, series_model: SeriesModel, plane: np.ndarray, key: SliceKey | None
    ) -> None:
        """Keep one served slice's plane (:meth:`SeriesModel.plane`) in its series' volume. A series whose
        volume was dropped (more than ``max_volumes`` collecting at once) collects nothing until it completes."""
        ident = (series, model)
        with self._lock:
            if ident in self._lost:
                return
            volume = self._volumes.pop(ident, None)
            if volume is None:
                volume = series_model.volume()
            self._volumes[ident] = volume
            volume.add_plane(plane, key)
            while len(self._volumes) > self.config.max_volumes:
                gone, _ = self._volumes.popitem(last=False)
                self._lost[gone] = None
                self.volumes_dropped += 1
                while len(self._lost) > 4 * self.config.max_series:
                    self._lost.popitem(last=False)

    def take_volume(self, series: str, model: str) -> SeriesVolume | None:
        """The series' volume at its completion, no longer held (the series collects anew if it is sent again);
        None when it was dropped to make room (or nothing was collected)."""
        with self._lock:
            self._lost.pop((series, model), None)
            return self._volumes.pop((series, model), None)

    def get_scores(self, series: str, model: str) -> tuple[SeriesScore, ...]:
        """The score heads of ``series`` under ``model`` as held now; empty when none are held."""
        with self._lock:
            held = self._scores.get((series, model))
            return () if held is None else held.scores()

    def get(self, series: str, model: str) -> LesionLoad | None:
        """The load of ``series`` under ``model`` as held now; None when the store holds no such series
        (never seen, or forgotten). Reading neither refreshes the series' idle time nor evicts."""
        with self._lock:
            held = self._series.get((series, model))
            return None if held is None or held[1] is None else held[1].load()

    def evict_idle(self, now: float | None = None) -> int:
        """Forget series idle past ``idle_s``; returns how many went."""
        with self._lock:
            return self._evict_idle(time.monotonic() if now is None else now)

    def _evict_idle(self, now: float) -> int:
        gone = 0
        while self._series:
            key, (last, _) = next(iter(self._series.items()))
            if now - last < self.config.idle_s:
                break
            del self._series[key]
            self._scores.pop(key, None)
            self._volumes.pop(key, None)
            gone += 1
        self.evicted += gone
        return gone

    def __len__(self) -> int:
        with self._lock:
            return len(self._series)

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by every series."""
        with self._lock:
            held = sum(load.nbytes for _, load in self._series.values() if load is not None)
            return held + sum(s.nbytes for s in self._scores.values()) + sum(v.nbytes for v in self._volumes.values())
