import json
import random

import cv2
import numpy as np
import onnx
import pytest

from scanedge.errors import ManifestInvalidError, ManifestMismatchError, ManifestMissingError, ModelFileError
from scanedge.manifest import (
    METADATA_KEY,
    ClassSpec,
    CodedConcept,
    InputSpec,
    IntensityPolicy,
    Manifest,
    SizePolicy,
    check_model_io,
    check_model_output,
    embed_manifest,
    graph_sha256,
    load_manifest,
    load_onnx_model,
    sidecar_path,
)
from scanedge.runtime.core.pipeline import default_model_path
from tests.conftest import conv_model, simple_manifest


def test_json_round_trip_keeps_every_field():
    m = simple_manifest(
        input=InputSpec(name="image", channels=9, color="rgb", context_slices=1),
        intensity=IntensityPolicy(mode="scale", scale=1 / 255, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.3)),
        size=SizePolicy(mode="pad", height=None, width=None, multiple=16),
    )
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert isinstance(again.classes[1].color, tuple) and isinstance(again.intensity.mean, tuple)


def test_embedded_manifest_is_read_back_and_stamped_with_the_graph_hash(tmp_path):
    model = conv_model()
    path = tmp_path / "m.onnx"
    stamped = embed_manifest(model, simple_manifest(), path)
    manifest, source = load_manifest(path)
    assert source == "embedded"
    assert manifest == stamped
    assert manifest.onnx_sha256 == graph_sha256(onnx.load(str(path)))


def test_sidecar_wins_over_embedded_and_explicit_wins_over_both(tmp_path):
    path = tmp_path / "m.onnx"
    embed_manifest(conv_model(), simple_manifest(), path)
    sidecar_path(path).write_text(simple_manifest(name="from-sidecar").to_json())
    assert load_manifest(path)[0].name == "from-sidecar"
    explicit = tmp_path / "other.json"
    explicit.write_text(simple_manifest(name="explicit").to_json())
    assert load_manifest(path, explicit) == (simple_manifest(name="explicit"), "explicit")


def test_missing_manifest_says_how_to_add_one(tmp_path):
    path = tmp_path / "bare.onnx"
    onnx.save(conv_model(), str(path))
    with pytest.raises(ManifestMissingError, match="scanedge manifest init"):
        load_manifest(path)


def test_manifest_written_for_another_graph_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    model = conv_model()
    embed_manifest(model, simple_manifest(), path)
    changed = conv_model(weights=[[1.0], [2.0]])
    props = {p.key: p.value for p in model.metadata_props}
    changed.metadata_props.add(key=METADATA_KEY, value=props[METADATA_KEY])
    onnx.save(changed, str(path))
    with pytest.raises(ManifestMismatchError, match="another graph"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"classes": [{"name": "background"}]}, "at least two"),
        ({"input": {"channels": 2}}, "does not match"),
        ({"input": {"layout": "CHW"}}, "not one of"),
        ({"intensity": {"mode": "window", "window_center": 40}}, "both or neither"),
        ({"size": {"mode": "fixed", "height": 0}}, "integer >= 1"),
        ({"colour": "red"}, "unknown key"),
        ({"classes": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"classes": [{"name": "a"}, {"name": "b", "color": [300, 0, 0]}]}, "0-255"),
        ({"classes": [{"name": "a"}, {"name": "b", "threshold": 1.5}]}, "between 0 and 1"),
        ({"schema_version": 99}, "Upgrade scanedge"),
    ],
)
def test_invalid_manifests_are_refused_with_the_field_named(patch, message):
    data = json.loads(simple_manifest().to_json())
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(ManifestInvalidError, match=message):
        Manifest.from_dict(data)


def test_not_json_is_a_manifest_error():
    with pytest.raises(ManifestInvalidError, match="not valid JSON"):
        Manifest.from_json("{nope")


@pytest.mark.parametrize(
    ("manifest", "inputs", "outputs", "message"),
    [
        (simple_manifest(), [("pixels", [1, 1, 256, 256])], [("logits", [1, 2, 256, 256])], "input.name"),
        (simple_manifest(), [("image", [1, 3, 256, 256])], [("logits", [1, 2, 256, 256])], "3 channels"),
        (simple_manifest(), [("image", [1, 1, 512, 512])], [("logits", [1, 2, 512, 512])], "512x512"),
        (simple_manifest(), [("image", [1, 1, 256, 256])], [("logits", [1, 3, 256, 256])], "need 2"),
        (simple_manifest(), [("image", [1, 1, 256, 256])], [("scores", [1, 2, 256, 256])], "output.name"),
        (simple_manifest(), [("image", [1, 256, 256])], [("logits", [1, 2, 256, 256])], "rank 3"),
        (
            simple_manifest(size=SizePolicy(mode="multiple", height=None, width=None)),
            [("image", [1, 1, 256, 256])],
            [("logits", [1, 2, 256, 256])],
            "fixed",
        ),
    ],
)
def test_model_io_that_contradicts_the_manifest_is_refused(manifest, inputs, outputs, message):
    with pytest.raises(ManifestMismatchError, match=message):
        check_model_io(manifest, inputs, outputs)


def test_dynamic_dimensions_match_any_size():
    m = simple_manifest(size=SizePolicy(mode="pad", height=None, width=None, multiple=32))
    check_model_io(m, [("image", [1, 1, "h", "w"])], [("logits", [1, 2, "h", "w"])])
    sig = simple_manifest(
        classes=(ClassSpec("bg"), ClassSpec("a"), ClassSpec("b")),
    ).replace(output=simple_manifest().output.__class__(name="logits", activation="sigmoid"))
    check_model_io(sig, [("image", [1, 1, 256, 256])], [("logits", [None, 2, 256, 256])])


