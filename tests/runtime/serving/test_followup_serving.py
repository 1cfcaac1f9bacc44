"""Follow-up in the ZeroMQ runtime: a real server with an injected prior provider (``scanedge serve --prior``)
compares each series live; RESULTs carry ``change`` and, when asked for, the ``change`` frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanedge.cli import main
from scanedge.demo.series import demo_series_dir
from scanedge.imaging.files import load_slices
from scanedge.imaging.followup import CHANGE_CODES, PriorVolume
from scanedge.imaging.slices import Slice
from scanedge.runtime.console.client import Client, RemoteResult
from scanedge.runtime.core.followup import LiveConfig, PriorProvider, folder_prior
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.serving.server import Server
from scanedge.runtime.wire.payloads import arrays_from_frames
from scanedge.runtime.wire.protocol import Result, decode_reply
from tests.runtime.conftest import local_config, subscriber
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def demo_slices() -> list[Slice]:
    return [loaded.slice for loaded in load_slices([demo_series_dir()])]


@pytest.fixture(scope="module")
def prior() -> PriorVolume:
    """The demo series itself as the prior, its lesions segmented by the demo model."""
    with Pipeline.open() as pipe:
        return folder_prior(demo_series_dir(), pipe)


def serving(provider: PriorProvider) -> Iterator[Server]:
    srv = Server(
        (), config=local_config(publish="tcp://127.0.0.1:*"), prior_provider=provider, followup=LiveConfig()
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(prior: PriorVolume) -> Iterator[Server]:
    yield from serving(lambda series, first: prior)


def compared(client: Client, slice_: Slice, series: str) -> RemoteResult | None:
    reply = client.segment(slice_, series=series, outputs=("mask", "change"))
    return reply if reply.header.change is not None and reply.header.change.status == "compared" else None


def test_a_series_is_compared_live_with_the_provided_prior(
    server: Server, demo_slices: list[Slice], prior: PriorVolume
) -> None:
    with Client(server.endpoint) as client:
        first = [client.segment(s, series="fu-1", outputs=("mask", "change")) for s in demo_slices]
        statuses = [r.header.change.status for r in first if r.header.change is not None]
        assert len(statuses) == len(demo_slices)
        assert set(statuses) <= {"searching", "registering", "compared"}
        reply = wait_until(lambda: compared(client, demo_slices[14], "fu-1"), timeout=240, what="the comparison")
        assert reply is not None
        plain = client.segment(demo_slices[14], series="fu-1", outputs=("mask",))
        none = client.segment(demo_slices[14].pixels, outputs=("mask",))  # raw pixels, no series: not compared
    change = reply.header.change
    assert change is not None and change.prior_study == prior.study_uid and "folder" in change.source
    # the same images: mostly stable (how exactly depends on where the registration's time budget stopped it)
    assert change.counts is not None and change.counts.stable > change.counts.new
    (info,) = [f for f in reply.header.frames if f.name == "change"]
    assert info.dtype == "uint8" and info.shape == list(demo_slices[14].shape)
    assert [f.name for f in plain.header.frames] == ["mask"] and plain.header.change is not None
    assert none.header.change is None


def test_the_published_result_carries_the_change_frame(server: Server, demo_slices: list[Slice]) -> None:
    with Client(server.endpoint) as client:
        for s in demo_slices:
            client.segment(s, series="fu-pub", outputs=("mask",))
        wait_until(lambda: compared(client, demo_slices[16], "fu-pub"), timeout=240, what="the comparison")
        with subscriber(server, b"fu-pub") as sub:
            client.segment(demo_slices[16], series="fu-pub", outputs=("mask", "change"))
            assert sub.poll(10_000)
            _, head, *frames = sub.recv_multipart()
    header = decode_reply(head)
    assert isinstance(header, Result)
    arrays = arrays_from_frames(header.frames, frames)
    plane = arrays["change"]
    assert plane.dtype == np.uint8 and set(np.unique(plane)) <= {0, *CHANGE_CODES.values()}
    assert header.change is not None and header.change.status == "compared"


@pytest.mark.parametrize(
    "provider, reason",
    [
        (lambda series, first: "no prior study for this console", "no prior study for this console"),
        (lambda series, first: 1 / 0, "the prior provider failed (ZeroDivisionError)"),
    ],
    ids=["no-prior", "provider-raises"],
)
def test_no_prior_and_a_failing_provider_are_answers(
    provider: PriorProvider, reason: str, demo_slices: list[Slice]
) -> None:
    for srv in serving(provider):
        with Client(srv.endpoint) as client:

            def answered() -> RemoteResult | None:
                reply = client.segment(demo_slices[3], series="fu-none", outputs=("mask", "change"))
                change = reply.header.change
                return reply if change is not None and change.status == "no_prior" else None

            reply = wait_until(answered, timeout=60, what="no_prior")
            assert reply is not None and reply.header.change is not None
            assert reply.header.change.reason == reason
            assert reply.mask is not None  # the slice is segmented as usual


def test_serve_prior_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--bind", "tcp://127.0.0.1:*", "--prior", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--prior" in err and "Traceback" not in err
