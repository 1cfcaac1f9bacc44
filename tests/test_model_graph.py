import onnx
import pytest
from onnx import TensorProto, helper

from scanedge.errors import ModelFileError
from scanedge.manifest import embed_manifest, load_onnx_model, sidecar_path
from scanedge.model_graph import TensorInfo, graph_io, inspect_model, opset_version
from tests.conftest import conv_model, simple_manifest


def test_graph_io_names_dtypes_and_dynamic_dims():
    model = conv_model(height="h", width=None)
    inputs, outputs = graph_io(model)
    assert inputs == (TensorInfo("image", "float32", (1, 1, "h", None)),)
    assert outputs == (TensorInfo("logits", "float32", (1, 2, "h", None)),)
    assert inputs[0].to_dict() == {"name": "image", "dtype": "float32", "shape": [1, 1, "h", None]}


def test_weights_listed_as_graph_inputs_are_not_inputs():
    model = conv_model()
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(weight.name, TensorProto.FLOAT, list(weight.dims)))
    inputs, _ = graph_io(model)
    assert [t.name for t in inputs] == ["image"]


def test_opset_of_the_default_domain():
    model = conv_model()
    assert opset_version(model) == 17
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert opset_version(model) == 17
    del model.opset_import[:]
    assert opset_version(model) is None


def test_inspecting_reports_source_and_whether_the_manifest_fits_the_graph(tmp_path):
    path = tmp_path / "m.onnx"
    embed_manifest(conv_model(), simple_manifest(), path)
    info = inspect_model(path)
    assert info.manifest_source == "embedded" and info.manifest_matches_graph and info.opset == 17
    assert info.to_dict()["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 1, 256, 256]}]
    keys = {"model", "graph_sha256", "manifest_source", "manifest_matches_graph", "inputs", "outputs", "manifest"}
    assert set(info.to_dict()) == keys
    other = simple_manifest(onnx_sha256="0" * 64)
    sidecar_path(path).write_text(other.to_json())
    info = inspect_model(path)
    assert info.manifest_source == "sidecar" and not info.manifest_matches_graph


def test_files_that_are_not_onnx(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_onnx_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 definitely not protobuf " * 10)
    with pytest.raises(ModelFileError, match=r"junk\.onnx is not a readable ONNX model"):
        inspect_model(junk)


def test_read_onnx_reads_what_onnx_wrote(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(path))
    assert load_onnx_model(path).graph.name == "conv1x1"
