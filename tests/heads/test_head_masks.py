"""A model's further mask heads everywhere its main mask goes: RESULT frames over real ZeroMQ, PONG, ``scanedge
segment``'s files and results.json, the DICOM node's SEG (read back with highdicom) and its published RESULTs.

The model is the two-mask test network of tests/heads/conftest.py with one more output: ``organs`` (sigmoid,
liver and kidney) and ``vessels`` (softmax, its channels the organs' logits negated), beside the main ``logits``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from scanedge.manifest import ClassSpec, CodedConcept, HeadSpec, Manifest, embed_manifest
from scanedge.runtime.console.client import Client
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.wire.protocol import MAX_HEADER_BYTES, MaskHeadInfo, Result, decode_reply, encode
from tests.dicomnet.conftest import listener  # noqa: F401 - the node fixture
from tests.heads.conftest import sample_slices, two_mask_manifest
from tests.runtime.conftest import running_server
from tests.waiting import wait_until

LIVER = CodedConcept("10200004", "SCT", "Liver")
ORGAN = CodedConcept("123037004", "SCT", "Anatomical Structure")
#: a graph output name no reader should see as it is: long, with an escape sequence, a newline and a backslash
HOSTILE = "\x1b[31morgans\n" + "x" * 300 + "\\end"
HOSTILE_CLASS = "liver\x1b]0;pwned\x07\r\n" + "y" * 200


def _three_mask_graph(path: Path, organs: str = "organs", empty: bool = False) -> onnx.ModelProto:
    """The two-mask graph with a third output ``vessels`` (-organs), ``organs`` renamed to ``organs``, and with
    ``empty`` two more: ``empty``, logits of -100 everywhere (a head that never finds anything), and
    ``organ_score``, the organs' mean logits (a score head, so the node's scores JSON is written)."""
    raw = onnx.load(str(path))
    graph = raw.graph
    if organs != "organs":
        for node in graph.node:
            node.output[:] = [organs if o == "organs" else o for o in node.output]
        for out in graph.output:
            if out.name == "organs":
                out.name = organs
    graph.node.append(helper.make_node("Neg", [organs], ["vessels"]))
    shape = [d.dim_value for d in graph.output[-1].type.tensor_type.shape.dim]
    graph.output.append(helper.make_tensor_value_info("vessels", onnx.TensorProto.FLOAT, shape))
    if empty:
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Mul", [organs, "zero"], ["nothing"]),
                helper.make_node("Sub", ["nothing", "hundred"], ["empty"]),
            ]
        )
        graph.output.append(helper.make_tensor_value_info("empty", onnx.TensorProto.FLOAT, shape))
        graph.node.append(helper.make_node("ReduceMean", [organs], ["organ_score"], axes=[2, 3], keepdims=0))
        graph.output.append(helper.make_tensor_value_info("organ_score", onnx.TensorProto.FLOAT, shape[:2]))
    return raw


def three_mask_manifest(organs: str = "organs", liver: str = "liver", empty: bool = False) -> Manifest:
    base = two_mask_manifest()
    heads = (
        HeadSpec(
            organs,
            "mask",
            activation="sigmoid",
            classes=(
                ClassSpec("background", (0, 0, 0)),
                ClassSpec(liver, (0, 200, 0), 0.5, property_category=ORGAN, property_type=LIVER),
                ClassSpec("kidney"),
            ),
        ),
        HeadSpec("vessels", "mask", classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("vessel", (0, 0, 255)))),
    )
    if empty:
        nothing = (ClassSpec("background", (0, 0, 0)), ClassSpec("nothing"), ClassSpec("never"))
        score = HeadSpec("organ_score", "score", activation="sigmoid", classes=(ClassSpec("a"), ClassSpec("b")))
        heads += (HeadSpec("empty", "mask", activation="sigmoid", classes=nothing), score)
    return base.replace(name="test-three-masks", heads=heads)


@pytest.fixture(scope="module")
def three_masks(head_models, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("three-masks")
    out = {}
    for key, organs, liver, empty in (("plain", "organs", "liver", False), ("hostile", HOSTILE, HOSTILE_CLASS, True)):
        target = folder / f"{key}.onnx"
        graph = _three_mask_graph(head_models["two_masks"], organs, empty)
        embed_manifest(graph, three_mask_manifest(organs, liver, empty), target)
        out[key] = target
    # no mask output of its own: the further mask heads are all it segments
    target = folder / "heads-only.onnx"
    headless = three_mask_manifest().replace(output=None, classes=())
    embed_manifest(_three_mask_graph(head_models["two_masks"]), headless, target)
    out["heads-only"] = target
    return out


def test_head_masks_come_as_frames_equal_to_the_pipelines(three_masks):
    slices = sample_slices(3)
    with Pipeline.open(three_masks["plain"]) as pipe:
        local = [pipe.run(s, overlay=False) for s in slices]
    with running_server([three_masks["plain"]]) as server, Client(server.endpoint) as client:
        (model,) = client.ping().models
        assert model.mask_heads == (
            MaskHeadInfo("organs", ("background", "liver", "kidney"), "sigmoid"),
            MaskHeadInfo("vessels", ("background", "vessel"), "softmax"),
        )
        for pixels, want in zip(slices, local):
            r = client.segment(pixels, outputs=("mask", "head_masks"))
            assert [f.name for f in r.header.frames] == ["mask", "mask:organs", "mask:vessels"]
            assert list(r.head_masks) == ["organs", "vessels"]
            np.testing.assert_array_equal(r.mask, want.mask)
            for head in want.mask_heads:
                np.testing.assert_array_equal(r.head_masks[head.head], head.mask)
        assert any(h.mask.any() for w in local for h in w.mask_heads)  # the comparison saw labelled pixels
        old = client.segment(slices[0], outputs=("mask", "overlay"))  # a console that predates head_masks
        assert [f.name for f in old.header.frames] == ["mask", "overlay"] and old.head_masks == {}


def test_a_model_without_further_mask_heads_sends_no_head_frames(head_models):
    with running_server([head_models["mask_score+manifest"]]) as server, Client(server.endpoint) as client:
        assert client.ping().models[0].mask_heads == ()
        r = client.segment(sample_slices(1)[0], outputs=("mask", "head_masks"))
        assert [f.name for f in r.header.frames] == ["mask"] and r.head_masks == {}


def test_hostile_head_names_stay_bounded_on_the_wire(three_masks):
    with Pipeline.open(three_masks["hostile"]) as pipe:
        want = pipe.run(sample_slices(1)[0], overlay=False)
    assert [h.label for h in want.mask_heads] == ["head1", "vessels", "empty"]
    with running_server([three_masks["hostile"]]) as server, Client(server.endpoint) as client:
        (model,) = client.ping().models
        organs = model.mask_heads[0]
        assert organs.label == "head1" and all(len(c) <= 64 and c.isprintable() for c in organs.classes)
        r = client.segment(sample_slices(1)[0], outputs=("head_masks",))
        assert [f.name for f in r.header.frames] == ["mask:head1", "mask:vessels", "mask:empty"]
        np.testing.assert_array_equal(r.head_masks["head1"], want.mask_heads[0].mask)
        assert len(encode(r.header)) < MAX_HEADER_BYTES


def test_older_readers_see_head_frames_as_frames_they_can_skip():
    from scanedge.runtime.wire.payloads import arrays_from_frames, head_masks_from_arrays, result_frames

    organs = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    infos, payload, _ = result_frames(
        ("mask", "head_masks"), {"mask": np.zeros((3, 4), np.uint8)}, "raw", (("mask:organs", organs),)
    )
    header = decode_reply(encode(Result(version=1, id=1, frames=infos)))
    arrays = arrays_from_frames(header.frames, [bytes(p) for p in payload])
    assert head_masks_from_arrays(arrays).keys() == {"organs"}
    np.testing.assert_array_equal(head_masks_from_arrays(arrays)["organs"], organs)
    # an older reader keeps only the names it knows: "mask" is still the main mask
    assert arrays["mask"].shape == (3, 4) and not arrays["mask"].any()


def test_segment_writes_head_masks_and_reports_them(three_masks, demo_series, tmp_path: Path):
    from scanedge.cli import main

    data = tmp_path / "in"
    data.mkdir()
    for path in sorted(demo_series.glob("*.dcm"))[10:14]:
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    rc = main(["segment", str(data), "--model", str(three_masks["plain"]), "--out", str(out), "--save-masks"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    with Pipeline.open(three_masks["plain"]) as pipe:
        for entry in results["slices"]:
            from scanedge.imaging.dicom import slices_from_dicom

            (s,) = slices_from_dicom(Path(entry["file"]).read_bytes())
            want = pipe.run(s, overlay=False)
            heads = entry["mask_heads"]
            assert [h["head"] for h in heads] == ["organs", "vessels"]
            for head, local in zip(heads, want.mask_heads):
                saved = np.load(head["mask"])
                np.testing.assert_array_equal(saved, local.mask)
                assert [f["pixels"] for f in head["findings"]] == [f.pixels for f in local.findings]
    (series,) = results["series"]
    loads = {h["head"]: h for h in series["mask_heads"]}
    assert set(loads) == {"organs", "vessels"}
    assert [c["name"] for c in loads["organs"]["lesion_load"]["classes"]] == ["liver", "kidney"]
    assert loads["organs"]["lesion_load"]["slices"] == len(results["slices"])


def test_segment_keeps_hostile_head_names_out_of_file_names_and_reports(three_masks, demo_series, tmp_path, capsys):
    from scanedge.cli import main

    data = tmp_path / "in"
    data.mkdir()
    for path in sorted(demo_series.glob("*.dcm"))[10:12]:
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    rc = main(["segment", str(data), "--model", str(three_masks["hostile"]), "--out", str(out), "--save-masks"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "head head1: liver" in printed and "head vessels: vessel" in printed and "head empty: nothing" in printed
    assert not any(c in printed for c in "\x1b\x07\r") and "y" * 65 not in printed
    names = sorted(p.name for p in out.iterdir())
    assert all(len(n) < 120 and "\\" not in n and "\n" not in n for n in names)
    results = json.loads((out / "results.json").read_text())
    head = results["slices"][0]["mask_heads"][0]
    assert head["label"] == "head1" and Path(head["mask"]).parent == out


def _node_seg(start, model: Path, count: int = 4, **changes):
    """Send a new demo series of ``count`` images to a node serving ``model``: its SEG (highdicom), the
    sources, and the node's output folder."""
    hd = pytest.importorskip("highdicom")
    from tests.dicomnet.test_durability import demo, new_series, send

    node = start([model], series_timeout_s=0.3, **changes)
    series = new_series(demo(count))
    assert [s for s, _ in send(node.port, series)] == [0] * count
    seg_dir = node.config.out / "seg"
    wait_until(lambda: list(seg_dir.glob("*.dcm")) and node.spool.files == 0, timeout=60, what="the SEG")
    (path,) = seg_dir.glob("*.dcm")
    return hd.seg.segread(path), series, node.config.out


