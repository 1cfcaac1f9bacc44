"""The DICOM node serving a FLAIR + T1 model: two series of one study by real C-STORE, paired per slice.

A two-channel model built here (a 1x1 convolution of known weights), FLAIR and T1 series recognised by
Series Description, sent by pynetdicom's SCU interleaved and shuffled; the SEG of the FLAIR series must hold,
for every slice, the mask the pipeline gives for that slice and its T1 partner computed directly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanedge.dicomnet.stats import read_status
from scanedge.errors import ConfigError
from scanedge.imaging.dicom import dataset_from_slice
from scanedge.imaging.slices import Slice, SliceAcquisition, SliceGeometry, SliceIdentity
from scanedge.manifest import embed_manifest
from scanedge.runtime.core.pairing import resample_onto
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import conv_model, simple_manifest
from tests.dicomnet.conftest import free_port
from tests.dicomnet.test_durability import Node, Scu, send, spooled, stream
from tests.runtime.core.test_multi_input import WEIGHTS, two_role_inputs
from tests.waiting import wait_until

MR = "1.2.840.10008.5.1.4.1.1.4"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SLICES = 6


def model(tmp_path, wait_s: float):
    path = tmp_path / f"flair_t1_{wait_s:g}.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs(pairing={"wait_s": wait_s})), path)
    return path


class Study:
    """A FLAIR series (96x96, 1 mm) and a T1 series (48x48, 2 mm, offset) 0.3 mm apart per slice: one study."""

    def __init__(self, *, t1_frame: str | None = None, seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.study, self.frame = generate_uid(), generate_uid()
        self.flair_uid, self.t1_uid = generate_uid(), generate_uid()
        self.flair: list[Slice] = []
        self.t1: list[Slice] = []
        for k in range(SLICES):
            z = 4.0 * k
            px = rng.normal(300, 80, (96, 96)).astype(np.int16)
            self.flair.append(self._slice(px, z, self.flair_uid, k + 1, (1.0, 1.0), (0.0, 0.0), self.frame, True))
            px = rng.integers(0, 1000, (48, 48)).astype(np.int16)
            frame = t1_frame or self.frame
            self.t1.append(self._slice(px, z + 0.3, self.t1_uid, k + 1, (2.0, 2.0), (-3.0, 2.0), frame, False))

    def _slice(self, px, z, series, number, spacing, origin, frame, flair: bool) -> Slice:
        return Slice.from_array(
            px,
            geometry=SliceGeometry(
                pixel_spacing=spacing, image_position=(*origin, z), image_orientation=AXIAL, slice_thickness=3.0
            ),
            identity=SliceIdentity(
                series_uid=series,
                sop_instance_uid=generate_uid(),
                instance_number=number,
                modality="MR",
                study_uid=self.study,
                frame_of_reference_uid=frame,
            ),
            acquisition=SliceAcquisition(
                series_description="AX FLAIR" if flair else "T1 SE",
                scanning_sequence=("SE", "IR") if flair else ("SE",),
            ),
        )

    @staticmethod
    def datasets(slices: list[Slice]) -> list[pydicom.Dataset]:
        out = []
        for s in slices:
            ds = dataset_from_slice(s, sop_class_uid=MR)
            ds.PatientID, ds.PatientName = "ANON-1", "Anonymous^Test"
            out.append(ds)
        return out


def expected_masks(path, study: Study) -> np.ndarray:
    """Each FLAIR slice's mask from the pipeline directly, with its T1 partner resampled onto its grid."""
    with Pipeline.open(path) as pipe:
        return np.stack(
            [
                pipe.run_inputs({"flair": f, "t1": resample_onto(t, f)}, overlay=False).mask
                for f, t in zip(study.flair, study.t1)
            ]
        )


def seg_masks(seg_path, uids: list[str]) -> np.ndarray:
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]


def referenced(seg_path) -> set[str]:
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    return {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}


