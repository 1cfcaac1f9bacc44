"""The DICOM network node: scanners push images by C-STORE, scanedge answers with a DICOM Segmentation.

``scanedge dicom-listen`` is a Storage SCP built on pynetdicom. Every image it receives goes through the
same slice pipeline as the ZeroMQ runtime, as it arrives; its RESULT is published on a PUB feed exactly
as the runtime publishes (docs/protocol.md section 9), so the live viewer works for DICOM-only scanners
too. When a series is complete, its outputs are made: one DICOM SEG per model (built with highdicom) is
written to the output folder and, optionally, sent on by C-STORE. docs/dicom-node.md describes the
behaviour in full.

Floors: this package uses the runtime's pipeline, protocol and payloads, the imaging floor and the
manifest; only the command line imports it.

Where new things go:

- a new DICOM output (a structured report, say): a module in ``outputs/`` with a ``DicomOutput`` subclass
  and its entry in ``outputs.OUTPUTS`` (precedent: the SEG, ``outputs/seg.py``); the listener, its
  handlers, stats and status file take it as they take the SEG;
- a new DIMSE service: a handler in ``handlers`` and its presentation contexts in ``contexts`` (precedent:
  C-ECHO);
- a new refusal of an image: a check in ``handlers`` raising a typed error whose code ``statuses`` maps to
  a C-STORE status (precedent: ``NO_FRAME_GEOMETRY``), or a ``handlers.Refusal`` for a status of DICOM's
  own (precedent: ``SOP_CLASS_MISMATCH``);
- a new option of the node: a field of ``config.ListenerConfig`` and its flag in ``scanedge/cli/dicom.py``.

=====================  ====================================================================
module                 owns
=====================  ====================================================================
``config``             the node's frozen configuration, checked once
``contexts``           which SOP classes and transfer syntaxes are negotiated, and which are segmented
``statuses``           C-STORE status codes for each typed failure
``handlers``           pynetdicom's event handlers (C-ECHO, C-STORE, ...), the checks and refusals
``intake``             one image segmented by every model, published live, spooled, held
``pairing_intake``     a multi-input model's images: partners held, reference images paired or waiting
``series``             the bounded buffer of open series' instances (headers and masks) until they complete
``spool``              received images fsync'd before Success, kept until their outputs are durable
``outputs``            what is made of a completed series: the output contract, the SEG, the SR, the writer
``forward``            delivering written objects by C-STORE or STOW-RS, retried from an on-disk outbox
``admission``          which connections are kept and for how long, association slots, message byte caps
``publisher``          the PUB socket, owned by one thread
``stats``              the node's counters and its ``status.json``
``listener``           the node's life cycle: pools, folders, server, completion thread, recovery
``followup``           each series' prior (prior store, then PACS) and its live comparison with it
``priors``             the patient's prior study from a PACS: C-FIND, then C-GET or C-MOVE, or QIDO/WADO-RS
``prior_store``        the opt-in local store of segmented priors, keyed by an HMAC of the Patient ID
=====================  ====================================================================
"""

from __future__ import annotations

from scanedge.dicomnet.config import ListenerConfig
from scanedge.dicomnet.forward import (
    DicomwebTarget,
    Forwarder,
    ForwardTarget,
    parse_dicomweb_target,
    parse_forward_target,
)
from scanedge.dicomnet.listener import DicomListener
from scanedge.dicomnet.stats import ListenerStats

__all__ = [
    "DicomListener",
    "DicomwebTarget",
    "ForwardTarget",
    "Forwarder",
    "ListenerConfig",
    "ListenerStats",
    "parse_dicomweb_target",
    "parse_forward_target",
]
