"""A series' last slice (SEGMENT ``last: true``) and its score head's 3-D series model, off the workers.

A console says a series is complete by marking its last slice (docs/protocol.md section 3). The worker that
segments that slice builds its RESULT as usual and hands it here instead of answering: one background thread
runs the series model on the series' volume (:class:`~scanedge.imaging.series_model.SeriesModel`) and then
answers the SEGMENT with that RESULT, its ``series_scores`` now carrying the model's score (or, when the model
fails, the provisional score with ``series_model.status: "failed"`` and the code). The worker goes on with the
next slice meanwhile, and the I/O thread never waits: a slow series model delays only that one reply.

Bounded: at most ``max_pending`` runs wait at once (each holds its volume); past it a last slice is answered at
once with ``series_model.status: "failed"``, code ``OUT_OF_RESOURCES``. Every job handed here is answered
exactly once, whatever the model does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import numpy as np

from scanedge.errors import CapacityError, redacted_traceback
from scanedge.imaging.heads import SeriesModelRun, SeriesScore, for_wire
from scanedge.imaging.series_model import SeriesModel, SeriesVolume
from scanedge.runtime.serving.scheduler import Job
from scanedge.runtime.serving.workers import Outcome, outcome_of
from scanedge.runtime.wire.protocol import Result

__all__ = ["SeriesCompletions"]

log = logging.getLogger("scanedge.runtime")


def _owned(frame: Any) -> Any:
    """A payload frame the pipeline may reuse after the worker moves on, as a copy of its own."""
    if isinstance(frame, np.ndarray):
        return frame.copy()
    if isinstance(frame, memoryview):
        return bytes(frame)
    return frame


def failed_run(scores: tuple[SeriesScore, ...], model: SeriesModel, code: str, message: str) -> tuple[SeriesScore, ...]:
    """``scores`` with the series model's head marked failed (its provisional score kept)."""
    spec = model.spec
    run = SeriesModelRun("failed", code, message, 0, (spec.depth, spec.height, spec.width))
    return tuple(
        msgspec.structs.replace(s, series_model=msgspec.structs.replace(run, slices=s.slices), provisional=True)
        if s.head == model.head.name
        else s
        for s in scores
    )


class SeriesCompletions:
    """The runtime's series-model runs at series completion (see the module's docstring)."""

    def __init__(self, emit: Callable[[Job, Outcome], None], max_pending: int = 8) -> None:
        self._emit = emit
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanedge-series-model")
        self.runs = 0
        self.refused = 0

    def submit(
        self,
        job: Job,
        model: SeriesModel,
        volume: SeriesVolume | None,
        scores: tuple[SeriesScore, ...],
        header: Result,
        payload: list[Any],
    ) -> Outcome | None:
        """Answer ``job`` with ``header`` once the series model has run on ``volume`` (None: it was dropped to make
        room); ``scores`` are the series' scores so far, unabridged. Returns the outcome to send now when the run
        cannot wait (too many pending, or ``volume`` None); otherwise None: the job is answered from here."""
        if volume is None:
            why = (
                "the series' volume is not held: dropped to make room (more series collecting at once than the "
                "runtime holds), or the series was forgotten (idle or evicted)"
            )
            return self._answer(header, payload, failed_run(scores, model, CapacityError.code, why))
        with self._lock:
            busy = self._pending >= self.max_pending
            if not busy:
                self._pending += 1
        if busy:
            self.refused += 1
            why = f"{self.max_pending} series model runs were already waiting"
            return self._answer(header, payload, failed_run(scores, model, CapacityError.code, why))
        owned = [_owned(p) for p in payload]
        try:
            self._pool.submit(self._run, job, model, volume, scores, header, owned)
        except RuntimeError:  # shut down: answer here, with the provisional score
            with self._lock:
                self._pending -= 1
            return self._answer(header, owned, failed_run(scores, model, "RUNTIME_STATE", "the runtime is stopping"))
        return None

    def _run(
        self,
        job: Job,
        model: SeriesModel,
        volume: SeriesVolume,
        scores: tuple[SeriesScore, ...],
        header: Result,
        payload: list[Any],
    ) -> None:
        outcome: Outcome | None = None
        try:
            outcome = self._answer(header, payload, model.complete(volume, scores))
            self.runs += 1
        except Exception as exc:  # a bug: the slice is still answered, with its provisional score
            log.error("series model run failed unexpectedly: %s", redacted_traceback(exc))
            outcome = self._answer(header, payload, failed_run(scores, model, "INTERNAL", type(exc).__name__))
        finally:
            with self._lock:
                self._pending -= 1
            if outcome is None:
                outcome = self._answer(header, payload, scores)
            self._emit(job, outcome)

    @staticmethod
    def _answer(header: Result, payload: list[Any], scores: tuple[SeriesScore, ...]) -> Outcome:
        _, wire = for_wire(header.scores, scores)  # bounded, as every RESULT's
        return outcome_of(msgspec.structs.replace(header, series_scores=wire), tuple(payload))

    def close(self) -> None:
        """Run what is pending (each is answered), then stop the thread."""
        self._pool.shutdown(wait=True)