@pytest.mark.parametrize("associations", [1, 2])
def test_two_series_interleaved_and_shuffled_give_the_flair_series_a_seg_of_paired_masks(
    tmp_path, listener, associations
):
    path = model(tmp_path, wait_s=20.0)  # the spool empties 20.5 s after the study's last image
    node = listener([path], series_timeout_s=0.5)
    study = Study()
    flair, t1 = Study.datasets(study.flair), Study.datasets(study.t1)
    if associations == 1:  # one association, the two series shuffled together
        both = flair + t1
        random.Random(3).shuffle(both)
        assert [s for s, _ in send(node.port, both)] == [0] * len(both)
    else:  # each series on its own association at once, each shuffled
        random.Random(4).shuffle(flair)
        random.Random(5).shuffle(t1)
        answers: dict[str, list[int]] = {}
        threads = [
            threading.Thread(target=lambda n, d: answers.__setitem__(n, [s for s, _ in send(node.port, d)]), args=a)
            for a in (("flair", flair), ("t1", t1))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert answers == {"flair": [0] * SLICES, "t1": [0] * SLICES}

    (seg_path,) = wait_until(lambda: list(node.written), timeout=60, what="the FLAIR series' SEG")
    uids = [s.identity.sop_instance_uid for s in study.flair]
    assert referenced(seg_path) == set(uids)  # the FLAIR series only, every slice of it
    assert pydicom.dcmread(seg_path, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID == (
        study.flair_uid
    )
    expected = expected_masks(path, study)
    assert expected.any() and not expected.all()
    assert np.array_equal(seg_masks(seg_path, uids), expected == 1)
    assert node.stats.results == SLICES and node.stats.stored == 2 * SLICES and node.stats.missing_input == 0
    wait_until(lambda: not spooled(node.config.out), timeout=60, what="the spool emptied once the study is idle")


def test_a_missing_partner_is_missing_input_named_and_counted_and_the_node_serves_on(tmp_path, listener, caplog):
    caplog.set_level(logging.INFO, "scanedge.dicomnet")
    path = model(tmp_path, wait_s=0.5)
    node = listener([path], series_timeout_s=0.5)
    study = Study()
    flair, t1 = Study.datasets(study.flair), Study.datasets(study.t1[:4])  # T1 slices 5 and 6 never come
    assert [s for s, _ in send(node.port, flair + t1)] == [0] * (SLICES + 4)  # all acknowledged

    wait_until(lambda: node.stats.missing_input == 2, timeout=60, what="two MISSING_INPUTs")
    (seg_path,) = wait_until(lambda: list(node.written), timeout=60, what="the FLAIR series' SEG")
    paired = [s.identity.sop_instance_uid for s in study.flair[:4]]
    assert referenced(seg_path) == set(paired)  # the SEG covers the paired slices
    assert np.array_equal(seg_masks(seg_path, paired), expected_masks(path, study)[:4] == 1)
    written = [r.getMessage() for r in caplog.records if "SEG written" in r.getMessage()]
    assert "2 image(s) without their partner (MISSING_INPUT) are not in it" in written[0]
    lines = [r.getMessage() for r in caplog.records if "gets no mask" in r.getMessage()]
    assert len(lines) == 2
    for s, line in zip(study.flair[4:], sorted(lines, key=lambda m: "20.00 mm" in m)):
        assert "role 't1'" in line and study.flair_uid in line and s.identity.sop_instance_uid in line
        assert f"position {s.geometry.image_position[2]:.2f} mm" in line  # type: ignore[index]
        assert "ANON-1" not in line and "Anonymous" not in line
    assert read_status(node.config.out)["missing_input"] == 2 or wait_until(
        lambda: read_status(node.config.out)["missing_input"] == 2, timeout=30, what="the status file's count"
    )

    second = Study(seed=9)  # the node serves on: a complete study after it is paired
    both = Study.datasets(second.flair) + Study.datasets(second.t1)
    assert [s for s, _ in send(node.port, both)] == [0] * (2 * SLICES)
    wait_until(lambda: len(node.written) == 2, timeout=60, what="the second study's SEG")
    assert node.stats.missing_input == 2 and node.stats.results == 4 + SLICES
    wait_until(lambda: not spooled(node.config.out), timeout=60, what="every acknowledged image's outcome final")


def test_a_partner_in_another_frame_of_reference_is_not_paired_and_the_reason_is_logged(tmp_path, listener, caplog):
    caplog.set_level(logging.WARNING, "scanedge.dicomnet")
    path = model(tmp_path, wait_s=60.0)
    node = listener([path], series_timeout_s=0.5)
    study = Study(t1_frame=generate_uid())
    t1, flair = Study.datasets(study.t1), Study.datasets(study.flair)  # T1 first: every FLAIR is refused at once
    assert [s for s, _ in send(node.port, t1 + flair)] == [0] * (2 * SLICES)
    wait_until(lambda: node.stats.missing_input == SLICES, timeout=60, what="every FLAIR slice unpaired")
    assert node.stats.results == 0
    lines = [r.getMessage() for r in caplog.records if "gets no mask" in r.getMessage()]
    assert len(lines) == SLICES and all("another frame of reference" in m for m in lines)


def test_a_restarted_node_pairs_the_reference_images_it_acknowledged_with_partners_sent_later(tmp_path, listener):
    path = model(tmp_path, wait_s=300.0)
    first = listener([path], series_timeout_s=0.5)
    study = Study()
    assert [s for s, _ in send(first.port, Study.datasets(study.flair))] == [0] * SLICES  # parked, acknowledged
    first.stop()
    assert len(spooled(first.config.out)) == SLICES and not first.written  # kept, no SEG yet

    second = listener([path], series_timeout_s=0.5)
    wait_until(lambda: second.stats.recovered == SLICES, timeout=60, what="the spooled FLAIR images recovered")
    assert [s for s, _ in send(second.port, Study.datasets(study.t1))] == [0] * SLICES
    (seg_path,) = wait_until(lambda: list(second.written), timeout=60, what="the FLAIR series' SEG")
    uids = [s.identity.sop_instance_uid for s in study.flair]
    assert np.array_equal(seg_masks(seg_path, uids), expected_masks(path, study) == 1)


def test_one_node_pairs_for_one_multi_input_model(tmp_path, listener):
    other = tmp_path / "other_pair.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(name="other-pair", inputs=two_role_inputs()), other)
    with pytest.raises(ConfigError, match=r"models test-model, other-pair each take several series.*node per"):
        listener([model(tmp_path, wait_s=1.0), other])


def test_the_scu_sees_success_for_a_reference_image_before_its_partner_exists(tmp_path, listener):
    """The C-STORE of a FLAIR image with no T1 yet is answered (spooled, parked) without waiting out the pairing."""
    path = model(tmp_path, wait_s=300.0)
    node = listener([path], series_timeout_s=30.0)
    study = Study()
    scu = Scu(node.port, [MR])
    try:
        assert scu.store(Study.datasets(study.flair[:1])[0])[0] == 0
        assert node._intake is not None and node._intake.pairing.parked == 1
        assert scu.store(Study.datasets(study.t1[:1])[0])[0] == 0
        assert node._intake.pairing.parked == 0 and node.stats.results == 1
    finally:
        scu.release()


def test_reference_images_waiting_for_partners_are_bounded_and_past_the_bound_not_taken(tmp_path, listener):
    path = tmp_path / "bounded.onnx"
    inputs = two_role_inputs(pairing={"wait_s": 300.0, "max_slices": 2})
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=inputs), path)
    node = listener([path], series_timeout_s=30.0)
    study = Study()
    answers = send(node.port, Study.datasets(study.flair[:3]))
    assert [s for s, _ in answers] == [0, 0, 0xA700]
    assert answers[2][1].startswith("OUT_OF_RESOURCES: 2 reference image(s) already wait")
    assert len(spooled(node.config.out)) == 2  # what was refused is not kept; what was acknowledged is


