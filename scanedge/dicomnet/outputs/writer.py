"""Every output of a completed series built, written durably, forwarded and retried: one place for all outputs.

An output only builds objects (:class:`~scanedge.dicomnet.outputs.base.DicomOutput`); what is promised for
each of them is kept here, the same for every output: each object is fsync'd into the output's folder under
its SOP Instance UID and handed to the forwarder; a series whose objects are not all durable keeps its
spooled images and is retried with backoff (``retry_initial_s`` doubling to ``retry_max_s``), the objects
already durable being skipped; once all are, its spooled images leave the spool.

Each model's outputs are built from the instances that model has results for: beside one-input models, a
multi-input model has none for its partner series (no output of it for them) and none for a reference image
answered MISSING_INPUT (left out of its outputs only).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scanedge.dicomnet.forward import Forwarder
from scanedge.dicomnet.outputs.base import DicomOutput
from scanedge.dicomnet.series import OpenSeries
from scanedge.dicomnet.spool import Spool, fsync_dir, write_durably
from scanedge.dicomnet.stats import ListenerStats
from scanedge.errors import redacted_traceback
from scanedge.imaging.dicom.quiet import pydicom_quiet  # its records and warnings quote values
from scanedge.manifest import Manifest

__all__ = ["OutputWriter", "PendingSeries", "outputs_label", "results_of"]

log = logging.getLogger("scanedge.dicomnet")


def outputs_label(outputs: Sequence[DicomOutput]) -> str:
    """What logs call the outputs together: ``SEG``, ``SEG/SR``."""
    return "/".join(o.label for o in outputs)


def results_of(series: OpenSeries, model: str) -> OpenSeries | None:
    """``series`` as far as ``model`` has results for it: the series itself when every instance has them, a copy
    holding only those that do, None when none does."""
    instances = OrderedDict(
        (uid, inst) for uid, inst in series.instances.items() if all(model in f.masks for f in inst.frames)
    )
    if len(instances) == len(series.instances):
        return series
    return replace(series, instances=instances) if instances else None


@dataclass(eq=False)
class PendingSeries:
    """A completed series whose outputs are being written: retried with backoff until all are durable.

    Attributes:
        series: what was held for it.
        why: why it completed, for the log (``complete``, ``the listener is stopping``).
        attempts: failed attempts so far.
        due: monotonic time of the next attempt.
        done: (output name, SOP Instance UID) of the objects already durable (and handed on).
        finished: names of the outputs with nothing left to write.
        last_error: the first problem of the latest attempt.
    """

    series: OpenSeries
    why: str
    attempts: int = 0
    due: float = 0.0
    done: set[tuple[str, str]] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    last_error: str = ""


class OutputWriter:
    """Writes the outputs of completed series (the completion thread, then ``stop()``; one at a time).

    ``stats`` is updated under ``lock``; ``written`` gets each file written, in order; ``forwarder`` may be
    set once the node has started one; ``on_attempt`` is called after each attempt (the status file).
    """

    def __init__(
        self,
        outputs: Sequence[DicomOutput],
        out: Path,
        spool: Spool,
        stats: ListenerStats,
        lock: threading.Lock,
        *,
        retry_initial_s: float,
        retry_max_s: float,
        on_attempt: Callable[[], None] = lambda: None,
    ) -> None:
        self.outputs = list(outputs)
        self.folders = {o.name: o.folder(out) for o in self.outputs}
        self.spool = spool
        self.stats = stats
        self.lock = lock
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_attempt = on_attempt
        self.forwarder: Forwarder | None = None
        self.models: Mapping[str, Manifest] = {}
        self.written: list[Path] = []
        self.pending: list[PendingSeries] = []
        self.label = outputs_label(self.outputs)

    def add(self, series: OpenSeries, why: str) -> None:
        """A completed series: its outputs are written at the next :meth:`attempt_due`."""
        self.pending.append(PendingSeries(series, why))

    def attempt_due(self, stop: threading.Event) -> None:
        """One attempt for each series whose time has come (until ``stop`` is set)."""
        now = time.monotonic()
        for item in [p for p in self.pending if p.due <= now]:
            if stop.is_set():
                break
            self.attempt(item, now)

    def attempt(self, item: PendingSeries, now: float) -> None:
        """Build and write the outputs of a completed series; once all are durable, drop its spooled images,
        else retry later with backoff."""
        with self.lock:
            if item.attempts == 0:
                self.stats.series_completed += 1
            else:
                for output in self.outputs:
                    if output.name not in item.finished:
                        self.stats.outputs[output.name].retries += 1
        if item not in self.pending:
            self.pending.append(item)
        problems = self._write(item)
        if not problems:
            self.pending.remove(item)
            self.spool.remove([i.spooled for i in item.series.instances.values() if i.spooled is not None])
        else:
            item.attempts += 1
            delay = min(self.retry_max_s, self.retry_initial_s * 2 ** min(item.attempts - 1, 30))
            item.due, item.last_error = now + delay, problems[0]
            with self.lock:
                self.stats.last_error = f"series {item.series.series_uid}: {problems[0]}"
            log.error(
                "series %s: %d %s problem(s) (attempt %d), its %d image(s) stay spooled; retrying in %.0f s: %s",
                item.series.series_uid,
                len(problems),
                self.label,
                item.attempts,
                len(item.series.instances),
                delay,
                "; ".join(problems),
            )
        with self.lock:
            self.stats.series_pending = len(self.pending)
        self.on_attempt()

    def status(self, now: float) -> list[dict[str, Any]]:
        """The series waiting for durable outputs, as ``status.json``'s ``pending`` lists them."""
        return [
            {
                "series_uid": p.series.series_uid,
                "instances": len(p.series.instances),
                "attempts": p.attempts,
                "next_attempt_in_s": round(max(0.0, p.due - now), 1),
                "last_error": p.last_error,
            }
            for p in list(self.pending)
        ]

    def _write(self, item: PendingSeries) -> list[str]:
        """Build, write and forward every output's objects of a completed series not yet durable; returns
        what failed."""
        problems: list[str] = []
        for output in self.outputs:
            if output.name in item.finished:
                continue
            own = self._write_output(output, item)
            if not own:
                item.finished.add(output.name)
            problems += own
        return problems

    def _write_output(self, output: DicomOutput, item: PendingSeries) -> list[str]:
        counts = self.stats.outputs[output.name]
        problems: list[str] = []
        for model, manifest in self.models.items():
            series = results_of(item.series, model)
            if series is None:
                continue
            try:
                with pydicom_quiet():
                    objects, skipped = output.build(series, model, manifest)
            except Exception as exc:  # highdicom refuses sources it cannot reference; the message may quote them
                with self.lock:
                    counts.failures += 1
                problems.append(f"the {model} {output.label} could not be built ({redacted_traceback(exc)})")
                continue
            for reason in skipped:
                with self.lock:
                    counts.failures += 1
                problems.append(f"no {model} {output.label} for {reason}")
            for obj in objects:
                key = (output.name, str(obj.SOPInstanceUID))
                if key in item.done:
                    continue
                failure = self._save(output, obj, series, model, item.why)
                if failure:
                    problems.append(failure)
                else:
                    item.done.add(key)
        return problems

    def _save(self, output: DicomOutput, obj: Any, series: OpenSeries, model: str, why: str) -> str:
        """Write one object durably and hand it to the forwarder; "" when done, else what failed."""
        path = self.folders[output.name] / output.file_name(obj)
        forwarder = self.forwarder if output.forwarded else None
        try:
            with pydicom_quiet():
                write_durably(path, lambda tmp: output.save(obj, tmp))
            # already in the outbox: an earlier run wrote this same object (same UID) and queued it at start
            if forwarder is not None and not (forwarder.outbox / path.name).exists():
                forwarder.submit(path)
                fsync_dir(forwarder.outbox)
        except OSError as exc:
            with self.lock:
                self.stats.outputs[output.name].failures += 1
            return f"the {model} {output.label} could not be written to {path}: {exc.strerror or type(exc).__name__}"
        with self.lock:
            self.stats.outputs[output.name].written += 1
            self.written.append(path)
        # an output may write objects of several kinds (the sr output: a lesion SEG beside its SR): named by each's
        modality = getattr(obj, "Modality", None)
        log.info(
            "series %s %s: %d instance(s), %d frame(s); %s %s written to %s",
            series.series_uid,
            why,
            len(series.instances),
            series.frames,
            model,
            modality if modality in ("SEG", "SR") else output.label,
            path,
        )
        return ""
