"""Where the shipped demo model and demo patient live, and the demo model's manifest."""

from __future__ import annotations

from pathlib import Path

from scanedge.manifest import (
    AppliesTo,
    ClassSpec,
    CodedConcept,
    InputSpec,
    IntensityPolicy,
    Manifest,
    OutputSpec,
    SizePolicy,
)
from scanedge.models import DEMO_MODEL_PATH

__all__ = ["DEMO_MODEL_PATH", "DEMO_PATIENT_PATH", "demo_manifest"]

DEMO_PATIENT_PATH = Path(__file__).resolve().parent / "data" / "demo_patient.npz"


def demo_manifest(version: str = "1.0.0", description: str = "") -> Manifest:
    """The manifest the demo model is trained with and shipped under."""
    return Manifest(
        name="ms-lesion-demo",
        version=version,
        description=description
        or "2D U-Net (pixel-unshuffle stem) segmenting MS-like white-matter lesions on FLAIR-like axial "
        "brain slices; trained on synthetic data built on the MNI152 template.",
        intended_use="DEMONSTRATION ONLY - trained on synthetic images; not a medical device, not for clinical use.",
        input=InputSpec(name="image", layout="NCHW", channels=1, color="gray"),
        size=SizePolicy(mode="fixed", height=256, width=256, interpolation="area"),
        intensity=IntensityPolicy(mode="zscore"),
        output=OutputSpec(name="logits", kind="logits", activation="softmax"),
        classes=(
            ClassSpec("background", (0, 0, 0)),
            ClassSpec(
                "lesion",
                (255, 40, 40),
                threshold=0.5,
                # SNOMED CT, as DICOM SEG segment descriptions take them (CID 7150 / 7151 / 4)
                property_category=CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
                property_type=CodedConcept("52988006", "SCT", "Lesion"),
                anatomic_region=CodedConcept("68523003", "SCT", "Cerebral White Matter"),
            ),
        ),
        # brain MR as it was trained on: grey images; pixels of 0.1-3 mm are resampled to its 1 mm grid
        applies_to=AppliesTo(
            modalities=("MR",),
            body_parts=("BRAIN", "HEAD"),
            photometric=("MONOCHROME1", "MONOCHROME2"),
            pixel_spacing_mm=(0.1, 3.0),
        ),
        not_for_clinical_use=True,
    )
