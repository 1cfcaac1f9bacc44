"""The viewer's feed and WebSocket: every slice described, pixels dropped to the newest for slow pages."""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest
from websockets.sync.client import connect

from scanedge.errors import ConfigError
from scanedge.runtime.console.replay import Replay, ReplayConfig, read_series
from scanedge.runtime.wire.protocol import FrameInfo, Result, Timings, encode
from scanedge.viewer import LiveFeed, Viewer, ViewerConfig
from tests.waiting import wait_until


def ws_url(viewer: Viewer) -> str:
    return viewer.url.replace("http://", "ws://") + "ws?token=" + viewer.token


def state(viewer: Viewer) -> dict:
    with urllib.request.urlopen(viewer.url + "api/state?token=" + viewer.token, timeout=10) as r:
        return json.load(r)


class Page:
    """A WebSocket client standing in for a page: collects what the viewer sends."""

    def __init__(self, viewer: Viewer) -> None:
        self._connection = connect(ws_url(viewer), max_size=None)
        self.ws = self._connection.__enter__()
        self.texts: list[dict] = []
        self.slices: list[tuple[dict, bytes, bytes]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                with self.lock:
                    if isinstance(message, str):
                        self.texts.append(json.loads(message))
                    else:
                        n = int.from_bytes(message[:4], "little")
                        meta = json.loads(message[4 : 4 + n])
                        pixels = meta["rows"] * meta["cols"]
                        image = message[4 + n : 4 + n + pixels * meta["channels"]]
                        self.slices.append((meta, image, message[4 + n + len(image) :]))
        except Exception:
            return

    def described(self) -> list[dict]:
        with self.lock:
            return [m for t in self.texts if t["type"] == "slices" for m in t["items"]]

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def replay(runtime, demo_dir, rate: float = 50.0):
    series = read_series([demo_dir])
    return Replay(series, ReplayConfig(endpoint=runtime.endpoint, rate=rate))


def test_a_page_gets_every_slice_described_and_the_newest_pixels(runtime, viewer, demo_dir):
    page = Page(viewer)
    try:
        wait_until(lambda: page.texts and page.texts[0]["type"] == "hello", what="the hello")
        wait_until(lambda: state(viewer)["pages"] == 1, what="the page registered")
        painted = []

        def paint_as_they_come() -> None:  # a page that keeps up: paints each slice it is sent
            while len(painted) < 1000 and not stop.is_set():
                with page.lock:
                    fresh = page.slices[len(painted) :]
                for meta, _, _ in fresh:
                    painted.append(meta["seq"])
                    page.send({"type": "painted", "seq": meta["seq"], "latency_ms": 12.5})
                stop.wait(0.002)

        stop = threading.Event()
        painter = threading.Thread(target=paint_as_they_come, daemon=True)
        painter.start()
        (report,) = replay(runtime, demo_dir).run()
        wait_until(lambda: len({m["key"] for m in page.described()}) == report.ok, what="every slice described")
        last = page.described()[-1]
        wait_until(lambda: painted and painted[-1] == last["seq"], what="the newest slice painted")
        stop.set()
        painter.join(5)
    finally:
        page.close()
    assert last["series_load"]["volume_mm3"] == pytest.approx(report.load.volume_mm3)
    assert last["series_load"]["lesions"] == report.load.lesions
    meta, image, mask = page.slices[-1]
    assert (meta["rows"], meta["cols"], meta["channels"]) == (256, 256, 1) and len(image) == len(mask) == 256 * 256
    assert np.frombuffer(mask, np.uint8).max() <= 1 and meta["model"].startswith("ms-lesion-demo")
    s = state(viewer)
    assert s["series"][0]["slices"] == report.ok and s["publish_to_paint_ms"]["p50"] == 12.5


def test_a_page_that_does_not_paint_gets_one_slice_then_only_the_newest(runtime, viewer, demo_dir):
    page = Page(viewer)
    try:
        wait_until(lambda: state(viewer)["pages"] == 1, what="the page registered")
        (report,) = replay(runtime, demo_dir).run()
        wait_until(lambda: len(page.described()) >= report.ok, what="every slice described")
        assert len(page.slices) == 1  # never painted: nothing more was pushed at it
        assert state(viewer)["dropped_for_pages"] >= report.ok - 2
        newest = page.described()[-1]
        page.send({"type": "painted", "seq": page.slices[0][0]["seq"], "latency_ms": None})
        wait_until(lambda: len(page.slices) == 2, what="the newest slice")
        assert page.slices[1][0]["seq"] == newest["seq"]  # dropped to the newest, in one step
        first = page.described()[0]
        page.send({"type": "painted", "seq": newest["seq"]})
        page.send({"type": "pin", "series": first["series"], "key": first["key"]})  # look back
        wait_until(lambda: len(page.slices) == 3, what="the pinned slice")
        assert page.slices[2][0]["key"] == first["key"] and page.slices[2][0]["pinned"] is True
    finally:
        page.close()
    wait_until(lambda: state(viewer)["pages"] == 0, what="the page to be forgotten")


def test_malformed_publications_are_counted_and_ignored():
    feed = LiveFeed("tcp://127.0.0.1:1")
    assert feed.handle([b"x"]) is None and feed.handle([b"t", b"{not json"]) is None
    header = Result(
        version=1,
        id=1,
        series="s",
        frames=(FrameInfo(name="mask", encoding="raw", dtype="uint8", shape=[2, 2]),),
        timings_ms=Timings(total=1.0),
    )
    assert feed.handle([b"s", encode(header), b"\0" * 3]) is None  # frame shorter than its shape
    assert feed.handle([b"s", encode(header)]) is None  # frame missing
    assert feed.malformed == 4
    item = feed.handle([b"s", encode(header), b"\0\1\0\0"])
    assert item is not None and item.image is None and item.meta["channels"] is None  # no image: nothing to paint
    assert feed.series["s"].slices and feed.malformed == 4


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "viewer.example"])
def test_a_host_beyond_this_machine_needs_insecure(host):
    with pytest.raises(ConfigError, match="--insecure"):
        ViewerConfig(subscribe="tcp://127.0.0.1:5556", host=host)
    assert ViewerConfig(subscribe="tcp://127.0.0.1:5556", host=host, insecure=True).host == host
    for local in ("127.0.0.1", "::1", "localhost"):
        assert ViewerConfig(subscribe="tcp://127.0.0.1:5556", host=local).is_loopback


