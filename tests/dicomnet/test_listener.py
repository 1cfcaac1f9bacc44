"""The DICOM node against real DICOM software: dcmtk sends, receives and dumps; highdicom reads the SEGs back.

Every test waits on conditions (the SEG file, the feed's messages), never on time.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zmq
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from scanedge.demo.series import demo_series_dir
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.wire.payloads import arrays_from_frames
from scanedge.runtime.wire.protocol import Result, decode_reply
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.waiting import wait_until

pytestmark = needs_dcmtk


@pytest.fixture(scope="module")
def pipe():
    with Pipeline.open() as p:
        yield p


def demo_files() -> list[Path]:
    return sorted(demo_series_dir().glob("*.dcm"))


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def the_seg(node, count: int = 1) -> list[Path]:
    return wait_until(lambda: len(node.written) >= count and list(node.written), timeout=60, what="the SEG file")


def test_echo_then_the_demo_series_gives_one_seg_that_references_every_slice_with_the_pipelines_masks(listener, pipe):
    node = listener(series_timeout_s=0.5)
    echo = subprocess.run(["echoscu", "-aec", "SCANEDGE", "127.0.0.1", str(node.port)], capture_output=True, timeout=30)
    assert echo.returncode == 0
    files = demo_files()
    sent = storescu(node.port, *files)
    assert sent.returncode == 0 and responses(sent) == ["Success"] * len(files)

    (path,) = the_seg(node)
    assert path.parent == node.config.out / "seg"
    seg = hd.seg.segread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    referenced = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(s.SOPInstanceUID for s in sources)  # exactly those sent
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.SegmentationType == "BINARY"

    uids = [s.SOPInstanceUID for s in sources]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    expected = np.stack([pipe.run(f.read_bytes(), overlay=False).mask for f in files])
    assert expected.any() and np.array_equal(masks, expected == 1)

    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "lesion" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ms-lesion-demo" and algorithm.AlgorithmVersion == "1.0.0"
    assert algorithm.AlgorithmSource.startswith("scanedge ")

    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0 and "=SegmentationStorage" in dump.stdout and "[lesion]" in dump.stdout


def probe_file(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(demo_files()[0])
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "probe.dcm"
    ds.save_as(path)
    return path


def live_subscription(node, tmp_path: Path, topic: bytes) -> zmq.Socket:
    """A SUB socket on the node's feed, subscribed to ``topic``, proven live by a probe series."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.SUBSCRIBE, b"1.2.826.0.1.3680043.8.498.9")
    sub.connect(node.publish_endpoint)
    probe = probe_file(tmp_path)
    wait_until(lambda: storescu(node.port, probe) and sub.poll(200), timeout=30, what="the feed to go live")
    while sub.poll(200):
        sub.recv_multipart()
    sub.setsockopt(zmq.UNSUBSCRIBE, b"1.2.826.0.1.3680043.8.498.9")
    return sub


def test_every_slice_is_published_live_in_the_protocols_result_format_before_the_series_completes(
    listener, pipe, tmp_path
):
    node = listener(publish="tcp://127.0.0.1:*", series_timeout_s=60)
    files = demo_files()
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        received = []
        sender = threading.Thread(target=storescu, args=(node.port, *files))
        sender.start()
        while len(received) < len(files):
            assert sub.poll(30_000), f"only {len(received)} RESULTs arrived"
            received.append(sub.recv_multipart())
        sender.join()
    finally:
        sub.close()
    assert node.written == []  # every result was out while the series was still open: live, not per series
    by_instance = {uid_of(f): f for f in files}
    for topic, head, *payload in received:
        header = decode_reply(head)
        assert isinstance(header, Result) and topic.decode() == header.series == series
        assert header.model == "ms-lesion-demo@1.0.0" and header.runtime == node.runtime_id
        assert [f.name for f in header.frames] == ["mask", "overlay", "image"]  # what the live viewer draws
        assert header.position_mm is not None
        arrays = arrays_from_frames(header.frames, payload)
        source = by_instance[header.instance]
        expected = pipe.run(source.read_bytes(), overlay=False)
        assert np.array_equal(arrays["mask"], expected.mask)
        assert header.index == pydicom.dcmread(source, stop_before_pixels=True).InstanceNumber
        assert header.findings[0].pixels == expected.findings[0].pixels
        assert arrays["overlay"].shape == (*expected.mask.shape, 3)
    assert len({h for _, h, *_ in received}) == len(files)  # one RESULT per slice, each its own id
    node.stop()  # the open series' SEG is written when the listener stops (beside the probe series')
    assert series in {hd.seg.segread(p).ReferencedSeriesSequence[0].SeriesInstanceUID for p in node.written}


