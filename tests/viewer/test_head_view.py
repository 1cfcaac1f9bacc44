"""The live page draws a model's further mask heads as dashed outlines, a switch per head, in a real headless
Chromium.

The first test is the whole way a user gets it: a real runtime serving tests/heads/test_head_masks.py's
three-mask model and publishing, ``scanedge replay`` (which reads PONG and asks for ``head_masks``), the viewer
on the runtime's PUB feed: the page names each head and its classes and draws them. The second publishes
hand-built RESULTs on a real PUB socket (the DICOM node's publisher): no panel without heads, each head in its
class colour behind its own switch (which holds for the next slices), an all-background head listed and never
drawn, hostile labels and class names shown as text, and a head mask of another shape than the image refused
(not drawn, said why) while the page goes on painting.
"""

from __future__ import annotations

import numpy as np

from scanedge.dicomnet.publisher import ResultPublisher
from scanedge.runtime.console.replay import Replay, ReplayConfig, SliceEvent, read_series
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import Echo, Finding, HeadClass, Timings, encode, publish_topic, result_reply
from scanedge.viewer import Viewer, ViewerConfig
from tests.heads.conftest import head_models  # noqa: F401 - the networks three_masks builds on
from tests.heads.test_head_masks import three_masks  # noqa: F401 - the three-mask models
from tests.runtime.conftest import running_server
from tests.viewer.conftest import needs_chromium
from tests.viewer.test_change_view import canvas_rgb
from tests.viewer.test_saliency_view import _layers
from tests.waiting import wait_until

HOSTILE_LABEL = '<img src=x onerror="document.body.dataset.pwned=1">vessels'
HOSTILE_CLASS = "<b>vessel</b>"
ROWS = COLS = 64
ORGANS = (HeadClass("background", (0, 0, 0)), HeadClass("liver", (0, 200, 0)), HeadClass("kidney", (255, 200, 0)))
VESSELS = (HeadClass("background", (0, 0, 0)), HeadClass(HOSTILE_CLASS, (0, 0, 255)))

pytestmark = needs_chromium

#: pixels of the painted canvas that are clearly one colour: green (g above r and b), blue (b above r and g)
COUNT = """(which) => {
    const c = document.getElementById("view");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
        const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
        if (which === "green" ? g > r + 60 && g > b + 60 : b > r + 60 && b > g + 60) n++;
    }
    return n;
}"""


def _switch(page, label: str, on: bool) -> None:
    """Set the switch of the head ``label`` as a click would (the page redraws)."""
    page.evaluate(
        """([label, on]) => { const box = [...document.querySelectorAll("#head-switches label")]
            .find((l) => l.dataset.head === label).querySelector("input");
            if (box.checked !== on) { box.checked = on; box.dispatchEvent(new Event("input")); } }""",
        [label, on],
    )


def _switch_texts(page) -> list[str]:
    return page.eval_on_selector_all("#head-switches label", "(ls) => ls.map((l) => l.textContent.trim())")


