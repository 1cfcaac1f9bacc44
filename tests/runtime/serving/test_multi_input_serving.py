"""A FLAIR + T1 model behind the real runtime: two series interleaved over real ZeroMQ sockets become one result
per FLAIR slice; a partner that never comes is MISSING_INPUT, and the runtime goes on serving."""

from __future__ import annotations

import random
from concurrent.futures import Future

import numpy as np
import pytest

from scanedge.errors import ExpiredError, MissingInputError, ProtocolError
from scanedge.imaging.dicom import encode_dicom
from scanedge.imaging.slices import Slice, SliceAcquisition, SliceGeometry, SliceIdentity
from scanedge.manifest import embed_manifest
from scanedge.runtime.console.client import Client, RemoteResult
from scanedge.runtime.core.pairing import resample_onto
from scanedge.runtime.core.pipeline import Pipeline, default_model_path
from scanedge.runtime.wire.protocol import decode_reply
from tests.conftest import conv_model, simple_manifest
from tests.runtime.conftest import running_server, subscriber
from tests.runtime.core.test_multi_input import WEIGHTS, two_role_inputs

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STUDY, FRAME = "1.2.826.0.1.3680043.2.1125.7", "1.2.826.0.1.3680043.2.1125.8"
FLAIR, T1 = "1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"
SLICES = 8


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("multi") / "flair_t1.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs(pairing={"wait_s": 1.0})), path)
    return path


def study(*, frame: str = FRAME, t1_grid: str = "coarse") -> tuple[list[Slice], list[Slice]]:
    """FLAIR 96x96 at 1 mm and T1 (48x48 at 2 mm with an offset, or the FLAIR grid), positions 4 mm apart."""
    rng = np.random.default_rng(11)
    flair, t1 = [], []
    for k in range(SLICES):
        z = 4.0 * k
        flair.append(_slice(rng.normal(300, 80, (96, 96)).astype(np.int16), z, FLAIR, k + 1, (1.0, 1.0), (0, 0), FRAME))
        if t1_grid == "coarse":
            px, spacing, origin = rng.integers(0, 1000, (48, 48)).astype(np.int16), (2.0, 2.0), (-3.0, 2.0)
        else:
            px, spacing, origin = rng.integers(0, 1000, (96, 96)).astype(np.int16), (1.0, 1.0), (0, 0)
        t1.append(_slice(px, z + 0.3, T1, k + 1, spacing, origin, frame))
    return flair, t1


def _slice(px, z, series, number, spacing, origin, frame, description=""):
    return Slice.from_array(
        px,
        geometry=SliceGeometry(pixel_spacing=spacing, image_position=(*origin, z), image_orientation=AXIAL),
        identity=SliceIdentity(
            series_uid=series,
            sop_instance_uid=f"{series}.{number}",
            instance_number=number,
            modality="MR",
            study_uid=STUDY,
            frame_of_reference_uid=frame,
        ),
        acquisition=SliceAcquisition(
            series_description=description or ("AX FLAIR" if series == FLAIR else "T1 SE"),
            scanning_sequence=("SE", "IR") if series == FLAIR else ("SE",),
        ),
    )


def expected(model_path, flair: Slice, t1: Slice) -> np.ndarray:
    """The mask the in-process pipeline gives for the pair, with T1 resampled onto the FLAIR grid."""
    with Pipeline.open(model_path) as pipe:
        return pipe.run_inputs({"flair": flair, "t1": resample_onto(t1, flair)}, overlay=False).mask


def test_two_series_interleaved_and_shuffled_give_one_result_per_flair_slice(model_path):
    flair, t1 = study()
    sends = [("flair", s) for s in flair] + [("t1", s) for s in t1]
    random.Random(4).shuffle(sends)
    with running_server([model_path], workers=1) as srv, Client(srv.endpoint) as client:
        futures: list[tuple[str, Slice, Future[RemoteResult]]] = [
            (role, s, client.submit(s, role=role, outputs=("mask",), timeout=60)) for role, s in sends
        ]
        replies = [(role, s, f.result(60)) for role, s, f in futures]
    for role, s, r in replies:
        inputs = r.header.inputs
        assert inputs is not None and inputs.role == role
        if role == "t1":  # held for pairing: no findings, no frames
            assert inputs.held and r.mask is None and r.findings == () and r.series == T1
            continue
        k = flair.index(s)
        (partner,) = inputs.partners
        assert (partner.role, partner.series, partner.instance) == ("t1", T1, t1[k].identity.sop_instance_uid)
        assert partner.position_mm == pytest.approx(4.0 * k + 0.3)
        assert r.series == FLAIR and r.mask is not None and r.mask.shape == (96, 96)
        np.testing.assert_array_equal(r.mask, expected(model_path, s, t1[k]))
    assert sum(1 for role, _, _ in replies if role == "flair") == SLICES


def test_a_missing_partner_is_missing_input_and_the_runtime_serves_on(model_path):
    flair, t1 = study(t1_grid="same")
    with running_server([model_path], workers=1) as srv, Client(srv.endpoint) as client:
        client.segment(t1[0], role="t1", outputs=("mask",))
        with pytest.raises(MissingInputError) as caught:
            client.segment(flair[3], role="flair", outputs=("mask",), timeout=30)  # no T1 at 12 mm
        text = str(caught.value)
        assert caught.value.code == "MISSING_INPUT" and "'t1'" in text and T1 in text and "12.00 mm" in text
        paired = client.segment(flair[0], role="flair", outputs=("mask",))  # the runtime still pairs and serves
        np.testing.assert_array_equal(paired.mask, expected(model_path, flair[0], t1[0]))


