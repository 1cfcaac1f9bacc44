"""The DICOM node's follow-up against real peers: a real Orthanc holding the prior (sent to it by C-STORE), the
follow-up series sent to a real dicom-listen by dcmtk's storescu, RESULTs read from the node's PUB feed; an
unreachable PACS; the local prior store.

Every test waits on conditions (the feed's messages, the comparison, the SEG file), never on time.
"""

from __future__ import annotations

import copy
import io
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zmq
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from scanedge.cli import build_parser, main
from scanedge.cli.dicom import followup_config
from scanedge.demo.series import demo_series_dir
from scanedge.dicomnet import DicomListener
from scanedge.dicomnet.followup import FollowupConfig
from scanedge.dicomnet.prior_store import PriorStoreConfig
from scanedge.dicomnet.priors import DicomwebSource, DimseSource, PriorLimits
from scanedge.dicomnet.series import OpenSeries
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.followup import CHANGE_CODES, change_image
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.wire.payloads import arrays_from_frames
from scanedge.runtime.wire.protocol import Result, decode_reply
from tests.dicomnet.conftest import free_port, needs_dcmtk, responses, storescu
from tests.dicomnet.test_listener import live_subscription
from tests.orthanc import Orthanc, orthanc_server
from tests.waiting import wait_until

pytestmark = needs_dcmtk

PATIENT = "FU-PAT-2719"
SEG_PATIENT = "FU-PAT-3301"  # whose prior study also holds a scanedge lesion SEG
CLIENT_AET = "SCANEDGEFU"


def study(date: str, *, count: int = 32, patient: str = PATIENT) -> list[pydicom.Dataset]:
    """The demo series as one study of ``patient`` on ``date`` (new Study, Series and SOP Instance UIDs)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    out: list[pydicom.Dataset] = []
    for path in sorted(demo_series_dir().glob("*.dcm"))[:count]:
        ds = copy.deepcopy(pydicom.dcmread(path))
        ds.PatientID = patient
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = date
        ds.BodyPartExamined = "BRAIN"
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
            setattr(ds, keyword, ds.get(keyword, ""))  # the patient and study modules a SEG copies
        out.append(ds)
    return out


def files(datasets: Sequence[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def recorded(node: DicomListener) -> list[OpenSeries]:
    """Every series the node's follow-up completes, recorded after it set ``series.comparisons`` (a test hook
    around the real method)."""
    followup = node.followup
    assert followup is not None
    done: list[OpenSeries] = []
    real = followup.complete

    def complete(series: OpenSeries) -> None:
        real(series)
        done.append(series)

    followup.complete = complete  # type: ignore[method-assign]
    return done


Received = list[tuple[Result, dict[str, Any]]]


def results(sub: zmq.Socket, count: int, updates: Received | None = None) -> Received:
    """The next ``count`` live RESULTs of the feed; change updates (``update`` true) in between go to ``updates``."""
    out: Received = []
    while len(out) < count:
        assert sub.poll(60_000), f"only {len(out)} RESULTs arrived"
        _, head, *payload = sub.recv_multipart()
        header = decode_reply(head)
        assert isinstance(header, Result)
        got = (header, arrays_from_frames(header.frames, payload))
        if not header.update:
            out.append(got)
        elif updates is not None:
            updates.append(got)
    return out


def change_updates(sub: zmq.Socket, done: Callable[[Received], bool]) -> Received:
    """Change updates (``update`` true) from the feed until ``done`` says enough came; live RESULTs are skipped."""
    out: Received = []
    while not done(out):
        assert sub.poll(120_000), f"only {len(out)} change updates arrived"
        _, head, *payload = sub.recv_multipart()
        header = decode_reply(head)
        assert isinstance(header, Result)
        if header.update:
            out.append((header, arrays_from_frames(header.frames, payload)))
    return out


def lesion_seg(images: Sequence[pydicom.Dataset]) -> tuple[pydicom.Dataset, set[str]]:
    """A scanedge lesion SEG of ``images`` as the contract says (one segment per tracked lesion, each with its
    Tracking UID), from the demo model's masks; and its Tracking UIDs."""
    with Pipeline.open() as pipe:
        masks = np.stack([pipe.run(slices_from_dicom(ds)[0], overlay=False).mask for ds in images])
    spacing = (float(images[0].PixelSpacing[1]), float(images[0].PixelSpacing[0]), float(images[0].SliceThickness))
    tracking, uids = initial_tracking(masks > 0, spacing)
    assert uids, "the demo model finds lesions in the demo series"
    algorithm = hd.AlgorithmIdentificationSequence(
        name="scanedge", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"lesion {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uid,
            tracking_id=f"lesion {n}",
        )
        for n, uid in sorted(uids.items())
    ]
    seg = hd.seg.Segmentation(
        source_images=list(images),
        pixel_array=tracking.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="scanedge",
        manufacturer_model_name="scanedge",
        software_versions="test",
        device_serial_number="0",
        series_description="scanedge lesions ms-lesion-demo",
    )
    return seg, set(uids.values())