def test_a_node_started_on_the_spool_a_crashed_node_left_pairs_what_it_finds_there(tmp_path, listener):
    """What a ``kill -9`` leaves: every acknowledged FLAIR and T1 image fsync'd in the spool, no SEG. The spool
    is copied while the first node still runs (nothing written at its stop can reach the copy)."""
    path = model(tmp_path, wait_s=5.0)
    first = listener([path], series_timeout_s=300.0, out=tmp_path / "crashed")
    study = Study()
    both = Study.datasets(study.flair) + Study.datasets(study.t1)
    random.Random(7).shuffle(both)
    assert [s for s, _ in send(first.port, both)] == [0] * (2 * SLICES)
    assert first.stats.results == SLICES and not first.written
    left = tmp_path / "restarted" / "spool"
    left.mkdir(parents=True, mode=0o700)
    for f in spooled(first.config.out):
        (left / f.name).write_bytes(f.read_bytes())
    assert len(list(left.glob("*.dcm"))) == 2 * SLICES

    second = listener([path], series_timeout_s=0.5, out=tmp_path / "restarted")
    (seg_path,) = wait_until(lambda: list(second.written), timeout=60, what="the FLAIR series' SEG")
    uids = [s.identity.sop_instance_uid for s in study.flair]
    assert referenced(seg_path) == set(uids)
    assert np.array_equal(seg_masks(seg_path, uids), expected_masks(path, study) == 1)
    assert second.stats.recovered == 2 * SLICES and second.stats.missing_input == 0
    wait_until(lambda: not spooled(second.config.out), timeout=60, what="the spool emptied once the study is idle")


