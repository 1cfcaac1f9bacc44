"""TensorRT without TensorRT or a GPU must fail with a clear error, never a crash; keys guard plans.

The tests marked ``gpu`` build and run a real plan; they skip (with the reason) where there is no
NVIDIA GPU with TensorRT, and are written to run unchanged where there is.
"""

import json

import numpy as np
import pytest

from scanedge.cli import main
from scanedge.converters.convert import ConvertConfig, convert
from scanedge.demo.assets import DEMO_MODEL_PATH
from scanedge.engines import EngineConfig, OnnxRuntimeEngine, open_engine
from scanedge.engines.cuda import GpuInfo, gpu_info
from scanedge.engines.tensorrt import EngineKey, TensorRTEngine, check_engine_key, key_path, read_engine_key
from scanedge.errors import DeviceUnavailableError
from scanedge.manifest import load_manifest, sidecar_path

H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 132)
L4 = GpuInfo(0, "NVIDIA L4", (8, 9), 58)


def key_for(gpu: GpuInfo, trt: str = "11.4.0") -> EngineKey:
    return EngineKey.for_device(gpu, trt, "fp16", "a" * 64)


def test_key_names_the_file_after_what_it_is_valid_for():
    assert key_for(H100).filename("lesions") == "lesions.nvidia-h100-80gb-hbm3.sm90.132.trt11.4.0.fp16.engine"
    assert EngineKey.from_json(key_for(H100).to_json()) == key_for(H100)


def test_key_mismatches_are_listed():
    key = key_for(H100)
    assert key.mismatches(H100, "11.4.0") == []
    problems = key.mismatches(L4, "10.3.0")
    assert len(problems) == 4 and any("compute capability 9.0" in p for p in problems)


def test_a_plan_built_elsewhere_is_refused_with_the_rebuild_command(tmp_path):
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"not loaded")
    key_path(plan).write_text(key_for(H100).to_json())
    assert check_engine_key(plan, H100, "11.4.0") == key_for(H100)
    with pytest.raises(DeviceUnavailableError, match=r"NVIDIA H100.*rebuild it on this machine.*--target tensorrt"):
        check_engine_key(plan, L4, "11.4.0")
    with pytest.raises(DeviceUnavailableError, match=r"TensorRT 11\.4\.0"):
        check_engine_key(plan, H100, "10.9.0")


def test_a_plan_without_a_key_is_refused(tmp_path):
    plan = tmp_path / "orphan.engine"
    plan.write_bytes(b"")
    with pytest.raises(DeviceUnavailableError, match="no key file"):
        read_engine_key(plan)
    key_path(plan).write_text("{broken")
    with pytest.raises(DeviceUnavailableError, match="not a valid engine key"):
        read_engine_key(plan)


def no_gpu() -> bool:
    try:
        gpu_info()
    except DeviceUnavailableError:
        return True
    return False


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_no_gpu_is_a_clear_error_not_a_crash(tmp_path):
    with pytest.raises(DeviceUnavailableError, match=r"GPU|TensorRT|cuda-python"):
        gpu_info()
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\0" * 64)  # would crash TensorRT's deserializer without a GPU; must never reach it
    key_path(plan).write_text(key_for(H100).to_json())
    engine = TensorRTEngine(plan)
    with pytest.raises(DeviceUnavailableError):
        engine.activate()
    assert not engine.is_active
    with pytest.raises(DeviceUnavailableError, match="no TensorRT plan"):
        open_engine(DEMO_MODEL_PATH, EngineConfig(backend="tensorrt"))


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_auto_falls_back_to_onnx_runtime_when_a_plan_cannot_run_here(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(DEMO_MODEL_PATH.read_bytes())
    manifest, _ = load_manifest(model)
    plan = tmp_path / "engines" / key_for(H100).filename("m")
    plan.parent.mkdir()
    plan.write_bytes(b"\0")
    key_path(plan).write_text(EngineKey.for_device(H100, "11.4.0", "fp32", manifest.onnx_sha256).to_json())
    engine = open_engine(model, EngineConfig(backend="auto"), onnx_sha256=manifest.onnx_sha256)
    assert isinstance(engine, OnnxRuntimeEngine)


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_convert_to_tensorrt_without_gpu_exits_cleanly(tmp_path, capsys):
    code = main(
        ["convert", str(DEMO_MODEL_PATH), "--target", "tensorrt", "--precision", "fp16", "--out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "DEVICE_UNAVAILABLE" in err and ("TensorRT" in err or "GPU" in err)


# --- on a GPU machine with TensorRT --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_plan_matches_onnx_runtime(tmp_path, demo_series, precision):
    from scanedge.converters.verify import DEFAULT_MIN_DICE, Thresholds, judge, measure_agreement
    from scanedge.imaging.files import load_slices

    result = convert(DEMO_MODEL_PATH, ConvertConfig(target="tensorrt", precision=precision, out_dir=tmp_path))
    plan = result.output
    assert plan.suffix == ".engine" and key_path(plan).is_file() and sidecar_path(plan).is_file()
    assert read_engine_key(plan).precision == precision
    assert list(tmp_path.glob("timing.*.cache"))
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    slices = [item.slice for item in load_slices([demo_series])]
    with TensorRTEngine(plan) as trt_engine, OnnxRuntimeEngine(DEMO_MODEL_PATH) as ort_engine:
        out = trt_engine.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})["logits"]
        assert out.shape == (1, 2, 256, 256)
        agreement = measure_agreement(trt_engine, ort_engine, manifest, slices)
    assert judge(agreement, Thresholds(DEFAULT_MIN_DICE[precision])).passed
    info = json.loads(key_path(plan).read_text())
    assert info["gpu"] == gpu_info().name