def test_a_non_image_and_a_corrupt_file_get_failure_statuses_and_the_listener_keeps_serving(listener, tmp_path, caplog):
    node = listener(series_timeout_s=0.3)
    corrupt = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    corrupt.PixelData = corrupt.PixelData[: len(corrupt.PixelData) // 2]
    corrupt.save_as(tmp_path / "corrupt.dcm")
    plan = get_testdata_file("rtplan.dcm")  # not an image
    capture = get_testdata_file("SC_rgb.dcm")  # an image, of a class no model takes
    good = get_testdata_file("MR_small.dcm")
    sent = storescu(node.port, plan, tmp_path / "corrupt.dcm", capture, good)
    assert responses(sent) == [
        "Refused: SOPClassNotSupported",
        "Error: CannotUnderstand",
        "Refused: SOPClassNotSupported",
        "Success",
    ]
    assert node.stats.refused == {0x0122: 2, 0xC000: 1}
    assert "UNSUPPORTED_SOP_CLASS RT Plan Storage objects are not segmented here" in caplog.text
    assert "BAD_DICOM" in caplog.text and "truncated" in caplog.text
    (path,) = the_seg(node)
    assert hd.seg.segread(path).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID
    )
    patient = pydicom.dcmread(good, stop_before_pixels=True)
    for value in (str(patient.PatientName), str(patient.PatientID)):
        assert value not in caplog.text  # no patient identifiers in the log


def test_two_concurrent_associations_each_get_their_series_segmented(listener):
    node = listener(series_timeout_s=0.5, workers=1)
    demo = demo_files()
    other = [get_testdata_file("MR_small.dcm")]  # another MR series: within the demo model's scope
    results: dict[str, subprocess.CompletedProcess] = {}
    threads = [
        threading.Thread(target=lambda k=k, f=f: results.__setitem__(k, storescu(node.port, *f)))
        for k, f in (("demo", demo), ("other", other))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert responses(results["demo"]) == ["Success"] * len(demo) and responses(results["other"]) == ["Success"]
    paths = the_seg(node, 2)
    series = {hd.seg.segread(p).ReferencedSeriesSequence[0].SeriesInstanceUID for p in paths}
    assert series == {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in (demo[0], other[0])}


@pytest.mark.parametrize(
    "name, propose, syntax",  # syntax: as dcmtk names it
    [
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "-xs", "JPEG Lossless, Non-hierarchical, 1st Order Prediction"),
        ("MR_small_jpeg_ls_lossless.dcm", "-xt", "JPEG-LS Lossless"),
        ("MR_small_RLE.dcm", "-xr", "RLE Lossless"),
        ("MR_small.dcm", "-xd", "Deflated Explicit VR Little Endian"),
    ],
)
def test_compressed_and_deflated_transfer_syntaxes_are_negotiated_and_segmented(listener, pipe, name, propose, syntax):
    node = listener(series_timeout_s=0.3, ignore_scope=True)  # the JPEG Lossless file is ultrasound: not brain MR
    path = get_testdata_file(name)
    sent = storescu(node.port, path, args=(propose,))
    assert responses(sent) == ["Success"]
    assert f"-> {syntax}\n" in sent.stderr  # sent as negotiated: compressed (or deflated), not converted back
    (seg_path,) = the_seg(node)
    seg = hd.seg.segread(seg_path)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, ..., 0]
    assert np.array_equal(mask, pipe.run(Path(path).read_bytes(), overlay=False, ignore_scope=True).mask == 1)


