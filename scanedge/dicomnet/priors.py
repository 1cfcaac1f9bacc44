"""Find and fetch the patient's prior study from a PACS, over DIMSE or DICOMweb.

A prior is the latest study of the same patient dated strictly before the current study, holding a series that
matches :class:`PriorRules`. Every way of asking (C-FIND + C-GET or C-FIND + C-MOVE with pynetdicom, or
QIDO-RS + WADO-RS with dicomweb-client) answers a :class:`PriorResult`: the prior, or "no prior" with the
reason. A missing, slow, unreachable or erroring PACS never raises into the caller, and everything that comes
back is bounded (:class:`PriorLimits`). Reasons and log lines carry UIDs and AE titles, never patient identifiers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import UID

from scanedge.errors import ConfigError

__all__ = [
    "GET_STORAGE_CLASSES",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_GET",
    "STUDY_ROOT_MOVE",
    "CurrentStudy",
    "DicomwebSource",
    "DimseSource",
    "PriorLimits",
    "PriorResult",
    "PriorRules",
    "find_prior_dicomweb",
    "find_prior_dimse",
]

log = logging.getLogger(__name__)

_DATE = re.compile(r"^\d{8}$")
_MAX_REGEX = 256


@dataclass(frozen=True)
class PriorRules:
    """Which earlier series counts as a prior of the current one; :meth:`describe` is quoted in every result."""

    same_modality: bool = True  # the prior series has the current Modality
    # the prior series has the current Body Part Examined (case-insensitive; none given = no match)
    same_body_part: bool = True
    description_regex: str | None = None  # Series Description must contain a match (re.search, case-insensitive)

    def __post_init__(self) -> None:
        if self.description_regex is not None:
            if len(self.description_regex) > _MAX_REGEX:
                raise ConfigError(f"prior description_regex longer than {_MAX_REGEX} characters")
            try:
                re.compile(self.description_regex)
            except re.error as exc:
                raise ConfigError(f"prior description_regex does not compile: {exc}") from exc

    def describe(self) -> str:
        """The rules in words, as every result quotes them."""
        parts = []
        if self.same_modality:
            parts.append("modality equal")
        if self.same_body_part:
            parts.append("body part equal")
        if self.description_regex is not None:
            parts.append(f"series description matches /{self.description_regex}/i")
        return ", ".join(parts) or "any series"

    def matches(self, current: CurrentStudy, series: Dataset) -> bool:
        """Whether one series (a C-FIND or QIDO answer) of an earlier study passes these rules."""
        if self.same_modality and _text(series, "Modality").upper() != current.modality.strip().upper():
            return False
        if self.same_body_part:
            want = current.body_part.strip().upper()
            if not want or _text(series, "BodyPartExamined").upper() != want:
                return False
        if self.description_regex is not None:
            if re.search(self.description_regex, _text(series, "SeriesDescription"), re.IGNORECASE) is None:
                return False
        return True


@dataclass(frozen=True)
class PriorLimits:
    """Bounds on what a query may bring back and on how long each network step may wait."""

    timeout_s: float = 10.0  # per network step: connect, association, each DIMSE message, each HTTP request
    max_studies: int = 50  # studies read from one study-level query
    max_series_per_study: int = 100  # series read per study
    max_instances: int = 1000  # instances of the prior series; more makes it 'no prior'
    # largest instance accepted (DIMSE: the encoded data set; DICOMweb: its pixel data)
    max_instance_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError("prior timeout_s must be > 0")
        for name in ("max_studies", "max_series_per_study", "max_instances", "max_instance_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prior {name} must be >= 1")


@dataclass(frozen=True)
class CurrentStudy:
    """The attributes of the series being segmented that the prior search needs."""

    patient_id: str  # Patient ID (0010,0020); wildcards refused, never logged
    study_uid: str  # Study Instance UID of the current study (never its own prior)
    study_date: str  # Study Date, YYYYMMDD; priors are dated strictly before it
    modality: str  # Modality of the current series
    body_part: str = ""  # Body Part Examined of the current series
    series_description: str = ""  # Series Description of the current series (for the caller's rules; not matched)


@dataclass(frozen=True)
class DimseSource:
    """A PACS spoken to with DIMSE (Study Root C-FIND, then C-GET or C-MOVE of the chosen series).

    ``retrieve="move"`` is for a PACS without C-GET: the PACS sends the series to our own AE title
    (``move_aet``, default ``calling_aet``) on ``move_port``, where a Storage SCP listens only while the
    retrieval runs. The PACS must know that AE title with this host's address and ``move_port``.
    """

    host: str  # PACS address
    port: int  # PACS DICOM port
    called_aet: str  # the PACS's AE title
    calling_aet: str = "SCANEDGE"  # our AE title, as the PACS knows it
    retrieve: Literal["get", "move"] = "get"  # how the chosen series is fetched
    move_port: int = 0  # move: the port our temporary Storage SCP listens on (required for "move")
    move_aet: str = ""  # move: the Move Destination AE title; empty = calling_aet
    move_bind: str = "0.0.0.0"  # move: the address the temporary Storage SCP binds

    def __post_init__(self) -> None:
        if self.retrieve not in ("get", "move"):
            raise ConfigError("prior retrieve must be 'get' or 'move'")
        if self.retrieve == "move" and not 1 <= self.move_port <= 65535:
            raise ConfigError("prior retrieve 'move' needs move_port in 1..65535 (our Storage SCP's port)")
        aet = self.move_aet
        if aet and (len(aet) > 16 or not aet.strip() or not aet.isprintable() or "\\" in aet):
            raise ConfigError("prior move_aet must be 1..16 printable characters")

    @property
    def destination(self) -> str:
        """The AE title a C-MOVE names as its destination (ours)."""
        return self.move_aet or self.calling_aet

    def describe(self) -> str:
        """Protocol and address, as results and log lines name the source."""
        how = f", C-MOVE to {self.destination}:{self.move_port}" if self.retrieve == "move" else ""
        return f"DIMSE {self.called_aet}@{self.host}:{self.port}{how}"


@dataclass(frozen=True)
class DicomwebSource:
    """A PACS spoken to with DICOMweb (QIDO-RS, then WADO-RS); ``url`` is the service root."""

    url: str  # DICOMweb service root, e.g. http://pacs:8042/dicom-web

    def describe(self) -> str:
        """Protocol and address, as results and log lines name the source."""
        return f"DICOMweb {self.url}"


@dataclass(frozen=True)
class PriorResult:
    """A prior (``found``) or why there is none; ``source`` and ``rules`` always say where and how it was looked for."""

    found: bool  # whether a prior was found and fetched
    source: str  # where it was looked for (protocol, AE/host or URL)
    rules: str  # the rules applied, in words
    reason: str = ""  # why there is no prior (empty when found)
    study_uid: str = ""  # the prior's Study Instance UID
    series_uid: str = ""  # the matching series' Series Instance UID
    study_date: str = ""  # the prior's Study Date (YYYYMMDD)
    series_description: str = ""  # the matching series' description
    # the series' instances as received (bounded by PriorLimits)
    instances: tuple[Dataset, ...] = field(default=(), repr=False)


class _NoPrior(Exception):
    """Internal: stop the search with a reason (safe to show: no patient identifiers)."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()