def test_each_paired_flair_slice_is_published_live_with_its_mask_and_no_t1_slice_is(tmp_path, listener):
    import zmq

    from scanedge.runtime.wire.payloads import arrays_from_frames
    from scanedge.runtime.wire.protocol import Result, decode_reply

    path = model(tmp_path, wait_s=60.0)
    node = listener([path], publish="tcp://127.0.0.1:*", series_timeout_s=60.0)
    study, probe = Study(), Study(seed=2)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (study.flair_uid, study.t1_uid, probe.flair_uid):
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(node.publish_endpoint)
    try:
        pair = Study.datasets(probe.t1[:1]) + Study.datasets(probe.flair[:1])
        wait_until(lambda: send(node.port, pair) and sub.poll(200), timeout=30, what="the feed to go live")
        sub.setsockopt(zmq.UNSUBSCRIBE, probe.flair_uid.encode())
        while sub.poll(200):
            sub.recv_multipart()
        both = Study.datasets(study.flair) + Study.datasets(study.t1)
        random.Random(8).shuffle(both)
        assert [s for s, _ in send(node.port, both)] == [0] * (2 * SLICES)
        received = []
        while len(received) < SLICES:
            assert sub.poll(30_000), f"only {len(received)} RESULTs arrived"
            received.append(sub.recv_multipart())
        assert not sub.poll(500)  # none for the T1 series (published, they would be among those above)
    finally:
        sub.close()
    expected = dict(zip((s.identity.sop_instance_uid for s in study.flair), expected_masks(path, study)))
    partner = {f.identity.sop_instance_uid: t for f, t in zip(study.flair, study.t1)}
    assert len(received) == SLICES
    for topic, head, *payload in received:
        header = decode_reply(head)
        assert isinstance(header, Result) and topic.decode() == header.series == study.flair_uid
        assert [f.name for f in header.frames] == ["mask", "overlay", "image"]
        assert np.array_equal(arrays_from_frames(header.frames, payload)["mask"], expected[header.instance])
        # which slice filled each role, as the runtime's multi-input RESULTs say it (docs/protocol.md 3.2)
        t1 = partner[header.instance]
        assert header.inputs is not None and header.inputs.role == "flair" and not header.inputs.held
        (p,) = header.inputs.partners
        assert (p.role, p.series, p.instance) == ("t1", study.t1_uid, t1.identity.sop_instance_uid)
        assert header.position_mm is not None and p.position_mm == pytest.approx(header.position_mm + 0.3, abs=1e-3)
    assert {decode_reply(h).instance for _, h, *_ in received} == set(expected)


# --- beside one-input models: every image has two fates ------------------------------------------------------


def one_input_model(tmp_path) -> Path:
    path = tmp_path / "one_input.onnx"
    embed_manifest(conv_model(), simple_manifest(name="one-input"), path)
    return path


def one_input_masks(path, slices: list[Slice]) -> dict[str, np.ndarray]:
    """Each slice's mask from the one-input model directly, by SOP Instance UID."""
    with Pipeline.open(path) as pipe:
        return {s.identity.sop_instance_uid: pipe.run(s, overlay=False).mask for s in slices}


def segs(folder: Path) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """Every SEG in ``folder``: (model name, referenced series, its segment-1 mask per referenced instance)."""
    out = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids = sorted(referenced(path))
        masks = seg_masks(path, uids)
        out.append(
            (
                str(ds.ManufacturerModelName),
                str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID),
                {uid: masks[i] for i, uid in enumerate(uids)},
            )
        )
    return out


