"""Finding and fetching the prior study from a live Orthanc, over DIMSE and over DICOMweb."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydicom.uid import MRImageStorage
from pynetdicom import AE, evt

from scanedge.dicomnet.priors import (
    CurrentStudy,
    DicomwebSource,
    DimseSource,
    PriorLimits,
    PriorResult,
    PriorRules,
    find_prior_dicomweb,
    find_prior_dimse,
)
from scanedge.errors import ConfigError
from tests.orthanc import free_port
from tests.priors.conftest import CLIENT_AET, OTHER, PATIENT, PacsContent

Finder = Callable[[CurrentStudy, PacsContent, PriorRules, PriorLimits], PriorResult]


def _dimse(current: CurrentStudy, pacs: PacsContent, rules: PriorRules, limits: PriorLimits) -> PriorResult:
    src = DimseSource("127.0.0.1", pacs.orthanc.dicom_port, pacs.orthanc.aet, calling_aet=CLIENT_AET)
    return find_prior_dimse(current, src, rules, limits)


def _move(current: CurrentStudy, pacs: PacsContent, rules: PriorRules, limits: PriorLimits) -> PriorResult:
    return find_prior_dimse(current, _move_source(pacs), rules, limits)


def _move_source(pacs: PacsContent, move_aet: str = "") -> DimseSource:
    return DimseSource(
        "127.0.0.1",
        pacs.orthanc.dicom_port,
        pacs.orthanc.aet,
        calling_aet=CLIENT_AET,
        retrieve="move",
        move_port=pacs.move_port,
        move_bind="127.0.0.1",
        move_aet=move_aet,
    )


def _web(current: CurrentStudy, pacs: PacsContent, rules: PriorRules, limits: PriorLimits) -> PriorResult:
    return find_prior_dicomweb(current, DicomwebSource(pacs.orthanc.dicomweb_url), rules, limits)


both = pytest.mark.parametrize("find", [_dimse, _move, _web], ids=["dimse", "dimse-move", "dicomweb"])


def _current(pacs: PacsContent, patient: str = PATIENT, body_part: str = "BRAIN") -> CurrentStudy:
    return CurrentStudy(patient, pacs.new_study, "20260105", "MR", body_part, "AX FLAIR")


@both
def test_finds_latest_earlier_matching_series(
    find: Finder, pacs: PacsContent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="scanedge")
    # the 2025 study is later but holds only a spine series: body part equal skips it; the regex picks FLAIR over T1
    rules = PriorRules(description_regex="flair")
    res = find(_current(pacs), pacs, rules, PriorLimits())
    assert res.found, res.reason
    assert (res.study_uid, res.series_uid, res.study_date) == (pacs.old_study, pacs.old_flair, "20240301")
    assert len(res.instances) == 3
    assert {str(ds.SeriesInstanceUID) for ds in res.instances} == {pacs.old_flair}
    assert all(str(ds.PatientID) == PATIENT for ds in res.instances)
    assert res.rules == "modality equal, body part equal, series description matches /flair/i"
    assert str(pacs.orthanc.dicom_port) in res.source or pacs.orthanc.dicomweb_url in res.source
    assert pacs.old_flair in caplog.text and PATIENT not in caplog.text


@both
def test_rules_decide_which_series(find: Finder, pacs: PacsContent) -> None:
    res = find(_current(pacs), pacs, PriorRules(description_regex="T1"), PriorLimits())
    assert res.found and res.series_uid == pacs.old_t1
    spine = find(_current(pacs, body_part="SPINE"), pacs, PriorRules(), PriorLimits())
    assert spine.found and spine.study_uid == pacs.mid_study and spine.study_date == "20250601"
    none = find(_current(pacs), pacs, PriorRules(description_regex="DWI"), PriorLimits())
    assert not none.found and "no series matching" in none.reason


@both
def test_other_patient_and_first_study_have_no_prior(find: Finder, pacs: PacsContent) -> None:
    other = find(CurrentStudy(OTHER, pacs.other_study, "20251201", "MR", "BRAIN"), pacs, PriorRules(), PriorLimits())
    assert not other.found and other.reason == "no earlier study of this patient"
    first = find(CurrentStudy(PATIENT, pacs.old_study, "20240301", "MR", "BRAIN"), pacs, PriorRules(), PriorLimits())
    assert not first.found and first.reason == "no earlier study of this patient"


@both
def test_wildcard_patient_id_is_refused(find: Finder, pacs: PacsContent) -> None:
    res = find(CurrentStudy("*", pacs.new_study, "20260105", "MR", "BRAIN"), pacs, PriorRules(), PriorLimits())
    assert not res.found and "wildcard" in res.reason


@both
def test_instance_count_bound(find: Finder, pacs: PacsContent) -> None:
    res = find(_current(pacs), pacs, PriorRules(description_regex="flair"), PriorLimits(max_instances=2))
    assert not res.found and "more than 2 instances" in res.reason


@both
def test_instance_size_bound(find: Finder, pacs: PacsContent) -> None:
    res = find(_current(pacs), pacs, PriorRules(description_regex="flair"), PriorLimits(max_instance_bytes=100))
    assert not res.found and "larger than 100 bytes" in res.reason


def test_unreachable_pacs_is_no_prior(pacs: PacsContent) -> None:
    port = free_port()
    cur = _current(pacs)
    res = find_prior_dimse(cur, DimseSource("127.0.0.1", port, "NOBODY"), PriorRules(), PriorLimits(timeout_s=2))
    assert not res.found and "no association" in res.reason
    web = find_prior_dicomweb(
        cur, DicomwebSource(f"http://127.0.0.1:{port}/dicom-web"), limits=PriorLimits(timeout_s=2)
    )
    assert not web.found and web.reason == "PACS not reachable"


def test_silent_pacs_times_out_into_no_prior(pacs: PacsContent) -> None:
    """A peer that accepts TCP and never answers: both protocols give up after the timeout with a reason."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(srv.accept()[0])
                except OSError:
                    continue

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        try:
            cur = _current(pacs)
            lim = PriorLimits(timeout_s=1.0)
            res = find_prior_dimse(cur, DimseSource("127.0.0.1", port, "SILENT"), PriorRules(), lim)
            assert not res.found and "no association" in res.reason
            web = find_prior_dicomweb(cur, DicomwebSource(f"http://127.0.0.1:{port}/dicom-web"), limits=lim)
            assert not web.found and web.reason == "no answer within 1.0 s"
        finally:
            stop.set()
            t.join()
            for c in held:
                c.close()