def test_replay_asks_for_head_masks_and_the_page_draws_each_head(three_masks, demo_dir, browser_page):  # noqa: F811
    page, errors = browser_page
    (series,) = read_series([demo_dir])
    with running_server([three_masks["plain"]], publish="tcp://127.0.0.1:*") as server:
        with Viewer(ViewerConfig(subscribe=server.publish_endpoint or "", port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
            replies: list[SliceEvent] = []
            cfg = ReplayConfig(endpoint=server.endpoint, rate=40, loop=True, max_loops=3)  # asks for no head_masks
            Replay([series], cfg).run(replies.append)
            # the replay read PONG and asked: every reply carries the heads' frames
            ok = [e.result for e in replies if e.result is not None]
            assert ok and all(list(r.head_masks) == ["organs", "vessels"] for r in ok)
            wait_until(lambda: viewer.feed.received > 0, timeout=30, what="a publication reaching the viewer")
            seq = max(s["seq"] for s in viewer.feed.series[series.uid].slices.values())
            page.wait_for_function(f"Number(document.body.dataset.painted) >= {seq}", timeout=60_000)
            assert page.is_visible("#heads")
            assert [t.split(" (")[0] for t in _switch_texts(page)] == ["organs: liver, kidney", "vessels: vessel"]
            assert viewer.feed.heads_refused == 0
    assert not errors, errors


def _publish(publisher: ResultPublisher, z: int, heads=()) -> None:
    """Slice ``z`` of series 9.9.9: a grey image, a lesion square (main mask) and ``heads`` as frames."""
    image = np.full((ROWS, COLS), 90, np.uint8)
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[40:48, 40:48] = 1
    infos, payload, _ = result_frames(("mask", "image", "head_masks"), {"mask": mask, "image": image}, "raw", heads)
    header = result_reply(
        Echo(z + 1, "9.9.9", f"9.9.9.{z + 1}", z + 1, None),
        model="m@1",
        engine="ort",
        timings=Timings(total=2.0, infer=1.0),
        findings=[Finding(1, "lesion", 64, None, 1, 0.9, 0.8)],
        frames=infos,
        received_at=1.0,
        runtime="heads-test",
        position_mm=float(z),
    )
    publisher.publish([publish_topic("9.9.9"), encode(header), *payload])


def _painted(page, z: int) -> None:
    page.wait_for_function(f"document.body.dataset.paintedIndex === '{z + 1}'", timeout=30_000)


def _heads(shape: tuple[int, int] = (ROWS, COLS)) -> list:
    organs = np.zeros(shape, np.uint8)
    organs[4:20, 4:30] = 1  # liver
    organs[24:34, 4:14] = 2  # kidney
    vessels = np.zeros(shape, np.uint8)
    vessels[8:30, 36:60] = 1
    empty = np.zeros(shape, np.uint8)
    return [("mask:organs", organs, ORGANS), ("mask:" + HOSTILE_LABEL, vessels, VESSELS), ("mask:empty", empty, ORGANS)]


def test_each_head_is_a_dashed_layer_under_its_own_switch_named_as_text(browser_page):
    page, errors = browser_page
    publisher = ResultPublisher("tcp://127.0.0.1:*").start()
    try:
        with Viewer(ViewerConfig(subscribe=publisher.endpoint or "", port=0)) as viewer:
            page.goto(viewer.page_url)
            page.wait_for_selector("#connection[data-state=live]", timeout=60_000)

            def subscribed() -> bool:
                if viewer.feed.received == 0:
                    _publish(publisher, 0)
                return viewer.feed.received > 0

            wait_until(subscribed, timeout=30, what="the viewer's subscription")
            _painted(page, 0)
            # no heads: no panel, nothing drawn
            assert page.is_hidden("#heads") and page.evaluate("document.body.dataset.heads") == "0"
            _layers(page, fill=True, outline=True)
            lesion = canvas_rgb(page, 44, 44)
            assert page.evaluate(COUNT, "green") == 0 and page.evaluate(COUNT, "blue") == 0
            # three heads, one hostile, one that found nothing: listed as text, two drawn
            _publish(publisher, 1, _heads())
            _painted(page, 1)
            assert page.is_visible("#heads") and page.evaluate("document.body.dataset.heads") == "2"
            texts = _switch_texts(page)
            assert texts == [
                "organs: liver, kidney",
                f"{HOSTILE_LABEL}: {HOSTILE_CLASS}",
                "empty: liver, kidney (nothing on this slice)",
            ]
            assert page.evaluate("document.body.dataset.pwned") is None
            assert page.locator("#heads img, #heads b").count() == 0
            green, blue = page.evaluate(COUNT, "green"), page.evaluate(COUNT, "blue")
            assert green > 50 and blue > 50  # liver dashed in green, the vessels in blue
            assert canvas_rgb(page, 44, 44) == lesion  # the main mask as it was
            # organs off: no green; the switch holds for the next slice
            _switch(page, "organs", False)
            assert page.evaluate(COUNT, "green") == 0 and page.evaluate(COUNT, "blue") == blue
            assert page.evaluate("document.body.dataset.heads") == "1"
            _publish(publisher, 2, _heads())
            _painted(page, 2)
            assert page.evaluate(COUNT, "green") == 0 and page.evaluate(COUNT, "blue") > 50
            _switch(page, "organs", True)
            assert page.evaluate(COUNT, "green") > 50
            # a head mask of another shape than the image: refused, said why, the others drawn
            wrong = _heads()
            wrong[0] = ("mask:organs", np.ones((ROWS // 2, COLS // 2), np.uint8), ORGANS)
            _publish(publisher, 3, wrong)
            _painted(page, 3)
            assert page.is_visible("#heads-refused")
            assert "head mask organs 32x32 is not the image's 64x64" in (page.text_content("#heads-refused") or "")
            assert page.evaluate(COUNT, "green") == 0 and page.evaluate("document.body.dataset.heads") == "1"
            assert viewer.feed.heads_refused == 1
            _publish(publisher, 4, _heads())
            _painted(page, 4)
            assert page.is_hidden("#heads-refused") and page.evaluate("document.body.dataset.heads") == "2"
    finally:
        publisher.close()
    assert not errors, errors
