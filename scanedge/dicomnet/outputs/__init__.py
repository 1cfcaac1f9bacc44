"""What the DICOM node makes from each completed series: its outputs, one module each.

A new DICOM output (a structured report, say) is one module here with a
:class:`~scanedge.dicomnet.outputs.base.DicomOutput` subclass, plus its entry in :data:`OUTPUTS`; the
SEG (:mod:`scanedge.dicomnet.outputs.seg`) is the precedent. Naming it in ``ListenerConfig.outputs`` turns it
on: the node then gives it a folder under ``--out``, counters in its stats and ``status.json``, forwarding
and retries (:mod:`scanedge.dicomnet.outputs.writer`), with no change to the listener or its handlers.

==========  ======================================================================
module      owns
==========  ======================================================================
``base``    the contract of an output (:class:`DicomOutput`) and its counters
``seg``     DICOM Segmentations built with highdicom (the ``seg`` output)
``scores``  a classification model's series scores as JSON (the ``scores`` output)
``sr``      tracked lesions: a lesion SEG and a TID 1500 Measurement Report (the ``sr`` output)
``writer``  building, writing, forwarding and retrying every output of a completed series
==========  ======================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from scanedge.dicomnet.outputs.base import DicomOutput, OutputStats
from scanedge.dicomnet.outputs.scores import ScoresOutput
from scanedge.dicomnet.outputs.seg import SegOutput
from scanedge.dicomnet.outputs.sr import SrOutput
from scanedge.errors import ConfigError

if TYPE_CHECKING:
    from scanedge.dicomnet.config import ListenerConfig

__all__ = ["OUTPUTS", "DicomOutput", "OutputStats", "check_output_names", "make_outputs"]

#: every output the node can make, by the name ``ListenerConfig.outputs`` uses
OUTPUTS: dict[str, type[DicomOutput]] = {
    SegOutput.name: SegOutput,
    ScoresOutput.name: ScoresOutput,  # a classification model's series scores as JSON (until the SR)
    SrOutput.name: SrOutput,  # tracked lesions: lesion SEG + TID 1500 SR
}


def check_output_names(names: Sequence[str]) -> None:
    """ConfigError unless ``names`` are at least one known output, each once."""
    if not names:
        raise ConfigError(f"the node needs at least one output; known: {', '.join(OUTPUTS)}")
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ConfigError(f"unknown output(s) {', '.join(map(repr, unknown))}; known: {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"an output is named twice in {', '.join(names)}")


def make_outputs(config: ListenerConfig) -> list[DicomOutput]:
    """The outputs ``config.outputs`` names, in that order, each configured from ``config``."""
    check_output_names(config.outputs)
    return [OUTPUTS[name].from_config(config) for name in config.outputs]
