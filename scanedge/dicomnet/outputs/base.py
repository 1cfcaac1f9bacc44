"""The contract of a DICOM output: what the node makes from a completed series, for each model.

The node knows its outputs only through :class:`DicomOutput`: it asks each configured one to build its
DICOM objects from a completed series and a model's results, and does the rest itself, the same way for
every output (:mod:`scanedge.dicomnet.outputs.writer`): each object written durably to the output's own
folder under ``--out``, handed to the forwarder, counted in an :class:`OutputStats`, and the series retried
with backoff until every object of every output is durable. A new output subclasses :class:`DicomOutput`
in a module of its own next to the SEG (:mod:`scanedge.dicomnet.outputs.seg`, the precedent) and is
named in :data:`scanedge.dicomnet.outputs.OUTPUTS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scanedge.dicomnet.series import OpenSeries
from scanedge.manifest import Manifest

if TYPE_CHECKING:
    from scanedge.dicomnet.config import ListenerConfig

__all__ = ["DicomOutput", "OutputStats"]


@dataclass
class OutputStats:
    """What one output has done since the node started (the node updates them under its lock).

    Attributes:
        written: objects written durably to the output's folder.
        failures: objects that could not be built or written (logged; their series is retried).
        retries: attempts to build and write a series' objects again after a failure.
    """

    written: int = 0
    failures: int = 0
    retries: int = 0


class DicomOutput(ABC):
    """One kind of DICOM object the node makes from each completed series, per model.

    Attributes:
        name: short lower-case key: its entry in ``ListenerConfig.outputs``, its folder under ``--out`` and
            the prefix of its counters in ``status.json`` (``seg``: ``seg/``, ``segs_written``).
        label: what logs and messages call one object (``SEG``).
    """

    name: ClassVar[str]
    label: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: ListenerConfig) -> DicomOutput:
        """The output as the node's configuration asks for it."""

    @abstractmethod
    def build(self, series: OpenSeries, model: str, manifest: Manifest) -> tuple[list[Any], list[str]]:
        """The objects (pydicom Datasets) made from ``model``'s results for a completed ``series``, and why a
        part of the series got none (messages naming UIDs and exception types, never values); raises when
        nothing could be built (the series is retried)."""

    @property
    def needs_probabilities(self) -> bool:
        """Whether every frame must keep the model's quantised class probabilities for :meth:`build` (the
        label masks are always kept)."""
        return False

    @property
    def forwarded(self) -> bool:
        """Whether what it writes is also sent to the ``--forward`` node."""
        return True

    def describe(self) -> str:
        """What it writes, for the node's start-up log line (``binary SEGs``)."""
        return f"{self.label}s"

    def check_model(self, model: str, manifest: Manifest) -> None:
        """Called once per model at start: log what the model lacks for this output (nothing by default);
        raise ConfigError when it cannot serve the model at all."""
        return None

    def folder(self, out: Path) -> Path:
        """Where its objects are written under ``out``."""
        return out / self.name

    def file_name(self, obj: Any) -> str:
        """The file one object is written to in :meth:`folder`: its SOP Instance UID, so building it again
        (same UID) overwrites rather than adds."""
        return f"{obj.SOPInstanceUID}.dcm"

    def save(self, obj: Any, path: Path) -> None:
        """Write one object to ``path`` (a temporary file the writer then makes durable and renames)."""
        obj.save_as(path, enforce_file_format=True)

    def counters(self, stats: OutputStats) -> dict[str, int]:
        """Its counters as ``status.json`` names them."""
        return {
            f"{self.name}s_written": stats.written,
            f"{self.name}_failures": stats.failures,
            f"{self.name}_retries": stats.retries,
        }
