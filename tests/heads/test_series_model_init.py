"""``scanedge manifest init --series-model``: a score head's 3-D model described from its graph, relative to the
manifest, with its sha256; what cannot be inferred (a dynamic volume) asked for; contradictions refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from scanedge.errors import ConfigError, ManifestMismatchError
from scanedge.manifest import graph_sha256, load_manifest
from scanedge.manifest_init import ManifestInitConfig, attach_series_model, draft_manifest
from tests.heads.conftest import VOLUME_SIZE, volume_classifier


def _pooled_volume_model(path: Path, classes: int = 1, dims: tuple[object, ...] = ("d", "h", "w")) -> Path:
    """A real 3-D graph: global mean of the volume -> [1, classes] (the mean repeated) -> Sigmoid."""
    pooled = helper.make_node("GlobalAveragePool", ["volume"], ["pooled"])
    flat = helper.make_node("Flatten", ["pooled"], ["flat"])
    concat = helper.make_node("Concat", ["flat"] * classes, ["wide"], axis=1)
    sigmoid = helper.make_node("Sigmoid", ["wide"], ["p"])
    graph = helper.make_graph(
        [pooled, flat, concat, sigmoid],
        "pooled_volume",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, [1, 1, *dims])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def described(head_models, tmp_path: Path):
    """The mask + score model's draft (score head ``abnormal_logit``, one class) and a folder with the model."""
    shutil.copyfile(head_models["mask_score"], tmp_path / "model.onnx")
    options = ManifestInitConfig(name="ms", classes=("background", "lesion"), score_classes=("abnormal",))
    return draft_manifest(onnx.load(str(tmp_path / "model.onnx")), options), tmp_path


def test_the_section_is_read_from_the_3d_graph(described):
    manifest, folder = described
    (folder / "3d").mkdir()
    volume = volume_classifier(folder / "3d" / "volume_classifier.onnx")
    out, notes = attach_series_model(manifest, volume, folder)
    head = out.series_model_head
    assert head is not None and head.name == "abnormal_logit"
    spec = head.series_model
    assert spec is not None
    assert (spec.path, (spec.depth, spec.height, spec.width)) == ("3d/volume_classifier.onnx", VOLUME_SIZE)
    assert (spec.input, spec.output) == ("volume", "abnormal_3d")
    # the output is a Gemm, not a Softmax/Sigmoid: read as the head reads its slices (logits through a sigmoid)
    assert (spec.kind, spec.activation) == (head.kind, head.activation) == ("logits", "sigmoid")
    assert spec.onnx_sha256 == graph_sha256(onnx.load(str(volume)))
    text = "\n".join(notes)
    assert "6x16x16 (depth x height x width) read from the graph" in text
    assert "as head 'abnormal_logit' reads its slices" in text


def test_a_dynamic_volume_needs_its_size_and_the_activation_is_read(described):
    manifest, folder = described
    volume = _pooled_volume_model(folder / "pooled.onnx")
    with pytest.raises(ConfigError, match="--series-size DEPTHxHEIGHTxWIDTH"):
        attach_series_model(manifest, volume, folder)
    out, notes = attach_series_model(manifest, volume, folder, head="abnormal_logit", size=(8, 12, 10))
    spec = out.heads[0].series_model
    assert spec is not None and (spec.depth, spec.height, spec.width) == (8, 12, 10)
    assert (spec.kind, spec.activation, spec.output) == ("probabilities", "sigmoid", "p")
    assert any("8x12x10 (depth x height x width) as given" in n for n in notes)
    static = _pooled_volume_model(folder / "static.onnx", dims=(4, 8, 8))
    with pytest.raises(ManifestMismatchError, match="contradicts it"):
        attach_series_model(manifest, static, folder, size=(8, 8, 8))


def test_contradictions_are_refused(described, tmp_path_factory):
    manifest, folder = described
    two = _pooled_volume_model(folder / "two.onnx", classes=2, dims=(4, 8, 8))
    with pytest.raises(ManifestMismatchError, match="2 class\\(es\\), and head 'abnormal_logit' has 1"):
        attach_series_model(manifest, two, folder)
    elsewhere = _pooled_volume_model(tmp_path_factory.mktemp("elsewhere") / "v.onnx", dims=(4, 8, 8))
    with pytest.raises(ConfigError, match="not in the manifest's folder"):
        attach_series_model(manifest, elsewhere, folder)
    with pytest.raises(ConfigError, match="no score head 'nope'"):
        attach_series_model(manifest, two, folder, head="nope")
    with pytest.raises(ConfigError, match="no such file"):
        attach_series_model(manifest, folder / "missing.onnx", folder)
    rgb = manifest.replace(input=manifest.input.__class__(name=manifest.input.name, channels=3, color="rgb"))
    with pytest.raises(ManifestMismatchError, match="1 channel\\(s\\); the model's rgb slices give 3"):
        attach_series_model(rgb, _pooled_volume_model(folder / "grey.onnx", dims=(4, 8, 8)), folder)


def test_cli_writes_a_manifest_the_runtime_opens_with_its_series_model(head_models, tmp_path: Path, monkeypatch):
    from scanedge.cli import main
    from scanedge.imaging.series_model import SeriesModel

    shutil.copyfile(head_models["mask_score"], tmp_path / "model.onnx")
    volume_classifier(tmp_path / "volume_classifier.onnx")
    monkeypatch.chdir(tmp_path)
    base = ["manifest", "init", "model.onnx", "--name", "ms", "--classes", "background,lesion"]
    base += ["--score-classes", "abnormal", "--sidecar"]
    assert main([*base, "--series-size", "6x16x16"]) != 0  # a size without a series model is refused
    assert main([*base, "--series-model", "abnormal_logit=volume_classifier.onnx"]) == 0
    manifest, _ = load_manifest(tmp_path / "model.onnx")
    head = manifest.series_model_head
    assert head is not None and head.series_model is not None and head.series_model.path == "volume_classifier.onnx"
    model = SeriesModel.open(manifest, tmp_path)  # checked against its graph as the runtime opens it
    assert model is not None
    model.close()
