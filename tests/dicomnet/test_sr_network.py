"""The sr output on a running node, forwarded by C-STORE and by DICOMweb STOW-RS into a real Orthanc and read back.

Real peers: pynetdicom's SCU sends the demo series to a real listener running the shipped model; Orthanc
(Debian's, with its DICOMweb plugin) receives what the node forwards; dicomweb-client's QIDO-RS and WADO-RS
get the objects back; dcmtk's dsrdump reads the SR. The unreachable-server case is a port nothing listens on
until Orthanc is started there. Every wait is on a condition.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE

import tests.orthanc as orthanc_module
from scanedge.dicomnet.forward import DicomwebTarget, Forwarder, ForwardTarget, parse_dicomweb_target
from scanedge.errors import ConfigError
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.dicomnet.test_durability import ROOT, demo, new_series, send
from tests.orthanc import ORTHANC_AET, Orthanc, orthanc_server
from tests.waiting import wait_until

needs_dsrdump = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump is not installed")
SLICES = 24


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    with orthanc_server("SCANEDGE", 104) as server:
        yield server


def objects_in(folder: Path) -> dict[str, pydicom.Dataset]:
    """The node's sr/ folder by modality (SEG: the lesion SEG, SR: the report)."""
    out = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        out[str(ds.Modality)] = ds
    return out


def run_series(listener: Any, **changes: Any) -> tuple[Any, list[pydicom.Dataset], dict[str, pydicom.Dataset]]:
    node = listener(series_timeout_s=0.5, outputs=("seg", "sr"), **changes)
    series = new_series(demo(SLICES))
    assert [s for s, _ in send(node.port, series)] == [0] * SLICES
    folder = node.config.out / "sr"
    wait_until(lambda: len(list(folder.glob("*.dcm"))) == 2, timeout=120, what="the lesion SEG and the SR")
    return node, series, objects_in(folder)


