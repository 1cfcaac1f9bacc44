"""Manifest heads: load, round trip, validation against the graph, and today's manifests unchanged."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest

from scanedge.errors import ManifestInvalidError, ManifestMismatchError
from scanedge.manifest import HeadSpec, Manifest, check_model_io, load_manifest
from scanedge.model_graph import graph_io
from scanedge.models import DEMO_MODEL_PATH
from tests.heads.conftest import CLASSIFIER_HEADS, classifier_manifest, mask_score_manifest, two_mask_manifest


def _io(path):
    inputs, outputs = graph_io(onnx.load(str(path)))
    return [(t.name, t.shape) for t in inputs], [(t.name, t.shape) for t in outputs]


def test_shipped_manifest_loads_unchanged_and_writes_no_heads():
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    assert manifest.heads == () and manifest.output is not None
    text = manifest.to_dict()
    assert "heads" not in text  # older scanedge versions refuse unknown keys: an unchanged manifest reads as before
    assert Manifest.from_dict(text) == manifest


@pytest.mark.parametrize("make", [classifier_manifest, mask_score_manifest, two_mask_manifest])
def test_heads_round_trip_through_json(make):
    manifest = make()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert json.loads(again.to_json()) == json.loads(manifest.to_json())


def test_classifier_manifest_reads_as_written():
    data = {
        "name": "cxr",
        "version": "2",
        "output": None,
        "classes": [],
        "heads": [
            {
                "name": "probs",
                "role": "score",
                "kind": "probabilities",
                "activation": "sigmoid",
                "classes": [{"name": "effusion", "threshold": 0.4}, {"name": "nodule", "threshold": 0.7}],
                "aggregation": "mean",
                "operating_point": {"name": "screening", "sensitivity": 0.9},
            },
            {"name": "gradcam", "role": "saliency", "of": "probs"},
        ],
    }
    m = Manifest.from_dict(data)
    assert m.output is None and m.classes == () and m.output_channels == 0
    (score,) = m.score_heads
    assert [c.threshold for c in score.classes] == [0.4, 0.7]
    assert score.operating_point is not None and score.operating_point.sensitivity == 0.9
    assert score.operating_point.specificity is None
    assert m.saliency_for("probs") is not None and m.saliency_for("probs").name == "gradcam"  # type: ignore[union-attr]
    with pytest.raises(ManifestMismatchError, match="no mask output"):
        _ = m.mask_output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"heads": [{"name": "x", "role": "votes"}]}, "role"),
        ({"heads": [{"name": "s", "role": "score", "classes": [{"name": "a"}]}]}, "softmax score head needs 2"),
        ({"heads": [{"name": "s", "role": "saliency", "of": "nothing"}]}, "not a score head"),
        ({"heads": [{"name": "logits", "role": "score", "activation": "sigmoid", "classes": [{"name": "a"}]}]}, "own"),
        (
            {
                "heads": [
                    {"name": "m", "role": "mask", "aggregation": "mean", "classes": [{"name": "a"}, {"name": "b"}]}
                ]
            },
            "belong to score heads",
        ),
        (
            {
                "heads": [
                    {
                        "name": "s",
                        "role": "score",
                        "activation": "sigmoid",
                        "classes": [{"name": "a"}],
                        "operating_point": {"name": "op", "sensitivity": 1.5},
                    }
                ]
            },
            "between 0 and 1",
        ),
        (
            {"heads": [{"name": "s", "role": "score", "activation": "sigmoid", "classes": [{"name": "a"}], "typo": 1}]},
            "unknown key",
        ),
        (
            {
                "output": None,
                "heads": [{"name": "s", "role": "score", "activation": "sigmoid", "classes": [{"name": "a"}]}],
            },
            "has none",
        ),
        ({"output": None, "classes": []}, "needs a score or mask head"),
        ({"heads": {"name": "x"}}, "list"),
    ],
)
def test_invalid_heads_are_refused_with_the_field(change, message):
    base = {"name": "m", "version": "1", "classes": [{"name": "bg"}, {"name": "lesion"}]}
    with pytest.raises(ManifestInvalidError, match=message):
        Manifest.from_dict({**base, **change})


def test_every_head_is_checked_against_the_graph(head_models):
    ins, outs = _io(head_models["classifier"])
    check_model_io(classifier_manifest(), ins, outs)  # the right description passes
    wrong_name = classifier_manifest().replace(heads=(dataclasses.replace(CLASSIFIER_HEADS[0], name="p"),))
    with pytest.raises(ManifestMismatchError, match=r"'p' .* not an output"):
        check_model_io(wrong_name, ins, outs)
    two = classifier_manifest().heads[0]
    fewer = HeadSpec(two.name, "score", classes=two.classes[:2])
    with pytest.raises(ManifestMismatchError, match=r"reads it as \[1, 2\]"):
        check_model_io(classifier_manifest().replace(heads=(fewer, classifier_manifest().heads[1])), ins, outs)
    ins, outs = _io(head_models["two_masks"])
    organs = two_mask_manifest().heads[0]
    three = HeadSpec("organs", "mask", activation="softmax", classes=organs.classes)  # softmax: 3 channels, graph 2
    with pytest.raises(ManifestMismatchError, match="'organs' has 2 channels"):
        check_model_io(two_mask_manifest().replace(heads=(three,)), ins, outs)
    saliency_as_score = HeadSpec("organs", "score", activation="sigmoid", classes=organs.classes[1:])
    with pytest.raises(ManifestMismatchError, match="score head 'organs' is declared"):
        check_model_io(two_mask_manifest().replace(heads=(saliency_as_score,)), ins, outs)


def test_three_channel_input_points_to_color(head_models):
    _ins, outs = _io(head_models["classifier"])
    rgb = [("image", [1, 3, 32, 32])]
    with pytest.raises(ManifestMismatchError, match=r"declares 1; describe it with --color rgb \(or bgr\)"):
        check_model_io(classifier_manifest(), rgb, outs)
