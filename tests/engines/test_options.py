"""EngineConfig: one frozen object, validated once, handed intact from the caller to the engine."""

import dataclasses

import pytest

from scanedge.cli import build_parser
from scanedge.engines import EngineConfig, open_engine
from scanedge.errors import ConfigError
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.serving.server import ServerConfig


def test_defaults_are_onnx_runtime_on_the_cpu_with_its_own_thread_choice():
    options = EngineConfig()
    assert (options.backend, options.threads, options.spinning, options.optimization) == ("auto", None, True, "all")
    assert options.providers == ("CPUExecutionProvider",) and dict(options.session_config) == {}
    assert options.warmup_runs == 2 and options.provider_names == ("CPUExecutionProvider",)


def test_the_server_turns_spinning_off_and_keeps_the_rest():
    assert ServerConfig().engine == EngineConfig(spinning=False)


def test_options_are_frozen_hashable_and_do_not_share_the_callers_dicts():
    config = {"session.use_env_allocators": "1"}
    cuda = {"device_id": "0"}
    options = EngineConfig(providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"], session_config=config)
    config["added.later"] = "1"
    cuda["device_id"] = "1"
    assert dict(options.session_config) == {"session.use_env_allocators": "1"}
    assert dict(options.providers[0][1]) == {"device_id": "0"} and isinstance(options.providers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.session_config["x"] = "y"  # type: ignore[index]
    assert hash(options) == hash(dataclasses.replace(options))
    assert options == dataclasses.replace(options) and options != dataclasses.replace(options, threads=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "gpu"}, "unknown backend 'gpu'"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"optimization": "max"}, "optimization level 'max'"),
        ({"warmup_runs": -1}, "warmup_runs"),
        ({"device": -1}, "CUDA device"),
        ({"providers": ()}, "execution provider"),
    ],
)
def test_values_a_user_can_set_wrongly_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        EngineConfig(**changes)
    assert err.value.code == "BAD_CONFIG"


@pytest.mark.parametrize(
    "changes",
    [
        {"threads": "2"},
        {"threads": True},
        {"spinning": "no"},
        {"providers": "CPUExecutionProvider"},
        {"providers": (("CUDAExecutionProvider", "device_id=0"),)},
        {"session_config": {"key": 1}},
    ],
)
def test_wrong_python_types_are_programmer_errors_outside_the_tree(changes):
    with pytest.raises(TypeError):
        EngineConfig(**changes)


def test_asking_onnx_runtime_to_run_a_tensorrt_plan_is_a_config_error(tmp_path):
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\0")
    with pytest.raises(ConfigError, match="TensorRT plan"):
        open_engine(plan, EngineConfig(backend="ort"))
    with pytest.raises(TypeError, match="EngineConfig"):
        open_engine(plan, "ort")  # type: ignore[arg-type]


def test_the_pipeline_hands_the_same_options_object_to_its_engine(conv_model_path):
    options = EngineConfig(backend="ort", threads=1, warmup_runs=0)
    with Pipeline.open(conv_model_path, options=options) as pipe:
        assert pipe.engine.options is options and pipe.engine.backend == "ort"
        assert pipe.engine.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("flag", ["--backend", "--engine"])
@pytest.mark.parametrize(
    "command", [["serve"], ["segment", "x.dcm"], ["verify", "m.onnx", "--reference", "r", "--data", "d"]]
)
def test_the_command_line_takes_backend_and_its_old_name_engine(flag, command):
    args = build_parser().parse_args([*command, flag, "ort"])
    assert args.backend == "ort"
    assert build_parser().parse_args(command).backend == "auto"
