"""The issue's "done when" over two studies: the lesion SEG and SR a node STOWs into Orthanc are the next prior.

Needs the node's follow-up (:mod:`scanedge.dicomnet.followup`, merged from the live follow-up work); until it
is there this module is skipped. Real peers throughout: dcmtk's storescu sends both studies, Orthanc (with its
DICOMweb plugin) holds the prior study's images, and receives each node's SEG, lesion SEG and SR by STOW-RS;
the follow-up node finds the prior over DICOMweb, takes its lesions and Tracking UIDs from the lesion SEG,
and its SR, read back from Orthanc, gives every lesion found again the prior's Tracking UID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from dicomweb_client.api import DICOMwebClient

import scanedge.dicomnet.followup as followup
import tests.dicomnet.test_followup as live
from scanedge.dicomnet.forward import DicomwebTarget
from scanedge.dicomnet.priors import DicomwebSource
from tests.dicomnet.conftest import needs_dcmtk, responses, storescu
from tests.orthanc import orthanc_server
from tests.waiting import wait_until

pytestmark = needs_dcmtk
SLICES = 16


def outputs_in(url: str, study_uid: str) -> list[pydicom.Dataset]:
    """The study's SEG and SR instances in Orthanc: found by QIDO-RS, retrieved by WADO-RS."""
    client = DICOMwebClient(url=url, timeout=30)
    out = []
    for found in client.search_for_instances(study_instance_uid=study_uid):
        meta = pydicom.Dataset.from_json(found)
        if meta.Modality in ("SEG", "SR"):
            out.append(client.retrieve_instance(study_uid, meta.SeriesInstanceUID, meta.SOPInstanceUID))
    return out


def lesion_changes(url: str, study_uid: str) -> tuple[dict[str, str], list[str]]:
    """Tracking UID -> change class of every lesion group of the study's SR in Orthanc, and its series texts."""
    (sr,) = [ds for ds in outputs_in(url, study_uid) if ds.Modality == "SR"]
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    changes = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        (evaluation,) = [e for e in group.get_qualitative_evaluations() if e.name.value == "change"]
        changes[str(group.tracking_uid)] = str(evaluation.value.value)
    (load,) = report.content.get_image_measurement_groups()
    return changes, [str(item.TextValue) for item in load[0].ContentSequence if item.ValueType == "TEXT"]


def test_the_follow_up_sr_in_orthanc_keeps_the_tracking_uids_of_the_prior_sr(listener: Any, tmp_path: Path) -> None:
    with orthanc_server(live.CLIENT_AET, 104) as orthanc:
        prior = live.study("20240301", count=SLICES, patient="SRFU-PAT-1")
        paths = live.files(prior, tmp_path / "prior")
        sent = storescu(orthanc.dicom_port, *paths, ae=orthanc.aet, args=("-aet", live.CLIENT_AET))
        assert responses(sent) == ["Success"] * SLICES
        target = DicomwebTarget(orthanc.dicomweb_url)
        first = listener(complete_on_release=True, outputs=("seg", "sr"), forward=target, out=tmp_path / "first")
        assert responses(storescu(first.port, *paths)) == ["Success"] * SLICES
        prior_study = str(prior[0].StudyInstanceUID)
        wait_until(lambda: len(outputs_in(orthanc.dicomweb_url, prior_study)) == 3, timeout=240, what="prior outputs")
        first.stop()
        prior_changes, prior_texts = lesion_changes(orthanc.dicomweb_url, prior_study)
        assert prior_changes and set(prior_changes.values()) == {"not-assessed"}
        assert "no prior: follow-up not configured" in prior_texts

        config = followup.FollowupConfig(dicomweb=DicomwebSource(orthanc.dicomweb_url), min_slices=0)
        second = listener(
            complete_on_release=True, outputs=("seg", "sr"), forward=target, out=tmp_path / "second", followup=config
        )
        current = live.study("20260105", count=SLICES, patient="SRFU-PAT-1")
        assert responses(storescu(second.port, *live.files(current, tmp_path / "current"))) == ["Success"] * SLICES
        study_uid = str(current[0].StudyInstanceUID)
        wait_until(lambda: len(outputs_in(orthanc.dicomweb_url, study_uid)) == 3, timeout=300, what="follow-up outputs")
        second.stop()
        changes, texts = lesion_changes(orthanc.dicomweb_url, study_uid)
        # the same images again: every lesion found again is stable and keeps the prior's Tracking UID
        stable = {uid for uid, change in changes.items() if change == "stable"}
        assert stable and stable <= set(prior_changes)
        assert any(t.startswith(f"prior study of 20240301, study {prior_study}") for t in texts)
        assert any("lesions from SEG series" in t for t in texts) and any(t.startswith("good:") for t in texts)
