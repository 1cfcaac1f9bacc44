"""How the DICOM node is configured: one frozen :class:`ListenerConfig` for the listener and its parts.

An option of the node as a whole (its network, admission, series and retry bounds) is a field here, checked
in ``__post_init__``, and a flag in ``scanedge/cli/dicom.py``; an option of one output goes here too, read
by that output's ``from_config`` (``segmentation``, read by the SEG, is the precedent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scanedge.dicomnet.admission import AdmissionPolicy
from scanedge.dicomnet.followup import FollowupConfig
from scanedge.dicomnet.forward import ForwardTarget, check_ae_title
from scanedge.dicomnet.outputs import check_output_names
from scanedge.dicomnet.outputs.seg import SegmentationKind
from scanedge.dicomnet.series import SeriesLimits
from scanedge.engines import EngineConfig
from scanedge.errors import ConfigError
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import DEFAULT_LIMITS, SliceLimits
from scanedge.runtime.wire.endpoints import parse_endpoint

if TYPE_CHECKING:  # the STOW-RS target, beside the C-STORE one
    from scanedge.dicomnet.forward import DicomwebTarget

__all__ = ["ListenerConfig"]


@dataclass(frozen=True)
class ListenerConfig:
    """How the DICOM node listens, segments, completes series and delivers SEGs.

    Attributes:
        ae_title: this node's AE title; associations must call it (``require_called_ae``).
        bind: the address to listen on; loopback by default. DICOM associations are not encrypted: bind a
            scanner-facing address only on a protected network.
        port: the TCP port (0: any free one, see :attr:`DicomListener.port`).
        out: the only folder anything is written to: ``spool/`` (received images until their outputs are
            durable), one folder per output (``seg/``: SEGs; ``sr/``: lesion SEGs and SRs), ``outbox/`` (waiting
            to be forwarded) and ``status.json``.
        outputs: what is made from each completed series, by name (:data:`scanedge.dicomnet.outputs.OUTPUTS`).
        forward: where the outputs are also sent: by C-STORE (:class:`ForwardTarget`) or by DICOMweb STOW-RS
            (:class:`DicomwebTarget`); None: written only.
        publish: PUB endpoint for the live feed (docs/protocol.md section 9); None: no feed.
        insecure: allow a non-loopback ``publish`` endpoint (the feed is not encrypted).
        series_timeout_s: a series with no new instance for this long is complete.
        complete_on_release: a series is also complete once every association that sent it is released.
        segmentation: ``binary`` or ``fractional`` SEGs (the ``seg`` output).
        workers: pipelines per model: how many images are segmented at once.
        engine: how each pipeline's engine runs.
        limits: per-image pixel and decoded-size limits (larger images are refused, 0xA700).
        overlay: how the published overlays are drawn.
        series_limits: bounds on what is held while series are open (see :mod:`scanedge.dicomnet.series`).
        max_associations: associations served at once (more are rejected at negotiation).
        require_called_ae: reject associations whose Called AE title is not ``ae_title``.
        allowed_calling_aes: accept associations only from these Calling AE titles (the scanners' own);
            empty: from any. An allow-list of peers, for a node bound to a scanner-facing address.
        ignore_scope: segment images outside a model's ``applies_to`` too (research use; results say so).
        busy_timeout_s: how long an image waits for a free pipeline before it is refused (0xA700).
        network_timeout_s: ACSE, DIMSE and network timeouts of each association.
        retry_max_s: the longest wait between two attempts to forward a SEG, or to build and write one.
        retry_initial_s: the first wait before building and writing a failed SEG again (doubling).
        stop_grace_s: on stop, how long open associations may still finish.
        max_object_bytes: the most bytes one DIMSE message may carry; a peer sending more is aborted while
            it sends (pynetdicom would gather any amount in memory). None: the decoded-size limit plus
            16 MiB for the header.
        max_pending: connections kept while their association request has not arrived (the oldest of the
            busiest address is closed for a new one; :mod:`scanedge.dicomnet.admission`).
        max_per_address: connections, associated or not, from one IP address.
        associate_timeout_s: a connection without a complete association request this long after it was
            accepted is closed (and the ACSE timeout).
        followup: compare each series with the patient's prior study (where to look, the rules, the bounds;
            :mod:`scanedge.dicomnet.followup`); None: off.
    """

    ae_title: str = "SCANEDGE"
    bind: str = "127.0.0.1"
    port: int = 11112
    out: Path = Path("scanedge-dicom-out")
    outputs: tuple[str, ...] = ("seg",)
    forward: ForwardTarget | DicomwebTarget | None = None
    publish: str | None = None
    insecure: bool = False
    series_timeout_s: float = 10.0
    complete_on_release: bool = False
    segmentation: SegmentationKind = "binary"
    workers: int = 1
    engine: EngineConfig = EngineConfig(spinning=False)
    limits: SliceLimits = DEFAULT_LIMITS
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    series_limits: SeriesLimits = field(default_factory=SeriesLimits)
    max_associations: int = 8
    require_called_ae: bool = True
    allowed_calling_aes: tuple[str, ...] = ()
    ignore_scope: bool = False
    busy_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    retry_max_s: float = 300.0
    retry_initial_s: float = 1.0
    stop_grace_s: float = 10.0
    max_object_bytes: int | None = None
    max_pending: int = 16
    max_per_address: int = 4
    associate_timeout_s: float = 5.0
    followup: FollowupConfig | None = None

    @property
    def admission_policy(self) -> AdmissionPolicy:
        """Who may hold a connection, and which association requests are taken."""
        return AdmissionPolicy(
            max_associations=self.max_associations,
            max_pending=self.max_pending,
            max_per_address=self.max_per_address,
            associate_timeout_s=self.associate_timeout_s,
            ae_title=self.ae_title,
            require_called_ae=self.require_called_ae,
            allowed_calling_aes=self.allowed_calling_aes,
        )

    @property
    def object_byte_limit(self) -> int:
        """``max_object_bytes``, or its default."""
        if self.max_object_bytes is not None:
            return self.max_object_bytes
        return self.limits.max_decoded_bytes + 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "--ae-title")
        for title in self.allowed_calling_aes:
            check_ae_title(title, "--allow-calling-ae")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0-65535")
        check_output_names(self.outputs)
        if self.segmentation not in ("binary", "fractional"):
            raise ConfigError(f"segmentation must be binary or fractional, got {self.segmentation!r}")
        if self.workers < 1 or self.max_associations < 1:
            raise ConfigError("workers and max_associations must be >= 1")
        for name in ("series_timeout_s", "busy_timeout_s", "network_timeout_s", "retry_max_s", "retry_initial_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.publish is not None and not parse_endpoint(self.publish).is_loopback and not self.insecure:
            raise ConfigError(
                f"refusing to publish patient images on {self.publish} beyond this machine without encryption; "
                "publish on loopback, or pass --insecure if the network is otherwise protected"
            )
        _ = self.admission_policy  # a ConfigError for connection limits that cannot work
