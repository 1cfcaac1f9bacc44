"""The demo classifier's own saliency map: a second graph output added to its exported ONNX graph.

The classifier ends in convolution features ``F`` (64 x 8 x 8 for a 256 x 256 slice), a global **max** pool per
channel, and a linear layer: ``logit = sum_c w_c * max_hw F_c + b``. With a global *average* pool the class
activation map (``sum_c w_c * F_c``) would average to the logit; with a max pool it does not, so the map added
here is the class activation map of what the pool actually passes on: each channel's weighted maximum, placed
where that maximum lies (a maximum reached at several places is shared equally between them), for the
channels that speak *for* the class (``w_c > 0``)::

    saliency[h, w] = sum_c max(w_c, 0) * F_c[h, w] * [F_c[h, w] == max F_c] / count_c

Its sum is exactly the evidence for the class that reaches the logit (``logit = sum(saliency) - evidence
against + b``): every part of it sits at one place of the map, and nothing else is in it; where no such channel
peaks the map is 0. The nodes are added beside the existing ones, reading the last stage's features; every node
and weight the score is computed by is left untouched, so the scores stay bit-identical
(``tests/demo/test_classifier.py``).

    python -m scanedge.demo.classifier_saliency     # adds the output to the shipped model (once; idempotent)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from scanedge.errors import ManifestMismatchError
from scanedge.manifest import HeadSpec, Manifest, embed_manifest, load_manifest
from scanedge.models import DEMO_CLASSIFIER_PATH

__all__ = ["SALIENCY_HEAD", "add_saliency_output", "main", "saliency_head", "with_saliency_head"]

#: the saliency output's (and head's) name
SALIENCY_HEAD = "lesion_present_saliency"
_PREFIX = "/saliency/"


def saliency_head(score_head: str) -> HeadSpec:
    """The manifest head declaring the map: role ``saliency``, explaining ``score_head``."""
    return HeadSpec(name=SALIENCY_HEAD, role="saliency", of=score_head)


def with_saliency_head(manifest: Manifest) -> Manifest:
    """``manifest`` with the saliency head of its first score head added (unchanged when it has one)."""
    if any(h.name == SALIENCY_HEAD for h in manifest.heads):
        return manifest
    (score,) = manifest.score_heads
    return dataclasses.replace(manifest, heads=(*manifest.heads, saliency_head(score.name)))


def add_saliency_output(model: Any, score_output: str) -> None:
    """Add the output :data:`SALIENCY_HEAD` ([1, 1, h, w] float32, the final features' grid) to ``model``
    (an ``onnx.ModelProto``) in place: found as the Gemm producing ``score_output`` from a ReduceMax over the
    features' height and width. Raises :class:`ManifestMismatchError` when the graph is not shaped so."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if any(o.name == SALIENCY_HEAD for o in graph.output):
        return
    producers = {out: node for node in graph.node for out in node.output}
    gemm = producers.get(score_output)
    pool = producers.get(gemm.input[0]) if gemm is not None and gemm.op_type == "Gemm" else None
    if gemm is None or pool is None or pool.op_type != "ReduceMax":
        raise ManifestMismatchError(f"{score_output!r} is not a Gemm over a ReduceMax: no saliency output added")
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("transB") != 1 or attrs.get("alpha", 1.0) != 1.0:
        raise ManifestMismatchError("the score's Gemm is not a plain linear layer (transB=1, alpha=1)")
    weights = {t.name: t for t in graph.initializer}
    if gemm.input[1] not in weights:
        raise ManifestMismatchError("the score's linear weights are not an initializer")
    w = numpy_helper.to_array(weights[gemm.input[1]]).astype(np.float32)  # [classes, channels]
    features = pool.input[0]
    p = _PREFIX
    evidence = np.maximum(w, 0.0).reshape(w.shape[0], w.shape[1], 1, 1)  # the channels speaking for the class
    graph.initializer.append(numpy_helper.from_array(evidence, p + "weight"))
    graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), p + "axes"))  # ReduceSum's (opset 13+)
    graph.node.extend(
        [
            helper.make_node("ReduceMax", [features], [p + "max"], axes=[2, 3], keepdims=1, name=p + "ReduceMax"),
            helper.make_node("Equal", [features, p + "max"], [p + "at_max"], name=p + "Equal"),
            helper.make_node("Cast", [p + "at_max"], [p + "at_max_f"], to=onnx.TensorProto.FLOAT, name=p + "Cast"),
            helper.make_node(
                "ReduceSum", [p + "at_max_f", p + "axes"], [p + "count"], keepdims=1, name=p + "ReduceSum"
            ),
            helper.make_node("Div", [p + "at_max_f", p + "count"], [p + "share"], name=p + "Div"),
            helper.make_node("Mul", [features, p + "share"], [p + "routed"], name=p + "Mul"),
            helper.make_node(
                "Conv", [p + "routed", p + "weight"], [SALIENCY_HEAD], kernel_shape=[1, 1], name=p + "Conv"
            ),
        ]
    )
    graph.output.append(
        helper.make_tensor_value_info(SALIENCY_HEAD, onnx.TensorProto.FLOAT, [1, w.shape[0], None, None])
    )
    onnx.checker.check_model(model)


def main(argv: list[str] | None = None) -> int:
    """``python -m scanedge.demo.classifier_saliency [--model PATH]``: add the saliency output and head to a
    classifier exported by :mod:`scanedge.demo.train_classifier` (default: the shipped one), in place."""
    import onnx

    ap = argparse.ArgumentParser(prog="python -m scanedge.demo.classifier_saliency", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEMO_CLASSIFIER_PATH)
    args = ap.parse_args(argv)
    manifest, _ = load_manifest(args.model)
    model = onnx.load(str(args.model))
    (score,) = manifest.score_heads
    add_saliency_output(model, score.name)
    embed_manifest(model, with_saliency_head(manifest), args.model)
    print(f"{args.model}: output {SALIENCY_HEAD} explains {score.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
