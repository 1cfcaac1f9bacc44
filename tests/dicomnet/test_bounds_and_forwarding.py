"""What the listener holds is bounded, statuses map by code, and a forward that fails is kept and retried."""

from __future__ import annotations

import logging
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from scanedge.demo.series import demo_series_dir
from scanedge.dicomnet import Forwarder, ForwardTarget, ListenerConfig, parse_forward_target
from scanedge.dicomnet.series import HeldFrame, HeldInstance, OpenSeriesBuffer, SeriesLimits, pack, unpack
from scanedge.dicomnet.statuses import status_dataset, status_for
from scanedge.errors import (
    CapacityError,
    ConfigError,
    DicomError,
    EngineError,
    ImageTooLargeError,
    NotDicomError,
    SopClassError,
)
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def instance(uid: str, nbytes: int = 100, frames: int = 1) -> HeldInstance:
    frame = HeldFrame((4, 4), {"m": b"x" * nbytes})
    return HeldInstance(uid, header=None, header_bytes=0, frames=(frame,) * frames)


def test_a_series_completes_after_its_idle_time_or_on_release_never_with_an_instance_in_flight():
    clock = Clock()
    store = OpenSeriesBuffer(SeriesLimits(), clock=clock)
    store.begin("1.1", association=7)
    store.finish("1.1", instance("1.1.1"))
    store.begin("1.1", association=7)  # a second instance still in flight
    clock.now += 60
    assert store.complete(10.0, on_release=False) == []
    store.finish("1.1", instance("1.1.2"))
    clock.now += 5
    assert store.complete(10.0, on_release=False) == []
    store.released(7)
    (done,) = store.complete(10.0, on_release=True)
    assert list(done.instances) == ["1.1.1", "1.1.2"] and store.held_bytes == 0 and store.open_series() == []


def test_release_ends_a_series_only_when_no_other_association_still_sends_it():
    store = OpenSeriesBuffer(SeriesLimits(), clock=Clock())
    for assoc in (1, 2):
        store.begin("1.1", association=assoc)
        store.finish("1.1", instance(f"1.1.{assoc}"))
    store.released(1)
    assert store.complete(10.0, on_release=True) == []
    store.closed(2)  # aborted: no longer sending, but no explicit end either
    assert store.complete(10.0, on_release=True) == []
    store.begin("1.1", association=3)
    store.finish("1.1", instance("1.1.3"))
    store.released(3)
    assert [s.series_uid for s in store.complete(10.0, on_release=True)] == ["1.1"]


def test_a_resent_instance_replaces_its_earlier_copy():
    store = OpenSeriesBuffer(SeriesLimits(), clock=Clock())
    for size in (100, 40):
        store.begin("1.1", association=1)
        store.finish("1.1", instance("1.1.1", size))
    assert store.held_bytes == 40
    (done,) = store.drain()
    assert len(done.instances) == 1


def test_the_byte_cap_completes_the_longest_idle_series_early_then_refuses_what_cannot_fit(caplog):
    clock = Clock()
    store = OpenSeriesBuffer(SeriesLimits(max_bytes=250), clock=clock)
    for series in ("1.1", "1.2"):
        store.begin(series, association=1)
        store.finish(series, instance(series + ".1"))
        clock.now += 1
    store.begin("1.3", association=1)
    store.finish("1.3", instance("1.3.1"))  # 300 bytes would be held: 1.1, idle longest, is completed early
    assert store.held_bytes == 200 and sorted(store.open_series()) == ["1.2", "1.3"]
    (early,) = store.complete(1e9, on_release=False)
    assert early.series_uid == "1.1" and early.early and "completed early" in caplog.text
    store.begin("1.4", association=1)
    with pytest.raises(CapacityError, match="250 bytes"):
        store.finish("1.4", instance("1.4.1", 1000))
    assert store.held_bytes <= 250


def test_the_series_cap_and_the_frame_cap():
    clock = Clock()
    store = OpenSeriesBuffer(SeriesLimits(max_series=2, max_frames=3), clock=clock)
    for series in ("1.1", "1.2", "1.3"):
        store.begin(series, association=1)
        store.finish(series, instance(series + ".1"))
        clock.now += 1
    assert sorted(store.open_series()) == ["1.2", "1.3"]
    assert [s.series_uid for s in store.complete(1e9, on_release=False)] == ["1.1"]
    store.begin("1.2", association=1)
    with pytest.raises(CapacityError, match="at most 3"):
        store.finish("1.2", instance("1.2.2", frames=3))


def test_masks_are_held_compressed_and_come_back_exactly():
    mask = np.zeros((512, 512), np.uint8)
    mask[100:120, 200:230] = 1
    packed = pack(mask)
    assert len(packed) < 2000 and np.array_equal(unpack(packed, mask.shape), mask)