def _expected(model: Path, series) -> list:
    import io

    from scanedge.imaging.dicom import slices_from_dicom

    def encoded(ds) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    with Pipeline.open(model) as pipe:
        return [pipe.run(slices_from_dicom(encoded(ds))[0], overlay=False) for ds in series]


def _segment_planes(seg, series, numbers):
    uids = [str(ds.SOPInstanceUID) for ds in series]
    return seg.get_pixels_by_source_instance(
        uids, segment_numbers=numbers, assert_missing_frames_are_empty=True, combine_segments=False
    )


def test_the_nodes_seg_has_each_heads_classes_as_segments(listener, three_masks):  # noqa: F811
    seg, series, _ = _node_seg(listener, three_masks["plain"])
    described = [(d.segment_number, d.segment_label) for d in seg.SegmentSequence]
    assert described == [(1, "lesion"), (2, "organs: liver"), (3, "organs: kidney"), (4, "vessels: vessel")]
    liver = seg.SegmentSequence[1]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == LIVER.value
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == ORGAN.value
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # uncoded: Tissue
    planes = _segment_planes(seg, series, [1, 2, 3, 4])  # (instances, rows, cols, segments)
    want = _expected(three_masks["plain"], series)
    for i, result in enumerate(want):
        organs, vessels = result.mask_heads
        np.testing.assert_array_equal(planes[i, ..., 0], result.mask == 1)
        np.testing.assert_array_equal(planes[i, ..., 1], organs.mask == 1)
        np.testing.assert_array_equal(planes[i, ..., 2], organs.mask == 2)
        np.testing.assert_array_equal(planes[i, ..., 3], vessels.mask == 1)
    assert planes[..., 1:].any()


