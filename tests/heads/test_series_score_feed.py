"""The DICOM node's live feed carries each series' scores: every published RESULT's ``series_scores`` over the slices
so far, and at completion a series-score update with the 3-D series model's answer (or its failure).

A real node (pynetdicom SCU sending shuffled C-STOREs) serving a model whose score head has a series model beside a
model whose series model answers NaN; every publication read off a real SUB socket. The live series scores are
checked against :class:`~scanedge.imaging.heads.SeriesScores` fed the RESULTs' own slice scores in publication order
(and the ``max`` worked out by hand); the final update against the scores JSON the node writes for the series.
"""

from __future__ import annotations

import json
import random

import pytest

from scanedge.imaging.heads import SeriesScores
from scanedge.manifest import Manifest
from scanedge.runtime.wire.protocol import Result, decode_reply
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.dicomnet.test_durability import demo, new_series, send
from tests.heads.conftest import expected_series_probability
from tests.heads.test_series_model_tools import _by_position
from tests.waiting import wait_until

pytest.importorskip("pynetdicom", reason="the DICOM node needs the 'dicomnet' extra")
zmq = pytest.importorskip("zmq")

GOOD, BAD = "test-mask-score@1.0.0", "test-nan-series@1.0.0"


def _subscribe(node, *topics: str):
    """A SUB socket on the node's feed, proven live by a probe series (pynetdicom), then only ``topics``."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    probe = new_series(demo(1))
    probe_uid = str(probe[0].SeriesInstanceUID)
    sub.setsockopt(zmq.SUBSCRIBE, probe_uid.encode())
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(node.publish_endpoint)

    def live() -> bool:
        again = new_series(probe)  # a fresh instance each try, of the probe's series
        for ds in again:
            ds.SeriesInstanceUID = probe_uid
        send(node.port, again)
        return bool(sub.poll(500))

    wait_until(live, timeout=60, what="the node's feed to reach the subscriber")
    sub.setsockopt(zmq.UNSUBSCRIBE, probe_uid.encode())
    return sub


def _receive(sub, series: str, live: int, updates: int) -> tuple[list[Result], list[Result]]:
    """The RESULTs of ``series`` in publication order until ``live`` slice RESULTs and ``updates`` updates came."""
    slices: list[Result] = []
    final: list[Result] = []
    while len(slices) < live or len(final) < updates:
        assert sub.poll(120_000), f"only {len(slices)} RESULTs and {len(final)} updates arrived"
        message = sub.recv_multipart()
        header = decode_reply(message[1])
        assert isinstance(header, Result)
        if header.series != series:
            continue  # a probe's, published before the unsubscription took
        (final if header.update else slices).append(header)
    return slices, final


def _check_live(results: list[Result], manifest: Manifest) -> None:
    """Each RESULT's series scores equal SeriesScores fed the RESULTs' slice scores so far (placed by index, as the
    node places an instance's frame), and the head's max worked out by hand."""
    independent = SeriesScores(manifest.heads)
    probabilities: list[float] = []
    for n, header in enumerate(results, 1):
        assert header.scores, "a model with a score head scores every slice"
        expected = independent.add(header.scores, None, header.index)
        assert header.series_scores == expected
        probabilities.append(header.scores[0].classes[0].probability)
        (score,) = header.series_scores
        assert score.slices == n and score.provisional is True and score.aggregation == "max"
        assert score.series_model is not None and score.series_model.status == "pending"
        assert score.classes[0].score == pytest.approx(max(probabilities), abs=1e-9)
        assert score.classes[0].slices_positive == sum(p >= 0.6 for p in probabilities)


def test_the_nodes_feed_carries_live_series_scores_and_the_series_models_final_score(
    listener,  # noqa: F811
    series_model_dir,
    failing_series_model_dir,
):
    node = listener(
        [series_model_dir / "model.onnx", failing_series_model_dir / "model.onnx"],
        publish="tcp://127.0.0.1:*",
        series_timeout_s=3.0,
        outputs=("seg", "scores"),
    )
    series = new_series(demo(32)[8:16])
    uid = str(series[0].SeriesInstanceUID)
    following = new_series(demo(32)[20:22])  # sent once the first series completed
    next_uid = str(following[0].SeriesInstanceUID)
    sub = _subscribe(node, uid, next_uid)
    try:
        shuffled = list(series)
        random.Random(7).shuffle(shuffled)
        assert [s for s, _ in send(node.port, shuffled)] == [0] * len(series)
        slices, updates = _receive(sub, uid, 2 * len(series), 2)

        by_model = {m: [h for h in slices if h.model == m] for m in (GOOD, BAD)}
        for model, manifest in node._manifests.items():
            _check_live(by_model[f"{model}@{manifest.version}"], manifest)
        assert {u.model for u in updates} == {GOOD, BAD}
        for update in updates:
            last = by_model[update.model][-1]  # the update names the slice published last for its model
            assert (update.instance, update.index, update.position_mm) == (last.instance, last.index, last.position_mm)
            assert update.frames == () and update.scores == () and update.findings == () and update.change is None
            assert update.status == "ok" and update.runtime == last.runtime and update.id > last.id

        out = node.config.out
        wait_until(lambda: len(list((out / "scores").glob(f"{uid}.*.json"))) == 2, timeout=90, what="scores JSON")
        docs = {d["model"]: d for d in (json.loads(p.read_text()) for p in (out / "scores").glob(f"{uid}.*.json"))}
        final = {u.model: u for u in updates}

        (done,) = final[GOOD].series_scores
        assert done.aggregation == "series_model" and done.provisional is False
        assert done.series_model is not None and done.series_model.status == "done"
        assert done.series_model.slices == len(series)
        assert [s.to_dict() for s in final[GOOD].series_scores] == docs[GOOD]["series_scores"]
        expected = expected_series_probability(series_model_dir, _by_position(list(series)))
        assert done.classes[0].score == pytest.approx(expected, abs=1e-5)

        (failed,) = final[BAD].series_scores
        assert failed.provisional is True and failed.aggregation == "max"
        assert failed.series_model is not None and failed.series_model.status == "failed"
        assert failed.series_model.code == "NON_FINITE_OUTPUT"
        assert failed.classes == by_model[BAD][-1].series_scores[0].classes  # the provisional score stands
        assert [s.to_dict() for s in final[BAD].series_scores] == docs[BAD]["series_scores"]

        # the node serves on: the next series starts its scores afresh, a failing model beside it again
        assert [s for s, _ in send(node.port, following)] == [0, 0]
        again, ends = _receive(sub, next_uid, 2 * len(following), 2)
        for model, manifest in node._manifests.items():
            _check_live([h for h in again if h.model == f"{model}@{manifest.version}"], manifest)
        assert {u.series_scores[0].series_model.status for u in ends} == {"done", "failed"}
    finally:
        sub.close()


def _paired_score_model(tmp_path):
    """The node tests' FLAIR + T1 model (a 1x1 convolution, tests/dicomnet/test_multi_input_node.py) with a softmax
    score head ``pooled``: the slice's logits maxed over the image (a real graph, two outputs)."""
    import onnx
    from onnx import helper

    from scanedge.manifest import ClassSpec, HeadSpec, embed_manifest
    from tests.conftest import conv_model, simple_manifest
    from tests.runtime.core.test_multi_input import WEIGHTS, two_role_inputs

    model = conv_model(2, WEIGHTS)
    model.graph.node.append(helper.make_node("ReduceMax", ["logits"], ["pooled"], axes=[2, 3], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, [1, 2]))
    onnx.checker.check_model(model)
    head = HeadSpec(
        "pooled",
        "score",
        activation="softmax",
        classes=(ClassSpec("normal", threshold=0.5), ClassSpec("lesion", threshold=0.5)),
        aggregation="mean",
    )
    manifest = simple_manifest(inputs=two_role_inputs(pairing={"wait_s": 60.0}), heads=(head,))
    path = tmp_path / "flair_t1_scored.onnx"
    embed_manifest(model, manifest, path)
    return path, manifest


def test_paired_slices_of_a_multi_input_model_carry_their_series_scores(listener, tmp_path):  # noqa: F811
    from tests.dicomnet.test_multi_input_node import SLICES, Study

    path, manifest = _paired_score_model(tmp_path)
    node = listener([path], publish="tcp://127.0.0.1:*", series_timeout_s=60.0)
    study, probe = Study(), Study(seed=2)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (study.flair_uid, probe.flair_uid):
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(node.publish_endpoint)
    try:
        pair = Study.datasets(probe.t1[:1]) + Study.datasets(probe.flair[:1])
        wait_until(lambda: send(node.port, pair) and sub.poll(200), timeout=30, what="the feed to go live")
        sub.setsockopt(zmq.UNSUBSCRIBE, probe.flair_uid.encode())
        both = Study.datasets(study.flair) + Study.datasets(study.t1)
        random.Random(3).shuffle(both)
        assert [s for s, _ in send(node.port, both)] == [0] * (2 * SLICES)
        results, _ = _receive(sub, study.flair_uid, SLICES, 0)
    finally:
        sub.close()
    independent = SeriesScores(manifest.heads)
    for n, header in enumerate(results, 1):
        assert header.inputs is not None and header.inputs.role == "flair"  # a paired slice
        assert header.scores and header.series_scores == independent.add(header.scores, None, header.index)
        (score,) = header.series_scores
        assert score.slices == n and score.series_model is None and score.aggregation == "mean"
        lesion = [h.scores[0].classes[1].probability for h in results[:n]]
        assert score.classes[1].score == pytest.approx(sum(lesion) / n, abs=1e-9)