def test_wrong_called_aet_is_no_prior(pacs: PacsContent) -> None:
    src = DimseSource("127.0.0.1", pacs.orthanc.dicom_port, "WRONGAET", calling_aet=CLIENT_AET)
    res = find_prior_dimse(_current(pacs), src, limits=PriorLimits(timeout_s=5))
    assert not res.found and "no association" in res.reason


def test_bad_rules_and_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        PriorRules(description_regex="(")
    with pytest.raises(ConfigError):
        PriorLimits(max_instances=0)
    with pytest.raises(ConfigError):
        PriorLimits(timeout_s=0)


def test_erroring_dicomweb_is_no_prior(pacs: PacsContent) -> None:
    """A DICOMweb root that does not exist on the server (Orthanc answers 404): no prior, the status as reason."""
    res = find_prior_dicomweb(_current(pacs), DicomwebSource(f"{pacs.orthanc.url}/no-such-root"))
    assert not res.found and res.reason == "PACS answered HTTP 404"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of past retrievals allowed, a listener not
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_move_stops_its_storage_scp(pacs: PacsContent) -> None:
    """The C-MOVE destination listens only while the retrieval runs: the port is free before and after."""
    assert _port_free(pacs.move_port)
    res = _move(_current(pacs), pacs, PriorRules(description_regex="flair"), PriorLimits())
    assert res.found, res.reason
    assert "C-MOVE to SCANEDGETEST" in res.source
    assert _port_free(pacs.move_port)


def test_move_to_unknown_destination_is_no_prior(pacs: PacsContent) -> None:
    """Orthanc knows no modality STRANGER: it refuses the move (1.10 answers 0xC000, not the standard's 0xA801,
    and sends nothing), and the reason says what to register."""
    src = _move_source(pacs, move_aet="STRANGER")
    res = find_prior_dimse(_current(pacs), src, PriorRules(description_regex="flair"), PriorLimits(timeout_s=5))
    assert not res.found
    assert "to STRANGER refused with status 0xC000 before any image was sent" in res.reason
    assert f"is STRANGER registered in the PACS with this host and port {pacs.move_port}?" in res.reason


def test_move_port_busy_is_no_prior(pacs: PacsContent) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        src = DimseSource(
            "127.0.0.1",
            pacs.orthanc.dicom_port,
            pacs.orthanc.aet,
            calling_aet=CLIENT_AET,
            retrieve="move",
            move_port=port,
            move_bind="127.0.0.1",
        )
        res = find_prior_dimse(_current(pacs), src, PriorRules(description_regex="flair"), PriorLimits(timeout_s=5))
    assert not res.found
    assert f"cannot listen for the C-MOVE on 127.0.0.1:{port}" in res.reason and "in use" in res.reason


def _elsewhere(pacs: PacsContent) -> DimseSource:
    """CLIENT_AET listening on a port Orthanc does not send to."""
    return DimseSource(
        "127.0.0.1",
        pacs.orthanc.dicom_port,
        pacs.orthanc.aet,
        calling_aet=CLIENT_AET,
        retrieve="move",
        move_port=free_port(),
        move_bind="127.0.0.1",
    )


def test_move_destination_unreachable_for_the_pacs_is_no_prior(pacs: PacsContent) -> None:
    """Orthanc sends CLIENT_AET's images to move_port, where nothing listens: it cannot connect and fails."""
    res = find_prior_dimse(_current(pacs), _elsewhere(pacs), PriorRules(description_regex="flair"), PriorLimits())
    assert not res.found and "before any image was sent" in res.reason


def test_move_sent_to_another_listener_is_no_prior(pacs: PacsContent) -> None:
    """Another Storage SCP answers as CLIENT_AET at the registered port and takes the images: Orthanc reports
    success, nothing reached this retrieval, and it says so instead of comparing against an empty prior."""
    decoy = AE(ae_title=CLIENT_AET)
    decoy.add_supported_context(MRImageStorage)
    taken: list[str] = []

    def keep(event: Any) -> int:
        taken.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    decoy.start_server(("127.0.0.1", pacs.move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)])
    try:
        res = find_prior_dimse(_current(pacs), _elsewhere(pacs), PriorRules(description_regex="flair"), PriorLimits())
    finally:
        decoy.shutdown()
    assert len(taken) == 3
    assert not res.found
    assert "reported 3 instances sent, 0 arrived at SCANEDGETEST" in res.reason


def test_move_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        DimseSource("pacs", 104, "PACS", retrieve="move")  # no port for our Storage SCP
    with pytest.raises(ConfigError):
        DimseSource("pacs", 104, "PACS", retrieve="post")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DimseSource("pacs", 104, "PACS", retrieve="move", move_port=11112, move_aet="A" * 17)
    assert DimseSource("pacs", 104, "PACS", calling_aet="ME", retrieve="move", move_port=11112).destination == "ME"