def test_hostile_names_stay_bounded_in_seg_labels_and_an_empty_head_keeps_its_segments(listener, three_masks):  # noqa: F811
    seg, series, out = _node_seg(listener, three_masks["hostile"], count=2, outputs=("seg", "scores"))
    labels = [str(d.segment_label) for d in seg.SegmentSequence]
    assert labels[:2] == ["lesion", labels[1]] and labels[1].startswith("head1: liver")
    assert labels[2:] == ["head1: kidney", "vessels: vessel", "empty: nothing", "empty: never"]
    assert all(len(x) <= 64 and x.isprintable() and "\\" not in x for x in labels)
    planes = _segment_planes(seg, series, [5, 6])
    assert not planes.any()  # the empty head's segments are described, with no pixel
    wait_until(lambda: list((out / "scores").glob("*.json")), timeout=60, what="the scores JSON")
    (path,) = (out / "scores").glob("*.json")
    frames = {f["sop_instance_uid"]: f for f in json.loads(path.read_text())["frames"]}
    for ds, result in zip(series, _expected(three_masks["hostile"], series)):
        heads = frames[str(ds.SOPInstanceUID)]["mask_heads"]
        assert [h["head"] for h in heads] == ["head1", "vessels", "empty"]
        for head, local in zip(heads, result.mask_heads):
            assert [f["pixels"] for f in head["findings"]] == [f.pixels for f in local.findings]


