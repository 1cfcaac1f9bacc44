"""The one ONNX Runtime session loader: settings applied, unreadable models named as such, no fallback."""

import onnx
import pytest
from onnx import TensorProto, helper

from scanedge.engines import EngineConfig, OrtSessionLoader
from scanedge.errors import EngineError, ModelFileError, ProviderUnavailableError
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import simple_manifest


def test_the_session_gets_the_options_settings(conv_model_path):
    options = EngineConfig(
        threads=1, spinning=False, optimization="basic", session_config={"session.use_env_allocators": "1"}
    )
    session = OrtSessionLoader(conv_model_path, options)()
    so = session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert str(so.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.use_env_allocators") == "1"
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_loading_from_bytes_and_writing_the_optimized_graph(conv_model_path, tmp_path):
    out = tmp_path / "optimized.onnx"
    options = EngineConfig(optimization="extended")
    loader = OrtSessionLoader(conv_model_path.read_bytes(), options, optimized_model_path=out)
    assert loader.name == "<bytes>"
    assert loader().get_inputs()[0].name == "image"
    onnx.checker.check_model(onnx.load(str(out)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"not a model at all", "not a readable ONNX model"),
        ("truncated", "not a readable ONNX model"),
    ],
)
def test_unreadable_model_files_are_model_file_errors(conv_model_path, tmp_path, content, message):
    bad = tmp_path / "bad.onnx"
    data = conv_model_path.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(ModelFileError, match=message) as err:
        OrtSessionLoader(bad)()
    assert err.value.code == "BAD_MODEL_FILE"
    with pytest.raises(ModelFileError):
        OrtSessionLoader(bad.read_bytes())()


def test_a_missing_file_or_a_folder_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read the model"):
        OrtSessionLoader(tmp_path / "nowhere.onnx")()
    with pytest.raises(ModelFileError, match="is a folder"):
        OrtSessionLoader(tmp_path)()


def test_a_readable_graph_that_onnx_runtime_refuses_is_an_engine_error_not_a_file_error(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "wrong-output-type",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "typed-wrong.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match=r"ONNX Runtime could not load typed-wrong\.onnx") as err:
        OrtSessionLoader(path)()
    assert not isinstance(err.value, ModelFileError)


def test_a_provider_missing_from_this_build_is_refused_before_loading(conv_model_path):
    options = EngineConfig(providers=(("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"))
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        OrtSessionLoader(conv_model_path, options)()


def test_a_truncated_model_opened_with_its_manifest_is_a_model_file_error_not_a_mismatch(conv_model_path, tmp_path):
    data = conv_model_path.read_bytes()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match=r"cut\.onnx"):
        Pipeline.open(truncated, manifest=simple_manifest(), options=EngineConfig(backend="ort"))


def test_programmer_errors_stay_outside_the_tree(conv_model_path):
    with pytest.raises(TypeError):
        OrtSessionLoader(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        OrtSessionLoader(conv_model_path, {"threads": 1})  # type: ignore[arg-type]
