"""Replay: series read in acquisition order whatever the files are called, streamed at a pace, summarised."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from scanedge.cli import main as scanedge_main
from scanedge.errors import ConfigError
from scanedge.imaging.lesion_load import SeriesLesionLoad
from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series
from tests.runtime.conftest import running_server


@pytest.fixture(scope="module")
def shuffled_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo series under random file names, so neither names nor directory order say anything."""
    from scanedge.demo.series import demo_series_dir

    out = tmp_path_factory.mktemp("shuffled")
    files = sorted(demo_series_dir().glob("*.dcm"))
    names = [f"{random.Random(11).getrandbits(40):x}-{k}" for k in range(len(files))]
    random.Random(3).shuffle(names)
    for f, name in zip(files, names):
        shutil.copy(f, out / f"{name}.dcm")
    return out


def test_series_come_out_in_acquisition_order_whatever_the_file_names(shuffled_series):
    (series,) = read_series([shuffled_series])
    positions = [item.slice.geometry.position_along_normal for item in series.slices]
    numbers = [item.slice.identity.instance_number for item in series.slices]
    assert positions == sorted(positions) and len(set(positions)) == 32
    assert numbers == list(range(1, 33))  # the demo's instance numbers follow its positions
    assert sorted(p.name for p in shuffled_series.iterdir()) != [i.path.name for i in series.slices]


def test_a_folder_given_twice_plays_two_scanners(shuffled_series):
    a, b = read_series([shuffled_series, shuffled_series])
    assert b.uid == a.uid + ".2" and len(b.slices) == len(a.slices)


def test_replay_streams_at_the_rate_interleaved_and_reports_the_load(shuffled_series):
    series = read_series([shuffled_series, shuffled_series])
    events = []
    with running_server() as srv:
        settings = ReplayConfig(endpoint=srv.endpoint, rate=50.0, outputs=("mask",))
        start = time.perf_counter()
        reports = Replay(series, settings).run(events.append)
        wall = time.perf_counter() - start
    assert wall >= 31 / 50.0  # 32 slices per scanner at 50/s cannot finish sooner
    for k, report in enumerate(reports):
        mine = [e for e in events if e.series == k]
        # a slice still waiting when the next arrives is superseded (a loaded machine may be that slow)
        assert report.sent == 32 and report.ok + report.superseded == 32 and report.failed == 0
        assert sorted(e.position for e in mine) == list(range(32))
        served = [e for e in mine if e.result is not None]
        local = SeriesLesionLoad(("background", "lesion"))
        for e in served:
            local.add(e.result.mask, e.slice.geometry, e.slice.identity.instance_number)
        assert report.load == local.load() and report.load.slices == len(served)  # the runtime's load
        assert report.latency().count == len(served)
    assert {e.uid for e in events} == {series[0].uid, series[1].uid}
    # interleaved: neither scanner waits for the other to finish
    first_b = min(i for i, e in enumerate(events) if e.series == 1)
    assert first_b < 5


def test_loop_replays_again_and_resent_slices_replace(shuffled_series):
    series = read_series([shuffled_series])
    with running_server() as srv:
        settings = ReplayConfig(endpoint=srv.endpoint, rate=50.0, loop=True, max_loops=2, jitter_ms=2.0)
        events = []
        (report,) = Replay(series, settings).run(events.append)
    assert report.sent == 64 and report.ok + report.superseded == 64
    assert [e.loop for e in events].count(1) == 32
    served = {e.position for e in events if e.result is not None}
    assert report.load.slices == len(served)  # the second pass replaced the first, slice by slice


def test_stop_ends_a_looping_replay_with_everything_sent_answered(shuffled_series):
    series = read_series([shuffled_series])
    stop = threading.Event()
    seen = []

    def on_slice(event) -> None:
        seen.append(event)
        if len(seen) == 5:
            stop.set()

    with running_server() as srv:
        (report,) = Replay(series, ReplayConfig(endpoint=srv.endpoint, rate=50.0, loop=True)).run(on_slice, stop)
    assert report.sent == report.ok + report.superseded == len(seen) >= 5


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        ReplayConfig(endpoint="tcp://127.0.0.1:1", rate=0)
    with pytest.raises(ConfigError):
        Replay([], ReplayConfig(endpoint="tcp://127.0.0.1:1"))


def test_the_command_prints_a_line_per_slice_and_the_summary(shuffled_series, capsys):
    with running_server() as srv:
        code = scanedge_main(["replay", str(shuffled_series), "--endpoint", srv.endpoint, "--rate", "50", "--dicom"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("S1 ") and "/32" in line]
    assert len(lines) == 32 and all(" ms" in line for line in lines)
    served = [line for line in lines if "load:" in line]
    assert all("superseded" in line for line in lines if line not in served)
    assert f"sent 32, ok {len(served)}, superseded {32 - len(served)}, failed 0" in out
    assert "end-to-end latency: p50" in out and f"lesion load over {len(served)} slices" in out


def test_a_further_model_is_asked_for_its_saliency_map_to_the_last_slice(shuffled_series):
    """Each slice also goes to the classifier (``also_models``) with its ``saliency`` output, and the run ends
    with those answers in: the last slice's classifier RESULT, with its map, is on the feed when it returns."""
    import zmq

    from scanedge.manifest import load_manifest
    from scanedge.models import DEMO_CLASSIFIER_PATH, DEMO_MODEL_PATH
    from scanedge.runtime.console.client import Client
    from scanedge.runtime.wire.protocol import Result, decode_reply
    from tests.waiting import wait_until

    name = load_manifest(DEMO_CLASSIFIER_PATH)[0].name
    (series,) = read_series([shuffled_series])
    with running_server([DEMO_MODEL_PATH, DEMO_CLASSIFIER_PATH], publish="tcp://127.0.0.1:*") as srv:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(srv.publish_endpoint or "")
        try:
            with Client(srv.endpoint) as probe:  # the PUB drops until the subscription reaches it

                def subscribed() -> bool:
                    probe.segment(series.slices[0].slice, series="probe", outputs=(), model=name)
                    return bool(sub.poll(200))

                wait_until(subscribed, timeout=30, what="the subscription")
            Replay([series], ReplayConfig(endpoint=srv.endpoint, rate=200, also_models=(name,))).run()
            published: dict[str, Result] = {}
            while sub.poll(2000):  # what the run published, to the last message
                header = decode_reply(sub.recv_multipart()[1])
                if isinstance(header, Result) and header.series == series.uid and header.model.startswith(name):
                    published[header.instance] = header
        finally:
            sub.close()
    last = series.slices[-1].slice.identity.sop_instance_uid
    assert last in published  # the last slice's classifier RESULT, sent just before the run ended
    assert [f.name for f in published[last].frames] == ["saliency"]
    assert published[last].frames[0].of == "lesion_present"