@pytest.mark.parametrize(
    "error, status",
    [
        (SopClassError("x"), 0x0122),
        (ImageTooLargeError("x"), 0xA700),
        (CapacityError("x"), 0xA700),
        (NotDicomError("x"), 0xC000),
        (DicomError("x"), 0xC000),
        (EngineError("x"), 0x0110),
    ],
)
def test_statuses_by_error_code(error, status):
    assert status_for(error) == status


def test_the_error_comment_is_bounded_printable_text():
    ds = status_dataset(0xC000, "BAD_DICOM: " + "é\\\x00" * 40)
    assert ds.Status == 0xC000 and len(ds.ErrorComment) <= 64 and "\\" not in ds.ErrorComment


@pytest.mark.parametrize(
    "text, target",
    [
        ("PACS@10.0.0.5:104", ForwardTarget("PACS", "10.0.0.5", 104)),
        ("MY AE@pacs.local:11112", ForwardTarget("MY AE", "pacs.local", 11112)),
        ("ORTHANC@[::1]:4242", ForwardTarget("ORTHANC", "::1", 4242)),
    ],
)
def test_forward_targets_parse(text, target):
    assert parse_forward_target(text) == target


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "A" * 17 + "@h:104", "P\\S@h:1"])
def test_malformed_forward_targets_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_forward_target(text)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ae_title": ""}, "AE title"),
        ({"port": 70000}, "port"),
        ({"series_timeout_s": 0}, "series_timeout_s"),
        ({"publish": "tcp://0.0.0.0:5556"}, "without encryption"),
        ({"segmentation": "labelmap"}, "binary or fractional"),
    ],
)
def test_listener_config_refuses_what_cannot_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        ListenerConfig(**changes)


@needs_dcmtk
def test_a_failed_forward_stays_in_the_outbox_and_is_retried_until_it_arrives(tmp_path, caplog):
    caplog.set_level(logging.INFO, "scanedge.dicomnet")
    seg = tmp_path / "seg" / "1.2.3.dcm"
    seg.parent.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.save_as(seg)
    port = free_port()
    forwarder = Forwarder(
        ForwardTarget("PACS", "127.0.0.1", port), tmp_path / "outbox", retry_initial_s=0.05, retry_max_s=0.2
    ).start()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = None
    try:
        queued = forwarder.submit(seg)
        wait_until(lambda: forwarder.failed_attempts >= 2, what="two failed attempts")  # nothing listens yet
        assert queued.exists() and forwarder.pending == 1 and "kept in" in caplog.text
        pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(received), str(port)])
        wait_until(lambda: forwarder.delivered == 1, timeout=30, what="the retried forward")
        assert not queued.exists() and seg.exists() and forwarder.pending == 0
        (arrived,) = received.iterdir()
        assert pydicom.dcmread(arrived).PixelData == ds.PixelData
    finally:
        assert forwarder.stop(grace_s=0) == 0
        if pacs is not None:
            pacs.terminate()
            pacs.wait(timeout=10)


def test_what_an_earlier_run_left_in_the_outbox_is_kept_when_nothing_listens(tmp_path):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    pydicom.dcmread(get_testdata_file("MR_small.dcm")).save_as(outbox / "left.dcm")
    forwarder = Forwarder(ForwardTarget("PACS", "127.0.0.1", free_port()), outbox, retry_initial_s=0.05).start()
    wait_until(lambda: forwarder.failed_attempts >= 1, what="an attempt")
    assert forwarder.stop(grace_s=0) == 1 and (outbox / "left.dcm").exists()


@needs_dcmtk
def test_an_instance_past_the_frame_cap_is_refused_out_of_resources(listener):
    node = listener(series_limits=SeriesLimits(max_frames=2), series_timeout_s=30)
    files = sorted(demo_series_dir().glob("*.dcm"))[:3]
    assert responses(storescu(node.port, *files)) == ["Success", "Success", "Refused: OutOfResources"]


def test_stop_writes_nothing_outside_out(listener, tmp_path):
    node = listener()
    node.stop()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["out", "out/seg", "out/spool", "out/status.json"]
    assert (tmp_path / "out/spool").is_dir() and not list((tmp_path / "out/spool").iterdir())


def test_a_dataset_that_is_not_the_class_it_was_sent_as_or_lacks_its_uids_is_refused_a900():
    from pydicom.dataset import Dataset

    from scanedge.dicomnet.handlers import Refusal, check_uids

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4"
    with pytest.raises(Refusal) as refused:
        check_uids(ds, "1.2.840.10008.5.1.4.1.1.4")
    assert refused.value.status == 0xA900 and "CT Image Storage" in refused.value.message
    assert check_uids(ds, "1.2.840.10008.5.1.4.1.1.2") == ("1.2.3", "1.2.3.4")
    ds.SeriesInstanceUID = "Smith^John"  # not a UID: never reaches a log, a file name or a topic
    with pytest.raises(Refusal, match="no valid Series Instance UID"):
        check_uids(ds, "1.2.840.10008.5.1.4.1.1.2")
