"""Slices and what is done to them around inference: DICOM and array input, geometry, series order,
preprocessing to the model's tensor, postprocessing to masks and findings, overlays and encodings.

Imaging knows nothing of engines or of ZeroMQ; the runtime, the converters and the CLI build on it.
"""

__all__: list[str] = []
