"""What the DICOM node has done, for its caller (:class:`ListenerStats`) and its operator (``OUT/status.json``).

A new node-wide counter is a field of :class:`ListenerStats` and a key of :meth:`ListenerStats.counters`;
an output's counters come from its :class:`~scanedge.dicomnet.outputs.base.OutputStats` and are named by
the output (``segs_written``, ``seg_failures``, ``seg_retries`` for the SEG).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanedge.dicomnet.outputs import DicomOutput, OutputStats
from scanedge.errors import ConfigError

__all__ = ["STATUS_FILE", "ListenerStats", "read_status"]

#: the node's state for the operator, rewritten atomically under ``out`` (``scanedge dicom-listen --status``)
STATUS_FILE = "status.json"

#: ListenerStats' attribute names before outputs had counters of their own: suffix -> OutputStats field
_OLD_SUFFIXES = (("s_written", "written"), ("_failures", "failures"), ("_retries", "retries"))


@dataclass
class ListenerStats:
    """What the listener has done since it started (read them; the listener updates them).

    Attributes:
        received: C-STORE requests received.
        stored: images segmented, spooled durably and held for their series' outputs (answered Success).
        spool_failures: images refused because the spool could not be written (0xA700).
        recovered: spooled images an earlier run left, segmented again at start.
        unrecoverable: spooled files that could not be read back at start (left in the spool, logged).
        refused: C-STORE failure statuses sent, by status code.
        results: RESULTs built (one per frame and model), published when there is a feed.
        oversized: associations aborted for sending a message over ``max_object_bytes`` (or PDVs that break
            the message framing, which could otherwise hide one).
        series_completed: series whose outputs were built.
        series_pending: completed series whose outputs are not all durable yet (waiting for a retry).
        outputs: per output name, what it wrote, failed and retried (``outputs["seg"].written``: SEG files
            written to ``out/seg``).
        missing_input: reference images of a multi-input model that got no mask: their partner slice did not
            come within the wait, or cannot be paired (MISSING_INPUT; the log names role, series and position);
            in ``status.json`` only when the node serves such a model.
        last_error: the latest output or spool failure, for the status file ("" when none).
    """

    received: int = 0
    stored: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    results: int = 0
    oversized: int = 0
    series_completed: int = 0
    spool_failures: int = 0
    recovered: int = 0
    unrecoverable: int = 0
    series_pending: int = 0
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    last_error: str = ""
    missing_input: int = 0

    def counters(self, outputs: Sequence[DicomOutput]) -> dict[str, Any]:
        """The counters as ``status.json`` names them, each output's after ``series_completed``."""
        counters: dict[str, Any] = {
            "received": self.received,
            "stored": self.stored,
            "refused": {f"0x{code:04X}": n for code, n in sorted(self.refused.items())},
            "spool_failures": self.spool_failures,
            "recovered": self.recovered,
            "unrecoverable": self.unrecoverable,
            "series_completed": self.series_completed,
        }
        for output in outputs:
            counters.update(output.counters(self.outputs[output.name]))
        return counters

    def __getattr__(self, name: str) -> int:
        """``segs_written``, ``seg_failures``, ``seg_retries`` (and the like of any output): deprecated names
        of ``outputs[name]``'s counters."""
        for suffix, counter in _OLD_SUFFIXES:
            stats = self.__dict__.get("outputs", {}).get(name[: -len(suffix)]) if name.endswith(suffix) else None
            if stats is not None:
                warnings.warn(
                    f"ListenerStats.{name} moved to ListenerStats.outputs[{name[: -len(suffix)]!r}].{counter}",
                    DeprecationWarning,
                    2,
                )
                return int(getattr(stats, counter))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


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
