"""Package data: the shipped demo model (``ms_lesion_demo.onnx``, manifest embedded) and its evaluation.

The path lives here, beside the file, so that the floors that open "the default model" (the pipeline, the
runtime, the DICOM node) reach down to package data instead of up into :mod:`scanedge.demo`.
"""

from pathlib import Path

__all__ = ["DEMO_CLASSIFIER_PATH", "DEMO_MODEL_PATH"]

#: the shipped demo model (MS-like lesions on FLAIR-like slices; not for clinical use)
DEMO_MODEL_PATH = Path(__file__).resolve().parent / "ms_lesion_demo.onnx"

#: the shipped demo classifier: is there a lesion on this slice? (served beside the demo model; not for clinical use)
DEMO_CLASSIFIER_PATH = Path(__file__).resolve().parent / "ms_lesion_classifier_demo.onnx"
