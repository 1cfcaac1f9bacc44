"""What the listener negotiates: Verification, every storage SOP class, the transfer syntaxes it can decode.

Every storage SOP class pynetdicom knows is *accepted* at negotiation, but only the image classes a
segmentation model can take (:data:`SEGMENTED_SOP_CLASSES`) are *segmented*; any other object is answered
per instance with C-STORE status 0x0122 (SOP class not supported) and its reason in the log. A scanner
sending a whole study (images, dose reports, presentation states) therefore sees exactly which objects
were not taken, instead of an association whose negotiation failed for all of them.

Transfer syntaxes: the uncompressed ones always (implicit and explicit VR little endian, deflated, and
the retired explicit big endian), and the compressed ones (JPEG, JPEG-LS, JPEG 2000, RLE, ...) only when
a decoder for them is installed (the ``dicom`` extra), so a peer is never promised a syntax whose pixels
would then fail. Among the syntaxes a peer proposes for a context, pynetdicom accepts the first one
listed here, uncompressed first.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COMPRESSED_TRANSFER_SYNTAXES",
    "SEGMENTED_SOP_CLASSES",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "add_supported_contexts",
    "decodable_transfer_syntaxes",
    "sop_class_name",
]

#: The image storage SOP classes whose objects are segmented: name by UID.
SEGMENTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
}

UNCOMPRESSED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian (the default every peer must support)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (inflated within the decoded-size limit)
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old devices)
)

COMPRESSED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Lossless
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
)


def decodable_transfer_syntaxes() -> tuple[str, ...]:
    """The uncompressed transfer syntaxes, then each compressed one for which a decoder is installed."""
    from pydicom.pixels import get_decoder

    usable = []
    for uid in COMPRESSED_TRANSFER_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except NotImplementedError:  # a syntax this pydicom has no decoder class for at all
            continue
    return UNCOMPRESSED_TRANSFER_SYNTAXES + tuple(usable)


def sop_class_name(uid: str) -> str:
    """The registered name of a SOP class UID, or "an unknown SOP class" (never an arbitrary peer string)."""
    from pydicom.uid import UID_dictionary

    entry = UID_dictionary.get(uid)
    return str(entry[0]) if entry is not None else "an unknown SOP class"


def add_supported_contexts(ae: Any) -> None:
    """Verification, then every storage SOP class pynetdicom knows, each with the decodable syntaxes."""
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    syntaxes = list(decodable_transfer_syntaxes())
    ae.add_supported_context(Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES[:2]))
    uids = set(SEGMENTED_SOP_CLASSES) | {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    for uid in sorted(uids, key=lambda u: (u not in SEGMENTED_SOP_CLASSES, u)):
        ae.add_supported_context(uid, syntaxes)
