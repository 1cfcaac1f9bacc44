import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanedge.errors import ConfigError, ManifestMismatchError, ModelError
from scanedge.manifest import IntensityPolicy, graph_sha256, load_manifest, sidecar_path
from scanedge.manifest_init import DEFAULT_PALETTE, ManifestInitConfig, draft_manifest, guess_layout, write_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model


def nhwc_model(channels: int = 3, height=128, width=128) -> onnx.ModelProto:
    """A real NHWC graph, as Keras/TensorFlow exports: transpose to NCHW, 1x1 conv, NCHW two-class scores."""
    weights = np.stack([-np.ones(channels), np.ones(channels)]).reshape(2, channels, 1, 1).astype(np.float32)
    w = numpy_helper.from_array(weights, "w")
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["scores"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, height, width, channels])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, height, width])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((1, 1, 256, 256), "NCHW"),
        ((1, 3, 224, 224), "NCHW"),
        ((1, 224, 224, 3), "NHWC"),
        ((1, 224, 224, 1), "NHWC"),
        (("n", "h", "w", 3), "NHWC"),
        ((1, 3, 3, 3), "NCHW"),  # ambiguous: NCHW, the ONNX convention
        ((1, 256, 256), "NCHW"),
    ],
)
def test_layout_is_guessed_from_where_the_channels_sit(shape, layout):
    assert guess_layout(shape) == layout


def test_a_static_nchw_graph_gives_a_fixed_size_and_the_palette():
    m = draft_manifest(conv_model(), ManifestInitConfig(name="x", classes=("bg", "a")))
    assert (m.input.name, m.input.layout, m.input.channels) == ("image", "NCHW", 1)
    assert (m.size.mode, m.size.height, m.size.width) == ("fixed", 256, 256)
    assert m.output.name == "logits" and [c.color for c in m.classes] == list(DEFAULT_PALETTE[:2])
    assert m.onnx_sha256 is None  # stamped when written


def test_an_nhwc_colour_graph_is_described_from_its_shape():
    options = ManifestInitConfig(name="rgb", classes=("bg", "polyp"), color="rgb", thresholds=(0.5, 0.7))
    m = draft_manifest(nhwc_model(), options)
    assert (m.input.name, m.input.layout, m.input.channels, m.input.color) == ("input_1", "NHWC", 3, "rgb")
    assert (m.size.height, m.size.width) == (128, 128) and m.classes[1].threshold == 0.7


def test_dynamic_height_and_width_use_the_size_mode_unless_a_size_is_given():
    dynamic = conv_model(height="h", width="w")
    m = draft_manifest(dynamic, ManifestInitConfig(name="d", classes=("bg", "a"), size_mode="multiple", multiple=16))
    assert (m.size.mode, m.size.multiple, m.size.height) == ("multiple", 16, None)
    m = draft_manifest(dynamic, ManifestInitConfig(name="d", classes=("bg", "a"), size=(192, 160)))
    assert (m.size.mode, m.size.height, m.size.width) == ("fixed", 192, 160)


def test_a_2_5d_description_needs_a_graph_with_that_many_channels():
    options = ManifestInitConfig(name="ctx", classes=("bg", "a"), context_slices=1)
    assert draft_manifest(conv_model(in_channels=3), options).input.channels == 3
    with pytest.raises(ManifestMismatchError, match="channels"):
        draft_manifest(conv_model(in_channels=1), options)


def test_descriptions_that_contradict_the_graph_are_refused():
    with pytest.raises(ManifestMismatchError, match="output"):
        draft_manifest(conv_model(), ManifestInitConfig(name="x", classes=("bg", "a", "b")))
    with pytest.raises(ManifestMismatchError, match=r"no input named 'pixels'.*'image'"):
        draft_manifest(conv_model(), ManifestInitConfig(name="x", classes=("bg", "a"), input_name="pixels"))
    with pytest.raises(ManifestMismatchError, match="no output named"):
        draft_manifest(conv_model(), ManifestInitConfig(name="x", classes=("bg", "a"), output_name="probs"))
    empty = conv_model()
    del empty.graph.output[:]
    with pytest.raises(ModelError, match="no inputs or no outputs"):
        draft_manifest(empty, ManifestInitConfig(name="x", classes=("bg", "a")))


def test_one_colour_and_threshold_per_class_or_none():
    with pytest.raises(ConfigError, match="one value per class"):
        ManifestInitConfig(name="x", classes=("bg", "a"), colors=((0, 0, 0),))
    with pytest.raises(ConfigError, match="one value per class"):
        ManifestInitConfig(name="x", classes=("bg", "a"), thresholds=(0.5, 0.5, 0.5))


def test_written_manifests_are_stamped_and_the_model_runs(tmp_path):
    path = tmp_path / "bare.onnx"
    model = conv_model()
    onnx.save(model, str(path))
    before = path.read_bytes()
    window = IntensityPolicy(mode="window", window_center=40, window_width=400)
    options = ManifestInitConfig(name="ct", classes=("bg", "nodule"), intensity=window)
    manifest = draft_manifest(model, options)
    assert write_manifest(model, manifest, path, sidecar=True) == sidecar_path(path)
    assert path.read_bytes() == before
    loaded, source = load_manifest(path)
    assert source == "sidecar" and loaded.onnx_sha256 == graph_sha256(model) and loaded.intensity.window_width == 400
    sidecar_path(path).unlink()
    out = tmp_path / "with-manifest.onnx"
    assert write_manifest(model, manifest, path, out_path=out) == out
    assert load_manifest(out)[1] == "embedded"
    with Pipeline.open(out) as pipe:
        assert pipe.run(np.arange(64 * 64, dtype=np.int16).reshape(64, 64)).finding("nodule").pixels > 0
