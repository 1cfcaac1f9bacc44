import importlib.util
from pathlib import Path

import pytest
from google.protobuf import text_format

from scanedge.cli import main
from scanedge.demo.assets import DEMO_MODEL_PATH
from scanedge.engines.tensorrt import EngineKey, key_path
from scanedge.manifest import Manifest, load_manifest, sidecar_path


def model_config_pb2():
    """Triton's own ModelConfig message (the protobuf module only; no gRPC needed)."""
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnx_export_parses_back_as_a_triton_model_config(tmp_path):
    assert main(["export-triton", str(DEMO_MODEL_PATH), "--repo", str(tmp_path), "--instances", "2"]) == 0
    entry = tmp_path / "ms-lesion-demo"
    assert (entry / "1" / "model.onnx").read_bytes() == DEMO_MODEL_PATH.read_bytes()
    pb = model_config_pb2()
    config = text_format.Parse((entry / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.name == "ms-lesion-demo" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    (inp,) = config.input
    (out,) = config.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("image", [1, 1, 256, 256], pb.TYPE_FP32)
    assert (out.name, list(out.dims)) == ("logits", [1, 2, 256, 256])
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    manifest = Manifest.from_json(config.parameters["scanedge.manifest"].string_value)
    assert manifest == load_manifest(DEMO_MODEL_PATH)[0]
    assert Manifest.from_json((entry / "scanedge.manifest.json").read_text()) == manifest


def test_plan_export_uses_the_tensorrt_platform(tmp_path):
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"plan bytes")
    sidecar_path(plan).write_text(manifest.to_json())
    key_path(plan).write_text(EngineKey("NVIDIA L4", (8, 9), 58, "11.4.0", "fp16", "a" * 64).to_json())
    entry = tmp_path / "repo"
    assert main(["export-triton", str(plan), "--repo", str(entry)]) == 0
    pb = model_config_pb2()
    config = text_format.Parse((entry / "ms-lesion-demo" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert (entry / "ms-lesion-demo" / "1" / "model.plan").read_bytes() == b"plan bytes"
