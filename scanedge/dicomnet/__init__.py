"""The DICOM network node: scanners push images by C-STORE, scanedge answers with a DICOM Segmentation.

``scanedge dicom-listen`` is a Storage SCP built on pynetdicom. Every image it receives goes through the
same slice pipeline as the ZeroMQ runtime, as it arrives; its RESULT is published on a PUB feed exactly
as the runtime publishes (docs/protocol.md section 9), so the live viewer works for DICOM-only scanners
too. When a series is complete, one DICOM SEG per model (built with highdicom) is written to the output
folder and, optionally, sent on by C-STORE. docs/dicom-node.md describes the behaviour in full.

Floors: this package uses the runtime's pipeline, protocol and payloads, the imaging floor and the
manifest; only the command line imports it.

=====================  ====================================================================
module                 owns
=====================  ====================================================================
``contexts``           which SOP classes and transfer syntaxes are negotiated, and which are segmented
``statuses``           C-STORE status codes for each typed failure
``series``             the bounded per-series store of what a SEG needs (headers and masks)
``spool``              received images fsync'd before Success, kept until their SEGs are durable
``segmentation``       a completed series -> a highdicom Segmentation
``forward``            delivering written objects by C-STORE, retried from an on-disk outbox
``admission``          which connections are kept and for how long, association slots, message byte caps
``publisher``          the PUB socket, owned by one thread
``listener``           the Storage SCP that ties them together
=====================  ====================================================================
"""

from __future__ import annotations

from scanedge.dicomnet.forward import Forwarder, ForwardTarget, parse_forward_target
from scanedge.dicomnet.listener import DicomListener, ListenerConfig, ListenerStats

__all__ = [
    "DicomListener",
    "ForwardTarget",
    "Forwarder",
    "ListenerConfig",
    "ListenerStats",
    "parse_forward_target",
]