def test_head_masks_come_as_frames_beside_a_mask_in_shared_memory(three_masks, tmp_path: Path):
    from scanedge.runtime.console.client import ClientConfig

    pixels = sample_slices(1)[0]
    with Pipeline.open(three_masks["plain"]) as pipe:
        want = pipe.run(pixels, overlay=False)
    with (
        running_server([three_masks["plain"]], bind=f"ipc://{tmp_path}/rt.ipc") as server,
        Client(server.endpoint, ClientConfig(shared_memory=True)) as client,
    ):
        wait_until(lambda: client.shared_memory_active, what="the shared-memory region")
        r = client.segment(pixels, outputs=("mask", "head_masks"))
        placed = {f.name: f.region for f in r.header.frames}
        assert placed["mask"] is not None and placed["mask:organs"] is None and placed["mask:vessels"] is None
        np.testing.assert_array_equal(r.mask, want.mask)
        for head in want.mask_heads:
            np.testing.assert_array_equal(r.head_masks[head.label], head.mask)


def test_pong_lists_at_most_a_bounded_number_of_head_class_names():
    from scanedge.manifest import OutputSpec
    from scanedge.runtime.serving.server import _model_info
    from scanedge.runtime.wire.protocol import PONG_HEAD_CLASS_CHARS, Pong

    classes = tuple(ClassSpec(f"{k:03d}" + "c" * 200) for k in range(255))
    heads = tuple(HeadSpec(f"head-{k}", "mask", classes=classes) for k in range(15))
    manifest = two_mask_manifest().replace(heads=heads, output=OutputSpec("logits"))
    info = _model_info(manifest)
    assert [h.label for h in info.mask_heads] == [f"head-{k}" for k in range(15)]
    listed = sum(len(c) for h in info.mask_heads for c in h.classes)
    assert 0 < listed <= PONG_HEAD_CLASS_CHARS and all(len(c) <= 64 for h in info.mask_heads for c in h.classes)
    assert sum(len(h.classes) + h.omitted for h in info.mask_heads) == 15 * 255
    assert info.mask_heads[0].classes[0] == classes[0].name[:61] + "..."
    assert len(encode(Pong(version=1, id=1, models=(info,)))) < MAX_HEADER_BYTES