def _check_current(current: CurrentStudy) -> None:
    pid = current.patient_id
    if not pid.strip() or len(pid) > 64 or any(c in pid for c in "*?\\") or not pid.isprintable():
        raise _NoPrior("the current study's Patient ID is empty, too long or holds wildcard/control characters")
    if not _DATE.match(current.study_date):
        raise _NoPrior("the current study has no Study Date (YYYYMMDD) to compare against")


def _earlier_studies(current: CurrentStudy, studies: Iterable[Dataset], limits: PriorLimits) -> list[Dataset]:
    """Studies of the patient dated strictly before the current one, newest first."""
    found = []
    for i, st in enumerate(studies):
        if i >= limits.max_studies:
            break
        date = _text(st, "StudyDate")
        if _text(st, "PatientID") not in ("", current.patient_id):
            continue  # a PACS that ignored the Patient ID key: never take another patient's study
        if _DATE.match(date) and date < current.study_date and _text(st, "StudyInstanceUID") != current.study_uid:
            found.append(st)
    found.sort(key=lambda st: _text(st, "StudyDate"), reverse=True)
    return found


def _search(
    source: str,
    rules: PriorRules,
    current: CurrentStudy,
    limits: PriorLimits,
    list_studies: Callable[[], list[Dataset]],
    list_series: Callable[[str], list[Dataset]],
    fetch: Callable[[str, str], list[Dataset]],
) -> PriorResult:
    """The search both protocols share; any failure becomes "no prior" with its reason."""
    import requests  # dicomweb-client's HTTP library; its errors are told apart for DICOMweb sources

    described = rules.describe()
    try:
        _check_current(current)
        studies = _earlier_studies(current, list_studies(), limits)
        if not studies:
            raise _NoPrior("no earlier study of this patient")
        for st in studies:
            study_uid = _text(st, "StudyInstanceUID")
            for se in list_series(study_uid)[: limits.max_series_per_study]:
                if rules.matches(current, se):
                    series_uid = _text(se, "SeriesInstanceUID")
                    instances = fetch(study_uid, series_uid)
                    if not instances:
                        raise _NoPrior(f"series {series_uid} of the prior study returned no instances")
                    log.info(
                        "prior for study %s: series %s of study %s (%s)",
                        current.study_uid,
                        series_uid,
                        study_uid,
                        source,
                    )
                    return PriorResult(
                        found=True,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        study_date=_text(st, "StudyDate"),
                        series_description=_text(se, "SeriesDescription"),
                        instances=tuple(instances),
                        source=source,
                        rules=described,
                    )
        raise _NoPrior(
            f"{len(studies)} earlier stud{'y' if len(studies) == 1 else 'ies'}, no series matching the rules"
        )
    except _NoPrior as exc:
        reason = str(exc)
    except requests.Timeout:
        reason = f"no answer within {limits.timeout_s} s"
    except requests.ConnectionError:
        reason = "PACS not reachable"
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = f"PACS answered HTTP {status}"
    except Exception as exc:
        reason = f"query failed ({type(exc).__name__})"
    log.info("no prior for study %s from %s: %s", current.study_uid, source, reason)
    return PriorResult(found=False, source=source, rules=described, reason=reason)


