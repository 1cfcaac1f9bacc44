"""Keep-warm passes: planned from the pace of the slices, ahead of the next one, and none when idle."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scanedge.errors import ConfigError
from scanedge.runtime.console.client import Client
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.serving.keep_warm import ArrivalPacer, KeepWarmConfig
from tests.runtime.conftest import running_server
from tests.waiting import wait_until


def paced(arrivals) -> ArrivalPacer:
    pacer = ArrivalPacer(KeepWarmConfig(margin_ms=3.0))
    for t in arrivals:
        pacer.arrived(t)
    return pacer


def test_a_run_is_planned_to_end_just_before_the_next_slice():
    pacer = paced([0.0, 0.1, 0.2, 0.3])
    start, expected = pacer.plan(0.31)
    assert expected == pytest.approx(0.4)
    assert start == pytest.approx(0.4 - 0.006 - 0.003)  # the learned run length (first guess 6 ms) + margin
    pacer.ran(expected, start, start + 0.004)
    assert pacer.plan(0.395) is None or pacer.plan(0.395)[1] > 0.4  # never twice for the same slice
    start, expected = pacer.plan(0.41)  # the slice at 0.4 did not come: prepare for 0.5
    assert expected == pytest.approx(0.5) and start < 0.5


def test_nothing_is_planned_without_a_scanners_pace():
    assert paced([0.0, 0.1]).plan(0.15) is None  # two arrivals: no pace yet
    assert paced([0.0, 0.005, 0.010, 0.015]).plan(0.016) is None  # flat out: the path stays hot anyway
    assert paced([0.0, 5.0, 10.0, 15.0]).plan(15.5) is None  # not a scan
    assert paced([0.0, 0.1, 0.2, 0.3]).plan(0.51) is None  # two expected slices missed: the scan ended
    off = ArrivalPacer(KeepWarmConfig(enabled=False))
    for t in (0.0, 0.1, 0.2):
        off.arrived(t)
    assert off.plan(0.21) is None
    with pytest.raises(ConfigError):
        KeepWarmConfig(min_interval_ms=10, max_interval_ms=5)


def test_keep_warm_reruns_the_last_slice_and_changes_nothing(demo_series):
    data = sorted(demo_series.glob("*.dcm"))[14].read_bytes()
    with Pipeline.open() as pipe:
        assert pipe.keep_warm() is False  # nothing to rerun yet
        first = pipe.run(data)
        assert pipe.keep_warm() is True
        again = pipe.run(data)
    np.testing.assert_array_equal(first.mask, again.mask)
    np.testing.assert_array_equal(first.overlay, again.overlay)


def test_the_runtime_keeps_warm_at_a_scanners_pace_and_stops_when_the_scan_does(demo_series):
    files = sorted(demo_series.glob("*.dcm"))[10:18]
    with running_server(keep_warm=KeepWarmConfig()) as srv, Client(srv.endpoint) as client:
        due = time.monotonic()
        for path in files:  # a scanner at about 20 slices/s: the input of this test, not a wait
            wait_until(lambda due=due: time.monotonic() >= due, what="the next slice's time")
            due = time.monotonic() + 0.05
            client.segment(path.read_bytes(), series="paced", outputs=("mask",))
        (worker,) = srv._pool.workers
        wait_until(lambda: srv._pool.keep_warm_runs() >= 2, what="keep-warm passes between the slices")
        wait_until(lambda: worker.pacer.plan(time.monotonic()) is None, what="the pacer to see the scan end")
        runs = srv._pool.keep_warm_runs()
        assert runs <= len(files) + 1  # at most one per slice expected
        reply = client.segment(files[0].read_bytes(), series="paced", outputs=("mask",))
    assert reply.mask is not None
