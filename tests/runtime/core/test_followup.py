"""The live follow-up engine on synthetic pairs with ground truth: slices in shuffled order, statuses as the
prior lookup and registration progress, the final comparison equal to compare_series on the whole volume."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scanedge.demo.followup import FollowupPair, make_pair
from scanedge.imaging.followup import CHANGE_CODES, PriorVolume, compare_series, volume_from_slices
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity
from scanedge.runtime.core import followup as live
from scanedge.runtime.core.followup import LiveAnswer, LiveComparison, LiveConfig
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def pair() -> FollowupPair:
    return make_pair(3)


def slices_of(volume: np.ndarray, pair: FollowupPair, series: str = "1.2.3") -> list[Slice]:
    g = pair.geometry
    return [
        Slice.from_array(
            np.ascontiguousarray(volume[z]),
            geometry=SliceGeometry(
                pixel_spacing=(g.spacing[1], g.spacing[0]),
                slice_thickness=g.spacing[2],
                image_position=(g.origin[0], g.origin[1], g.origin[2] + z * g.spacing[2]),
                image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            ),
            identity=SliceIdentity(series_uid=series, sop_instance_uid=f"{series}.{z + 1}", instance_number=z + 1),
        )
        for z in range(volume.shape[0])
    ]


def prior_of(pair: FollowupPair, volume: np.ndarray | None = None) -> PriorVolume:
    tracking, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    data = pair.prior if volume is None else volume
    return PriorVolume("1.9.1", "1.9.2", "20240301", data, pair.geometry, tracking, uids, source="test")


def with_plane(engine: LiveComparison, slice_: Slice) -> LiveAnswer | None:
    """The slice's answer once it carries a change plane and counts, else None."""
    answer = engine.answer(slice_)
    return answer if answer.plane is not None and answer.change.counts is not None else None


def shuffled(n: int, seed: int = 7) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def test_statuses_progress_and_final_equals_whole_volume(pair: FollowupPair) -> None:
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.3", LiveConfig(min_slices=8, reregister_every=8))
    order = shuffled(len(slices))
    first = order[:10]
    for z in first:
        engine.add(slices[z], pair.current_mask[z])
        assert engine.answer(slices[z]).change.status == "searching"
    engine.set_prior(prior_of(pair))
    assert engine.answer(slices[first[0]]).change.status in ("registering", "compared")
    for z in order[10:]:
        engine.add(slices[z], pair.current_mask[z])
    # every slice is held: the last comparison started covers the whole contiguous series
    middle = slices[16]
    answer = wait_until(lambda: with_plane(engine, middle), timeout=120)
    assert answer is not None and answer.plane is not None
    assert answer.change.status == "compared" and answer.change.prior_study == "1.9.1"
    assert answer.plane.dtype == np.uint8 and answer.plane.shape == middle.shape
    assert set(np.unique(answer.plane)) <= {0, *CHANGE_CODES.values()}
    outcome = engine.complete(timeout_s=120)
    assert outcome.comparison is not None and outcome.change.status == "compared"
    volume, geometry, z_order = volume_from_slices(slices)
    expected = compare_series(volume, geometry, pair.current_mask[z_order], prior_of(pair))
    got = outcome.comparison
    assert got.status == expected.status == "compared"
    assert [(x.change, x.label) for x in got.report.lesions] == [(x.change, x.label) for x in expected.report.lesions]
    assert np.array_equal(got.report.tracking, expected.report.tracking)
    assert outcome.slices == tuple((slices[z].identity.sop_instance_uid, 0) for z in z_order)
    counts = outcome.change.counts
    assert counts is not None and counts.new >= 1 and counts.disappeared >= 1  # the pair plants both
    # the plane a slice was answered with is that slice's plane of the comparison
    z = outcome.slices.index((middle.identity.sop_instance_uid, 0))
    assert np.array_equal(answer.plane > 0, got.report.tracking[z] > 0)


def test_partial_slab_is_compared_before_the_series_is_complete(pair: FollowupPair) -> None:
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.4", LiveConfig(min_slices=8, reregister_every=100))
    engine.set_prior(prior_of(pair))
    for z in range(8, 20):  # a contiguous slab of 12 of the 32 slices
        engine.add(slices[z], pair.current_mask[z])
    answer = wait_until(lambda: with_plane(engine, slices[12]), timeout=120)
    assert answer is not None
    assert answer.change.status == "compared"
    assert engine.answer(slices[0]).plane is None  # not received yet: the series summary, no plane


def test_noise_prior_is_withheld(pair: FollowupPair) -> None:
    noise = np.random.default_rng(1).normal(300, 100, pair.prior.shape).astype(np.float32)
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.5", LiveConfig(min_slices=0))
    engine.set_prior(prior_of(pair, noise))
    for z in shuffled(len(slices)):
        engine.add(slices[z], pair.current_mask[z])
    assert engine.answer(slices[0]).change.status == "registering"  # min_slices 0: only at completion
    outcome = engine.complete(timeout_s=120)
    assert outcome.change.status == "withheld" and outcome.change.reason.startswith("registration ")
    assert outcome.comparison is not None and outcome.comparison.report.lesions == ()
    assert engine.answer(slices[0]).change.status == "withheld"