def covered(found: list[tuple[str, str, dict[str, np.ndarray]]], model_name: str, series: str) -> dict[str, np.ndarray]:
    """The masks ``model_name``'s SEGs of ``series`` hold, by instance, over all of them."""
    return {uid: m for name, s, masks in found if name == model_name and s == series for uid, m in masks.items()}


def check_both_fates(found, pair: Path, single: Path, study: Study, *, paired: int = SLICES) -> None:
    """The one-input model's SEGs cover both series, each slice's mask as the model gives it; the multi-input
    model's cover the first ``paired`` FLAIR slices with their paired masks, and nothing of the T1 series."""
    for slices, series in ((study.flair, study.flair_uid), (study.t1, study.t1_uid)):
        expected = one_input_masks(single, slices)
        got = covered(found, "one-input", series)
        assert set(got) == set(expected), series
        assert all(np.array_equal(got[uid], expected[uid] == 1) for uid in expected)
    pairs = dict(zip((s.identity.sop_instance_uid for s in study.flair), expected_masks(pair, study)))
    got = covered(found, "test-model", study.flair_uid)
    assert set(got) == {s.identity.sop_instance_uid for s in study.flair[:paired]}
    assert all(np.array_equal(got[uid], pairs[uid] == 1) for uid in got)
    assert not covered(found, "test-model", study.t1_uid)


def test_beside_a_one_input_model_every_image_is_segmented_by_it_and_paired_for_the_two_input_one(tmp_path, listener):
    pair, single = model(tmp_path, wait_s=2.0), one_input_model(tmp_path)
    node = listener([pair, single], series_timeout_s=0.5)
    study = Study()
    both = Study.datasets(study.flair) + Study.datasets(study.t1)
    random.Random(11).shuffle(both)
    assert [s for s, _ in send(node.port, both)] == [0] * (2 * SLICES)

    wait_until(lambda: len(node.written) == 3, timeout=90, what="two one-input SEGs and the paired FLAIR SEG")
    check_both_fates(segs(node.folders["seg"]), pair, single, study)
    assert node.stats.results == 3 * SLICES and node.stats.missing_input == 0
    wait_until(lambda: not spooled(node.config.out), timeout=60, what="the spool emptied once every fate is done")


def test_beside_a_one_input_model_a_reference_image_without_partner_keeps_its_one_input_seg(tmp_path, listener):
    pair, single = model(tmp_path, wait_s=0.5), one_input_model(tmp_path)
    node = listener([pair, single], series_timeout_s=0.5)
    study = Study()
    sent = Study.datasets(study.flair) + Study.datasets(study.t1[:4])  # T1 slices 5 and 6 never come
    assert [s for s, _ in send(node.port, sent)] == [0] * (SLICES + 4)

    wait_until(lambda: node.stats.missing_input == 2, timeout=60, what="two MISSING_INPUTs")
    wait_until(lambda: len(node.written) == 3, timeout=90, what="two one-input SEGs and the paired FLAIR SEG")
    partial = copy.copy(study)  # the T1 series as sent: its first four slices
    partial.t1 = study.t1[:4]
    check_both_fates(segs(node.folders["seg"]), pair, single, partial, paired=4)
    wait_until(lambda: not spooled(node.config.out), timeout=60, what="the spool emptied once every fate is done")