# --- DIMSE ---


#: Study Root Query/Retrieve Information Model - FIND, - MOVE and - GET (PS3.4 C.6.2)
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
#: the image storage classes a C-GET or the C-MOVE destination accepts (one presentation context each)
GET_STORAGE_CLASSES = (
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.PositronEmissionTomographyImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)


#: C-MOVE statuses that name the cause (PS3.4 C.4.2.1.5); any other failure is quoted by its code
_MOVE_REFUSALS = {
    0xA701: "the PACS is out of resources (cannot count the matches)",
    0xA702: "the PACS is out of resources (cannot perform the sub-operations)",
    0xA900: "the PACS says the identifier does not match the SOP class",
    0xFE00: "the PACS cancelled the C-MOVE",
}


class _Receiver:
    """The C-STORE handler of a retrieval: keeps the instances of one series, refuses past the bounds."""

    def __init__(self, series_uid: str, limits: PriorLimits) -> None:
        self.series_uid = series_uid
        self.limits = limits
        self.received: list[Dataset] = []
        self.refused: set[str] = set()

    def __call__(self, event: Any) -> int:
        size = len(event.request.DataSet.getvalue())
        if len(self.received) >= self.limits.max_instances:
            self.refused.add("count")
            return 0xA700
        if size > self.limits.max_instance_bytes:
            self.refused.add("size")
            return 0xA700
        ds = event.dataset
        if _text(ds, "SeriesInstanceUID") != self.series_uid:
            self.refused.add("foreign")  # never mix another series' instance into the prior
            return 0xC000
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def check(self) -> None:
        """Raise the reason if anything was refused (an incomplete prior is never compared against)."""
        if "size" in self.refused:
            raise _NoPrior(
                f"an instance of series {self.series_uid} is larger than {self.limits.max_instance_bytes} bytes"
            )
        if "count" in self.refused:
            raise _NoPrior(f"series {self.series_uid} has more than {self.limits.max_instances} instances")
        if "foreign" in self.refused:
            raise _NoPrior(f"the retrieval of series {self.series_uid} delivered instances of another series")


