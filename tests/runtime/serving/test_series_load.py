"""Series lesion load in the runtime: every RESULT (and what is published) carries the series' 3-D load."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import zmq

from scanedge.errors import ConfigError, SupersededError
from scanedge.imaging.files import load_slices
from scanedge.imaging.lesion_load import SeriesLesionLoad
from scanedge.runtime.console.client import Client
from scanedge.runtime.serving.series_store import SeriesStore, SeriesStoreConfig
from scanedge.runtime.wire.protocol import decode_reply
from tests.runtime.conftest import Gate, gated_factory, running_server, subscriber
from tests.waiting import wait_until

CLASSES = ("background", "lesion")


@pytest.fixture(scope="module")
def demo_slices(tmp_path_factory: pytest.TempPathFactory) -> list:
    from scanedge.demo.series import demo_series_dir

    return [loaded.slice for loaded in load_slices([demo_series_dir()])]


def local_load(results) -> SeriesLesionLoad:
    """The same accumulation, done by the console from the masks it received."""
    load = SeriesLesionLoad(CLASSES)
    for s, r in results:
        load.add(r.mask, s.geometry, s.identity.instance_number)
    return load


def test_results_carry_the_series_load_whatever_the_order_and_repeats(server, demo_slices):
    order = list(demo_slices) + random.Random(5).sample(demo_slices, 6)  # six slices sent twice
    random.Random(1).shuffle(order)
    with Client(server.endpoint) as client:
        results = [(s, client.segment(s, series="shuffled", outputs=("mask",))) for s in order]
    last = results[-1][1].series_load
    expected = local_load(results).load()
    assert last == expected  # what the runtime accumulated is what the masks say
    assert last.slices == len(demo_slices)  # repeats replaced their earlier results
    lesion = last.load("lesion")
    assert lesion.lesions > 5 and lesion.volume_mm3 > 0 and lesion.largest_mm3 <= lesion.volume_mm3
    assert last.spacing_source == "positions" and last.spacing_mm == pytest.approx(4.0)
    # the load grows with the series: each reply holds the state after its own slice
    seen = [r.series_load.slices for _, r in results]
    assert seen == sorted(seen) and seen[0] == 1
    assert {r.position_mm for _, r in results} == {s.geometry.position_along_normal for s in demo_slices}
    assert all(r.timings_ms["series"] >= 0 for _, r in results)


def test_no_series_no_load_and_a_series_per_model_key(server, demo_slices):
    with Client(server.endpoint) as client:
        plain = client.segment(demo_slices[12].pixels, outputs=("mask",))  # raw pixels, no series, no geometry
        a = client.segment(demo_slices[12], series="a", outputs=("mask",))
        b = client.segment(demo_slices[13], series="b", outputs=("mask",))
    assert plain.series_load is None and plain.header.series_load is None
    assert a.series_load.slices == 1 and b.series_load.slices == 1  # series do not mix


def test_a_superseded_slice_leaves_a_gap_until_it_is_sent_again(demo_slices):
    gate = Gate()
    five = [s for s in demo_slices if 14 <= s.identity.instance_number <= 18]
    with running_server(pipeline_factory=gated_factory(gate)) as srv, Client(srv.endpoint) as client:
        first = client.submit(five[0], series="s", outputs=("mask",))
        gate.wait_entered()  # the worker holds slice 0: slice 1 waits, and slice 2 supersedes it
        skipped = client.submit(five[1], series="s", outputs=("mask",))
        wait_until(lambda: srv.stats.counters.get("received", 0) >= 3, what="slice 1 queued")  # + the hello PING
        second = client.submit(five[2], series="s", outputs=("mask",))
        with pytest.raises(SupersededError):
            skipped.result(10)
        gate.open()
        results = [(five[0], first.result(10)), (five[2], second.result(10))]
        results += [(s, client.segment(s, series="s", outputs=("mask",))) for s in five[3:]]
        gapped = results[-1][1].series_load
        assert gapped.slices == 4 and gapped.spacing_mm == pytest.approx(4.0)  # slices 2-4 show the spacing
        assert gapped == local_load(results).load()  # the 8 mm gap joins nothing across it
        # the console sends the superseded slice again: the gap fills and the series is whole
        results.append((five[1], client.segment(five[1], series="s", outputs=("mask",))))
        filled = results[-1][1].series_load
    whole = SeriesLesionLoad(CLASSES)
    for s, r in sorted(results, key=lambda item: item[0].identity.instance_number):
        whole.add(r.mask, s.geometry, s.identity.instance_number)
    assert filled.slices == 5 and filled == whole.load()
    assert filled.load("lesion").voxels > gapped.load("lesion").voxels


def test_the_published_result_carries_the_load(server, demo_slices):
    with subscriber(server, b"pub-series") as sub, Client(server.endpoint) as client:
        reply = client.segment(demo_slices[14], series="pub-series", outputs=("mask", "image"))
        assert sub.poll(5000)
        topic, header, *frames = sub.recv_multipart()
    published = decode_reply(header)
    assert topic == b"pub-series" and published.series_load == reply.header.series_load
    assert [f.name for f in published.frames] == ["mask", "image"]
    assert reply.image is not None and reply.image.dtype == np.uint8 and reply.image.shape == reply.mask.shape
    assert len(frames[1]) == reply.image.nbytes


def test_idle_series_are_forgotten_and_the_lru_cap_holds(demo_slices):
    store = SeriesStore(SeriesStoreConfig(idle_s=10.0, max_series=2))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 1
    geo = None  # placed by instance number
    store.update("a", "m", CLASSES, mask, geo, 1, now=0.0)
    store.update("b", "m", CLASSES, mask, geo, 1, now=1.0)
    store.update("a", "m", CLASSES, mask, geo, 2, now=2.0)  # a is now the most recently used
    store.update("c", "m", CLASSES, mask, geo, 1, now=3.0)  # over the cap: b goes
    assert store.get("b", "m") is None and store.get("a", "m").slices == 2 and len(store) == 2
    assert store.evict_idle(now=12.5) == 1 and store.get("a", "m") is None  # a idle since 2.0
    assert store.update("c", "m", CLASSES, mask, geo, 2, now=30.0).slices == 1  # c had ended: starts anew
    assert store.evicted == 3 and 0 < store.nbytes < 4096
    with pytest.raises(ConfigError):
        SeriesStoreConfig(idle_s=0)


def test_the_runtime_forgets_an_ended_series(demo_slices):
    with running_server(series=SeriesStoreConfig(idle_s=0.05)) as srv, Client(srv.endpoint) as client:
        client.segment(demo_slices[14], series="ends", outputs=("mask",))
        assert srv.series_store.get("ends", "ms-lesion-demo") is not None
        wait_until(lambda: srv.series_store.get("ends", "ms-lesion-demo") is None, what="the idle sweep")
        again = client.segment(demo_slices[15], series="ends", outputs=("mask",))
    assert again.series_load.slices == 1


def test_raw_consoles_read_the_load_as_plain_json(server, demo_slices):
    s = demo_slices[14]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        import json

        header = {
            "version": 1,
            "type": "SEGMENT",
            "id": 1,
            "series": "raw",
            "dtype": "int16",
            "shape": list(s.pixels.shape),
            "geometry": {"pixel_spacing": list(s.geometry.pixel_spacing), "slice_thickness": 4.0},
            "index": 3,
            "outputs": ["mask"],
        }
        sock.send_multipart([json.dumps(header).encode(), s.pixels.astype("<i2").tobytes()])
        assert sock.poll(10000)
        reply = json.loads(sock.recv_multipart()[0])
    finally:
        sock.close(0)
    load = reply["series_load"]
    assert load["slices"] == 1 and load["spacing_source"] == "thickness" and load["spacing_mm"] is None
    (lesion,) = load["classes"]
    assert set(lesion) == {
        "label",
        "name",
        "lesions",
        "voxels",
        "volume_mm3",
        "largest_mm3",
        "largest_voxels",
        "largest_slices",
        "slices_with_finding",
    }
    assert reply["position_mm"] is None  # no image position: placed by its index
    px = s.geometry.pixel_spacing
    assert lesion["volume_mm3"] == pytest.approx(lesion["voxels"] * px[0] * px[1] * 4.0, abs=1e-3)


def test_demo_masks_at_full_size_match_the_pixels(demo_slices, tmp_path: Path):
    """Sanity: the demo slices' lesions are found, so the tests above exercise real components."""
    with running_server() as srv, Client(srv.endpoint) as client:
        results = [(s, client.segment(s, series="demo", outputs=("mask",))) for s in demo_slices]
    lesion = results[-1][1].series_load.load("lesion")
    assert lesion.voxels == sum(int(r.mask.sum()) for _, r in results)