@pytest.mark.slow
def test_a_node_killed_mid_study_finishes_both_fates_of_every_image_it_answered_success(tmp_path):
    """A real ``dicom-listen`` with both models. The T1 series arrives and gets its one-input SEG; the node is
    killed with SIGKILL (its T1 images still spooled: pairing holds them); started again, it gets half the FLAIR
    series and is killed right after a Success; started again, it gets the rest. Every image answered Success
    ends in both models' SEGs (the one-input one for both series, the paired one for FLAIR) and the spool empties."""
    pair, single = model(tmp_path, wait_s=20.0), one_input_model(tmp_path)
    out = tmp_path / "out"
    node = Node(free_port(), out, tmp_path / "node.log", ["--model", str(pair), "--model", str(single)])
    study = Study()
    t1, flair = Study.datasets(study.t1), Study.datasets(study.flair)
    node.start()
    try:
        assert len(stream(node.port, t1, None, node)) == SLICES
        wait_until(lambda: covered(segs(out / "seg"), "one-input", study.t1_uid), timeout=90, what="the T1 series' SEG")
        node.kill()
        assert len(spooled(out)) == SLICES  # its SEG is durable, yet pairing still owns every T1 image

        node.start()
        answered = stream(node.port, flair, SLICES // 2, node)
        assert len(answered) == SLICES // 2 and node.proc is not None and node.proc.poll() is not None
        node.start()
        rest = [ds for ds in flair if str(ds.SOPInstanceUID) not in answered]
        assert len(stream(node.port, rest, None, node)) == len(rest)

        def done() -> bool:
            found = segs(out / "seg")
            return len(covered(found, "test-model", study.flair_uid)) == SLICES and all(
                len(covered(found, "one-input", s)) == SLICES for s in (study.flair_uid, study.t1_uid)
            )

        wait_until(done, timeout=180, interval=0.5, what="both models' SEGs over every image")
        check_both_fates(segs(out / "seg"), pair, single, study)
        wait_until(lambda: not spooled(out), timeout=120, what="the spool emptied once every fate is done")
    finally:
        if node.proc is not None and node.proc.poll() is None:
            assert node.terminate() == 0
    assert "segmenting them again" in node.log.read_text()
    assert "ANON-1" not in node.log.read_text()


def test_beside_a_one_input_model_each_model_publishes_its_results_and_only_paired_ones_carry_inputs(
    tmp_path, listener
):
    import zmq

    from scanedge.runtime.wire.protocol import Result, decode_reply

    pair, single = model(tmp_path, wait_s=60.0), one_input_model(tmp_path)
    node = listener([pair, single], publish="tcp://127.0.0.1:*", series_timeout_s=60.0)
    study, probe = Study(), Study(seed=2)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (study.flair_uid, study.t1_uid, probe.t1_uid):
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(node.publish_endpoint)
    try:
        warm = Study.datasets(probe.t1[:1])
        wait_until(lambda: send(node.port, warm) and sub.poll(200), timeout=30, what="the feed to go live")
        sub.setsockopt(zmq.UNSUBSCRIBE, probe.t1_uid.encode())
        while sub.poll(200):
            sub.recv_multipart()
        both = Study.datasets(study.t1[:2]) + Study.datasets(study.flair[:2])
        assert [s for s, _ in send(node.port, both)] == [0] * 4
        received = []
        while len(received) < 6:  # the one-input model's 4, the paired model's 2
            assert sub.poll(30_000), f"only {len(received)} RESULTs arrived"
            received.append(decode_reply(sub.recv_multipart()[1]))
        assert not sub.poll(500)
    finally:
        sub.close()
    assert all(isinstance(r, Result) for r in received)
    one = sorted((r.series, r.instance) for r in received if r.model.startswith("one-input"))
    sent = [(s.identity.series_uid, s.identity.sop_instance_uid) for s in study.t1[:2] + study.flair[:2]]
    assert one == sorted(sent) and all(r.inputs is None for r in received if r.model.startswith("one-input"))
    paired = [r for r in received if r.model.startswith("test-model")]
    assert sorted(r.instance for r in paired) == sorted(s.identity.sop_instance_uid for s in study.flair[:2])
    partner = {f.identity.sop_instance_uid: t.identity.sop_instance_uid for f, t in zip(study.flair, study.t1)}
    for r in paired:
        assert r.inputs is not None and r.inputs.role == "flair"
        assert [(p.role, p.series, p.instance) for p in r.inputs.partners] == [
            ("t1", study.t1_uid, partner[r.instance])
        ]


def test_follow_up_compares_the_one_input_model_beside_a_multi_input_one_and_never_the_multi_input_one(tmp_path):
    from scanedge.dicomnet.followup import FollowupConfig, NodeFollowup
    from scanedge.dicomnet.prior_store import PriorStoreConfig
    from scanedge.manifest import load_manifest

    pair, single = model(tmp_path, wait_s=1.0), one_input_model(tmp_path)
    manifests = {"test-model": load_manifest(pair)[0], "one-input": load_manifest(single)[0]}
    config = FollowupConfig(store=PriorStoreConfig(tmp_path / "priors"))
    followup = NodeFollowup(config, manifests, {})
    try:
        assert followup.model == "one-input"  # the first one-input model, though listed second
    finally:
        followup.close()
    with pytest.raises(ConfigError, match=r"model 'test-model' takes several series of one study"):
        NodeFollowup(dataclasses.replace(config, model="test-model"), manifests, {})