def test_the_view_command_refuses_an_open_host_before_serving(capsys):
    from scanedge.cli import main

    assert main(["view", "--subscribe", "tcp://127.0.0.1:5556", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve the viewer on 0.0.0.0" in err and "--insecure" in err


def test_settings_are_checked_and_ports_in_use_refused(viewer):
    with pytest.raises(ConfigError):
        ViewerConfig(subscribe="tcp://127.0.0.1:5556", port=70000)
    with pytest.raises(ConfigError):
        ViewerConfig(subscribe="not an endpoint")
    with pytest.raises(ConfigError, match="another --port"):
        Viewer(ViewerConfig(subscribe="tcp://127.0.0.1:5556", port=viewer.port))
    with urllib.request.urlopen(viewer.page_url, timeout=10) as r:
        page = r.read().decode()
    assert 'id="view"' in page and "/static/app.js" in page


def test_several_scanners_are_followed_and_a_page_chooses_one(runtime, viewer, demo_dir):
    page = Page(viewer)
    try:
        wait_until(lambda: state(viewer)["pages"] == 1, what="the page registered")
        series = read_series([demo_dir, demo_dir])  # two scanners
        page.send({"type": "select", "series": series[1].uid})
        stop = threading.Event()
        painter_seen: list[str] = []

        def paint() -> None:
            while not stop.is_set():
                with page.lock:
                    fresh = page.slices[len(painter_seen) :]
                for meta, _, _ in fresh:
                    painter_seen.append(meta["series"])
                    page.send({"type": "painted", "seq": meta["seq"], "latency_ms": 1.0})
                stop.wait(0.002)

        painter = threading.Thread(target=paint, daemon=True)
        painter.start()
        reports = Replay(series, ReplayConfig(endpoint=runtime.endpoint, rate=50.0, outputs=("mask", "image"))).run()
        wait_until(lambda: len(page.described()) >= sum(r.ok for r in reports), what="every slice described")
        wait_until(lambda: len(painter_seen) >= 2, what="slices painted")
        stop.set()
        painter.join(5)
    finally:
        page.close()
    assert {m["series"] for m in page.described()} == {series[0].uid, series[1].uid}
    assert set(painter_seen[1:]) == {series[1].uid}  # after the choice, only the chosen scanner is painted
    assert {s["uid"] for s in state(viewer)["series"]} == {series[0].uid, series[1].uid}


def test_the_view_command_refuses_a_port_in_use(viewer, capsys):
    from scanedge.cli import main as scanedge_main

    code = scanedge_main(["view", "--subscribe", "tcp://127.0.0.1:5556", "--port", str(viewer.port)])
    assert code == 2 and "another --port" in capsys.readouterr().err


def test_a_classifiers_scores_are_kept_per_model_beside_the_slice_they_do_not_replace():
    from scanedge.imaging.heads import ClassScore, HeadScore, SeriesClassScore, SeriesScore

    feed = LiveFeed("tcp://127.0.0.1:1")
    mask = FrameInfo(name="mask", encoding="raw", dtype="uint8", shape=[2, 2])
    seg = Result(version=1, id=1, series="s", model="seg@1", frames=(mask,), position_mm=4.0, timings_ms=Timings())
    assert feed.handle([b"s", encode(seg), b"\0\1\0\0"]) is not None
    score = HeadScore("h", (ClassScore("lesion", 0.75, 0.5, True), ClassScore("x" * 500, 0.1, 0.5, False)), "lesion")
    total = SeriesScore("h", "max", 1, (SeriesClassScore("lesion", 0.75, 0.5, True, 1),))
    cls = Result(
        version=1, id=2, series="s", model="cls@1", position_mm=4.0, timings_ms=Timings(),
        scores=(score,), series_scores=(total,),
    )  # fmt: skip
    item = feed.handle([b"s", encode(cls)])
    assert item is not None and item.image is None and item.mask is None and item.meta["type"] == "scores"
    held = feed.series["s"]
    assert held.slices["4.000"]["model"] == "seg@1" and held.latest["model"] == "seg@1"  # the slice drawn stays
    (kept,) = held.scores["cls@1"].values()
    assert kept["scores"][0]["classes"][0] == {
        "name": "lesion",
        "probability": 0.75,
        "threshold": 0.5,
        "decision": True,
    }
    assert len(kept["scores"][0]["classes"][1]["name"]) == 64  # wire text bounded
    assert kept["series_scores"][0]["classes"][0]["slices_positive"] == 1
    assert feed.snapshot()["series"][0]["scores"] == [kept]
    # the same place again replaces it; a RESULT with neither mask nor scores is not kept
    feed.handle([b"s", encode(cls)])
    assert len(held.scores["cls@1"]) == 1
    assert feed.handle([b"s", encode(Result(version=1, id=3, series="s", model="n@1", timings_ms=Timings()))]) is None
    # a bounded number of score-only models per series
    for k in range(20):
        other = Result(version=1, id=10 + k, series="s", model=f"m{k}@1", timings_ms=Timings(), scores=(score,))
        feed.handle([b"s", encode(other)])
    assert len(held.scores) == 8
