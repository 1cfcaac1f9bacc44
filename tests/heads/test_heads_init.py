"""``scanedge manifest init`` on classifiers and multi-output graphs: the role of each output, read or guessed."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from scanedge.errors import ManifestMismatchError
from scanedge.manifest import IntensityPolicy, load_manifest
from scanedge.manifest_init import ManifestInitConfig, draft_manifest_with_notes, guess_score_activation
from scanedge.model_graph import graph_io


def test_a_classifier_is_described_from_its_graph(head_models):
    model = onnx.load(str(head_models["classifier"]))
    manifest, notes = draft_manifest_with_notes(model, ManifestInitConfig(name="cls", saliency_output="cam"))
    assert manifest.output is None and manifest.classes == ()
    score, saliency = manifest.heads
    assert (score.name, score.role, score.kind, score.activation) == ("class_logits", "score", "logits", "softmax")
    assert [c.name for c in score.classes] == ["class0", "class1", "class2"]
    assert (saliency.role, saliency.of) == ("saliency", "class_logits")
    text = "\n".join(notes)
    assert "GUESSED" in text and "--score-activation sigmoid" in text  # a softmax over logits is a guess
    assert "could not infer the class names of 'class_logits'" in text
    assert "cam [1, 3, 8, 8]: saliency map of class_logits" in text


def test_named_score_classes_thresholds_and_activation_win(head_models):
    model = onnx.load(str(head_models["classifier"]))
    options = ManifestInitConfig(
        name="cls",
        score_classes=("normal", "bleed", "mass"),
        score_thresholds=(0.5, 0.2, 0.4),
        score_activation="sigmoid",
        aggregation="noisy_or",
    )
    manifest, notes = draft_manifest_with_notes(model, options)
    (score,) = manifest.heads
    assert [(c.name, c.threshold) for c in score.classes] == [("normal", 0.5), ("bleed", 0.2), ("mass", 0.4)]
    assert score.activation == "sigmoid" and score.aggregation == "noisy_or"
    assert any(n.startswith("cam [1, 3, 8, 8]: not read") and "saliency" in n for n in notes)


def test_mask_plus_score_graph_names_each_output(head_models):
    model = onnx.load(str(head_models["mask_score"]))
    manifest, notes = draft_manifest_with_notes(
        model, ManifestInitConfig(name="ms", classes=("background", "lesion"), score_classes=("abnormal",))
    )
    assert manifest.output is not None and manifest.output.name == "logits"
    (score,) = manifest.heads
    assert score.activation == "sigmoid" and "a softmax of one value is constant" in "\n".join(notes)
    # without score classes a segmentation model keeps today's single head, and says what it left
    plain, notes = draft_manifest_with_notes(model, ManifestInitConfig(name="ms", classes=("background", "lesion")))
    assert plain.heads == ()
    assert any(n.startswith("abnormal_logit [1, 1]: not read") for n in notes)


def test_two_mask_graph_reports_the_second_mask_as_not_read(head_models):
    model = onnx.load(str(head_models["two_masks"]))
    manifest, notes = draft_manifest_with_notes(model, ManifestInitConfig(name="tm", classes=("background", "lesion")))
    assert manifest.output.name == "logits" and manifest.heads == ()  # type: ignore[union-attr]
    assert "organs [1, 2, 32, 32]: not read (looks like a further mask or a saliency map" in "\n".join(notes)


def _softmax_graph(op: str = "Softmax") -> onnx.ModelProto:
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node(op, ["flat"], ["pre"]),
        helper.make_node("Identity", ["pre"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("op", "kind", "activation"),
    [
        ("Softmax", "probabilities", "softmax"),
        ("Sigmoid", "probabilities", "sigmoid"),
        ("LogSoftmax", "logits", "softmax"),
    ],
)
def test_the_activation_is_read_from_the_graph_through_reshapes(op, kind, activation):
    model = _softmax_graph(op)
    got_kind, got_activation, why = guess_score_activation(model, graph_io(model)[1][0])
    assert (got_kind, got_activation) == (kind, activation) and "read from the graph" in why


def test_a_three_channel_input_points_to_color():
    with pytest.raises(ManifestMismatchError, match=r"declares 1; describe it with --color rgb \(or bgr\)"):
        draft_manifest_with_notes(_softmax_graph(), ManifestInitConfig(name="x"))
    manifest, _ = draft_manifest_with_notes(_softmax_graph(), ManifestInitConfig(name="x", color="rgb"))
    assert manifest.input.channels == 3


def test_nothing_to_read_is_refused_with_the_outputs():
    model = _softmax_graph()
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1  # now [1, 3, 1]: neither role
    with pytest.raises(ManifestMismatchError, match=r"nothing to read.*\('probs', \[1, 3, 1\]\)"):
        draft_manifest_with_notes(model, ManifestInitConfig(name="x", color="rgb"))


def test_cli_describes_a_classifier(head_models, tmp_path, capsys):
    import shutil

    from scanedge.cli import main

    path = tmp_path / "classifier.onnx"
    shutil.copy(head_models["classifier"], path)
    rc = main(
        [
            "manifest", "init", str(path), "--name", "cls", "--score-classes", "normal,bleed,mass",
            "--score-thresholds", "0.5,0.3,0.5", "--saliency-output", "cam", "--intensity", "none", "--sidecar",
        ]
    )  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "class_logits [1, 3]: score head" in err and "GUESSED" in err
    manifest, source = load_manifest(path)
    assert source == "sidecar" and [c.name for c in manifest.score_heads[0].classes] == ["normal", "bleed", "mass"]
    assert manifest.intensity == IntensityPolicy(mode="none")