@dataclass(frozen=True)
class Pacs:
    orthanc: Orthanc
    seg_uids: set[str]  # the Tracking UIDs of SEG_PATIENT's prior lesion SEG


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A real Orthanc holding PATIENT's 2024 study, and SEG_PATIENT's 2024 study with its lesion SEG, sent to it
    by C-STORE (dcmtk's storescu)."""
    with orthanc_server(CLIENT_AET, 104) as orthanc:
        seg_images = study("20240301", count=12, patient=SEG_PATIENT)
        seg, seg_uids = lesion_seg(seg_images)
        folder = tmp_path_factory.mktemp("prior")
        prior = [*files(study("20240301"), folder), *files(seg_images, folder)]
        sent = subprocess.run(
            [
                "storescu",
                "-aet",
                CLIENT_AET,
                "-aec",
                orthanc.aet,
                "127.0.0.1",
                str(orthanc.dicom_port),
                *map(str, prior),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        buffer = io.BytesIO()
        seg.save_as(buffer)
        orthanc.upload(buffer.getvalue())  # over REST: dcmtk's storescu proposes no SEG storage context
        yield Pacs(orthanc, seg_uids)


def dimse(port: int, aet: str) -> FollowupConfig:
    return FollowupConfig(
        pacs=DimseSource("127.0.0.1", port, aet, calling_aet=CLIENT_AET), limits=PriorLimits(timeout_s=30)
    )


def test_a_follow_up_series_is_compared_live_with_its_prior_from_the_pacs(
    listener: Callable[..., DicomListener], pacs: Pacs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanedge")
    node = listener(
        publish="tcp://127.0.0.1:*", series_timeout_s=120, followup=dimse(pacs.orthanc.dicom_port, pacs.orthanc.aet)
    )
    done = recorded(node)
    current = study("20260105")
    series = str(current[0].SeriesInstanceUID)
    paths = files(current, tmp_path / "current")
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        assert responses(storescu(node.port, *paths[:16])) == ["Success"] * 16
        first = results(sub, 16)
        followup = node.followup
        assert followup is not None
        model = followup.model
        probe = current[5]
        (slice5,) = slices_from_dicom(probe)
        # the prior is fetched by C-GET, segmented by the node's model and registered onto the first 16 slices
        wait_until(
            lambda: followup.answer(series, model, slice5)[1] is not None, timeout=240, what="the live comparison"
        )
        sender = threading.Thread(target=storescu, args=(node.port, *paths[16:], paths[5]))
        sender.start()
        later = results(sub, 17)  # change updates in between are left out
        sender.join()
    finally:
        sub.close()
    for header, _ in first + later:
        assert header.change is not None and header.change.status in ("searching", "registering", "compared")
    resent = [(h, a) for h, a in later if h.instance == str(probe.SOPInstanceUID)]
    assert len(resent) == 1
    header, arrays = resent[0]
    change = header.change
    assert change is not None and change.status == "compared"
    assert change.prior_date == "20240301" and "DIMSE" in change.source and change.counts is not None
    assert "segmented by" in change.source  # no lesion SEG in this prior study
    # the same images: mostly stable (how exactly depends on where the registration's time budget stopped it)
    assert change.counts.stable > change.counts.new
    assert [f.name for f in header.frames] == ["mask", "overlay", "image", "change"]
    plane = arrays["change"]
    assert plane.dtype == np.uint8 and plane.shape == arrays["mask"].shape
    assert set(np.unique(plane)) <= {0, *CHANGE_CODES.values()}
    node.stop()  # completes the open series: compared on the whole series before its SEG is written
    (completed,) = [s for s in done if s.series_uid == series]
    compared = completed.comparisons[model]
    assert compared.comparison.status == "compared" and len(compared.frames) == 32
    assert {sop for sop, _ in compared.frames} == {str(ds.SOPInstanceUID) for ds in current}
    assert any(p.parent.name == "seg" for p in node.written)
    assert PATIENT not in caplog.text


def test_a_series_sent_whole_before_its_comparison_gets_change_updates_once_compared_at_completion(
    listener: Callable[..., DicomListener], pacs: Pacs, tmp_path: Path
) -> None:
    config = replace(dimse(pacs.orthanc.dicom_port, pacs.orthanc.aet), min_slices=0)  # compared at completion only
    node = listener(publish="tcp://127.0.0.1:*", complete_on_release=True, followup=config)
    done = recorded(node)
    current = study("20260105")
    series = str(current[0].SeriesInstanceUID)
    paths = files(current, tmp_path / "current")
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        assert responses(storescu(node.port, *paths)) == ["Success"] * 32
        live = results(sub, 32)
        wait_until(lambda: any(s.series_uid == series for s in done), timeout=300, what="the comparison")
        (completed,) = [s for s in done if s.series_uid == series]
        assert node.followup is not None
        compared = completed.comparisons[node.followup.model]
        assert compared.comparison.status == "compared", compared.comparison.reason
        report = compared.comparison.report
        planes = {sop: change_image(report.tracking[z], report) for z, (sop, _) in enumerate(compared.frames)}
        last = live[-1][0].instance
        expected = {sop for sop, plane in planes.items() if plane.any()} | {last}
        assert len(expected) > 1, "the demo series has lesions"
        updates = change_updates(sub, lambda got: {h.instance for h, _ in got} >= expected)
    finally:
        sub.close()
    for header, arrays in live:  # every slice was published before any comparison
        assert header.change is not None and header.change.status in ("searching", "registering")
        assert "change" not in arrays
    # one update per slice whose change plane is not empty, and the slice published last (the summary) last
    assert sorted(h.instance for h, _ in updates) == sorted(expected) and updates[-1][0].instance == last
    index_of = {h.instance: h.index for h, _ in live}
    for header, arrays in updates:
        assert header.update and header.series == series and header.index == index_of[header.instance]
        assert header.change is not None and header.change.status == "compared"
        assert header.change.prior_date == "20240301" and header.change.counts is not None
        assert [f.name for f in header.frames] == ["change"] and not header.findings
        np.testing.assert_array_equal(arrays["change"], planes[header.instance])


@pytest.mark.parametrize("limit", [64, 2])
def test_a_live_comparison_ending_after_the_last_slice_is_published_as_change_updates(
    listener: Callable[..., DicomListener], pacs: Pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    import scanedge.runtime.core.followup as engine

    gate = threading.Event()
    real = engine.compare_series

    def held(*args: Any, **kwargs: Any) -> Any:  # fault injection: a registration slower than the scanner
        assert gate.wait(300)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "compare_series", held)
    config = replace(
        dimse(pacs.orthanc.dicom_port, pacs.orthanc.aet),
        min_slices=8,
        reregister_every=64,
        updates_per_comparison=limit,
    )
    node = listener(publish="tcp://127.0.0.1:*", series_timeout_s=600, followup=config)
    current = study("20260105")
    series = str(current[0].SeriesInstanceUID)
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        assert responses(storescu(node.port, *files(current, tmp_path / "current"))) == ["Success"] * 32
        live = results(sub, 32)
        gate.set()
        last = live[-1][0].instance
        updates = change_updates(sub, lambda got: any(h.instance == last for h, _ in got))
    finally:
        sub.close()
    for header, _ in live:
        assert header.change is not None and header.change.status in ("searching", "registering")
    followup = node.followup
    assert followup is not None
    # what the comparison says of each slice now is what its update carried; slices with lesions got one
    now = {str(ds.SOPInstanceUID): followup.answer(series, followup.model, slices_from_dicom(ds)[0]) for ds in current}
    order = [h.instance for h, _ in live]  # the order the slices were published in
    changed = [sop for sop in order if (plane := now[sop][1]) is not None and plane.any() and sop != last]
    assert len(changed) > 2, "the demo series has lesions on several slices"
    # the slices whose plane changed, in publication order, at most ``limit`` of them; the last slice last
    assert [h.instance for h, _ in updates] == [*changed[:limit], last]
    for header, arrays in updates:
        change, plane = now[header.instance]
        assert header.update and header.change == change and change is not None and change.status == "compared"
        if plane is None:  # outside the slab compared: the series' summary, no frame
            assert "change" not in arrays
        else:
            np.testing.assert_array_equal(arrays["change"], plane)


@pytest.mark.parametrize("protocol", ["dimse", "dicomweb"])
def test_a_lesion_seg_in_the_prior_study_gives_the_prior_lesions_and_their_tracking_uids(
    listener: Callable[..., DicomListener], pacs: Pacs, tmp_path: Path, protocol: str
) -> None:
    if protocol == "dimse":
        config = replace(dimse(pacs.orthanc.dicom_port, pacs.orthanc.aet), min_slices=0)
    else:
        config = FollowupConfig(dicomweb=DicomwebSource(pacs.orthanc.dicomweb_url), min_slices=0)
    node = listener(complete_on_release=True, followup=config)
    done = recorded(node)
    current = study("20260105", count=12, patient=SEG_PATIENT)
    assert responses(storescu(node.port, *files(current, tmp_path / "current"))) == ["Success"] * 12
    wait_until(lambda: len(done) == 1, timeout=240, what="the series to complete")
    comparison = next(iter(done[0].comparisons.values())).comparison
    assert comparison.status == "compared", comparison.reason
    assert comparison.prior is not None and "lesions from SEG series" in comparison.prior.source
    assert ("DIMSE" if protocol == "dimse" else "DICOMweb") in comparison.prior.source
    assert set(comparison.prior.uids.values()) == pacs.seg_uids
    # the lesions found again keep the Tracking UIDs the prior's SEG gave them, through the PACS
    kept = {lesion.tracking_uid for lesion in comparison.report.lesions if lesion.change == "stable"}
    assert kept and kept <= pacs.seg_uids


def test_an_unreachable_pacs_leaves_the_series_segmented_with_no_prior_and_the_reason(
    listener: Callable[..., DicomListener], tmp_path: Path
) -> None:
    dead = free_port()
    node = listener(publish="tcp://127.0.0.1:*", complete_on_release=True, followup=dimse(dead, "NOBODY"))
    done = recorded(node)
    current = study("20260105", count=6)
    series = str(current[0].SeriesInstanceUID)
    sub = live_subscription(node, tmp_path, series.encode())
    try:
        assert responses(storescu(node.port, *files(current, tmp_path / "current"))) == ["Success"] * 6
        got = results(sub, 6)
    finally:
        sub.close()
    for header, arrays in got:
        assert header.change is not None and header.change.status in ("searching", "no_prior")
        assert "change" not in arrays
    wait_until(lambda: any(s.series_uid == series for s in done), timeout=120, what="the series to complete")
    wait_until(lambda: len(node.written) >= 1, timeout=120, what="the SEG")
    (completed,) = [s for s in done if s.series_uid == series]
    comparison = next(iter(completed.comparisons.values())).comparison
    assert comparison.status == "no_prior"
    assert f"NOBODY@127.0.0.1:{dead}" in comparison.reason and "unreachable or refused" in comparison.reason


def test_the_prior_store_serves_the_next_study_and_holds_no_patient_id(
    listener: Callable[..., DicomListener], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="scanedge")
    root = tmp_path / "priors"
    config = FollowupConfig(store=PriorStoreConfig(root, max_entries=1), min_slices=0)
    node = listener(complete_on_release=True, followup=config)
    done = recorded(node)
    older, newer = study("20240301", count=12), study("20260105", count=12)
    assert responses(storescu(node.port, *files(older, tmp_path / "older"))) == ["Success"] * 12
    wait_until(lambda: len(done) == 1, timeout=120, what="the first series to complete")
    first = next(iter(done[0].comparisons.values())).comparison
    assert first.status == "no_prior" and "prior store: no earlier study" in first.reason
    entries = wait_until(lambda: list(root.glob("*/*.prior.npz")), timeout=30)
    assert len(entries) == 1
    assert responses(storescu(node.port, *files(newer, tmp_path / "newer"))) == ["Success"] * 12
    wait_until(lambda: len(done) == 2, timeout=240, what="the second series to complete")
    second = next(iter(done[1].comparisons.values())).comparison
    assert second.status == "compared", second.reason
    assert second.prior is not None and second.prior.source == "prior store"
    assert second.prior.study_uid == str(older[0].StudyInstanceUID)
    # the tracking UIDs of the first study carry over to the lesions found again
    assert set(second.report.uids.values()) & set(first.report.uids.values())
    # retention (max_entries 1): only the newer study's entry is kept
    wait_until(lambda: list(root.glob("*/*.prior.npz")) != entries, timeout=30, what="the newer entry")
    assert len(list(root.glob("*/*.prior.npz"))) == 1
    for path in root.rglob("*"):
        if path.is_file():
            assert PATIENT.encode() not in path.read_bytes()
            assert path.stat().st_mode & 0o077 == 0
    for folder in [root, *[p for p in root.iterdir() if p.is_dir()]]:
        assert folder.stat().st_mode & 0o777 == 0o700
    assert PATIENT not in caplog.text


def test_dicom_listen_prior_flags_make_the_followup_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "dicom-listen",
            "--prior-pacs",
            "PACS@10.0.0.5:104",
            "--prior-store",
            str(tmp_path / "p"),
            "--prior-description",
            "flair",
            "--followup-min-slices",
            "0",
            "--registration-budget",
            "2",
        ]
    )
    config = followup_config(args)
    assert config is not None and config.pacs == DimseSource("10.0.0.5", 104, "PACS", calling_aet="SCANEDGE")
    assert config.rules.description_regex == "flair" and config.store is not None and config.min_slices == 0
    assert config.registration.time_budget_s == 2
    assert followup_config(parser.parse_args(["dicom-listen"])) is None  # off by default
    assert main(["dicom-listen", "--out", str(tmp_path / "out"), "--prior-pacs", "PACS@nowhere"]) == 2
    err = capsys.readouterr().err
    assert "--prior-pacs takes AE@HOST:PORT" in err and "Traceback" not in err


def test_the_manifest_followup_section_sets_the_rules_and_class_unless_the_node_was_given_its_own(tmp_path):
    from scanedge.demo.assets import demo_manifest
    from scanedge.dicomnet.followup import NodeFollowup, with_manifest_rules
    from scanedge.dicomnet.priors import PriorRules
    from scanedge.manifest import FollowupSpec, Manifest

    lesion = demo_manifest().classes[1].name
    spec = FollowupSpec(prior_description="FLAIR", same_body_part=False, lesion_class=lesion)
    manifest = demo_manifest().replace(followup=spec)
    assert Manifest.from_json(manifest.to_json()).followup == spec  # round trip
    assert "followup" not in demo_manifest().to_dict()  # a manifest without it reads as before
    config = FollowupConfig(store=PriorStoreConfig(root=tmp_path / "store"))
    node = NodeFollowup(config, {manifest.name: manifest}, {})
    try:
        assert node.config.rules == PriorRules(same_body_part=False, description_regex="FLAIR")
        assert node.config.lesion_class == lesion and node.labels == (1,)
        assert "FLAIR" in node.config.describe()
    finally:
        node.close()
    given = replace(config, rules=PriorRules(description_regex="T2"))
    assert with_manifest_rules(given, manifest).rules == given.rules  # the node's flags win


@pytest.mark.parametrize(
    "section, message",
    [
        ({"prior_description": "(unclosed"}, "regular expression"),
        ({"same_body_part": "yes"}, "true or false"),
        ({"lesion_class": "background"}, "not a foreground class"),
        ({"lesion_class": "nope"}, "not a foreground class"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_followup_section_is_refused_with_its_field(section, message):
    from scanedge.demo.assets import demo_manifest
    from scanedge.errors import ManifestInvalidError
    from scanedge.manifest import Manifest

    data = {**demo_manifest().to_dict(), "followup": section}
    with pytest.raises(ManifestInvalidError, match=message):
        Manifest.from_dict(data)
