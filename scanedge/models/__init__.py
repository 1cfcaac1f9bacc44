"""Package data: the shipped demo model (``ms_lesion_demo.onnx``, manifest embedded) and its evaluation."""

__all__: list[str] = []