def test_a_partner_in_another_frame_of_reference_is_refused(model_path):
    flair, t1 = study(frame="1.2.3.4.5.6")
    with running_server([model_path], workers=1) as srv, Client(srv.endpoint) as client:
        client.segment(t1[2], role="t1", outputs=("mask",))
        with pytest.raises(MissingInputError, match="another frame of reference"):
            client.segment(flair[2], role="flair", outputs=("mask",), timeout=30)


def test_dicom_slices_say_their_role_by_their_sequence_attributes(model_path):
    flair, t1 = study()
    with running_server([model_path], workers=2) as srv, Client(srv.endpoint) as client:
        first = client.submit(encode_dicom(flair[5]), outputs=("mask",), timeout=60)  # parked until its T1 comes
        held = client.segment(encode_dicom(t1[5]), outputs=("mask",))
        result = first.result(60)
    assert held.header.inputs is not None and held.header.inputs.held and held.header.inputs.role == "t1"
    assert result.header.inputs is not None and result.header.inputs.partners[0].series == T1
    np.testing.assert_array_equal(result.mask, expected(model_path, flair[5], t1[5]))


# --- replay of a two-series study -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patient_model(tmp_path_factory: pytest.TempPathFactory):
    """The same model with a patient wait (replay's two connections race on a loaded machine)."""
    path = tmp_path_factory.mktemp("multi-replay") / "flair_t1.onnx"
    embed_manifest(conv_model(2, WEIGHTS), simple_manifest(inputs=two_role_inputs(pairing={"wait_s": 30.0})), path)
    return path


def write_study(folder, flair, t1, *, together: bool):
    """The two series as DICOM files: in one folder, or one folder per series."""
    dirs = [folder, folder] if together else [folder / "flair", folder / "t1"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for d, series in zip(dirs, (flair, t1)):
        for s in series:
            (d / f"{s.identity.sop_instance_uid}.dcm").write_bytes(encode_dicom(s))
    return dirs


@pytest.mark.parametrize("together", [False, True])
def test_replay_plays_a_two_series_study_interleaved(patient_model, tmp_path, together):
    from scanedge.cli import main as scanedge_main

    flair, t1 = study()
    dirs = write_study(tmp_path / "study", flair, t1, together=together)
    report = tmp_path / "report.json"
    with running_server([patient_model], workers=1) as srv:
        # two folders: roles named in order; one folder: the runtime recognises them from the DICOM files
        how = ["--roles", "flair,t1"] if not together else ["--dicom"]
        paths = [str(d) for d in dict.fromkeys(dirs)]
        args = ["replay", *paths, "--endpoint", srv.endpoint, "--rate", "40", "--quiet", "--json", str(report), *how]
        assert scanedge_main(args) == 0
    import json

    series = {s["series_uid"]: s for s in json.loads(report.read_text())["series"]}
    assert set(series) == {FLAIR, T1}
    for s in series.values():
        assert s["sent"] == SLICES and s["ok"] == SLICES and s["failed"] == 0 and s["superseded"] == 0
    assert series[FLAIR]["series_load"]["slices"] == SLICES  # one result per FLAIR slice


def test_a_reference_slice_waiting_past_its_deadline_is_expired_and_pong_lists_the_roles(patient_model):
    flair, _ = study()
    with running_server([patient_model], workers=1) as srv, Client(srv.endpoint) as client:
        assert client.ping().models[0].roles == ("flair", "t1")
        with pytest.raises(ExpiredError):  # the model would wait 30 s for the T1; the slice is useless after 0.2 s
            client.segment(flair[0], role="flair", outputs=("mask",), deadline_ms=200, timeout=20)


def test_results_are_published_for_the_reference_series_only_and_roles_are_checked(model_path):
    flair, t1 = study(t1_grid="same")
    with (
        running_server([default_model_path(), model_path], workers=1, publish="tcp://127.0.0.1:*") as srv,
        subscriber(srv, b"") as sub,
        Client(srv.endpoint) as client,
    ):
        with pytest.raises(ProtocolError, match="no input role 't2'"):
            client.segment(t1[1], role="t2", model="test-model", outputs=("mask",))
        held = client.segment(t1[1], role="t1", model="test-model", outputs=("mask",))
        result = client.segment(flair[1], role="flair", model="test-model", outputs=("mask",))
        assert held.header.inputs is not None and held.header.inputs.held
        topics = []
        while True:  # the PUB keeps order: everything published before the FLAIR result arrives first
            assert sub.poll(20_000), "the FLAIR result was never published"
            frames = sub.recv_multipart()
            topics.append(decode_reply(frames[1]).series)
            if topics[-1] == FLAIR:
                break
    assert topics == [FLAIR] and result.mask is not None  # the held T1 slice had nothing to show


def test_a_one_input_model_ignores_role_study_and_frame_of_reference(demo_model_slice):
    with running_server() as srv, Client(srv.endpoint) as client:
        r = client.segment(demo_model_slice, role="t1", outputs=("mask",))
    assert r.header.inputs is None and r.mask is not None


@pytest.fixture
def demo_model_slice() -> Slice:
    flair, _ = study()
    return flair[0]
