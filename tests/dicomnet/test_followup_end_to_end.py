"""Issue 20's "done when", end to end on real software: the demo patient's prior study is in a real Orthanc;
dcmtk's storescu sends the follow-up series to the ``scanedge dicom-listen`` command (a process of its own,
started as a user would), which finds the prior in Orthanc, compares live, and sends its SEG, lesion SEG and
TID 1500 SR into Orthanc by STOW-RS; the SR read back from Orthanc lists new and enlarging lesions, and the
live viewer (real headless Chromium) shows them in their colours while the series arrives.

The follow-up pair is ``scanedge demo --prior``'s: the prior made from the demo patient with a known motion,
two lesions left out (new in the follow-up) and two drawn smaller (enlarging). Every wait is on a condition.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from scanedge.demo.followup_series import write_demo_followup
from scanedge.viewer import Viewer, ViewerConfig
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.dicomnet.test_sr_network import echo, retrieved
from tests.orthanc import Orthanc, orthanc_server
from tests.viewer.conftest import browser_page  # noqa: F401  (the fixture)
from tests.waiting import wait_until

pytest.importorskip("SimpleITK", reason="the follow-up needs the 'followup' extra")

pytestmark = needs_dcmtk

ROOT = Path(__file__).resolve().parents[2]
NODE_AET = "SCANEDGE"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """The demo follow-up pair as DICOM files: (current, prior)."""
    current, prior = write_demo_followup(tmp_path / "series")
    return sorted(current.glob("*.dcm")), sorted(prior.glob("*.dcm"))


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def pacs(node_port: int) -> Iterator[Orthanc]:
    with orthanc_server(NODE_AET, node_port) as server:
        yield server


def change_classes(sr: object) -> list[str]:
    """The change class of every lesion group of a TID 1500 report read with highdicom."""
    out = []
    for group in sr.content.get_volumetric_roi_measurement_groups():  # type: ignore[attr-defined]
        for evaluation in group.get_qualitative_evaluations():
            if evaluation.name.value == "change":
                out.append(str(evaluation.value.value))
    return out


def test_a_follow_up_sent_by_storescu_gets_a_seg_and_an_sr_with_new_and_enlarging_lesions_in_orthanc_and_live(
    pair,
    pacs,
    node_port,
    tmp_path,
    browser_page,  # noqa: F811
):
    current, prior = pair
    page, errors = browser_page
    sent = storescu(pacs.dicom_port, *prior, ae=pacs.aet)
    assert responses(sent) == ["Success"] * len(prior), sent.stdout + sent.stderr

    feed = f"tcp://127.0.0.1:{free_port()}"
    out, log = tmp_path / "out", tmp_path / "node.log"
    args = ["--port", str(node_port), "--ae-title", NODE_AET, "--out", str(out), "--publish", feed]
    args += ["--output", "seg", "--output", "sr", "--complete-on-release", "--series-timeout", "2"]
    args += ["--prior-pacs", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--prior-dicomweb", pacs.dicomweb_url]
    args += ["--prior-any-body-part", "--registration-budget", "120", "--followup-wait", "300"]
    args += ["--forward-dicomweb", pacs.dicomweb_url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scanedge", "dicom-listen", *args], stdout=sink, stderr=sink, env=env
        )
    try:
        wait_until(lambda: proc.poll() is not None or echo(node_port), timeout=120, interval=0.1, what="the node")
        assert proc.poll() is None, log.read_text()[-3000:]
        with Viewer(ViewerConfig(subscribe=feed, port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
            # the PUB drops until the viewer's subscription reaches it: a slice of another patient is sent until
            # the viewer has seen one
            warm_up = _other_patient(current[0], tmp_path / "warm-up.dcm")

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    storescu(node_port, warm_up)
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=120, interval=0.5, what="the viewer's subscription to the node's feed")
            sent = storescu(node_port, *current)
            assert responses(sent) == ["Success"] * len(current), sent.stdout + sent.stderr
            series_uid = _series_uid(current[0])
            page.wait_for_selector(f"#series-list li[data-uid='{series_uid}']", timeout=120_000)
            page.click(f"#series-list li[data-uid='{series_uid}']")
            page.wait_for_function(
                "document.getElementById('change-status').dataset.status === 'compared'", timeout=300_000
            )
            assert (page.text_content("#change-status") or "").startswith("compared with ")
            new = int(page.text_content("#change-legend tr[data-class='new'] td.series") or 0)
            enlarging = int(page.text_content("#change-legend tr[data-class='enlarging'] td.series") or 0)
            assert new >= 1 and enlarging >= 1, (new, enlarging)
            assert errors == []

        study = _study_uid(current[0])
        wait_until(lambda: len(retrieved(pacs, study)) == 3, timeout=600, what="SEG, lesion SEG and SR in Orthanc")
        in_pacs = retrieved(pacs, study)
        assert sorted(ds.Modality for ds in in_pacs.values()) == ["SEG", "SEG", "SR"]
        sr_ds = next(ds for ds in in_pacs.values() if ds.Modality == "SR")
        sr = hd.sr.srread(_saved(sr_ds, tmp_path / "sr.dcm"))
        classes = change_classes(sr)
        assert classes.count("new") >= 1 and classes.count("enlarging") >= 1, classes
        uids = [str(g.tracking_uid) for g in sr.content.get_volumetric_roi_measurement_groups()]
        assert len(uids) == len(set(uids)) and all(u.startswith("2.25.") for u in uids)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"series {_series_uid(current[0])} compared with its prior: compared" in text
    patient = str(pydicom.dcmread(prior[0], stop_before_pixels=True).PatientID)
    assert patient and patient not in text


def _other_patient(path: Path, out: Path) -> Path:
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    ds.PatientID = "WARM-UP-1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out, enforce_file_format=True)
    return out


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _saved(ds: object, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    return path
