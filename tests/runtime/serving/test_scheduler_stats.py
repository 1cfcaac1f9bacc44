import threading
import time

import numpy as np
import pytest

from scanedge.runtime.serving.scheduler import Job, LatestSliceScheduler
from scanedge.runtime.serving.stats import LatencyHistogram
from scanedge.runtime.wire.protocol import Segment


def job(series: str, n: int, deadline: float | None = None, model: str = "m") -> Job:
    return Job(Segment(version=1, id=n, series=series), b"id", b"", model, 10, deadline_mono=deadline, seq=n)


def test_latest_slice_replaces_the_waiting_one_and_keeps_its_place():
    s = LatestSliceScheduler()
    assert s.submit(job("a", 1)) is None
    assert s.submit(job("b", 2)) is None
    assert s.submit(job("a", 3)).seq == 1  # superseded, handed back
    assert s.submit(job("", 4)) is None and s.submit(job("", 5)) is None  # no series: never superseded
    assert [s.take(0).seq for _ in range(4)] == [3, 2, 4, 5]
    assert s.take(0) is None


def test_a_slice_for_another_model_of_the_series_supersedes_nothing():
    s = LatestSliceScheduler()
    assert s.submit(job("a", 1, model="seg")) is None
    assert s.submit(job("a", 2, model="cls")) is None  # a classifier beside the segmentation: both run
    assert s.submit(job("a", 3, model="cls")).seq == 2  # its own newer slice does replace it
    assert [s.take(0).seq for _ in range(2)] == [1, 3]


def test_expired_jobs_are_swept():
    s = LatestSliceScheduler()
    now = time.monotonic()
    s.submit(job("a", 1, deadline=now - 1))
    s.submit(job("b", 2, deadline=now + 60))
    assert [j.seq for j in s.expire()] == [1]
    assert s.depth() == 1


def test_remove_and_drain_hand_back_the_jobs_they_take():
    s = LatestSliceScheduler()
    for n, series in enumerate(("a", "b", "", ""), start=1):
        s.submit(job(series, n))
    assert [j.seq for j in s.remove(lambda j: j.seq % 2 == 0)] == [2, 4]
    assert [j.seq for j in s.drain()] == [1, 3]
    assert s.depth() == 0 and s.take(0) is None


def test_close_wakes_waiting_workers():
    s = LatestSliceScheduler()
    got = []
    t = threading.Thread(target=lambda: got.append(s.take()))
    t.start()  # whether take() is already waiting or not, close() must end it with None
    s.close()
    t.join(2)
    assert got == [None]
    with pytest.raises(RuntimeError):
        s.submit(job("a", 1))


def test_histogram_percentiles_are_within_a_bucket_of_the_truth():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(1.5, 0.5, 10_000)
    h = LatencyHistogram()
    for v in samples:
        h.record(float(v))
    for q in (50, 90, 99):
        true = np.percentile(samples, q)
        assert true <= h.percentile(q) <= true * 1.25
    d = h.to_dict()
    assert d["count"] == 10_000 and sum(d["counts"]) == 10_000 and d["max"] == pytest.approx(samples.max())
    assert LatencyHistogram().percentile(50) is None