def check_report(sr: pydicom.Dataset, seg: pydicom.Dataset, series_uid: str) -> list[str]:
    """The report's lesion groups reference the lesion SEG's segments with their Tracking UIDs; returns them."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    lesion_seg = hd.seg.Segmentation.from_dataset(seg)
    assert lesion_seg.SeriesDescription.startswith("scanedge lesions") and lesion_seg.Manufacturer == "scanedge"
    assert {s.SeriesInstanceUID for s in lesion_seg.ReferencedSeriesSequence} == {series_uid}
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesion_seg.segment_numbers) >= 1
    uids = []
    for group in groups:
        (n,) = group.referenced_segment.referenced_segment_numbers
        assert group.referenced_segment.referenced_sop_instance_uid == lesion_seg.SOPInstanceUID
        assert str(group.tracking_uid) == lesion_seg.get_segment_description(n).tracking_uid
        uids.append(str(group.tracking_uid))
    (load,) = report.content.get_image_measurement_groups()
    texts = [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]
    assert "no prior: follow-up not configured" in texts
    return uids


@needs_dsrdump
def test_a_node_with_the_sr_output_writes_a_lesion_seg_and_an_sr_for_a_received_series(listener, tmp_path):
    node, series, objects = run_series(listener)
    assert set(objects) == {"SEG", "SR"}
    check_report(objects["SR"], objects["SEG"], str(series[0].SeriesInstanceUID))
    (sr_path,) = [p for p in (node.config.out / "sr").glob("*.dcm") if pydicom.dcmread(p).Modality == "SR"]
    proc = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "(not-assessed,99SCANEDGE," in proc.stdout and "ms-lesion-demo" in proc.stdout
    node.stop()
    status = json.loads((node.config.out / "status.json").read_text())
    assert status["srs_written"] == 2 and status["segs_written"] == 1 and status["sr_failures"] == 0


def retrieved(server: Orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """Every instance of the study Orthanc holds, by SOP Instance UID: found by QIDO-RS, retrieved by WADO-RS."""
    client = DICOMwebClient(url=server.dicomweb_url, timeout=30)
    out = {}
    for found in client.search_for_instances(study_instance_uid=study_uid):
        meta = pydicom.Dataset.from_json(found)
        ds = client.retrieve_instance(study_uid, meta.SeriesInstanceUID, meta.SOPInstanceUID)
        out[str(ds.SOPInstanceUID)] = ds
    return out


@pytest.mark.parametrize("how", ["c-store", "stow-rs"])
def test_the_sr_and_lesion_seg_are_forwarded_into_orthanc_and_read_back_from_it(listener, orthanc, how):
    target = (
        ForwardTarget(ORTHANC_AET, "127.0.0.1", orthanc.dicom_port)
        if how == "c-store"
        else parse_dicomweb_target(orthanc.dicomweb_url + "/")
    )
    node, series, written = run_series(listener, forward=target)
    study = str(series[0].StudyInstanceUID)
    wait_until(lambda: node.forwarder.delivered == 3, timeout=120, what="the SEG, the lesion SEG and the SR forwarded")
    in_pacs = retrieved(orthanc, study)
    assert sorted(ds.Modality for ds in in_pacs.values()) == ["SEG", "SEG", "SR"]
    sr, seg = in_pacs[written["SR"].SOPInstanceUID], in_pacs[written["SEG"].SOPInstanceUID]
    series_uid = str(series[0].SeriesInstanceUID)
    assert check_report(sr, seg, series_uid) == check_report(written["SR"], written["SEG"], series_uid)
    assert not list((node.config.out / "outbox").glob("*.dcm"))


def test_stow_to_an_unreachable_server_keeps_the_object_and_delivers_it_once_the_server_is_up(tmp_path, monkeypatch):
    source = tmp_path / "sr" / "one.dcm"
    source.parent.mkdir()
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    ds.save_as(source)
    dicom_port, http_port = orthanc_module.free_port(), orthanc_module.free_port()
    target = DicomwebTarget(f"http://127.0.0.1:{http_port}/dicom-web")
    outbox = tmp_path / "outbox"
    forwarder = Forwarder(target, outbox, retry_initial_s=0.05, retry_max_s=0.2, timeout_s=5).start()
    queued = forwarder.submit(source)
    wait_until(lambda: forwarder.failed_attempts >= 2, what="two failed STOW-RS attempts")
    assert forwarder.stop(grace_s=0) == 1 and queued.exists()  # kept across a stop
    ports = iter([dicom_port, http_port])
    monkeypatch.setattr(orthanc_module, "free_port", lambda: next(ports))
    with orthanc_server("SCANEDGE", 104) as server:
        assert server.http_port == http_port
        again = Forwarder(target, outbox, retry_initial_s=0.05, retry_max_s=0.2, timeout_s=5).start()
        try:
            wait_until(lambda: again.delivered == 1, timeout=60, what="the STOW-RS once the server is up")
            assert not queued.exists() and source.exists()
            client = DICOMwebClient(url=server.dicomweb_url, timeout=30)
            back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert back.PixelData == ds.PixelData
        finally:
            assert again.stop(grace_s=0) == 0


def test_a_stow_answered_with_an_http_error_is_kept_and_retried(orthanc, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "scanedge.dicomnet")
    source = tmp_path / "one.dcm"
    pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).save_as(source)
    target = DicomwebTarget(f"{orthanc.url}/no-such-root")  # Orthanc answers 404 there
    forwarder = Forwarder(target, tmp_path / "outbox", retry_initial_s=0.05, retry_max_s=0.2, timeout_s=5).start()
    queued = forwarder.submit(source)
    wait_until(lambda: forwarder.failed_attempts >= 2, timeout=60, what="two refused STOW-RS attempts")
    assert forwarder.stop(grace_s=0) == 1 and queued.exists()
    assert "STOW-RS failed (HTTPError, HTTP 404)" in caplog.text


@needs_dcmtk
def test_storescu_to_dicom_listen_with_the_sr_output_puts_seg_lesion_seg_and_sr_into_orthanc_by_stow(orthanc, tmp_path):
    """The issue's "done when", without a prior: dcmtk's storescu sends the demo series to the
    ``scanedge dicom-listen`` command, which STOWs its SEG, lesion SEG and SR into Orthanc."""
    port, out, log = free_port(), tmp_path / "out", tmp_path / "node.log"
    args = ["--port", str(port), "--out", str(out), "--series-timeout", "1", "--output", "seg", "--output", "sr"]
    args += ["--forward-dicomweb", orthanc.dicomweb_url, "--complete-on-release"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scanedge", "dicom-listen", *args], stdout=sink, stderr=sink, env=env
        )
    try:
        wait_until(lambda: proc.poll() is not None or echo(port), timeout=120, interval=0.1, what="the node to listen")
        assert proc.poll() is None, log.read_text()[-3000:]
        folder = tmp_path / "series"
        folder.mkdir()
        series = new_series(demo(SLICES))
        for i, ds in enumerate(series):
            ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
        sent = storescu(port, *sorted(folder.iterdir()))
        assert responses(sent) == ["Success"] * SLICES, sent.stdout + sent.stderr
        study = str(series[0].StudyInstanceUID)
        wait_until(lambda: len(retrieved(orthanc, study)) == 3, timeout=180, what="SEG, lesion SEG and SR in Orthanc")
        in_pacs = retrieved(orthanc, study)
        lesion_seg = next(ds for ds in in_pacs.values() if str(ds.SeriesDescription).startswith("scanedge lesions"))
        sr = next(ds for ds in in_pacs.values() if ds.Modality == "SR")
        assert sorted(ds.Modality for ds in in_pacs.values()) == ["SEG", "SEG", "SR"]
        check_report(sr, lesion_seg, str(series[0].SeriesInstanceUID))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert "forwarded" in log.read_text() and not list((out / "outbox").glob("*.dcm"))


def echo(port: int) -> bool:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANEDGE")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


@pytest.mark.parametrize("url", ["pacs:8042/dicom-web", "ftp://pacs/dicom-web", "http:///dicom-web"])
def test_a_dicomweb_target_needs_an_http_url(url):
    with pytest.raises(ConfigError, match="http"):
        parse_dicomweb_target(url)


def test_without_dicomweb_client_forward_dicomweb_is_refused_with_the_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dicomweb_client", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'scanedge\[priors\]'"):
        parse_dicomweb_target("http://pacs:8042/dicom-web")