def test_no_prior_and_lookup_that_never_ends(pair: FollowupPair) -> None:
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.6")
    for z in range(len(slices)):
        engine.add(slices[z], pair.current_mask[z])
    engine.no_prior("PACS not reachable")
    change = engine.answer(slices[3]).change
    assert (change.status, change.reason) == ("no_prior", "PACS not reachable")
    outcome = engine.complete()
    assert outcome.change.status == "no_prior" and outcome.change.current_load_mm3
    assert outcome.comparison is not None and outcome.comparison.report.uids

    waiting = LiveComparison("1.2.7")
    for z in range(4):
        waiting.add(slices[z], pair.current_mask[z])
    outcome = waiting.complete(timeout_s=0.05)
    assert outcome.change.status == "no_prior" and "did not finish within" in outcome.change.reason
    waiting.set_prior(prior_of(pair))  # too late: ignored, never raises
    assert waiting.answer(slices[0]).change.status == "no_prior"


def test_resend_replaces_and_odd_slices_are_skipped(pair: FollowupPair) -> None:
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.8")
    for z in range(5):
        engine.add(slices[z], pair.current_mask[z])
    engine.add(slices[2], pair.current_mask[2])
    rgb = Slice.from_array(np.zeros((8, 8, 3), np.uint8), geometry=slices[9].geometry)
    engine.add(rgb, np.zeros((8, 8), np.uint8))
    engine.add(slices[9], np.zeros((3, 3), np.uint8))  # mask of another size
    assert engine.slices == 5


def test_memory_bound_says_so(pair: FollowupPair) -> None:
    slices = slices_of(pair.current, pair)
    per_slice = slices[0].shape[0] * slices[0].shape[1]
    engine = LiveComparison("1.2.9", LiveConfig(max_voxels=per_slice * 4))
    engine.set_prior(prior_of(pair))
    for z in range(6):
        engine.add(slices[z], pair.current_mask[z])
    assert engine.slices == 0
    change = engine.answer(slices[0]).change
    assert change.status == "withheld" and "follow-up bound" in change.reason
    outcome = engine.complete(timeout_s=5)
    assert outcome.comparison is None and "follow-up bound" in outcome.change.reason


def test_failed_comparison_never_raises(pair: FollowupPair, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("registration library crashed")

    monkeypatch.setattr(live, "compare_series", broken)
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.10", LiveConfig(min_slices=4))
    engine.set_prior(prior_of(pair))
    for z in range(6):
        engine.add(slices[z], pair.current_mask[z])
    wait_until(lambda: engine.answer(slices[0]).change.status == "withheld", timeout=30)
    change = engine.answer(slices[0]).change
    assert "RuntimeError" in change.reason
    outcome = engine.complete(timeout_s=30)
    assert outcome.comparison is None and outcome.change.status == "withheld"


def test_global_gate_bounds_concurrent_comparisons(pair: FollowupPair, monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    most = 0
    lock = threading.Lock()
    real = live.compare_series

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(live, "compare_series", counted)
    gate = threading.Semaphore(1)
    slices = slices_of(pair.current[:12], pair)
    engines = [LiveComparison(f"1.3.{i}", LiveConfig(min_slices=8), gate) for i in range(3)]
    for engine in engines:
        engine.set_prior(prior_of(pair))
        for z in range(12):
            engine.add(slices[z], pair.current_mask[z])
    for engine in engines:
        assert engine.complete(timeout_s=120).change.status == "compared"
    assert most == 1


def test_the_comparison_listener_hears_each_live_comparison_with_its_answers_ready(pair: FollowupPair) -> None:
    """``on_compared`` (the DICOM node's change updates) runs after each live comparison, sees its answers, may
    call back into the engine, and a listener that raises stops nothing."""
    slices = slices_of(pair.current, pair)
    engine = LiveComparison("1.2.20", LiveConfig(min_slices=8, reregister_every=8))
    heard: list[str] = []

    def listener() -> None:
        heard.append(engine.answer(slices[4]).change.status)
        raise RuntimeError("a subscriber's bug")

    engine.on_compared = listener
    for z in range(len(slices)):
        engine.add(slices[z], pair.current_mask[z])
    engine.set_prior(prior_of(pair))
    wait_until(lambda: heard, timeout=120, what="the first live comparison")
    outcome = engine.complete(timeout_s=120)  # waits for a comparison in flight and its listener
    assert heard and set(heard) == {"compared"}
    assert outcome.comparison is not None and outcome.change.status == "compared"