def test_the_nodes_fractional_seg_has_each_heads_probabilities(listener, three_masks):  # noqa: F811
    seg, series, _ = _node_seg(listener, three_masks["plain"], count=2, segmentation="fractional")
    assert [d.segment_number for d in seg.SegmentSequence] == [1, 2, 3, 4]
    uids = [str(ds.SOPInstanceUID) for ds in series]
    stored = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[2, 3, 4], assert_missing_frames_are_empty=True, rescale_fractional=False
    )
    for i, result in enumerate(_expected(three_masks["plain"], series)):
        organs, vessels = result.mask_heads
        planes = [*organs.probabilities, vessels.probabilities[1]]  # sigmoid: both; softmax: the foreground
        for k, plane in enumerate(planes):
            np.testing.assert_array_equal(stored[i, ..., k], _quantised(plane, organs.mask.shape))


def test_the_node_publishes_head_masks_with_each_result(listener, three_masks, tmp_path: Path):  # noqa: F811
    from scanedge.runtime.wire.payloads import arrays_from_frames, head_masks_from_arrays
    from tests.dicomnet.test_durability import demo, new_series, send
    from tests.dicomnet.test_listener import live_subscription

    node = listener([three_masks["plain"]], publish="tcp://127.0.0.1:*", series_timeout_s=60)
    series = new_series(demo(2))
    sub = live_subscription(node, tmp_path, str(series[0].SeriesInstanceUID).encode())
    try:
        assert [s for s, _ in send(node.port, series)] == [0, 0]
        received = []
        while len(received) < len(series):
            assert sub.poll(30_000), f"only {len(received)} RESULTs arrived"
            received.append(sub.recv_multipart())
    finally:
        sub.close()
    want = {str(ds.SOPInstanceUID): r for ds, r in zip(series, _expected(three_masks["plain"], series))}
    for _, head, *payload in received:
        header = decode_reply(head)
        assert [f.name for f in header.frames] == ["mask", "overlay", "image", "mask:organs", "mask:vessels"]
        heads = head_masks_from_arrays(arrays_from_frames(header.frames, payload))
        for local in want[header.instance].mask_heads:
            np.testing.assert_array_equal(heads[local.label], local.mask)


@pytest.mark.parametrize("kind", ["binary", "fractional"])
def test_a_model_without_a_mask_output_gets_a_seg_of_its_heads(listener, three_masks, kind):  # noqa: F811
    seg, series, _ = _node_seg(listener, three_masks["heads-only"], count=2, segmentation=kind)
    described = [(d.segment_number, d.segment_label) for d in seg.SegmentSequence]
    assert described == [(1, "organs: liver"), (2, "organs: kidney"), (3, "vessels: vessel")]
    planes = _segment_planes(seg, series, [1, 2, 3])
    for i, result in enumerate(_expected(three_masks["heads-only"], series)):
        organs, vessels = result.mask_heads
        if kind == "binary":
            np.testing.assert_array_equal(planes[i, ..., 0], organs.mask == 1)
            np.testing.assert_array_equal(planes[i, ..., 2], vessels.mask == 1)
        else:
            np.testing.assert_allclose(planes[i, ..., 0], _quantised(organs.probabilities[0], organs.mask.shape) / 255)
            np.testing.assert_allclose(
                planes[i, ..., 2], _quantised(vessels.probabilities[1], vessels.mask.shape) / 255
            )


def _quantised(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability plane on the slice's grid as the node keeps it for a FRACTIONAL SEG (0-255)."""
    import cv2

    resized = cv2.resize(plane, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.rint(np.clip(resized, 0, 1) * 255).astype(np.uint8)
