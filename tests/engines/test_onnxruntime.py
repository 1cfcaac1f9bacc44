import numpy as np
import onnx
import onnxruntime as ort
import pytest

from scanedge.engines import EngineConfig, OnnxRuntimeEngine, OrtSessionLoader, open_engine
from scanedge.errors import EngineInputError, EngineStateError, ModelFileError, ProviderUnavailableError
from tests.conftest import conv_model


@pytest.fixture
def dynamic_model(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(conv_model(height="h", width="w"), str(path))
    return path


def reference(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def test_infer_matches_a_plain_session_and_declares_specs(conv_model_path):
    x = np.random.default_rng(0).normal(size=(1, 1, 256, 256)).astype(np.float32)
    with OnnxRuntimeEngine(conv_model_path) as engine:
        (spec,) = engine.input_specs
        assert (spec.name, spec.dtype, spec.shape) == ("image", np.dtype(np.float32), (1, 1, 256, 256))
        assert engine.output_specs[0].name == "logits"
        assert engine.providers == ["CPUExecutionProvider"]
        np.testing.assert_allclose(engine.infer({"image": x})["logits"], reference(conv_model_path, x), rtol=1e-6)


def test_same_shape_calls_reuse_one_output_buffer_and_stay_correct(dynamic_model):
    rng = np.random.default_rng(1)
    with OnnxRuntimeEngine(dynamic_model, EngineConfig(warmup_runs=0)) as engine:
        seen = []
        # alternate shapes: each shape keeps its own bound buffers, results never leak between shapes
        for shape in [(64, 64), (64, 64), (32, 48), (64, 64), (32, 48), (32, 48)]:
            x = rng.normal(size=(1, 1, *shape)).astype(np.float32)
            out = engine.infer({"image": x})["logits"]
            np.testing.assert_allclose(out, reference(dynamic_model, x), rtol=1e-6)
            seen.append((shape, out))
        buffers = {id(o) for s, o in seen[1:] if s == (64, 64)}
        assert len(buffers) == 1  # second and later 64x64 calls return the same preallocated array


def test_warm_up_runs_on_activate_for_static_inputs(conv_model_path):
    engine = OnnxRuntimeEngine(conv_model_path, EngineConfig(warmup_runs=1))
    engine.activate()
    assert engine._bound  # the warm-up ran and bound this shape's buffers
    engine.deactivate()


def test_missing_provider_is_refused_not_silently_replaced(conv_model_path):
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    options = EngineConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    engine = OnnxRuntimeEngine(conv_model_path, options)
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        engine.activate()
    assert not engine.is_active


def test_infer_before_activate_is_a_state_error(conv_model_path):
    engine = OnnxRuntimeEngine(conv_model_path)
    with pytest.raises(EngineStateError, match="not active"):
        engine.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"pixels": np.zeros((1, 1, 256, 256), np.float32)}, "expected inputs"),
        ({"image": np.zeros((1, 1, 256, 256), np.float64)}, "must be float32"),
        ({"image": np.zeros((1, 1, 128, 256), np.float32)}, "shape"),
        ({"image": np.zeros((1, 256, 256), np.float32)}, "shape"),
        ({"image": [[0.0]]}, "numpy array"),
    ],
)
def test_bad_feeds_are_engine_input_errors(conv_model_path, feeds, message):
    with OnnxRuntimeEngine(conv_model_path) as engine:
        with pytest.raises(EngineInputError, match=message):
            engine.infer(feeds)


def test_a_file_that_is_not_onnx_fails_to_activate_with_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    engine = OnnxRuntimeEngine(bad)
    with pytest.raises(ModelFileError, match=r"bad\.onnx is not a readable ONNX model") as err:
        engine.activate()
    assert err.value.code == "BAD_MODEL_FILE" and not engine.is_active


def test_thread_count_and_describe(conv_model_path):
    with open_engine(conv_model_path, EngineConfig(backend="ort", threads=1)) as engine:
        info = engine.describe()
        assert info["backend"] == "ort" and info["threads"] == 1 and info["providers"] == ["CPUExecutionProvider"]
        assert engine.backend == "ort"


def test_the_engine_runs_the_session_its_loader_makes(conv_model_path):
    loader = OrtSessionLoader(conv_model_path, EngineConfig(threads=1, warmup_runs=0))
    with OnnxRuntimeEngine(loader) as engine:
        assert engine.loader is loader and engine.options is loader.options
        assert engine.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(TypeError, match="OrtSessionLoader"):
        OnnxRuntimeEngine(loader, EngineConfig())