def enhanced_mr(tmp_path: Path) -> Path:
    """pydicom's Enhanced MR test file with the plane geometry the IOD requires (the file omits it)."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.0, 1.0], 2.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for i in range(int(ds.NumberOfFrames)):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    path = tmp_path / "enhanced_mr.dcm"
    ds.save_as(path)
    return path


def test_a_multi_frame_enhanced_mr_gets_one_seg_frame_per_source_frame(listener, pipe, tmp_path):
    from scanedge.imaging.dicom import slices_from_dicom

    node = listener(series_timeout_s=0.3, segmentation="fractional")
    path = enhanced_mr(tmp_path)
    assert responses(storescu(node.port, path)) == ["Success"]
    (seg_path,) = the_seg(node)
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    frames = slices_from_dicom(path.read_bytes())
    got = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=uid,
        source_frame_numbers=list(range(1, len(frames) + 1)),
        segment_numbers=[1],
        rescale_fractional=False,
    )[..., 0]
    expected = [np.rint(pipe.run(f, overlay=False).probabilities_on_slice()[1] * 255) for f in frames]
    assert np.array_equal(got, np.stack(expected).astype(got.dtype))


def test_segs_are_forwarded_to_a_dcmtk_storescp_and_arrive_intact(listener, tmp_path):
    received = tmp_path / "pacs"
    received.mkdir()
    port = free_port()
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(received), str(port)])
    try:
        node = listener(series_timeout_s=0.3, forward=parse_target(f"PACS@127.0.0.1:{port}"))
        assert responses(storescu(node.port, *demo_files()[:4])) == ["Success"] * 4
        (written,) = the_seg(node)
        (arrived,) = wait_until(lambda: list(received.iterdir()), timeout=60, what="the SEG at the storescp")
        wait_until(lambda: not list((node.config.out / "outbox").iterdir()), what="the outbox to empty")
        sent, got = pydicom.dcmread(written), pydicom.dcmread(arrived)
        assert got.SOPInstanceUID == sent.SOPInstanceUID and got.PixelData == sent.PixelData
        assert (
            got.SegmentSequence == sent.SegmentSequence
            and got.ReferencedSeriesSequence == sent.ReferencedSeriesSequence
        )
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)


def parse_target(text: str):
    from scanedge.dicomnet import parse_forward_target

    return parse_forward_target(text)


def test_an_association_that_calls_another_ae_title_is_rejected(listener):
    node = listener()
    wrong = subprocess.run(["echoscu", "-aec", "SOMEONE", "127.0.0.1", str(node.port)], capture_output=True, text=True)
    right = subprocess.run(["echoscu", "-aec", "SCANEDGE", "127.0.0.1", str(node.port)], capture_output=True, text=True)
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert right.returncode == 0


def test_a_peer_sending_a_message_over_the_byte_limit_is_aborted_while_it_sends_and_the_node_serves_on(listener):
    node = listener(max_object_bytes=100_000, series_timeout_s=0.3)
    big = demo_files()[0]  # 128 KiB of pixels
    assert big.stat().st_size > 100_000
    sent = storescu(node.port, big)
    assert responses(sent) == [] and sent.returncode != 0
    assert node.stats.oversized == 1 and node.stats.received == 0  # never gathered whole
    small = get_testdata_file("MR_small.dcm")  # 8 KiB: within the limit
    assert responses(storescu(node.port, small)) == ["Success"]
    the_seg(node)


def test_every_model_segments_every_image_and_each_gets_its_own_seg(listener, conv_model_path, caplog):
    from scanedge.runtime.core.pipeline import default_model_path

    node = listener(models=[default_model_path(), conv_model_path], series_timeout_s=0.3)
    assert "finding have no coded concepts" in caplog.text  # the test model's class: described generically
    files = demo_files()[:3]
    assert responses(storescu(node.port, *files)) == ["Success"] * 3
    segs = {hd.seg.segread(p).SegmentSequence[0].SegmentLabel: hd.seg.segread(p) for p in the_seg(node, 2)}
    assert set(segs) == {"lesion", "finding"}
    generic = segs["finding"].SegmentSequence[0]
    assert generic.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # SCT Tissue
    assert generic.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "test-model"
    with Pipeline.open(conv_model_path) as conv:
        uids = [uid_of(f) for f in files]
        got = segs["finding"].get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
        expected = np.stack([conv.run(f.read_bytes(), overlay=False).mask == 1 for f in files])
        assert np.array_equal(got[..., 0], expected)


def test_an_image_outside_the_models_scope_is_refused_by_name_and_the_node_keeps_serving(listener, caplog):
    """The demo model declares brain MR: a CT is answered 0x0122 with OUT_OF_SCOPE in its Error Comment,
    no SEG is written for it, and an MR sent after it is segmented."""
    node = listener(series_timeout_s=0.3)
    sent = storescu(node.port, get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm"))
    assert responses(sent) == ["Refused: SOPClassNotSupported", "Success"]
    assert node.stats.refused == {0x0122: 1}
    assert "OUT_OF_SCOPE" in caplog.text and "CT" in caplog.text
    (seg_path,) = the_seg(node)
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    assert hd.seg.segread(seg_path).ReferencedSeriesSequence[0].SeriesInstanceUID == mr.SeriesInstanceUID


def test_ignore_scope_segments_what_the_scope_would_refuse(listener):
    node = listener(series_timeout_s=0.3, ignore_scope=True)
    sent = storescu(node.port, get_testdata_file("CT_small.dcm"))
    assert responses(sent) == ["Success"]
    assert len(the_seg(node)) == 1


def test_only_allowed_calling_ae_titles_may_associate(listener):
    """A node on a scanner-facing address can name its scanners: any other Calling AE is rejected at
    association, before a byte of an image is taken."""
    node = listener(series_timeout_s=0.3, allowed_calling_aes=("SCANNER1", "SCANNER2"))
    image = get_testdata_file("MR_small.dcm")
    other = storescu(node.port, image, args=("-aet", "INTRUDER"))
    assert other.returncode != 0 and "Association Rejected" in other.stdout + other.stderr
    assert node.stats.received == 0
    allowed = storescu(node.port, image, args=("-aet", "SCANNER2"))
    assert responses(allowed) == ["Success"]


def test_a_bad_allowed_calling_ae_title_is_a_config_error():
    from scanedge.dicomnet.config import ListenerConfig
    from scanedge.errors import ConfigError

    for bad in ("", "   ", "A" * 17, "BAD\\AE"):
        with pytest.raises(ConfigError, match="--allow-calling-ae"):
            ListenerConfig(allowed_calling_aes=(bad,))