def find_prior_dimse(
    current: CurrentStudy, pacs: DimseSource, rules: PriorRules | None = None, limits: PriorLimits | None = None
) -> PriorResult:
    """Study Root C-FIND (study, then series level) and C-GET or C-MOVE (``pacs.retrieve``) of the matching
    series; never raises."""
    from pynetdicom import AE, build_role, evt

    rules = rules or PriorRules()
    limits = limits or PriorLimits()

    def new_ae(title: str) -> Any:
        ae = AE(ae_title=title)
        for t in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, t, limits.timeout_s)
        return ae

    def associate(model: UID, handlers: list[Any] | None = None) -> Any:
        ae = new_ae(pacs.calling_aet)
        ae.add_requested_context(model)
        roles: list[Any] = []
        if handlers is not None:  # C-GET: the instances come back on this association, we are their SCP
            for sop in GET_STORAGE_CLASSES:
                ae.add_requested_context(sop)
                roles.append(build_role(sop, scp_role=True))
        assoc = ae.associate(
            pacs.host, pacs.port, ae_title=pacs.called_aet, ext_neg=roles or None, evt_handlers=handlers or []
        )
        if not assoc.is_established:
            raise _NoPrior(f"no association with {pacs.called_aet}@{pacs.host}:{pacs.port} (unreachable or refused)")
        return assoc

    def find(query: Dataset, cap: int) -> list[Dataset]:
        assoc = associate(STUDY_ROOT_FIND)
        out: list[Dataset] = []
        try:
            for status, ident in assoc.send_c_find(query, STUDY_ROOT_FIND):
                if status is None or "Status" not in status:
                    raise _NoPrior("C-FIND got no answer in time (association aborted)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and ident is not None:
                    out.append(ident)
                    if len(out) > cap:
                        assoc.send_c_cancel(status.get("MessageIDBeingRespondedTo", 1))
                        break
                elif code != 0x0000:
                    raise _NoPrior(f"C-FIND failed with status 0x{code:04X}")
        finally:
            assoc.release()
        return out

    def list_studies() -> list[Dataset]:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = current.patient_id
        q.StudyDate = f"-{current.study_date}"
        q.StudyInstanceUID = ""
        return find(q, limits.max_studies)

    def list_series(study_uid: str) -> list[Dataset]:
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.Modality = ""
        q.BodyPartExamined = ""
        q.SeriesDescription = ""
        return find(q, limits.max_series_per_study)

    def series_query(study_uid: str, series_uid: str) -> Dataset:
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        return q

    def fetch_get(study_uid: str, series_uid: str) -> list[Dataset]:
        receiver = _Receiver(series_uid, limits)
        assoc = associate(STUDY_ROOT_GET, [(evt.EVT_C_STORE, receiver)])
        final = 0x0000
        try:
            for status, _ in assoc.send_c_get(series_query(study_uid, series_uid), STUDY_ROOT_GET):
                if status is None or "Status" not in status:
                    raise _NoPrior("C-GET got no answer in time (association aborted)")
                final = int(status.Status)
        finally:
            assoc.release()
        receiver.check()
        if final != 0x0000:  # a part of the series missing: never compare against an incomplete prior
            raise _NoPrior(f"C-GET of series {series_uid} ended with status 0x{final:04X}")
        return receiver.received

    def fetch_move(study_uid: str, series_uid: str) -> list[Dataset]:
        dest = pacs.destination
        receiver = _Receiver(series_uid, limits)
        scp = new_ae(dest)
        scp.require_called_aet = True  # only associations addressed to our destination AE title
        scp.maximum_associations = 2
        for sop in GET_STORAGE_CLASSES:
            scp.add_supported_context(sop)
        try:
            scp.start_server((pacs.move_bind, pacs.move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver)])
        except OSError as exc:
            raise _NoPrior(
                f"cannot listen for the C-MOVE on {pacs.move_bind}:{pacs.move_port} "
                f"({exc.strerror or type(exc).__name__}; is the port in use?)"
            ) from None
        final, completed = 0x0000, -1  # the PACS's Error Comment is not quoted: free text, it might name the patient
        try:
            assoc = associate(STUDY_ROOT_MOVE)
            try:
                for status, _ in assoc.send_c_move(series_query(study_uid, series_uid), dest, STUDY_ROOT_MOVE):
                    if status is None or "Status" not in status:
                        raise _NoPrior("C-MOVE got no answer in time (association aborted)")
                    final = int(status.Status)
                    completed = int(status.get("NumberOfCompletedSuboperations", completed) or 0)
            finally:
                assoc.release()
        finally:
            scp.shutdown()  # the listener closed and any association the PACS still holds aborted
        receiver.check()
        register_hint = f"is {dest} registered in the PACS with this host and port {pacs.move_port}?"
        if final == 0xA801:
            raise _NoPrior(
                f"C-MOVE of series {series_uid} refused: the PACS does not know the move destination {dest} "
                f"({register_hint})"
            )
        if final in _MOVE_REFUSALS:
            raise _NoPrior(f"C-MOVE of series {series_uid} refused: {_MOVE_REFUSALS[final]}")
        if final != 0x0000:
            if completed <= 0 and not receiver.received:  # e.g. Orthanc answers 0xC000 for an unknown AE title
                raise _NoPrior(
                    f"C-MOVE of series {series_uid} to {dest} refused with status 0x{final:04X} "
                    f"before any image was sent ({register_hint})"
                )
            raise _NoPrior(f"C-MOVE of series {series_uid} ended with status 0x{final:04X}")
        if not receiver.received or len(receiver.received) < completed:
            raise _NoPrior(
                f"C-MOVE of series {series_uid} reported {max(completed, 0)} instances sent, "
                f"{len(receiver.received)} arrived at {dest} on port {pacs.move_port} "
                "(does the PACS send that AE title to this host and port?)"
            )
        return receiver.received

    fetch = fetch_move if pacs.retrieve == "move" else fetch_get
    return _search(pacs.describe(), rules, current, limits, list_studies, list_series, fetch)


