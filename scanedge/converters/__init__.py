"""From an exported ONNX model to a deployable engine: checks, manifest embedding, precision transforms
(fp16, int8 Q/DQ), TensorRT plan building, agreement verification and Triton export."""

__all__: list[str] = []