def test_size_policy_model_sizes():
    assert SizePolicy(mode="fixed", height=256, width=128).model_size(512, 512) == (256, 128)
    assert SizePolicy(mode="pad", multiple=32).model_size(500, 33) == (512, 64)
    assert SizePolicy(mode="multiple", multiple=32).model_size(500, 10) == (512, 32)


def _not_a_model(kind: str, conv_model_path) -> bytes:
    good = conv_model_path.read_bytes()
    return {
        "empty": b"",
        "random bytes": random.Random(7).randbytes(4096),
        "truncated": good[: len(good) // 2],
        "png": cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes(),
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "random bytes", "truncated", "png"])
def test_a_file_that_is_not_an_onnx_model_is_a_model_file_error(kind, conv_model_path, tmp_path):
    path = tmp_path / "lesions.onnx"
    path.write_bytes(_not_a_model(kind, conv_model_path))
    for load in (load_onnx_model, load_manifest):  # inspect calls the first, the pipeline the second
        with pytest.raises(ModelFileError, match=r"lesions\.onnx is not a readable ONNX model") as exc:
            load(path)
        assert exc.value.code == "BAD_MODEL_FILE"


def test_a_readable_model_loads_with_its_graph(conv_model_path):
    model = load_onnx_model(conv_model_path)
    assert [o.name for o in model.graph.output] == ["logits"]
    with pytest.raises(FileNotFoundError):
        load_onnx_model(conv_model_path.with_name("missing.onnx"))


def test_coded_concepts_per_class_round_trip_and_a_manifest_without_them_reads_as_before():
    plain = simple_manifest()
    assert all(set(c) == {"name", "color", "threshold"} for c in plain.to_dict()["classes"])  # older readers
    data = plain.to_dict()
    data["classes"][1]["property_category"] = {"value": "49755003", "scheme": "SCT", "meaning": "Abnormal"}
    data["classes"][1]["property_type"] = {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}
    coded = Manifest.from_dict(data)
    assert coded.classes[1].property_type == CodedConcept("52988006", "SCT", "Lesion")
    assert coded.classes[1].anatomic_region is None and coded.classes[0].property_type is None
    assert Manifest.from_json(coded.to_json()) == coded


@pytest.mark.parametrize(
    "concepts, message",
    [
        ({"property_type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}}, "give both or neither"),
        ({"anatomic_region": {"value": "", "scheme": "SCT", "meaning": "Brain"}}, "code.value"),
        ({"anatomic_region": {"value": "1", "scheme": "SCT", "meaning": "a\\b"}}, "backslash"),
        ({"anatomic_region": {"value": "1", "scheme": "SCT"}}, "missing required key"),
        ({"anatomic_region": {"value": "1", "scheme": "SCT", "meaning": "x", "version": "1"}}, "unknown key"),
        ({"anatomic_region": "Brain"}, "must be an object"),
    ],
)
def test_invalid_coded_concepts_are_refused_with_the_class_named(concepts, message):
    data = simple_manifest().to_dict()
    data["classes"][1].update(concepts)
    with pytest.raises(ManifestInvalidError, match=message):
        Manifest.from_dict(data)


def test_the_demo_model_describes_its_lesion_class_in_snomed_ct():
    manifest, _ = load_manifest(default_model_path())
    lesion = manifest.classes[1]
    assert (lesion.property_category.scheme, lesion.property_category.value) == ("SCT", "49755003")
    assert (lesion.property_type.scheme, lesion.property_type.value) == ("SCT", "52988006")


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((1, 1, 256, 256), np.float32),  # a channel short: postprocessing indexed past it
        ((1, 5, 256, 256), np.float32),  # extra channels: the mask was read from the first two
        ((1, 2, 1, 1), np.float32),  # another grid: the mask was one pixel stretched
        ((2, 2, 256, 256), np.float32),  # another batch
        ((1, 2, 256, 256), np.int64),  # labels, not scores
    ],
)
def test_scores_that_do_not_fit_the_manifest_are_refused_naming_expected_and_got(shape, dtype):
    with pytest.raises(ManifestMismatchError) as info:
        check_model_output(simple_manifest(), np.zeros(shape, dtype), (1, 1, 256, 256), "model m on e")
    message = info.value.message
    assert message.startswith("model m on e: ") and str(list(shape)) in message and "[1, 2, 256, 256]" in message


def test_scores_are_checked_at_the_input_grid_whatever_its_layout():
    nhwc = simple_manifest(input=InputSpec(name="image", channels=3, layout="NHWC", color="rgb"))
    check_model_output(nhwc, np.zeros((1, 2, 96, 64), np.float16), (1, 96, 64, 3), "m")
    with pytest.raises(ManifestMismatchError, match=r"\[1, 2, 96, 64\]"):
        check_model_output(nhwc, np.zeros((1, 2, 64, 96), np.float32), (1, 96, 64, 3), "m")


def test_fixed_output_dims_must_be_the_inputs_grid():
    man = simple_manifest()
    check_model_io(man, [("image", [1, 1, 256, 256])], [("logits", [1, 2, "h", None])])
    with pytest.raises(ManifestMismatchError, match=r"declared \[1, 2, 128, 128\].*\[1, 2, 256, 256\]"):
        check_model_io(man, [("image", [1, 1, 256, 256])], [("logits", [1, 2, 128, 128])])
    with pytest.raises(ManifestMismatchError, match="dimension 0"):
        check_model_io(man, [("image", ["n", 1, 256, 256])], [("logits", [4, 2, 256, 256])])