# --- DICOMweb ---


def find_prior_dicomweb(
    current: CurrentStudy, pacs: DicomwebSource, rules: PriorRules | None = None, limits: PriorLimits | None = None
) -> PriorResult:
    """QIDO-RS (studies, then series, then instances) and WADO-RS of the matching series; never raises."""
    from dicomweb_client.api import DICOMwebClient

    rules = rules or PriorRules()
    limits = limits or PriorLimits()
    # each request bounded by the timeout, and tried once: dicomweb-client would otherwise retry every failure
    # (a timeout included) up to five times with exponential back-off, two minutes for a silent PACS
    client = DICOMwebClient(url=pacs.url, timeout=limits.timeout_s)
    client.set_http_retry_params(retry=False)

    def list_studies() -> list[Dataset]:
        found = client.search_for_studies(
            search_filters={"PatientID": current.patient_id, "StudyDate": f"-{current.study_date}"},
            fields=["StudyDate", "PatientID"],
            limit=limits.max_studies,
        )
        return [Dataset.from_json(d) for d in found[: limits.max_studies]]

    def list_series(study_uid: str) -> list[Dataset]:
        found = client.search_for_series(
            study_instance_uid=study_uid,
            fields=["Modality", "BodyPartExamined", "SeriesDescription"],
            limit=limits.max_series_per_study,
        )
        return [Dataset.from_json(d) for d in found[: limits.max_series_per_study]]

    def fetch(study_uid: str, series_uid: str) -> list[Dataset]:
        listed = client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid, limit=limits.max_instances + 1
        )
        if len(listed) > limits.max_instances:
            raise _NoPrior(f"series {series_uid} has more than {limits.max_instances} instances")
        out = []
        for item in listed:
            sop_uid = str(Dataset.from_json(item).SOPInstanceUID)
            ds = client.retrieve_instance(study_uid, series_uid, sop_uid)
            out.append(ds)
        for ds in out:
            if "PixelData" in ds and len(ds.PixelData) > limits.max_instance_bytes:
                raise _NoPrior(f"an instance of series {series_uid} is larger than {limits.max_instance_bytes} bytes")
        return out

    return _search(pacs.describe(), rules, current, limits, list_studies, list_series, fetch)
